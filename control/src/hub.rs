//! The control plane's shared state: the CA, the records, the registry in force, and the
//! versioned snapshots that watching proxies receive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeward_ca::{Authority, TrustDomain};
use edgeward_proto::v1;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::registry::{Registry, Workload};
use crate::state::{StateError, StateStore};

/// Everything the services share.
pub struct Hub {
    /// The trust domain served.
    pub trust_domain: TrustDomain,
    /// The CA that signs node and workload SVIDs.
    pub authority: Authority,
    /// Lifetime of workload and node SVIDs.
    pub svid_lifetime: Duration,
    /// Counters and gauges.
    pub metrics: Metrics,
    state: Mutex<StateStore>,
    registry: RwLock<Arc<Registry>>,
    watchers: Mutex<HashMap<String, usize>>,
    snapshots: watch::Sender<Arc<v1::Snapshot>>,
}

impl Hub {
    /// Builds the hub and its first snapshot.
    pub fn new(
        authority: Authority,
        state: StateStore,
        registry: Registry,
        svid_lifetime: Duration,
        metrics: Metrics,
    ) -> Arc<Self> {
        let trust_domain = authority.trust_domain().clone();
        let (snapshots, _) = watch::channel(Arc::new(v1::Snapshot::default()));
        let hub = Arc::new(Self {
            trust_domain,
            authority,
            svid_lifetime,
            metrics,
            state: Mutex::new(state),
            registry: RwLock::new(Arc::new(registry)),
            watchers: Mutex::new(HashMap::new()),
            snapshots,
        });
        let version = hub.state().version();
        hub.send_snapshot(version);
        hub
    }

    /// The records, locked. Held only for short, synchronous sections.
    pub fn state(&self) -> std::sync::MutexGuard<'_, StateStore> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The registry in force.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a new registry in force and pushes it to every watcher.
    pub fn replace_registry(&self, registry: Registry) -> Result<u64, StateError> {
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(registry);
        self.publish()
    }

    /// Bumps the version and pushes a fresh snapshot to every watcher.
    pub fn publish(&self) -> Result<u64, StateError> {
        let version = self.state().bump_version()?;
        self.send_snapshot(version);
        Ok(version)
    }

    /// A receiver that sees the current snapshot and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<v1::Snapshot>> {
        self.snapshots.subscribe()
    }

    /// Notes that `node` opened (`+1`) or closed (`-1`) a watch stream.
    pub fn watcher_change(&self, node: &str, opened: bool) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        let count = watchers.entry(node.to_owned()).or_default();
        if opened {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        let total: usize = watchers.values().sum();
        self.metrics.watchers.set(total as i64);
    }

    /// Whether `node` has a watch stream open now.
    pub fn is_connected(&self, node: &str) -> bool {
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.get(node).is_some_and(|n| *n > 0)
    }

    /// The nodes as the API shows them.
    pub fn nodes(&self) -> Vec<v1::Node> {
        let state = self.state();
        let nodes = state.nodes().iter().map(|(name, record)| v1::Node {
            name: name.clone(),
            tunnel_addresses: record.tunnel_addresses.clone(),
            spiffe_id: self
                .trust_domain
                .node_id(name)
                .map(|id| id.to_string())
                .unwrap_or_default(),
            last_seen_unix: record.last_seen_unix,
            connected: self.is_connected(name),
        });
        nodes.collect()
    }

    fn send_snapshot(&self, version: u64) {
        let snapshot = v1::Snapshot {
            version,
            trust_domain: self.trust_domain.to_string(),
            workloads: self.registry().workloads().iter().map(to_proto).collect(),
            nodes: self.nodes(),
            trust_bundle_der: self.bundle_der(),
        };
        self.metrics.registry_version.set(version as i64);
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// The trust bundle's roots, DER.
    pub fn bundle_der(&self) -> Vec<Vec<u8>> {
        let roots = self.authority.bundle().roots().iter();
        roots.map(|r| r.to_vec()).collect()
    }
}

/// A workload as the API shows it.
pub fn to_proto(w: &Workload) -> v1::Workload {
    v1::Workload {
        name: w.name.to_string(),
        namespace: w.namespace.to_string(),
        service_account: w.service_account.to_string(),
        node: w.node.to_string(),
        addresses: w.addresses.iter().map(|a| a.to_string()).collect(),
        spiffe_id: w.spiffe_id.to_string(),
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    unix(SystemTime::now())
}

/// Seconds since the Unix epoch of `t`.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
