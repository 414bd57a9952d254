//! Inbound: the tunnel listeners. A peer proxy connects with mutual TLS (over TCP or QUIC),
//! presenting the source workload's SVID; each stream names a pod on this node, which the proxy
//! checks and connects to before the stream's bytes are relayed.

pub mod quic;
pub mod tcp;

use std::net::SocketAddr;

use edgeward_ca::SpiffeId;
use tokio::net::TcpStream;

use crate::access::AccessRecord;
use crate::tunnel::preamble::Status;
use crate::tunnel::stream::Transport;
use crate::Context;

/// Who is at each end of an authenticated tunnel connection.
pub struct Peers {
    /// The node proxy's address.
    pub tunnel_peer: SocketAddr,
    /// The client certificate's SPIFFE ID: the source workload.
    pub client: SpiffeId,
    /// The identity this proxy presented, chosen by the client's SNI.
    pub server: SpiffeId,
}

/// Why a stream was refused, for the reply and the metrics.
pub struct Refusal {
    /// What the reply says.
    pub status: Status,
    /// What it said in words.
    pub message: String,
}

impl Refusal {
    fn new(status: Status, message: String) -> Self {
        Self { status, message }
    }
}

/// Checks a stream's target against the directory and the tunnel's identities, then connects
/// to the pod. On success gives the pod connection and the access record to complete.
pub async fn admit(
    ctx: &Context,
    peers: &Peers,
    target: SocketAddr,
    claimed_source: Option<SocketAddr>,
    transport: Transport,
) -> Result<(TcpStream, AccessRecord), Refusal> {
    let dir = ctx.directory.get();
    let Some(destination) = dir.local_workload_at(target.ip()).cloned() else {
        let message = format!("{target} is not a workload on this node");
        return Err(refuse(ctx, Status::NotLocalWorkload, message));
    };
    if destination.spiffe_id != peers.server {
        let message = format!(
            "the tunnel was opened for {} but {target} is {}",
            peers.server, destination.spiffe_id
        );
        return Err(refuse(ctx, Status::IdentityMismatch, message));
    }

    let src_addr = claimed_source.unwrap_or(peers.tunnel_peer);
    let mut record = AccessRecord::new("inbound", src_addr, target);
    record.destination(&destination);
    record.src_identity = Some(peers.client.clone());
    record.tunnel_peer = Some(peers.tunnel_peer);
    record.transport = Some(transport);
    // The claimed source address names a workload only if that workload has the certified ID.
    if let Some(source) = dir.workload_at(src_addr.ip()) {
        if source.spiffe_id == peers.client {
            record.source(source);
        }
    }
    let decision = crate::policy::authorize(
        &ctx.policies,
        &ctx.metrics,
        &peers.client,
        &destination,
        &record,
    );
    if !decision.is_allowed() {
        record.emit("denied", Some(decision.reason()), 0, 0);
        let message = format!("denied by authorization policy {}", decision.rule);
        return Err(refuse(ctx, Status::Denied, message));
    }
    ctx.metrics.opened.with_label_values(&["inbound"]).inc();

    let connect = tokio::time::timeout(ctx.config.connect_timeout, TcpStream::connect(target));
    match connect.await {
        Ok(Ok(upstream)) => {
            crate::sockets::tune(ctx, &upstream);
            Ok((upstream, record))
        }
        Ok(Err(error)) => {
            record.emit("error", Some(Status::UpstreamUnreachable.reason()), 0, 0);
            let message = format!("cannot connect to {target}: {error}");
            Err(refuse(ctx, Status::UpstreamUnreachable, message))
        }
        Err(_) => {
            record.emit("error", Some(Status::UpstreamTimeout.reason()), 0, 0);
            let message = format!("no answer from {target}");
            Err(refuse(ctx, Status::UpstreamTimeout, message))
        }
    }
}

/// Counts and logs a refused stream.
pub fn refuse(ctx: &Context, status: Status, message: String) -> Refusal {
    ctx.metrics.fail("inbound", status.reason());
    tracing::debug!(reason = status.reason(), message, "refused a tunnel stream");
    Refusal::new(status, message)
}

fn handshake_failed(ctx: &Context, peer: SocketAddr, reason: &str, error: &str) {
    ctx.metrics.handshake_failed("inbound", reason);
    tracing::debug!(src.addr = %peer, reason, error, "refused a tunnel handshake");
}
