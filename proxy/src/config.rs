//! Settings of `edgeward-proxy`: flags, each with an `EDGEWARD_` environment variable. A flag
//! given on the command line wins over the environment, which wins over the default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use edgeward_proto::duration;
use edgeward_proto::logging::LogFormat;
use ipnet::IpNet;

/// What happens to a captured connection whose destination is not a workload of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutboundMode {
    /// Pass it through untouched, as plain TCP (the default, for gradual adoption).
    Permissive,
    /// Refuse it: only mesh destinations are reachable from meshed pods.
    Strict,
}

/// Which transport the tunnels to peer nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TunnelTransport {
    /// QUIC where UDP reaches the peer, TCP where it does not; QUIC is probed again later.
    Auto,
    /// QUIC only.
    Quic,
    /// TCP (TLS and HTTP/2) only.
    Tcp,
}

/// The congestion controller of QUIC tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Congestion {
    /// CUBIC, loss-based, as Linux TCP.
    Cubic,
    /// BBR, model-based: keeps its rate under random loss (quinn marks it experimental).
    Bbr,
}

/// The node proxy: captures pod traffic and tunnels it over mutual TLS to the destination node.
#[derive(Debug, Clone, Parser)]
#[command(name = "edgeward-proxy", version)]
pub struct ProxyConfig {
    /// This node's name, as the registry and the join token know it.
    #[arg(long, env = "EDGEWARD_NODE_NAME")]
    pub node_name: String,

    /// Address (ip:port) of the control plane.
    #[arg(long, env = "EDGEWARD_CONTROL_ADDR")]
    pub control: SocketAddr,

    /// Trust domain of the mesh; the control plane must present its SPIFFE ID in it.
    #[arg(long, env = "EDGEWARD_TRUST_DOMAIN", default_value = "edgeward.local")]
    pub trust_domain: String,

    /// PEM roots to trust the control plane with before the first join.
    #[arg(long, env = "EDGEWARD_BOOTSTRAP_BUNDLE")]
    pub bootstrap_bundle: Option<PathBuf>,

    /// Directory for the node key and certificate (0600 key) and the trust bundle.
    #[arg(
        long,
        env = "EDGEWARD_STATE_DIR",
        default_value = "/var/lib/edgeward/proxy"
    )]
    pub state_dir: PathBuf,

    /// File holding a single-use join token; needed only until the node has joined.
    #[arg(long, env = "EDGEWARD_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,

    /// Addresses at which other nodes reach this node's tunnel port (repeat the flag or
    /// separate with commas).
    #[arg(
        long,
        env = "EDGEWARD_ADVERTISE",
        value_delimiter = ',',
        required = true
    )]
    pub advertise: Vec<IpAddr>,

    /// Pod networks whose TCP connections are captured (repeat the flag or separate with
    /// commas). The proxy installs the iptables rules at start and removes them at exit; none
    /// given means no capture rules.
    #[arg(long, env = "EDGEWARD_CAPTURE_CIDRS", value_delimiter = ',')]
    pub capture_cidr: Vec<IpNet>,

    /// What to do with captured connections to destinations outside the mesh.
    #[arg(
        long,
        env = "EDGEWARD_OUTBOUND_MODE",
        value_enum,
        default_value = "permissive"
    )]
    pub outbound_mode: OutboundMode,

    /// Where captured outbound connections arrive (the REDIRECT target).
    #[arg(
        long,
        env = "EDGEWARD_OUTBOUND_LISTEN",
        default_value = "0.0.0.0:15001"
    )]
    pub outbound_listen: SocketAddr,

    /// The tunnel listener, on TCP (HTTP/2 CONNECT over mutual TLS) and on UDP (QUIC) alike.
    #[arg(long, env = "EDGEWARD_TUNNEL_LISTEN", default_value = "0.0.0.0:15008")]
    pub tunnel_listen: SocketAddr,

    /// Prometheus endpoint (GET /metrics); localhost by default.
    #[arg(long, env = "EDGEWARD_METRICS_ADDR", default_value = "127.0.0.1:15020")]
    pub metrics_addr: SocketAddr,

    /// Readiness endpoint (GET /healthz/ready) for probes.
    #[arg(long, env = "EDGEWARD_READY_ADDR", default_value = "0.0.0.0:15021")]
    pub ready_addr: SocketAddr,

    /// Time allowed to open a TCP connection (to a peer node, a pod or a pass-through
    /// destination), to finish a TLS handshake, and for a peer to answer a tunnel stream's
    /// CONNECT, such as "5s".
    #[arg(
        long,
        env = "EDGEWARD_CONNECT_TIMEOUT",
        default_value = "5s",
        value_parser = duration::parse_positive,
    )]
    pub connect_timeout: Duration,

    /// How long a control-plane outage the node must ride out without any certificate
    /// expiring: SVIDs are requested with twice this lifetime and renewed while at least this
    /// much validity remains (default 24h).
    #[arg(
        long,
        env = "EDGEWARD_AVAILABILITY_TARGET",
        default_value = "24h",
        value_parser = duration::parse
    )]
    pub availability_target: Duration,

    /// Tunnel transport: auto, quic or tcp.
    #[arg(
        long,
        env = "EDGEWARD_TUNNEL_TRANSPORT",
        value_enum,
        default_value = "auto"
    )]
    pub tunnel_transport: TunnelTransport,

    /// QUIC idle timeout offered to peers; the smaller of the two sides' values applies, and
    /// keep-alives go out at a third of it. It bounds how long a silent peer goes unnoticed, so
    /// it must exceed the link outages the tunnel should ride out (default 30s).
    #[arg(
        long,
        env = "EDGEWARD_QUIC_IDLE_TIMEOUT",
        default_value = "30s",
        value_parser = duration::parse_positive
    )]
    pub quic_idle_timeout: Duration,

    /// Congestion controller of QUIC tunnels: bbr (the default: under random loss it keeps its
    /// rate where CUBIC collapses, see BENCHMARKS.md) or cubic.
    #[arg(
        long,
        env = "EDGEWARD_QUIC_CONGESTION",
        value_enum,
        default_value = "bbr"
    )]
    pub quic_congestion: Congestion,

    /// How long a QUIC handshake, or a QUIC path that stopped answering, may take before a
    /// connection falls back to TCP (auto transport only).
    #[arg(
        long,
        env = "EDGEWARD_QUIC_PROBE_TIMEOUT",
        default_value = "3s",
        value_parser = duration::parse_positive
    )]
    pub quic_probe_timeout: Duration,

    /// After a fallback to TCP, how long until QUIC is tried again for that peer.
    #[arg(
        long,
        env = "EDGEWARD_QUIC_REPROBE_INTERVAL",
        default_value = "60s",
        value_parser = duration::parse_positive
    )]
    pub quic_reprobe_interval: Duration,

    /// Interval of HTTP/2 PINGs on TCP tunnels.
    #[arg(
        long,
        env = "EDGEWARD_H2_PING_INTERVAL",
        default_value = "10s",
        value_parser = duration::parse_positive
    )]
    pub h2_ping_interval: Duration,

    /// How long an HTTP/2 PING may go unanswered before the TCP tunnel is dropped.
    #[arg(
        long,
        env = "EDGEWARD_H2_PING_TIMEOUT",
        default_value = "20s",
        value_parser = duration::parse_positive
    )]
    pub h2_ping_timeout: Duration,

    /// TCP_USER_TIMEOUT on every TCP socket: how long sent data may stay unacknowledged before
    /// the kernel gives up on the connection.
    #[arg(
        long,
        env = "EDGEWARD_TCP_USER_TIMEOUT",
        default_value = "30s",
        value_parser = duration::parse
    )]
    pub tcp_user_timeout: Duration,

    /// How long a pooled tunnel connection may carry no stream before it is closed.
    #[arg(
        long,
        env = "EDGEWARD_TUNNEL_IDLE_TIMEOUT",
        default_value = "5m",
        value_parser = duration::parse_positive
    )]
    pub tunnel_idle_timeout: Duration,

    /// Log format: "text" or "json".
    #[arg(long, env = "EDGEWARD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl ProxyConfig {
    /// The addresses (ip:port) other nodes should dial for this node's tunnel.
    pub fn tunnel_addresses(&self) -> Vec<SocketAddr> {
        let port = self.tunnel_listen.port();
        self.advertise
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect()
    }

    /// Ports of the proxy's own listeners: a captured connection aimed at one of them on this
    /// node is refused rather than looped.
    pub fn own_ports(&self) -> [u16; 4] {
        [
            self.outbound_listen.port(),
            self.tunnel_listen.port(),
            self.metrics_addr.port(),
            self.ready_addr.port(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<ProxyConfig, clap::Error> {
        let base = [
            "edgeward-proxy",
            "--node-name",
            "n1",
            "--control",
            "127.0.0.1:15012",
        ];
        let advertise = ["--advertise", "127.0.0.1"];
        let args = base.iter().chain(&advertise).chain(extra);
        ProxyConfig::try_parse_from(args)
    }

    #[test]
    fn durations_parse_and_zero_intervals_are_refused_by_name() {
        let config = parse(&["--tunnel-idle-timeout", "90s"]).unwrap();
        assert_eq!(config.tunnel_idle_timeout, Duration::from_secs(90));
        assert_eq!(
            parse(&[]).unwrap().tunnel_idle_timeout,
            Duration::from_secs(300)
        );
        for flag in [
            "--tunnel-idle-timeout",
            "--h2-ping-interval",
            "--quic-idle-timeout",
        ] {
            let error = parse(&[flag, "0s"]).unwrap_err().to_string();
            assert!(error.contains(flag), "{error}");
            assert!(error.contains("more than zero"), "{error}");
        }
        let error = parse(&["--connect-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--connect-timeout"), "{error}");
    }
}
