//! What a proxy reports about its tunnels to one peer node (issue #3): the transport in use in
//! its metrics and access log, and the per-peer counters of RTT, lost packets, migrations,
//! reconnects and keepalive timeouts. The `peer` label is the peer node's name.

use std::time::Duration;

use anyhow::{bail, ensure, Result};

use crate::mesh::{Mesh, Transport};
use crate::metrics;
use crate::topology::node_name;
use crate::wait;

/// The bound within which a proxy notices a silent dead peer and fails its connections, as
/// the proxy documents it (30 s: the QUIC idle timeout; HTTP/2 PING and TCP_USER_TIMEOUT on
/// TCP tunnels).
pub const DEAD_PEER_BOUND: Duration = Duration::from_secs(30);

/// Gauge, 1 for the transport in use to the peer: `{peer, transport}`.
pub const TRANSPORT: &str = "edgeward_peer_transport";
/// Smoothed round-trip time to the peer, seconds: `{peer}`.
pub const RTT: &str = "edgeward_peer_rtt_seconds";
/// Packets to the peer found lost: `{peer}`.
pub const LOST_PACKETS: &str = "edgeward_peer_lost_packets_total";
/// Tunnel connections to the peer moved to a new path: `{peer}`.
pub const MIGRATIONS: &str = "edgeward_peer_migrations_total";
/// Tunnel connections to the peer made again after one was lost: `{peer}`.
pub const RECONNECTS: &str = "edgeward_peer_reconnects_total";
/// Tunnel connections to the peer dropped for missing keepalives: `{peer, transport}`.
pub const KEEPALIVE_TIMEOUTS: &str = "edgeward_peer_keepalive_timeouts_total";

/// Gauges of the tunnel connections a proxy made, TCP and QUIC (no labels).
pub const TCP_TUNNELS: &str = "edgeward_tunnel_connections";
pub const QUIC_TUNNELS: &str = "edgeward_quic_tunnel_connections";
/// Pooled tunnel connections closed as unused: `{transport, reason}` (idle, renewed).
pub const RETIRED: &str = "edgeward_tunnel_connections_retired_total";

/// What node `node`'s proxy says of the tunnel connections it made, all peers together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolStats {
    /// Open now, TCP and QUIC together.
    pub open: f64,
    /// Closed after carrying no stream for the idle limit.
    pub retired_idle: f64,
    /// Closed after their SVID was renewed and their last stream ended.
    pub retired_renewed: f64,
}

impl PoolStats {
    /// Reads node `node`'s proxy metrics (absent samples read as 0).
    pub fn read(mesh: &Mesh, node: usize) -> Result<PoolStats> {
        let text = mesh.metrics(node)?;
        let retired = |reason: &str| -> Result<f64> {
            let of = |transport| [("transport", transport), ("reason", reason)];
            Ok(metrics::value(&text, RETIRED, &of("tcp"))?
                + metrics::value(&text, RETIRED, &of("quic"))?)
        };
        Ok(PoolStats {
            open: metrics::value(&text, TCP_TUNNELS, &[])?
                + metrics::value(&text, QUIC_TUNNELS, &[])?,
            retired_idle: retired("idle")?,
            retired_renewed: retired("renewed")?,
        })
    }
}

/// One reading of node `node`'s metrics about peer node `peer`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerStats {
    /// `edgeward_peer_transport{transport="quic"}`.
    pub quic: f64,
    /// `edgeward_peer_transport{transport="tcp"}`.
    pub tcp: f64,
    /// Round-trip time, seconds.
    pub rtt_seconds: f64,
    /// Lost packets.
    pub lost_packets: f64,
    /// Migrations.
    pub migrations: f64,
    /// Reconnects.
    pub reconnects: f64,
    /// Keepalive timeouts, both transports together.
    pub keepalive_timeouts: f64,
}

impl PeerStats {
    /// Reads node `node`'s proxy metrics about peer node `peer` (absent samples read as 0).
    pub fn read(mesh: &Mesh, node: usize, peer: usize) -> Result<PeerStats> {
        let text = mesh.metrics(node)?;
        let name = node_name(peer);
        let peer_only = [("peer", name.as_str())];
        let of = |transport: &'static str| [("peer", name.as_str()), ("transport", transport)];
        Ok(PeerStats {
            quic: metrics::value(&text, TRANSPORT, &of("quic"))?,
            tcp: metrics::value(&text, TRANSPORT, &of("tcp"))?,
            rtt_seconds: metrics::value(&text, RTT, &peer_only)?,
            lost_packets: metrics::value(&text, LOST_PACKETS, &peer_only)?,
            migrations: metrics::value(&text, MIGRATIONS, &peer_only)?,
            reconnects: metrics::value(&text, RECONNECTS, &peer_only)?,
            keepalive_timeouts: metrics::value(&text, KEEPALIVE_TIMEOUTS, &of("quic"))?
                + metrics::value(&text, KEEPALIVE_TIMEOUTS, &of("tcp"))?,
        })
    }

    /// The transport the gauge says is in use, if exactly one is.
    pub fn transport(&self) -> Option<Transport> {
        match (self.quic == 1.0, self.tcp == 1.0) {
            (true, false) => Some(Transport::Quic),
            (false, true) => Some(Transport::Tcp),
            _ => None,
        }
    }
}

/// Fails unless node 1's proxy says, in its metrics, that it reaches node 2 over `transport`.
pub fn expect_transport(mesh: &Mesh, transport: Transport) -> Result<()> {
    let stats = PeerStats::read(mesh, 1, 2)?;
    ensure!(
        stats.transport() == Some(transport),
        "node-1 should reach node-2 over {}, but {TRANSPORT} says quic={} tcp={}",
        transport.as_str(),
        stats.quic,
        stats.tcp,
    );
    Ok(())
}

/// The `transport` field of an access-log line, text or JSON ("quic", "tcp"), if it has one.
pub fn access_transport(line: &str) -> Option<&str> {
    if let Some(value) = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("transport="))
    {
        return Some(value.trim_matches('"'));
    }
    let (_, rest) = line.split_once("\"transport\":\"")?;
    rest.split('"').next()
}

/// Waits for node `node`'s access-log lines after the first `seen` ones, until one names
/// `needle`; fails unless that line says `transport`. Gives the line.
pub fn expect_access_transport(
    mesh: &Mesh,
    node: usize,
    seen: usize,
    needle: &str,
    transport: Transport,
    timeout: Duration,
) -> Result<String> {
    let line = wait_new_access_line(mesh, node, seen, needle, timeout)?;
    match access_transport(&line) {
        Some(t) if t == transport.as_str() => Ok(line),
        Some(t) => bail!(
            "the connection went over {t}, not {}: {line}",
            transport.as_str()
        ),
        None => bail!("the access-log line has no transport field: {line}"),
    }
}

/// Waits for an access-log line on node `node`, after its first `seen` lines, that names
/// `needle`; gives the first such line.
pub fn wait_new_access_line(
    mesh: &Mesh,
    node: usize,
    seen: usize,
    needle: &str,
    timeout: Duration,
) -> Result<String> {
    let what = format!("a new access-log line on node-{node} with {needle:?}");
    wait::until(&what, timeout, || {
        let lines = mesh.access_log(node)?;
        Ok(lines.into_iter().skip(seen).find(|l| l.contains(needle)))
    })
}

/// Node 1's proxy writes one access-log line per connection, when it closes: exactly one new
/// line (after the first `seen`) naming `server` means the client's calls shared one
/// connection; it must have gone over `transport`.
pub fn expect_one_connection(
    mesh: &Mesh,
    seen: usize,
    server: &str,
    transport: Transport,
    timeout: Duration,
) -> Result<()> {
    let line = wait_new_access_line(mesh, 1, seen, server, timeout)?;
    let lines = mesh.access_log(1)?;
    let count = lines
        .iter()
        .skip(seen)
        .filter(|l| l.contains(server))
        .count();
    ensure!(
        count == 1,
        "the client's calls took {count} connections:\n{}",
        lines[seen..].join("\n")
    );
    ensure!(
        access_transport(&line) == Some(transport.as_str()),
        "the connection did not go over {}: {line}",
        transport.as_str()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_transport_field_of_text_and_json_lines() {
        let text = "2026-12-03T10:00:00Z  INFO access: connection complete direction=outbound \
                    transport=quic result=ok";
        assert_eq!(access_transport(text), Some("quic"));
        let json = r#"{"target":"access","fields":{"transport":"tcp","result":"ok"}}"#;
        assert_eq!(access_transport(json), Some("tcp"));
        assert_eq!(
            access_transport("INFO access: tunnel.transport_hint=x"),
            None
        );
    }
}
