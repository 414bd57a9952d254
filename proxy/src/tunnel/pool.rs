//! Opening tunnel streams: the transport chosen for each peer, QUIC with fallback to TCP, the
//! background re-probe that brings a peer back to QUIC, and the backoff after failures.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::peers::{PeerChoices, Plan};
use super::quic::QuicPool;
use super::stream::{Transport, TunnelStream};
use super::tcp::TcpPool;
use super::usage;
use super::{StreamRequest, TunnelError};
use crate::metrics::Metrics;

/// Every outbound tunnel, whichever the transport.
pub struct Tunnels {
    tcp: TcpPool,
    quic: QuicPool,
    choices: PeerChoices,
    metrics: Metrics,
    connect_timeout: std::time::Duration,
    probe_timeout: std::time::Duration,
    idle_close: std::time::Duration,
}

impl Tunnels {
    /// Tunnels over both pools, choosing per peer as `choices` says.
    pub fn new(
        tcp: TcpPool,
        quic: QuicPool,
        choices: PeerChoices,
        metrics: Metrics,
        timeouts: (std::time::Duration, std::time::Duration),
        idle_close: std::time::Duration,
    ) -> Self {
        Self {
            tcp,
            quic,
            choices,
            metrics,
            connect_timeout: timeouts.0,
            probe_timeout: timeouts.1,
            idle_close,
        }
    }

    /// Opens a stream for `req` on the transport the peer's plan gives.
    pub async fn open(self: &Arc<Self>, req: StreamRequest) -> Result<TunnelStream, TunnelError> {
        let req = Arc::new(req);
        let result = match self.choices.plan(req.peer, Instant::now()) {
            Plan::Backoff => return Err(TunnelError::Backoff(req.peer)),
            Plan::Quic { fallback: false } => self.quic.open(&req, self.connect_timeout).await,
            Plan::Quic { fallback: true } => self.quic_or_tcp(&req).await,
            Plan::Tcp { reprobe } => {
                if reprobe {
                    tokio::spawn(self.clone().reprobe(req.clone()));
                }
                self.tcp.open(&req).await
            }
        };
        self.record(&req, &result);
        result
    }

    async fn quic_or_tcp(&self, req: &StreamRequest) -> Result<TunnelStream, TunnelError> {
        match self.quic.open(req, self.probe_timeout).await {
            Err(TunnelError::QuicUnreachable { why, .. }) => {
                tracing::warn!(peer = %req.peer_node, why, "QUIC does not get through; using TCP");
                self.choices.quic_unreachable(req.peer, Instant::now());
                self.tcp.open(req).await
            }
            other => other,
        }
    }

    /// Tries QUIC again for a peer on TCP; when it works, new streams move back to QUIC.
    async fn reprobe(self: Arc<Self>, req: Arc<StreamRequest>) {
        match self.quic.probe(&req).await {
            Ok(()) => {
                tracing::info!(peer = %req.peer_node, "QUIC gets through again; using it");
                self.choices.quic_works(req.peer);
            }
            Err(error) => {
                tracing::debug!(peer = %req.peer_node, %error, "QUIC still does not get through");
                self.choices.quic_unreachable(req.peer, Instant::now());
            }
        }
    }

    fn record(&self, req: &StreamRequest, result: &Result<TunnelStream, TunnelError>) {
        match result {
            Ok(stream) => {
                self.choices.succeeded(req.peer);
                self.metrics
                    .peer_transport(&req.peer_node, stream.transport());
            }
            Err(e) if unreachable(e) => self.choices.unreachable(req.peer, Instant::now()),
            Err(_) => {}
        }
    }

    /// Closes pooled connections that carried no stream for the idle limit, and those made
    /// with a renewed SVID once their last stream ends, for the life of the proxy.
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(usage::sweep_interval(self.idle_close));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let closed = self.tcp.sweep(self.idle_close) + self.quic.sweep(self.idle_close);
            if closed > 0 {
                tracing::debug!(closed, "closed unused tunnel connections");
            }
        }
    }

    /// A local address changed: QUIC tunnels move to the new one, TCP tunnels made from an
    /// address that is gone close.
    pub fn addresses_changed(&self, gone: &[IpAddr]) {
        if let Err(error) = self.quic.rebind() {
            tracing::warn!(%error, "cannot move the QUIC tunnels to a new socket");
        }
        self.tcp.close_bound_to(gone);
    }
}

/// Failures that say the peer cannot be reached (as opposed to refusing us).
fn unreachable(e: &TunnelError) -> bool {
    matches!(
        e,
        TunnelError::Connect { .. } | TunnelError::Timeout(_) | TunnelError::QuicUnreachable { .. }
    )
}

impl Transport {
    /// Both transports, for metrics that list each.
    pub const ALL: [Transport; 2] = [Transport::Tcp, Transport::Quic];
}
