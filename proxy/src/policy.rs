//! Authorization at the destination: every inbound stream is checked against the policies in
//! force before the proxy connects to the pod. A denial is one line on the `audit` log target
//! and is counted; a policy change applies to the next stream that arrives.

use std::sync::{Arc, RwLock};

use edgeward_ca::policy::{Connection, Decision, Destination, PolicySet};
use edgeward_ca::SpiffeId;

use crate::access::AccessRecord;
use crate::directory::Workload;
use crate::metrics::Metrics;

/// The policy set in force, replaced whole on every update.
#[derive(Debug, Clone, Default)]
pub struct SharedPolicies(Arc<RwLock<Arc<PolicySet>>>);

impl SharedPolicies {
    /// The set in force now.
    pub fn get(&self) -> Arc<PolicySet> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `set` in force for every later stream.
    pub fn replace(&self, set: PolicySet) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }
}

/// Decides on a connection from `source` to `destination` on `port`; a denial is written to the
/// audit log (with the rule that decided) and counted before it is returned.
pub fn authorize(
    policies: &SharedPolicies,
    metrics: &Metrics,
    source: &SpiffeId,
    destination: &Workload,
    record: &AccessRecord,
) -> Decision {
    let connection = Connection {
        source,
        destination: Destination {
            namespace: &destination.key.namespace,
            name: &destination.key.name,
            labels: &destination.labels,
        },
        port: record.dst_addr.port(),
    };
    let decision = policies.get().evaluate(&connection);
    let rule = decision.rule.to_string();
    metrics.policy_decision(decision.action.as_str(), &rule);
    if !decision.is_allowed() {
        tracing::warn!(
            target: "audit",
            decision = "deny",
            src.addr = %record.src_addr,
            src.identity = %source,
            dst.addr = %record.dst_addr,
            dst.workload = %destination.key,
            dst.identity = %destination.spiffe_id,
            rule = %rule,
            reason = decision.reason(),
            "connection denied by authorization policy"
        );
    }
    decision
}
