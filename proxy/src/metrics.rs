//! Prometheus metrics of the node proxy (prefix `edgeward_`).

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge};

/// The proxy's counters and gauges.
#[derive(Clone)]
pub struct Metrics {
    registry: edgeward_proto::metrics::Metrics,
    /// Connections accepted, by direction (outbound, inbound, passthrough).
    pub opened: IntCounterVec,
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
    /// SVID requests to the control plane, by kind (node, workload) and result.
    pub svid_requests: IntCounterVec,
    /// Snapshots received from the control plane, by result (applied, refused).
    pub snapshots: IntCounterVec,
    /// Version of the snapshot in force.
    pub snapshot_version: IntGauge,
    /// Open tunnel connections (HTTP/2 over TLS) to peer nodes.
    pub tunnels_open: IntGauge,
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
            svid_requests: r.counter(
                "svid_requests_total",
                "SVID requests to the control plane",
                &["kind", "result"],
            ),
            snapshots: r.counter("snapshots_total", "Snapshots received", &["result"]),
            snapshot_version: r.gauge("snapshot_version", "Version of the snapshot in force"),
            tunnels_open: r.gauge(
                "tunnel_connections",
                "Open tunnel connections to peer nodes",
            ),
            registry: r,
        }
    }

    /// The counter of bytes for one direction and flow, resolved once per connection.
    pub fn bytes_counter(&self, direction: &str, flow: &str) -> IntCounter {
        self.bytes.with_label_values(&[direction, flow])
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
