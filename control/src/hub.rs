//! The control plane's shared state: the CA, the records, the workloads and policies in force,
//! and what watching and subscribed proxies receive. Every change that proxies can see goes
//! through [`Hub::commit`]: it is made on a copy, validated, saved to the state file, and only
//! then put in force and pushed.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeward_ca::{Authority, TrustDomain};
use edgeward_proto::v1;
use thiserror::Error;
use tokio::sync::watch;

use crate::feed::view::{Touched, View};
use crate::feed::Feed;
use crate::metrics::Metrics;
use crate::policy::DocumentError;
use crate::registry::{CombineError, Registry};
use crate::state::{new_epoch, State, StateError, StateStore};

/// Why a change was not made. Whatever the reason, nothing of it is in force or saved.
#[derive(Debug, Error)]
pub enum ChangeError {
    /// The state file cannot be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The registry file and the API workloads would claim a name or an address twice.
    #[error(transparent)]
    Conflict(#[from] CombineError),
    /// A policy document was refused.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but may not be done (such as removing a file workload).
    #[error("{0}")]
    Refused(String),
}

/// Lifetimes of the SVIDs the control plane issues.
#[derive(Debug, Clone, Copy)]
pub struct SvidLifetimes {
    /// When the node asks for none in particular.
    pub default: Duration,
    /// The most a node may ask for.
    pub max: Duration,
}

/// Everything the services share.
pub struct Hub {
    /// The trust domain served.
    pub trust_domain: TrustDomain,
    /// The CA that signs node and workload SVIDs.
    pub authority: Authority,
    /// Lifetime of workload and node SVIDs.
    pub svid_lifetime: Duration,
    /// The longest SVID lifetime a node may ask for.
    pub max_svid_lifetime: Duration,
    /// Counters and gauges.
    pub metrics: Metrics,
    core: Mutex<Core>,
    registry: RwLock<Arc<Registry>>,
    watchers: Mutex<HashMap<String, usize>>,
    snapshots: watch::Sender<Arc<v1::Snapshot>>,
    feed: Arc<Feed>,
}

/// What changes only under the lock: the records, the registry file's workloads, the view.
struct Core {
    store: StateStore,
    file: Arc<Registry>,
    view: Arc<View>,
}

/// A change in the making: a copy of the records, and the new registry file contents when the
/// change replaces them.
pub struct Draft {
    /// The records, to change.
    pub state: State,
    /// The new workloads of the registry file, if the change replaces them.
    pub file: Option<Registry>,
}

impl Hub {
    /// Builds the hub and its first view. When what would be served differs from what was
    /// served before the restart (the registry file or the CA changed meanwhile), the version
    /// moves on, so that no proxy mistakes its cache for current.
    pub fn new(
        authority: Authority,
        mut store: StateStore,
        file: Registry,
        lifetimes: SvidLifetimes,
        metrics: Metrics,
    ) -> Result<Arc<Self>, ChangeError> {
        let trust_domain = authority.trust_domain().clone();
        let bundle = bundle_der(&authority);
        let (registry, view) = restore(&trust_domain, &mut store, &file, bundle)?;

        let view = Arc::new(view);
        let epoch = store.records().epoch.clone();
        let feed = Arc::new(Feed::new(epoch, view.clone(), metrics.clone()));
        let hub = Arc::new(Self {
            trust_domain,
            authority,
            svid_lifetime: lifetimes.default,
            max_svid_lifetime: lifetimes.max,
            metrics,
            core: Mutex::new(Core {
                store,
                file: Arc::new(file),
                view: view.clone(),
            }),
            registry: RwLock::new(Arc::new(registry)),
            watchers: Mutex::new(HashMap::new()),
            snapshots: watch::channel(Arc::new(v1::Snapshot::default())).0,
            feed,
        });
        hub.send_snapshot(&view, hub.core().store.records());
        Ok(hub)
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The records, locked. Held only for short, synchronous sections.
    pub fn state(&self) -> StateGuard<'_> {
        StateGuard(self.core())
    }

    /// Makes `change` on a draft; if it succeeds and the file and API workloads still fit
    /// together, saves the records (with the next version when what proxies see changed), then
    /// puts the draft in force and pushes it. Returns the change's result and the version.
    pub fn commit<T>(
        &self,
        change: impl FnOnce(&mut Draft) -> Result<T, ChangeError>,
    ) -> Result<(T, u64), ChangeError> {
        let mut core = self.core();
        let mut draft = Draft {
            state: core.store.records().clone(),
            file: None,
        };
        let out = change(&mut draft)?;

        let file = draft
            .file
            .map(Arc::new)
            .unwrap_or_else(|| core.file.clone());
        let api = &draft.state.workloads.0;
        let registry = Registry::combine(&file, api, &self.trust_domain)?;
        let bundle = core.view.trust_bundle.clone();
        let mut view = View::build(&self.trust_domain, &registry, &draft.state, bundle);
        let touched = Touched::between(&core.view, &view);
        if !touched.is_empty() {
            draft.state.version = draft.state.version.saturating_add(1);
            draft.state.served_sha256 = view.fingerprint();
        }
        view.version = draft.state.version;
        core.store.replace(draft.state)?;

        core.file = file;
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(registry);
        if !touched.is_empty() {
            let view = Arc::new(view);
            core.view = view.clone();
            self.send_snapshot(&view, core.store.records());
            self.feed.publish(view, touched);
        }
        Ok((out, core.view.version))
    }

    /// The workloads in force, from the registry file and the API.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The workloads of the registry file in force.
    pub fn file_registry(&self) -> Arc<Registry> {
        self.core().file.clone()
    }

    /// The Subscribe feed.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// A receiver that sees the current snapshot and every later one (the Watch stream).
    pub fn subscribe(&self) -> watch::Receiver<Arc<v1::Snapshot>> {
        self.snapshots.subscribe()
    }

    /// Notes that `node` opened (`+1`) or closed (`-1`) a watch or subscribe stream.
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

    /// Whether `node` has a stream open now.
    pub fn is_connected(&self, node: &str) -> bool {
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.get(node).is_some_and(|n| *n > 0)
    }

    /// The nodes as the API shows them.
    pub fn nodes(&self) -> Vec<v1::Node> {
        let core = self.core();
        let nodes = core.view.nodes.values();
        nodes
            .map(|n| self.node_now(n, core.store.records()))
            .collect()
    }

    fn node_now(&self, node: &v1::Node, state: &State) -> v1::Node {
        let record = state.nodes.get(&node.name);
        v1::Node {
            last_seen_unix: record.map_or(0, |r| r.last_seen_unix),
            connected: self.is_connected(&node.name),
            ..node.clone()
        }
    }

    fn send_snapshot(&self, view: &View, state: &State) {
        let snapshot = v1::Snapshot {
            version: view.version,
            trust_domain: view.trust_domain.clone(),
            workloads: view.workloads.values().cloned().collect(),
            nodes: view
                .nodes
                .values()
                .map(|n| self.node_now(n, state))
                .collect(),
            trust_bundle_der: view.trust_bundle.clone(),
        };
        self.metrics.registry_version.set(view.version as i64);
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// The trust bundle's roots, DER.
    pub fn bundle_der(&self) -> Vec<Vec<u8>> {
        bundle_der(&self.authority)
    }
}

/// Brings the records in line with what is about to be served: an epoch at the first start,
/// and the next version when the content differs from what was served at the saved one.
fn restore(
    trust_domain: &TrustDomain,
    store: &mut StateStore,
    file: &Registry,
    bundle: Vec<Vec<u8>>,
) -> Result<(Registry, View), ChangeError> {
    let mut state = store.records().clone();
    if state.epoch.is_empty() {
        state.epoch = new_epoch();
    }
    let registry = Registry::combine(file, &state.workloads.0, trust_domain)?;
    let mut view = View::build(trust_domain, &registry, &state, bundle);
    let fingerprint = view.fingerprint();
    if fingerprint != state.served_sha256 {
        state.version = state.version.saturating_add(1);
        state.served_sha256 = fingerprint;
    }
    view.version = state.version;
    if state != *store.records() {
        store.replace(state)?;
    }
    Ok((registry, view))
}

fn bundle_der(authority: &Authority) -> Vec<Vec<u8>> {
    let roots = authority.bundle().roots().iter();
    roots.map(|r| r.to_vec()).collect()
}

/// The records, locked (see [`Hub::state`]).
pub struct StateGuard<'a>(MutexGuard<'a, Core>);

impl Deref for StateGuard<'_> {
    type Target = StateStore;

    fn deref(&self) -> &StateStore {
        &self.0.store
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut StateStore {
        &mut self.0.store
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

#[cfg(test)]
pub(crate) mod tests;
