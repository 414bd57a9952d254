//! The tunnel between node proxies: TLS 1.3 with workload SVIDs on both ends, HTTP/2 on top, one
//! CONNECT stream per captured connection.
//!
//! The client sends, as SNI, a hash of the SPIFFE ID it expects (see `edgeward_ca::tls::sni_for`),
//! so the server can present the certificate of the destination workload when several
//! identities live on one node; the client's verifier then checks that SPIFFE ID itself.

pub mod h2io;
pub mod pool;

use std::net::SocketAddr;

use thiserror::Error;

/// Header on a CONNECT request carrying the address of the pod that opened the connection, for
/// the destination's access log. The destination trusts it only when that address belongs to a
/// workload with the client certificate's SPIFFE ID.
pub const SOURCE_ADDR_HEADER: &str = "edgeward-source-addr";

/// Header on a refusal carrying a human-readable reason.
pub const ERROR_HEADER: &str = "edgeward-error";

/// HTTP/2 stream window: 1 MiB, so one stream can fill a link with some latency.
pub const STREAM_WINDOW: u32 = 1 << 20;

/// HTTP/2 connection window: 8 MiB, shared by the streams of one tunnel connection.
pub const CONNECTION_WINDOW: u32 = 8 << 20;

/// Largest HTTP/2 frame: 64 KiB, to spend less on framing for bulk transfers.
pub const MAX_FRAME: u32 = 64 << 10;

/// Why a tunnel stream could not be opened.
#[derive(Debug, Error)]
pub enum TunnelError {
    /// The registry gives no tunnel address for the destination's node.
    #[error("no tunnel address known for node {0}")]
    NoRoute(String),
    /// The peer node cannot be reached.
    #[error("cannot reach the tunnel of {peer}: {source}")]
    Connect {
        /// The peer's tunnel address.
        peer: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A step took longer than the connect timeout.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The TLS handshake failed: the peer's certificate was refused, or ours was.
    #[error("TLS handshake with {peer} failed ({reason}): {message}")]
    Handshake {
        /// The peer's tunnel address.
        peer: SocketAddr,
        /// Short label, also the metric's.
        reason: &'static str,
        /// The full error.
        message: String,
    },
    /// HTTP/2 failed on the tunnel connection.
    #[error("HTTP/2 error on the tunnel: {0}")]
    Http2(#[from] h2::Error),
    /// The peer proxy refused the CONNECT.
    #[error("the peer proxy refused the connection ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The reason it gave.
        message: String,
    },
}

impl TunnelError {
    /// A short label for metrics and the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute(_) => "no_route_to_node",
            Self::Connect { .. } => "peer_unreachable",
            Self::Timeout(_) => "timeout",
            Self::Handshake { reason, .. } => reason,
            Self::Http2(_) => "http2_error",
            Self::Refused { status: 502, .. } => "upstream_unreachable",
            Self::Refused { .. } => "refused_by_peer",
        }
    }
}
