//! What proxies are served at one version (workloads, nodes, policies, namespace defaults and
//! the trust bundle, as control API messages keyed for comparison), which keys changed between
//! two views, and the updates made from a view.

use std::collections::{BTreeMap, BTreeSet};

use edgeward_proto::v1;
use prost::Message;

use crate::registry::{Registry, Workload};
use crate::state::State;

/// Everything a subscribed proxy holds at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The version this view is served as.
    pub version: u64,
    /// The trust domain.
    pub trust_domain: String,
    /// Workloads by `namespace/name`.
    pub workloads: BTreeMap<String, v1::Workload>,
    /// Nodes by name (name, tunnel addresses and SPIFFE ID only).
    pub nodes: BTreeMap<String, v1::Node>,
    /// Policies by name.
    pub policies: BTreeMap<String, v1::Policy>,
    /// Namespace defaults, in namespace order.
    pub namespace_defaults: Vec<v1::NamespaceDefault>,
    /// The trust bundle's roots, DER.
    pub trust_bundle: Vec<Vec<u8>>,
}

impl View {
    /// The view of `registry` and the records in `state`; its version is `state.version`.
    pub fn build(
        trust_domain: &edgeward_ca::TrustDomain,
        registry: &Registry,
        state: &State,
        trust_bundle: Vec<Vec<u8>>,
    ) -> Self {
        let workloads = registry.workloads().iter().map(|w| (w.key(), workload(w)));
        let nodes = state.nodes.iter().map(|(name, record)| {
            let node = v1::Node {
                name: name.clone(),
                tunnel_addresses: record.tunnel_addresses.clone(),
                spiffe_id: trust_domain
                    .node_id(name)
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                ..Default::default()
            };
            (name.clone(), node)
        });
        let policies = state
            .policies
            .0
            .iter()
            .map(|p| (p.name.to_string(), p.to_proto()));
        Self {
            version: state.version,
            trust_domain: trust_domain.to_string(),
            workloads: workloads.collect(),
            nodes: nodes.collect(),
            policies: policies.collect(),
            namespace_defaults: state.namespaces.0.iter().map(|n| n.to_proto()).collect(),
            trust_bundle,
        }
    }

    /// SHA-256 (hex) of the content, version excluded: equal views, equal fingerprints.
    pub fn fingerprint(&self) -> String {
        // Deterministic: fields in order, maps ordered (btree_map in proto/build.rs).
        let content = v1::Update {
            version: 0,
            ..self.full("")
        };
        let bytes = content.encode_to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// An update that replaces everything the receiver holds.
    pub fn full(&self, epoch: &str) -> v1::Update {
        v1::Update {
            version: self.version,
            epoch: epoch.to_owned(),
            full: true,
            from_version: 0,
            trust_domain: self.trust_domain.clone(),
            workloads: self.workloads.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            namespace_defaults_changed: true,
            namespace_defaults: self.namespace_defaults.clone(),
            trust_bundle_der: self.trust_bundle.clone(),
            ..Default::default()
        }
    }

    /// The changes of `touched`, for a receiver that holds `from_version`. A key touched but
    /// absent now is a removal; an empty `touched` makes the "in sync" update when
    /// `from_version` is this view's version.
    pub fn delta(&self, epoch: &str, from_version: u64, touched: &Touched) -> v1::Update {
        let (workloads, removed_workloads) = split(&self.workloads, &touched.workloads);
        let (nodes, removed_nodes) = split(&self.nodes, &touched.nodes);
        let (policies, removed_policies) = split(&self.policies, &touched.policies);
        let defaults = match touched.namespace_defaults {
            true => self.namespace_defaults.clone(),
            false => Vec::new(),
        };
        let bundle = match touched.trust_bundle {
            true => self.trust_bundle.clone(),
            false => Vec::new(),
        };
        v1::Update {
            version: self.version,
            epoch: epoch.to_owned(),
            full: false,
            from_version,
            trust_domain: self.trust_domain.clone(),
            workloads,
            removed_workloads,
            nodes,
            removed_nodes,
            policies,
            removed_policies,
            namespace_defaults_changed: touched.namespace_defaults,
            namespace_defaults: defaults,
            trust_bundle_der: bundle,
        }
    }
}

/// The upserts (present now) and the removals (absent now) among `keys`.
fn split<T: Clone>(now: &BTreeMap<String, T>, keys: &BTreeSet<String>) -> (Vec<T>, Vec<String>) {
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    for key in keys {
        match now.get(key) {
            Some(value) => upserts.push(value.clone()),
            None => removals.push(key.clone()),
        }
    }
    (upserts, removals)
}

/// A workload as Snapshot and Update carry it (no source).
pub fn workload(w: &Workload) -> v1::Workload {
    v1::Workload {
        name: w.name.to_string(),
        namespace: w.namespace.to_string(),
        service_account: w.service_account.to_string(),
        node: w.node.to_string(),
        addresses: w.addresses.iter().map(|a| a.to_string()).collect(),
        spiffe_id: w.spiffe_id.to_string(),
        labels: w.labels.clone(),
        source: String::new(),
    }
}

/// The keys that differ between two views (or across several steps, merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Workloads added, changed or removed, by `namespace/name`.
    pub workloads: BTreeSet<String>,
    /// Nodes added, changed or removed, by name.
    pub nodes: BTreeSet<String>,
    /// Policies added, changed or removed, by name.
    pub policies: BTreeSet<String>,
    /// Whether any namespace default changed.
    pub namespace_defaults: bool,
    /// Whether the trust bundle changed.
    pub trust_bundle: bool,
}

impl Touched {
    /// What changed from `old` to `new`.
    pub fn between(old: &View, new: &View) -> Self {
        Self {
            workloads: changed_keys(&old.workloads, &new.workloads),
            nodes: changed_keys(&old.nodes, &new.nodes),
            policies: changed_keys(&old.policies, &new.policies),
            namespace_defaults: old.namespace_defaults != new.namespace_defaults,
            trust_bundle: old.trust_bundle != new.trust_bundle,
        }
    }

    /// Adds the keys of a later step.
    pub fn merge(&mut self, later: &Touched) {
        self.workloads.extend(later.workloads.iter().cloned());
        self.nodes.extend(later.nodes.iter().cloned());
        self.policies.extend(later.policies.iter().cloned());
        self.namespace_defaults |= later.namespace_defaults;
        self.trust_bundle |= later.trust_bundle;
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn changed_keys<T: PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> BTreeSet<String> {
    let gone = old.keys().filter(|k| !new.contains_key(*k));
    let differ = new.iter().filter(|(k, v)| old.get(*k) != Some(v));
    gone.cloned()
        .chain(differ.map(|(k, _)| k.clone()))
        .collect()
}
