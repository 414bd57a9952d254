//! The Subscribe stream from the control plane. The proxy says which version it holds (from
//! its disk cache, after a restart) and receives what changed since; each update is checked
//! whole, put in force (directory, policies, trust bundle) and cached on disk. A broken stream
//! is reopened with backoff from the version held; meanwhile the state in force stays, so
//! traffic keeps flowing and policies keep being enforced while the control plane is away.

use std::net::SocketAddr;
use std::time::Duration;

use edgeward_ca::{SharedBundle, TrustBundle};
use edgeward_proto::v1;
use edgeward_proto::v1::registry_client::RegistryClient;
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::directory::{Directory, SharedDirectory};
use crate::identity::node::StatePaths;
use crate::mesh::{MeshCache, MeshState};
use crate::metrics::Metrics;
use crate::policy::SharedPolicies;

/// What the stream updates.
pub struct WatchTargets {
    /// This node's name.
    pub node: String,
    /// The directory.
    pub directory: SharedDirectory,
    /// The policies.
    pub policies: SharedPolicies,
    /// The trust bundle.
    pub bundle: SharedBundle,
    /// Where the bundle is saved.
    pub paths: StatePaths,
    /// Where the mesh state is cached.
    pub cache: MeshCache,
    /// Metrics.
    pub metrics: Metrics,
}

/// Subscribes forever, announcing this node's tunnel addresses on every (re)connection.
pub async fn watch_forever(
    channel: Channel,
    tunnel_addresses: Vec<SocketAddr>,
    mut state: MeshState,
    targets: WatchTargets,
) {
    let mut client = RegistryClient::new(channel);
    // Capped at 5 s: once the control plane is back, changes should reach this node within
    // seconds; a refused connection costs the control plane next to nothing.
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let addresses: Vec<String> = tunnel_addresses.iter().map(|a| a.to_string()).collect();
    loop {
        let request = v1::SubscribeRequest {
            tunnel_addresses: addresses.clone(),
            have_version: state.version,
            have_epoch: state.epoch.clone(),
        };
        match client.subscribe(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Some(update) = next(&mut stream).await {
                    if !receive(&mut state, &update, &targets) {
                        break;
                    }
                    backoff.reset();
                }
            }
            Err(status) => tracing::warn!(
                error = %status.message(),
                "cannot reach the control plane; serving from the state held"
            ),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn next(stream: &mut tonic::Streaming<v1::Update>) -> Option<v1::Update> {
    match stream.message().await {
        Ok(Some(update)) => Some(update),
        Ok(None) => {
            tracing::warn!("the control plane closed the update stream");
            None
        }
        Err(status) => {
            tracing::warn!(error = %status.message(), "the update stream broke");
            None
        }
    }
}

/// Applies one update to a copy of the state and puts it in force when it holds together.
/// Returns false when the stream must be reopened (an update that does not fit the state held).
fn receive(state: &mut MeshState, update: &v1::Update, targets: &WatchTargets) -> bool {
    let mut next = state.clone();
    match next.apply(update) {
        Ok(false) => {
            tracing::debug!(version = next.version, "in sync with the control plane");
            *state = next;
            true
        }
        Ok(true) => {
            if publish(&next, targets) {
                *state = next;
            }
            true
        }
        Err(error) => {
            tracing::warn!(%error, "an update does not fit the state held; subscribing again");
            false
        }
    }
}

/// Puts a state in force: directory, policies and trust bundle together, or none of them; then
/// caches it. Returns whether it was put in force.
pub fn publish(state: &MeshState, targets: &WatchTargets) -> bool {
    let built = Directory::build(
        state.version,
        state.workloads(),
        state.nodes(),
        &targets.node,
    )
    .map_err(|e| e.to_string())
    .and_then(|dir| Ok((dir, state.policy_set()?)));
    let (directory, policies) = match built {
        Ok(built) => built,
        Err(error) => {
            targets
                .metrics
                .snapshots
                .with_label_values(&["refused"])
                .inc();
            tracing::error!(
                version = state.version,
                %error,
                "refused a mesh state; keeping the one in force",
            );
            return false;
        }
    };
    update_bundle(state.bundle(), targets);
    tracing::info!(
        version = state.version,
        workloads = state.workloads().count(),
        local = directory.local_workloads().len(),
        "mesh state in force"
    );
    targets.policies.replace(policies);
    targets.directory.replace(directory);
    targets
        .metrics
        .snapshots
        .with_label_values(&["applied"])
        .inc();
    targets.metrics.snapshot_version.set(state.version as i64);
    if let Err(error) = targets.cache.save(state) {
        tracing::warn!(%error, "cannot cache the mesh state");
    }
    true
}

fn update_bundle(der: &[Vec<u8>], targets: &WatchTargets) {
    let current = targets.bundle.current();
    let roots: Vec<CertificateDer<'static>> = der
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    if roots.is_empty() || roots == current.roots() {
        return;
    }
    match TrustBundle::new(current.trust_domain().clone(), roots) {
        Ok(bundle) => {
            if let Err(error) = bundle.save(&targets.paths.bundle()) {
                tracing::warn!(%error, "cannot save the trust bundle");
            }
            tracing::info!(roots = bundle.roots().len(), "trust bundle updated");
            targets.bundle.replace(bundle);
        }
        Err(error) => tracing::error!(%error, "refused the trust bundle of an update"),
    }
}
