//! Prometheus metrics of the control plane (prefix `edgeward_control_`).

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// The control plane's counters and gauges.
#[derive(Clone)]
pub struct Metrics {
    /// The Prometheus registry they live in.
    pub registry: Registry,
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
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("edgeward_control".into()), None)
            .expect("a static prefix is valid");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        Self {
            rejections: counter("rejections_total", "Refused calls", &["call", "reason"]),
            issued: counter("svids_issued_total", "SVIDs issued", &["kind"]),
            registry_reloads: counter("registry_reloads_total", "Registry reloads", &["result"]),
            handshake_failures: counter(
                "tls_handshake_failures_total",
                "Failed TLS handshakes",
                &["reason"],
            ),
            registry_version: gauge("snapshot_version", "Version of the snapshot served"),
            watchers: gauge("watchers", "Open watch streams"),
            registry,
        }
    }

    /// Counts a refused call.
    pub fn reject(&self, call: &str, reason: &str) {
        self.rejections.with_label_values(&[call, reason]).inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
