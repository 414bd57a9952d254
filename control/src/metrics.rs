//! Prometheus metrics of the control plane (prefix `edgeward_control_`).

use prometheus::{IntCounterVec, IntGauge};

/// The control plane's counters and gauges.
#[derive(Clone)]
pub struct Metrics {
    registry: edgeward_proto::metrics::Metrics,
    /// Refused calls, by call and reason.
    pub rejections: IntCounterVec,
    /// SVIDs issued, by kind (node, workload).
    pub issued: IntCounterVec,
    /// Registry file reloads, by result (ok, error).
    pub registry_reloads: IntCounterVec,
    /// TLS handshakes that failed, by reason.
    pub handshake_failures: IntCounterVec,
    /// Version of the snapshot served now.
    pub registry_version: IntGauge,
    /// Open watch streams.
    pub watchers: IntGauge,
    /// Open Subscribe streams.
    pub subscribers: IntGauge,
    /// Updates sent on Subscribe streams, by kind (full, delta, in_sync).
    pub updates_sent: IntCounterVec,
    /// Policy documents applied, by result (ok, refused, error).
    pub policy_applies: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = edgeward_proto::metrics::Metrics::new("edgeward_control");
        Self {
            rejections: r.counter("rejections_total", "Refused calls", &["call", "reason"]),
            issued: r.counter("svids_issued_total", "SVIDs issued", &["kind"]),
            registry_reloads: r.counter("registry_reloads_total", "Registry reloads", &["result"]),
            handshake_failures: r.counter(
                "tls_handshake_failures_total",
                "Failed TLS handshakes",
                &["reason"],
            ),
            registry_version: r.gauge("snapshot_version", "Version of the snapshot served"),
            watchers: r.gauge("watchers", "Open watch streams"),
            subscribers: r.gauge("subscribers", "Open Subscribe streams"),
            updates_sent: r.counter(
                "updates_sent_total",
                "Updates sent to subscribers",
                &["kind"],
            ),
            policy_applies: r.counter("policy_applies_total", "Policy applies", &["result"]),
            registry: r,
        }
    }

    /// Counts a refused call.
    pub fn reject(&self, call: &str, reason: &str) {
        self.rejections.with_label_values(&[call, reason]).inc();
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
