//! The watch stream from the control plane: each snapshot replaces the directory and the trust
//! bundle. A broken stream is reopened with backoff; the last good state stays in force.

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
use crate::metrics::Metrics;

/// What the watch task updates.
pub struct WatchTargets {
    /// The directory.
    pub directory: SharedDirectory,
    /// The trust bundle.
    pub bundle: SharedBundle,
    /// Where the bundle is saved.
    pub paths: StatePaths,
    /// Metrics.
    pub metrics: Metrics,
}

/// Watches forever, announcing this node's tunnel addresses on every (re)connection.
pub async fn watch_forever(
    channel: Channel,
    node: String,
    tunnel_addresses: Vec<SocketAddr>,
    targets: WatchTargets,
) {
    let mut client = RegistryClient::new(channel);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let request = v1::WatchRequest {
        tunnel_addresses: tunnel_addresses.iter().map(|a| a.to_string()).collect(),
    };
    loop {
        match client.watch(request.clone()).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(snapshot)) => {
                            apply(&snapshot, &node, &targets);
                            backoff.reset();
                        }
                        Ok(None) => {
                            tracing::warn!("the control plane closed the watch stream");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(error = %status.message(), "the watch stream broke");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "cannot open the watch stream; retrying")
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn apply(snapshot: &v1::Snapshot, node: &str, targets: &WatchTargets) {
    let directory = match Directory::from_snapshot(snapshot, node) {
        Ok(d) => d,
        Err(error) => {
            targets
                .metrics
                .snapshots
                .with_label_values(&["refused"])
                .inc();
            tracing::error!(
                version = snapshot.version,
                %error,
                "refused a snapshot; keeping the current one",
            );
            return;
        }
    };
    if !snapshot.trust_bundle_der.is_empty() {
        update_bundle(snapshot, targets);
    }
    tracing::info!(
        version = snapshot.version,
        workloads = snapshot.workloads.len(),
        local = directory.local_workloads().len(),
        "applied a snapshot"
    );
    targets
        .metrics
        .snapshots
        .with_label_values(&["applied"])
        .inc();
    targets
        .metrics
        .snapshot_version
        .set(snapshot.version as i64);
    targets.directory.replace(directory);
}

fn update_bundle(snapshot: &v1::Snapshot, targets: &WatchTargets) {
    let current = targets.bundle.current();
    let roots: Vec<CertificateDer<'static>> = snapshot
        .trust_bundle_der
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    if roots == current.roots() {
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
        Err(error) => tracing::error!(%error, "refused the trust bundle of a snapshot"),
    }
}
