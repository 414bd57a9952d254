//! The tunnel between node proxies: TLS 1.3 with workload SVIDs on both ends, one stream per
//! captured connection, over QUIC (udp/15008) where UDP gets through and over TCP (tcp/15008,
//! HTTP/2 CONNECT) where it does not.
//!
//! The client sends, as SNI, a hash of the SPIFFE ID it expects (see `edgeward_ca::tls::sni_for`),
//! so the server can present the certificate of the destination workload when several
//! identities live on one node; the client's verifier then checks that SPIFFE ID itself.

pub mod h2io;
pub mod netwatch;
pub mod peers;
pub mod pool;
pub mod preamble;
pub mod quic;
pub mod stream;
pub mod tcp;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use edgeward_ca::{SpiffeId, Svid};
use thiserror::Error;

use crate::directory::WorkloadKey;

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

/// ALPN of the TCP tunnel.
pub const ALPN_H2: &[u8] = b"h2";

/// ALPN of the QUIC tunnel (the stream preamble protocol, version 1).
pub const ALPN_QUIC: &[u8] = b"ewt1";

/// One tunnel stream to open.
pub struct StreamRequest {
    /// The source workload.
    pub source: WorkloadKey,
    /// Its SVID, presented as the client certificate.
    pub svid: Arc<Svid>,
    /// The SPIFFE ID the peer must present.
    pub destination: SpiffeId,
    /// The peer node's name, for metrics.
    pub peer_node: String,
    /// The peer node's tunnel address.
    pub peer: SocketAddr,
    /// The pod address to connect to, on the peer's side.
    pub target: SocketAddr,
    /// The address of the pod that opened the connection.
    pub client: SocketAddr,
}

/// What tunnel connections are pooled by: one connection per source workload, destination
/// identity and peer address, made with one generation of the source's SVID (a renewed SVID
/// gets a new connection; streams on the old one finish undisturbed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    source: WorkloadKey,
    destination: SpiffeId,
    peer: SocketAddr,
}

impl PoolKey {
    /// The key of a request, and the SVID generation it needs.
    pub fn of(req: &StreamRequest) -> (Self, SystemTime) {
        let key = Self {
            source: req.source.clone(),
            destination: req.destination.clone(),
            peer: req.peer,
        };
        (key, req.svid.not_after())
    }
}

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
    /// The peer proxy refused the stream.
    #[error("the peer proxy refused the connection ({reason}): {message}")]
    Refused {
        /// Short label of the refusal.
        reason: &'static str,
        /// The reason it gave.
        message: String,
    },
    /// QUIC does not get through to the peer (no handshake, or a path that went silent):
    /// worth falling back to TCP.
    #[error("QUIC does not reach {peer}: {why}")]
    QuicUnreachable {
        /// The peer's tunnel address.
        peer: SocketAddr,
        /// What was seen.
        why: &'static str,
    },
    /// QUIC failed otherwise.
    #[error("QUIC error with {peer}: {message}")]
    Quic {
        /// The peer's tunnel address.
        peer: SocketAddr,
        /// The error.
        message: String,
    },
    /// No transport is usable right now: the peer failed recently and is in backoff.
    #[error("the peer {0} failed recently; retrying after a backoff")]
    Backoff(SocketAddr),
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
            Self::Refused { reason, .. } => reason,
            Self::QuicUnreachable { .. } => "quic_unreachable",
            Self::Quic { .. } => "quic_error",
            Self::Backoff(_) => "peer_backoff",
        }
    }
}
