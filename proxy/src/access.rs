//! The access log: one line per connection on the `access` target, with both SPIFFE IDs.

use std::net::SocketAddr;
use tokio::time::Instant;

use edgeward_ca::SpiffeId;

use crate::directory::Workload;
use crate::tunnel::stream::Transport;

/// What the access log says about one connection. Filled as the connection proceeds and
/// written once, when it ends.
#[derive(Debug)]
pub struct AccessRecord {
    /// outbound, inbound or passthrough.
    pub direction: &'static str,
    /// The client's address (the pod that opened the connection).
    pub src_addr: SocketAddr,
    /// The client workload, `namespace/name`, when known.
    pub src_workload: Option<String>,
    /// The client's SPIFFE ID, when meshed.
    pub src_identity: Option<SpiffeId>,
    /// The destination the client dialled.
    pub dst_addr: SocketAddr,
    /// The destination workload, when it is in the mesh.
    pub dst_workload: Option<String>,
    /// The destination's SPIFFE ID, when meshed.
    pub dst_identity: Option<SpiffeId>,
    /// The peer node's tunnel address, for tunnelled connections.
    pub tunnel_peer: Option<SocketAddr>,
    /// The tunnel transport, for tunnelled connections.
    pub transport: Option<Transport>,
    started: Instant,
}

impl AccessRecord {
    /// Starts a record for a connection from `src_addr` to `dst_addr`.
    pub fn new(direction: &'static str, src_addr: SocketAddr, dst_addr: SocketAddr) -> Self {
        Self {
            direction,
            src_addr,
            src_workload: None,
            src_identity: None,
            dst_addr,
            dst_workload: None,
            dst_identity: None,
            tunnel_peer: None,
            transport: None,
            started: Instant::now(),
        }
    }

    /// Sets the client workload and its identity.
    pub fn source(&mut self, w: &Workload) {
        self.src_workload = Some(w.key.to_string());
        self.src_identity = Some(w.spiffe_id.clone());
    }

    /// Sets the destination workload and its identity.
    pub fn destination(&mut self, w: &Workload) {
        self.dst_workload = Some(w.key.to_string());
        self.dst_identity = Some(w.spiffe_id.clone());
    }

    /// Writes the line. `result` is ok, reset, refused or error; `reason` says why when not ok.
    pub fn emit(&self, result: &str, reason: Option<&str>, to_server: u64, to_client: u64) {
        let text = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let id = |o: &Option<SpiffeId>| o.as_ref().map_or("-".into(), |i| i.to_string());
        tracing::info!(
            target: "access",
            direction = %self.direction,
            src.addr = %self.src_addr,
            src.workload = %text(&self.src_workload),
            src.identity = %id(&self.src_identity),
            dst.addr = %self.dst_addr,
            dst.workload = %text(&self.dst_workload),
            dst.identity = %id(&self.dst_identity),
            tunnel.peer = %self.tunnel_peer.map_or("-".into(), |a| a.to_string()),
            transport = %self.transport.map_or("-", Transport::as_str),
            bytes_sent = to_server,
            bytes_received = to_client,
            duration_ms = self.started.elapsed().as_millis() as u64,
            result = %result,
            reason = %reason.unwrap_or("-"),
            "connection complete"
        );
    }
}
