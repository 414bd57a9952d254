//! Prometheus metrics of the node proxy (prefix `edgeward_`).

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

/// The proxy's counters and gauges.
#[derive(Clone)]
pub struct Metrics {
    registry: edgeward_proto::metrics::Metrics,
    /// Connections accepted, by direction (outbound, inbound, passthrough).
    pub opened: IntCounterVec,
    /// Authorization decisions on inbound streams, by decision (allow, deny) and rule (a
    /// policy name or `default:<namespace>`).
    pub policy_decisions: IntCounterVec,
    /// Connections ended, by direction and result (ok, reset, error).
    pub closed: IntCounterVec,
    /// Connections refused or failed before carrying data, by direction and reason.
    pub failed: IntCounterVec,
    /// Bytes relayed, by direction and flow (client_to_server, server_to_client).
    pub bytes: IntCounterVec,
    /// TLS handshakes that failed, by direction (inbound, outbound) and reason.
    pub handshake_failures: IntCounterVec,
    /// Expiry of each SVID held, Unix seconds, by identity and workload.
    pub cert_expiry: GaugeVec,
    /// 1 while the renewal of an SVID keeps failing (the alarm before expiry), by identity and
    /// workload.
    pub renewal_failing: IntGaugeVec,
    /// SVID requests to the control plane, by kind (node, workload) and result.
    pub svid_requests: IntCounterVec,
    /// Snapshots received from the control plane, by result (applied, refused).
    pub snapshots: IntCounterVec,
    /// Version of the snapshot in force.
    pub snapshot_version: IntGauge,
    /// Open TCP tunnel connections (HTTP/2 over TLS) to peer nodes.
    pub tunnels_open: IntGauge,
    /// Open QUIC tunnel connections this proxy made to peer nodes.
    pub quic_tunnels_open: IntGauge,
    /// Pooled tunnel connections closed because nothing used them any more, by transport and
    /// reason (idle, renewed).
    pub tunnels_retired: IntCounterVec,
    /// 1 for the transport now used to each peer node, 0 for the other.
    pub peer_transport: IntGaugeVec,
    /// Smoothed round-trip time to each peer node, seconds.
    pub peer_rtt: GaugeVec,
    /// Packets the QUIC tunnels to each peer node declared lost.
    pub peer_lost: IntCounterVec,
    /// QUIC connection migrations (local address changes, or a peer seen on a new path).
    pub peer_migrations: IntCounterVec,
    /// Tunnel connections made again after an earlier one to the same peer ended.
    pub peer_reconnects: IntCounterVec,
    /// Tunnel connections dropped because the peer stopped answering keep-alives.
    pub peer_keepalive_timeouts: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = edgeward_proto::metrics::Metrics::new("edgeward");
        Self {
            opened: r.counter(
                "connections_opened_total",
                "Connections accepted",
                &["direction"],
            ),
            policy_decisions: r.counter(
                "policy_decisions_total",
                "Authorization decisions on inbound streams",
                &["decision", "rule"],
            ),
            closed: r.counter(
                "connections_closed_total",
                "Connections ended",
                &["direction", "result"],
            ),
            failed: r.counter(
                "connections_failed_total",
                "Connections refused or failed before carrying data",
                &["direction", "reason"],
            ),
            bytes: r.counter("bytes_total", "Bytes relayed", &["direction", "flow"]),
            handshake_failures: r.counter(
                "tls_handshake_failures_total",
                "Failed TLS handshakes",
                &["direction", "reason"],
            ),
            cert_expiry: r.gauge_vec(
                "certificate_expiry_timestamp_seconds",
                "NotAfter of each SVID held, Unix seconds",
                &["identity", "workload"],
            ),
            renewal_failing: r.int_gauge_vec(
                "certificate_renewal_failing",
                "1 while the SVID cannot be renewed",
                &["identity", "workload"],
            ),
            svid_requests: r.counter(
                "svid_requests_total",
                "SVID requests to the control plane",
                &["kind", "result"],
            ),
            snapshots: r.counter("snapshots_total", "Snapshots received", &["result"]),
            snapshot_version: r.gauge("snapshot_version", "Version of the snapshot in force"),
            tunnels_open: r.gauge("tunnel_connections", "Open TCP tunnel connections"),
            quic_tunnels_open: r.gauge(
                "quic_tunnel_connections",
                "Open QUIC tunnel connections made to peer nodes",
            ),
            tunnels_retired: r.counter(
                "tunnel_connections_retired_total",
                "Pooled tunnel connections closed because nothing used them any more",
                &["transport", "reason"],
            ),
            peer_transport: r.int_gauge_vec(
                "peer_transport",
                "1 for the tunnel transport in use to the peer node",
                &["peer", "transport"],
            ),
            peer_rtt: r.gauge_vec(
                "peer_rtt_seconds",
                "Round-trip time to the peer node",
                &["peer"],
            ),
            peer_lost: r.counter(
                "peer_lost_packets_total",
                "QUIC packets to the peer node declared lost",
                &["peer"],
            ),
            peer_migrations: r.counter(
                "peer_migrations_total",
                "QUIC connection migrations with the peer node",
                &["peer"],
            ),
            peer_reconnects: r.counter(
                "peer_reconnects_total",
                "Tunnel connections to the peer node made again after one ended",
                &["peer"],
            ),
            peer_keepalive_timeouts: r.counter(
                "peer_keepalive_timeouts_total",
                "Tunnels dropped because the peer stopped answering keep-alives",
                &["peer", "transport"],
            ),
            registry: r,
        }
    }

    /// The counter of bytes for one direction and flow, resolved once per connection.
    pub fn bytes_counter(&self, direction: &str, flow: &str) -> IntCounter {
        self.bytes.with_label_values(&[direction, flow])
    }

    /// Counts an authorization decision.
    pub fn policy_decision(&self, decision: &str, rule: &str) {
        self.policy_decisions
            .with_label_values(&[decision, rule])
            .inc();
    }

    /// Counts a failed TLS handshake.
    pub fn handshake_failed(&self, direction: &str, reason: &str) {
        self.handshake_failures
            .with_label_values(&[direction, reason])
            .inc();
    }

    /// A verifier observer that counts each refusal as a failed handshake of `direction`.
    pub fn handshake_observer(&self, direction: &'static str) -> edgeward_ca::RejectionObserver {
        let metrics = self.clone();
        std::sync::Arc::new(move |e| metrics.handshake_failed(direction, e.reason()))
    }

    /// Notes the transport in use to `peer`.
    pub fn peer_transport(&self, peer: &str, transport: crate::tunnel::stream::Transport) {
        for t in crate::tunnel::stream::Transport::ALL {
            let value = i64::from(t == transport);
            self.peer_transport
                .with_label_values(&[peer, t.as_str()])
                .set(value);
        }
    }

    /// Records a round-trip time to `peer`.
    pub fn peer_rtt(&self, peer: &str, rtt: std::time::Duration) {
        self.peer_rtt
            .with_label_values(&[peer])
            .set(rtt.as_secs_f64());
    }

    /// Adds packets lost on the way to `peer`.
    pub fn lost_packets(&self, peer: &str, count: u64) {
        self.peer_lost.with_label_values(&[peer]).inc_by(count);
    }

    /// Counts a migration of a connection with `peer`.
    pub fn migration(&self, peer: &str) {
        self.peer_migrations.with_label_values(&[peer]).inc();
    }

    /// Counts a new connection to `peer` made after an earlier one ended.
    pub fn reconnect(&self, peer: &str) {
        self.peer_reconnects.with_label_values(&[peer]).inc();
    }

    /// Counts a tunnel to `peer` dropped for silence.
    pub fn keepalive_timeout(&self, peer: &str, transport: &str) {
        self.peer_keepalive_timeouts
            .with_label_values(&[peer, transport])
            .inc();
    }

    /// Counts a pooled tunnel connection closed as unused: `idle` past the limit, or `renewed`
    /// (made with an SVID since replaced) once its last stream ended.
    pub fn tunnel_retired(&self, transport: crate::tunnel::stream::Transport, reason: &str) {
        self.tunnels_retired
            .with_label_values(&[transport.as_str(), reason])
            .inc();
    }

    /// Counts a connection refused or failed before it carried data.
    pub fn fail(&self, direction: &str, reason: &str) {
        self.failed.with_label_values(&[direction, reason]).inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
