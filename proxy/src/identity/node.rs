//! The node's own identity: joined once with a token, kept in the state directory (key 0600),
//! and renewed at about half its lifetime with the current certificate as proof.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use edgeward_ca::{tls, CertSlot, PeerPolicy, PrivateKey, ServerVerifier, SharedBundle};
use edgeward_ca::{SpiffeId, SpiffeVerifier, Svid, TrustBundle, TrustDomain};
use edgeward_proto::v1;
use edgeward_proto::v1::identity_client::IdentityClient;
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::identity::renewal;
use crate::metrics::Metrics;

/// Files of the state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    dir: PathBuf,
}

impl StatePaths {
    /// The state directory.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The node's key and SVID, one file so they are replaced together.
    fn node_credential(&self) -> PathBuf {
        self.dir.join("node.pem")
    }

    /// The trust bundle last received from the control plane.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }
}

/// The node SVID in use, readable by every TLS handshake to the control plane.
pub struct NodeIdentity {
    /// `spiffe://<td>/node/<name>`.
    pub id: SpiffeId,
    /// The certificate presented to the control plane.
    pub slot: Arc<CertSlot>,
    validity: std::sync::Mutex<(SystemTime, SystemTime)>,
}

impl NodeIdentity {
    fn new(svid: &Svid) -> Self {
        Self {
            id: svid.id().clone(),
            slot: Arc::new(CertSlot::with(svid.certified_key())),
            validity: std::sync::Mutex::new((svid.not_before(), svid.not_after())),
        }
    }

    /// NotBefore and NotAfter of the node SVID in use.
    fn validity(&self) -> (SystemTime, SystemTime) {
        *self.validity.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replace(&self, svid: &Svid) {
        self.slot.set(svid.certified_key());
        *self.validity.lock().unwrap_or_else(|e| e.into_inner()) =
            (svid.not_before(), svid.not_after());
    }
}

/// The trust bundle to start with: the one saved after the last contact with the control plane,
/// or else the bootstrap bundle.
pub fn initial_bundle(
    paths: &StatePaths,
    bootstrap: Option<&Path>,
    td: &TrustDomain,
) -> Result<TrustBundle> {
    let saved = paths.bundle();
    if saved.exists() {
        return TrustBundle::load(td.clone(), &saved).with_context(|| saved.display().to_string());
    }
    let Some(path) = bootstrap else {
        bail!(
            "no trust bundle: give the control plane's bundle.pem with --bootstrap-bundle \
             (EDGEWARD_BOOTSTRAP_BUNDLE)"
        );
    };
    TrustBundle::load(td.clone(), path)
        .with_context(|| format!("bootstrap bundle {}", path.display()))
}

/// Loads the node SVID from the state directory, or joins with the token to obtain one.
pub async fn load_or_join(
    paths: &StatePaths,
    node: &str,
    control: std::net::SocketAddr,
    token_file: Option<&Path>,
    bundle: &SharedBundle,
) -> Result<NodeIdentity> {
    let td = bundle.current().trust_domain().clone();
    let want = td
        .node_id(node)
        .with_context(|| format!("node name {node:?}"))?;
    // Without a usable credential the node must join again, which needs a new token.
    let why = match load_credential(paths, &want) {
        Ok(Some(svid)) => {
            tracing::info!(id = %svid.id(), "loaded the node credential");
            return Ok(NodeIdentity::new(&svid));
        }
        Ok(None) => "this node has not joined yet".to_owned(),
        Err(error) => format!("{error:#}"),
    };
    if token_file.is_some() && paths.node_credential().exists() {
        tracing::warn!(reason = %why, "joining again with the token given");
    }
    let Some(token_file) = token_file else {
        bail!("{why}: give a join token with --join-token-file");
    };
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read the join token file {}", token_file.display()))?;
    let svid = join(paths, node, control, token.trim(), bundle).await?;
    tracing::info!(id = %svid.id(), "joined the mesh");
    Ok(NodeIdentity::new(&svid))
}

/// The node credential of the state directory, if there is one, it loads, names `want` and has
/// not expired.
fn load_credential(paths: &StatePaths, want: &SpiffeId) -> Result<Option<Svid>> {
    if !paths.node_credential().exists() {
        return Ok(None);
    }
    let svid = Svid::load_combined(&paths.node_credential())
        .context("the node credential in the state directory is unusable")?;
    if svid.id() != want {
        bail!(
            "the state directory holds the credential of {}, not of {want}",
            svid.id()
        );
    }
    if svid.not_after() <= SystemTime::now() {
        let at = humantime::format_rfc3339_seconds(svid.not_after());
        bail!("the node credential expired at {at}");
    }
    Ok(Some(svid))
}

async fn join(
    paths: &StatePaths,
    node: &str,
    control: std::net::SocketAddr,
    token: &str,
    bundle: &SharedBundle,
) -> Result<Svid> {
    let td = bundle.current().trust_domain().clone();
    let verifier = SpiffeVerifier::new(bundle.clone(), PeerPolicy::Exact(td.control_id()));
    let config = tls::client_config(ServerVerifier(verifier), None, &[b"h2"]);
    let channel = edgeward_proto::channel::connect(control, Arc::new(config))
        .await
        .with_context(|| format!("cannot reach the control plane at {control} to join"))?;
    let key = PrivateKey::generate()?;
    let request = v1::JoinRequest {
        token: token.to_owned(),
        node_name: node.to_owned(),
        csr_pem: key.csr_pem()?,
    };
    let reply = IdentityClient::new(channel)
        .join(request)
        .await
        .map_err(|s| anyhow::anyhow!("the control plane refused to join: {}", s.message()))?;
    let svid_reply = reply
        .into_inner()
        .svid
        .context("join reply without an SVID")?;
    let svid = accept_svid(&svid_reply, key, bundle)?;
    svid.save_combined(&paths.node_credential())
        .context("cannot save the node credential")?;
    bundle
        .current()
        .save(&paths.bundle())
        .context("cannot save the trust bundle")?;
    Ok(svid)
}

/// Turns an SVID reply into an SVID for `key`, and adopts the trust bundle that came with it.
pub fn accept_svid(
    reply: &v1::SvidResponse,
    key: PrivateKey,
    bundle: &SharedBundle,
) -> Result<Svid> {
    let id = SpiffeId::parse(&reply.spiffe_id).context("the control plane sent a bad SPIFFE ID")?;
    let chain: Vec<CertificateDer<'static>> = reply
        .cert_chain_der
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let svid = Svid::new(id, chain, key).context("the control plane sent an unusable SVID")?;
    if !reply.trust_bundle_der.is_empty() {
        let roots = reply
            .trust_bundle_der
            .iter()
            .map(|c| CertificateDer::from(c.clone()));
        let td = bundle.current().trust_domain().clone();
        bundle.replace(TrustBundle::new(td, roots.collect()).context("bad trust bundle")?);
    }
    Ok(svid)
}

/// Renews the node SVID at its renewal time (see [`renewal`]), forever. A failed renewal keeps
/// the current certificate and retries with backoff.
pub async fn renew_forever(
    node: Arc<NodeIdentity>,
    channel: Channel,
    paths: StatePaths,
    bundle: SharedBundle,
    metrics: Metrics,
    availability_target: Duration,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let (nb, na) = node.validity();
        let at = renewal::renew_at(nb, na, availability_target);
        let lifetime = renewal::lifetime(nb, na);
        tokio::time::sleep(renewal::delay_until(at, lifetime, SystemTime::now())).await;
        loop {
            match renew_once(&channel, &paths, &bundle, availability_target).await {
                Ok(svid) => {
                    node.replace(&svid);
                    metrics
                        .svid_requests
                        .with_label_values(&["node", "ok"])
                        .inc();
                    tracing::info!(id = %svid.id(), "renewed the node credential");
                    backoff.reset();
                    break;
                }
                Err(error) => {
                    metrics
                        .svid_requests
                        .with_label_values(&["node", "error"])
                        .inc();
                    tracing::warn!(
                        error = %format!("{error:#}"),
                        "cannot renew the node credential; keeping the current one",
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

async fn renew_once(
    channel: &Channel,
    paths: &StatePaths,
    bundle: &SharedBundle,
    availability_target: Duration,
) -> Result<Svid> {
    let key = PrivateKey::generate()?;
    let reply = IdentityClient::new(channel.clone())
        .renew_node(v1::RenewNodeRequest {
            csr_pem: key.csr_pem()?,
            requested_ttl_seconds: renewal::requested_lifetime(availability_target).as_secs(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let svid = accept_svid(reply.get_ref(), key, bundle)?;
    svid.save_combined(&paths.node_credential())?;
    Ok(svid)
}
