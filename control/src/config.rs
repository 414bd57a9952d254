//! Settings of `edgeward-control`: flags, each with an `EDGEWARD_` environment variable. A flag
//! given on the command line wins over the environment, which wins over the default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The embedded control plane: CA, node join, workloads, policies and update streams.
#[derive(Debug, Clone, Parser)]
#[command(name = "edgeward-control", version)]
pub struct ControlConfig {
    /// Directory for the CA, the state file and the operator credential.
    #[arg(
        long,
        env = "EDGEWARD_DATA_DIR",
        default_value = "/var/lib/edgeward/control"
    )]
    pub data_dir: PathBuf,

    /// The trust domain of every SPIFFE ID issued.
    #[arg(long, env = "EDGEWARD_TRUST_DOMAIN", default_value = "edgeward.local")]
    pub trust_domain: String,

    /// The workload registry file (YAML), re-read whenever it changes; none by default, when
    /// workloads come from the admin API only.
    #[arg(long, env = "EDGEWARD_REGISTRY")]
    pub registry: Option<PathBuf>,

    /// Address of the control API (gRPC over mutual TLS).
    #[arg(long, env = "EDGEWARD_CONTROL_LISTEN", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,

    /// Address of the Prometheus endpoint (GET /metrics); localhost unless you need otherwise.
    #[arg(
        long,
        env = "EDGEWARD_CONTROL_METRICS_ADDR",
        default_value = "127.0.0.1:15014"
    )]
    pub metrics_addr: SocketAddr,

    /// Lifetime of node and workload SVIDs, such as "24h" or "90s".
    #[arg(
        long,
        env = "EDGEWARD_SVID_TTL",
        default_value = "24h",
        value_parser = edgeward_proto::duration::parse,
    )]
    pub svid_ttl: Duration,

    /// The longest SVID lifetime a node may ask for (nodes ask for more than the default to
    /// ride out long control-plane outages; see the proxy's availability target).
    #[arg(
        long,
        env = "EDGEWARD_MAX_SVID_TTL",
        default_value = "7d",
        value_parser = edgeward_proto::duration::parse
    )]
    pub max_svid_ttl: Duration,

    /// Log format: "text" or "json".
    #[arg(long, env = "EDGEWARD_LOG_FORMAT", default_value = "text")]
    pub log_format: edgeward_proto::logging::LogFormat,
}
