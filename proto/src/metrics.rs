//! Building Prometheus metrics in one registry, as both binaries do.

use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// A registry with a name prefix, and constructors that register what they create.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry whose metric names all start with `<prefix>_`.
    pub fn new(prefix: &str) -> Self {
        let registry =
            Registry::new_custom(Some(prefix.into()), None).expect("a static prefix is valid");
        Self { registry }
    }

    /// A registered counter with labels.
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.registry
            .register(Box::new(c.clone()))
            .expect("unique metric");
        c
    }

    /// A registered gauge without labels.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("valid metric");
        self.registry
            .register(Box::new(g.clone()))
            .expect("unique metric");
        g
    }

    /// A registered integer gauge with labels.
    pub fn int_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.registry
            .register(Box::new(g.clone()))
            .expect("unique metric");
        g
    }

    /// A registered floating-point gauge with labels.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.registry
            .register(Box::new(g.clone()))
            .expect("unique metric");
        g
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
