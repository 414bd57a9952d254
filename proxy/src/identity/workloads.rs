//! Identities of the workloads on this node: a private key per workload, generated here, and an
//! SVID obtained from the control plane by CSR and renewed at about half its lifetime.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use edgeward_ca::{tls::sni_for, PrivateKey, SharedBundle, SpiffeId, Svid};
use edgeward_proto::v1;
use edgeward_proto::v1::identity_client::IdentityClient;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::directory::{SharedDirectory, WorkloadKey};
use crate::identity::node::accept_svid;
use crate::identity::renewal;
use crate::identity::store::WorkloadFiles;
use crate::metrics::Metrics;

/// The SVIDs of local workloads, and the server certificates the tunnel listener presents,
/// chosen by the SNI that names the SPIFFE ID a client expects.
#[derive(Debug)]
pub struct Identities {
    svids: RwLock<HashMap<WorkloadKey, Arc<Svid>>>,
    /// Workloads whose SVID expired and could not be renewed: connections fail at once.
    expired: RwLock<HashSet<WorkloadKey>>,
    by_sni: RwLock<HashMap<String, (SpiffeId, Arc<CertifiedKey>)>>,
    changes: watch::Sender<u64>,
}

impl Identities {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            svids: RwLock::default(),
            expired: RwLock::default(),
            by_sni: RwLock::default(),
            changes: watch::channel(0).0,
        }
    }

    /// The SVID of a local workload, if it has one yet.
    pub fn get(&self, key: &WorkloadKey) -> Option<Arc<Svid>> {
        self.svids
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Whether the workload's SVID expired and could not be renewed.
    pub fn is_expired(&self, key: &WorkloadKey) -> bool {
        self.expired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    /// Waits up to `limit` for the workload's SVID (it may still be on its way after a start);
    /// gives up at once when it expired.
    pub async fn wait_for(&self, key: &WorkloadKey, limit: Duration) -> Option<Arc<Svid>> {
        let mut changes = self.changes.subscribe();
        let wait = async {
            loop {
                if let Some(svid) = self.get(key) {
                    return Some(svid);
                }
                if self.is_expired(key) {
                    return None;
                }
                changes.changed().await.ok()?;
            }
        };
        tokio::time::timeout(limit, wait).await.ok().flatten()
    }

    /// Whether every listed workload has an SVID.
    pub fn has_all<'a>(&self, mut keys: impl Iterator<Item = &'a WorkloadKey>) -> bool {
        let svids = self.svids.read().unwrap_or_else(|e| e.into_inner());
        keys.all(|k| svids.contains_key(k))
    }

    /// The SPIFFE ID that was presented for the given SNI.
    pub fn identity_for_sni(&self, sni: &str) -> Option<SpiffeId> {
        let by_sni = self.by_sni.read().unwrap_or_else(|e| e.into_inner());
        by_sni.get(sni).map(|(id, _)| id.clone())
    }

    /// Drops an SVID that expired, so connections that need it fail at once with that reason.
    fn expire(&self, key: &WorkloadKey) {
        self.remove(key);
        self.expired
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        self.changes.send_modify(|n| *n += 1);
    }

    fn insert(&self, key: WorkloadKey, svid: Arc<Svid>) {
        self.expired
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let sni = sni_for(svid.id()).to_str().into_owned();
        self.by_sni
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sni, (svid.id().clone(), svid.certified_key()));
        self.svids
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, svid);
        self.changes.send_modify(|n| *n += 1);
    }

    fn remove(&self, key: &WorkloadKey) {
        self.expired
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let removed = self
            .svids
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let Some(removed) = removed else { return };
        // Another local workload may share the identity: keep serving its certificate.
        let svids = self.svids.read().unwrap_or_else(|e| e.into_inner());
        let sibling = svids.values().find(|s| s.id() == removed.id()).cloned();
        let sni = sni_for(removed.id()).to_str().into_owned();
        let mut by_sni = self.by_sni.write().unwrap_or_else(|e| e.into_inner());
        match sibling {
            Some(s) => by_sni.insert(sni, (s.id().clone(), s.certified_key())),
            None => by_sni.remove(&sni),
        };
        self.changes.send_modify(|n| *n += 1);
    }
}

impl Default for Identities {
    fn default() -> Self {
        Self::new()
    }
}

impl ResolvesServerCert for Identities {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?;
        let by_sni = self.by_sni.read().unwrap_or_else(|e| e.into_inner());
        by_sni.get(sni).map(|(_, key)| key.clone())
    }
}

/// What the identity tasks need.
#[derive(Clone)]
pub struct IdentityDeps {
    /// Where workload keys and certificates are kept across restarts.
    pub files: WorkloadFiles,
    /// How long a control-plane outage every SVID must survive.
    pub availability_target: Duration,
    /// The store they fill.
    pub identities: Arc<Identities>,
    /// The channel to the control plane.
    pub channel: Channel,
    /// The trust bundle, refreshed from each reply.
    pub bundle: SharedBundle,
    /// Metrics.
    pub metrics: Metrics,
}

/// Keeps one identity task per local workload, following every directory change: a new
/// workload gets a key and an SVID, a removed one loses both.
pub async fn manage(directory: SharedDirectory, deps: IdentityDeps) {
    let mut tasks: HashMap<WorkloadKey, (SpiffeId, JoinHandle<()>)> = HashMap::new();
    let mut changes = directory.subscribe();
    loop {
        let dir = directory.get();
        let wanted: HashMap<WorkloadKey, SpiffeId> = dir
            .local_workloads()
            .iter()
            .map(|w| (w.key.clone(), w.spiffe_id.clone()))
            .collect();
        tasks.retain(|key, (id, task)| {
            let keep = wanted.get(key) == Some(id);
            if !keep {
                task.abort();
                deps.identities.remove(key);
                deps.files.remove(key);
                tracing::info!(workload = %key, "dropped the identity of a workload that left");
            }
            keep
        });
        for (key, id) in wanted {
            tasks.entry(key.clone()).or_insert_with(|| {
                let task = tokio::spawn(maintain(key, id.clone(), deps.clone()));
                (id, task)
            });
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps the workload's SVID: the one saved in the state directory if it is still valid, then
/// a new one at each renewal time (see [`renewal`]). A failed renewal keeps the current SVID
/// and retries with capped backoff, raising the alarm as expiry nears; an SVID that expires
/// while the control plane is away is dropped, so connections fail with a clear reason.
async fn maintain(key: WorkloadKey, id: SpiffeId, deps: IdentityDeps) {
    let mut current = deps.files.load(&key, &id).map(Arc::new);
    if let Some(svid) = &current {
        tracing::info!(
            workload = %key,
            identity = %id,
            "loaded the workload SVID from the state directory",
        );
        deps.adopt(&key, svid.clone());
    }
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        if let Some(svid) = &current {
            let (nb, na) = (svid.not_before(), svid.not_after());
            let at = renewal::renew_at(nb, na, deps.availability_target);
            let lifetime = renewal::lifetime(nb, na);
            tokio::time::sleep(renewal::delay_until(at, lifetime, SystemTime::now())).await;
        }
        loop {
            match request(&key, &deps).await {
                Ok(svid) => {
                    let svid = Arc::new(svid);
                    deps.files.save(&key, &svid);
                    deps.adopt(&key, svid.clone());
                    deps.metrics
                        .svid_requests
                        .with_label_values(&["workload", "ok"])
                        .inc();
                    tracing::info!(workload = %key, identity = %id, "workload SVID ready");
                    current = Some(svid);
                    backoff.reset();
                    break;
                }
                Err(error) => {
                    deps.metrics
                        .svid_requests
                        .with_label_values(&["workload", "error"])
                        .inc();
                    current = deps.renewal_failed(&key, current, &error);
                    // Wake at the expiry at the latest, so an expired SVID goes out of use then.
                    let until_expiry = current.as_ref().map_or(Duration::MAX, |svid| {
                        svid.not_after()
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                    });
                    tokio::time::sleep(backoff.next_delay().min(until_expiry)).await;
                }
            }
        }
    }
}

impl IdentityDeps {
    /// Puts an SVID in force for a workload and publishes its expiry.
    fn adopt(&self, key: &WorkloadKey, svid: Arc<Svid>) {
        let expiry = svid
            .not_after()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let labels = [svid.id().as_str(), &key.to_string()];
        self.metrics
            .cert_expiry
            .with_label_values(&labels)
            .set(expiry.as_secs_f64());
        self.metrics
            .renewal_failing
            .with_label_values(&labels)
            .set(0);
        let (nb, na) = (svid.not_before(), svid.not_after());
        if !renewal::meets_target(nb, na, self.availability_target) {
            tracing::warn!(
                workload = %key,
                lifetime = ?renewal::lifetime(nb, na),
                target = ?self.availability_target,
                "the SVID lifetime is too short to ride out a control-plane outage of that length"
            );
        }
        self.identities.insert(key.clone(), svid);
    }

    /// Keeps the current SVID through a failed renewal, alarming as expiry nears, and drops it
    /// once expired. Returns what stays in force.
    fn renewal_failed(
        &self,
        key: &WorkloadKey,
        current: Option<Arc<Svid>>,
        error: &anyhow::Error,
    ) -> Option<Arc<Svid>> {
        let Some(svid) = current else {
            tracing::warn!(
                workload = %key,
                error = %format!("{error:#}"),
                "cannot obtain the workload SVID",
            );
            return None;
        };
        let labels = [svid.id().as_str(), &key.to_string()];
        let left = svid.not_after().duration_since(SystemTime::now());
        match left {
            Ok(left) => {
                self.metrics
                    .renewal_failing
                    .with_label_values(&labels)
                    .set(1);
                tracing::warn!(
                    workload = %key,
                    expires_in = ?Duration::from_secs(left.as_secs()),
                    error = %format!("{error:#}"),
                    "cannot renew the workload SVID; keeping the current one"
                );
                Some(svid)
            }
            Err(_) => {
                self.identities.expire(key);
                tracing::error!(
                    workload = %key,
                    "the workload SVID expired and could not be renewed",
                );
                None
            }
        }
    }
}

async fn request(key: &WorkloadKey, deps: &IdentityDeps) -> Result<Svid> {
    let private_key = PrivateKey::generate()?;
    let reply = IdentityClient::new(deps.channel.clone())
        .sign_workload(v1::SignWorkloadRequest {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            csr_pem: private_key.csr_pem()?,
            requested_ttl_seconds: renewal::requested_lifetime(deps.availability_target).as_secs(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the control plane refused: {}", s.message()))?;
    accept_svid(reply.get_ref(), private_key, &deps.bundle).context("SVID reply")
}
