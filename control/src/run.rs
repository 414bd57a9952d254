//! Starting and running the control plane: load or create the CA and records, serve the control
//! API over mutual TLS, follow the registry file (when there is one), and serve metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use edgeward_ca::TrustDomain;
use edgeward_ca::{tls, CertSlot, ClientVerifier, PeerPolicy, SharedBundle, SpiffeVerifier};
use edgeward_proto::net::Keepalive;
use edgeward_proto::v1::admin_server::AdminServer;
use edgeward_proto::v1::identity_server::IdentityServer;
use edgeward_proto::v1::registry_server::RegistryServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::ca_files::{self, DataDir};
use crate::config::ControlConfig;
use crate::hub::{ChangeError, Hub, SvidLifetimes};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::service::Api;
use crate::state::StateStore;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the registry file is checked for changes.
const REGISTRY_POLL: Duration = Duration::from_millis(500);

/// Runs the control plane until SIGINT or SIGTERM.
pub async fn run(config: ControlConfig) -> Result<()> {
    let td = TrustDomain::parse(&config.trust_domain)
        .with_context(|| format!("--trust-domain {:?}", config.trust_domain))?;
    let dir = DataDir::new(&config.data_dir);
    edgeward_ca::files::create_private_dir(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;

    let authority = ca_files::load_or_create_authority(&dir, &td)?;
    ca_files::ensure_admin_credential(&dir, &authority)?;
    let state = StateStore::open(&dir.state())?;
    let (registry, registry_bytes) = match &config.registry {
        Some(path) => read_registry(path, &td)?,
        None => (Registry::default(), Vec::new()),
    };
    let metrics = Metrics::new();
    let lifetimes = SvidLifetimes {
        default: config.svid_ttl,
        max: config.max_svid_ttl.max(config.svid_ttl),
    };
    let hub = Hub::new(authority, state, registry, lifetimes, metrics.clone())
        .context("cannot start the control plane")?;
    let shown_registry = config.registry.as_ref().map(|p| p.display().to_string());
    tracing::info!(
        trust_domain = %td,
        data_dir = %config.data_dir.display(),
        registry = shown_registry.as_deref().unwrap_or("none"),
        listen = %config.listen,
        metrics = %config.metrics_addr,
        svid_ttl = ?config.svid_ttl,
        workloads = hub.registry().workloads().len(),
        policies = hub.feed().current().policies.len(),
        version = hub.feed().current().version,
        epoch = hub.feed().epoch(),
        "effective configuration"
    );

    let slot = Arc::new(CertSlot::default());
    renew_own_certificate(&hub, &slot)?;
    let acceptor = TlsAcceptor::from(Arc::new(server_tls(&hub, slot.clone())));
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.metrics_addr))?;

    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, acceptor, tx, metrics.clone()));
    if let Some(path) = config.registry.clone() {
        tokio::spawn(follow_registry(hub.clone(), path, registry_bytes));
    }
    tokio::spawn(own_certificate_renewal(hub.clone(), slot));
    tokio::spawn(edgeward_proto::http_endpoint::serve(
        metrics_listener,
        move |path| match path {
            "/metrics" => (
                http::StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.render(),
            ),
            _ => (
                http::StatusCode::NOT_FOUND,
                "text/plain",
                "not found\n".into(),
            ),
        },
    ));

    let api = Api::new(hub);
    tracing::info!(listen = %config.listen, "control plane ready");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(IdentityServer::new(api.clone()))
        .add_service(RegistryServer::new(api.clone()))
        .add_service(AdminServer::new(api))
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), edgeward_proto::signal::shutdown())
        .await
        .context("the control API server failed")?;
    tracing::info!("control plane stopped");
    Ok(())
}

fn read_registry(path: &Path, td: &TrustDomain) -> Result<(Registry, Vec<u8>)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the registry file {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let registry = Registry::parse(&text, td)
        .with_context(|| format!("registry file {} refused", path.display()))?;
    Ok((registry, bytes))
}

fn server_tls(hub: &Hub, slot: Arc<CertSlot>) -> rustls::ServerConfig {
    let bundle = SharedBundle::new(hub.authority.bundle().clone());
    let verifier = SpiffeVerifier::new(bundle, PeerPolicy::AnyInTrustDomain);
    // Optional: Join comes without a certificate; every other call checks the caller's ID.
    let verifier = Arc::new(ClientVerifier::new(verifier, false));
    tls::server_config(verifier, slot, &[b"h2"])
}

fn renew_own_certificate(hub: &Hub, slot: &CertSlot) -> Result<()> {
    let id = hub.trust_domain.control_id();
    let svid = ca_files::issue_local(&hub.authority, &id, hub.svid_lifetime)?;
    slot.set(svid.certified_key());
    Ok(())
}

/// Re-issues the control plane's own serving certificate at half its lifetime.
async fn own_certificate_renewal(hub: Arc<Hub>, slot: Arc<CertSlot>) {
    loop {
        tokio::time::sleep(hub.svid_lifetime / 2).await;
        if let Err(error) = renew_own_certificate(&hub, &slot) {
            tracing::error!(
                error = %format!("{error:#}"),
                "cannot renew the control plane's certificate",
            );
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>,
    metrics: Metrics,
) {
    edgeward_proto::net::accept_forever(listener, "control API", move |tcp, peer| {
        edgeward_proto::net::tune(&tcp, &Keepalive::default());
        let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
        async move {
            let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                    return;
                }
                Ok(Err(error)) => edgeward_ca::io_rejection_reason(&error),
                Err(_) => "timeout",
            };
            metrics
                .handshake_failures
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(%peer, reason, "control TLS handshake failed");
        }
    })
    .await
}

/// Re-reads the registry file when it changes; a file that fails validation is logged with
/// its line and counted, and the registry in force stays. A file refused because it clashes
/// with the API workloads is tried again once those change.
async fn follow_registry(hub: Arc<Hub>, path: PathBuf, mut last: Vec<u8>) {
    let mut read_error_shown = false;
    let mut clashed_at: Option<u64> = None;
    loop {
        tokio::time::sleep(REGISTRY_POLL).await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                if !read_error_shown {
                    tracing::error!(
                        path = %path.display(),
                        %error,
                        "cannot read the registry file; the registry in force stays",
                    );
                    read_error_shown = true;
                }
                continue;
            }
        };
        read_error_shown = false;
        let version = hub.feed().current().version;
        let retry = clashed_at.is_some_and(|at| at != version);
        if bytes == last && !retry {
            continue;
        }
        last = bytes;
        let clashed = apply_registry(&hub, &path, &String::from_utf8_lossy(&last));
        clashed_at = clashed.then_some(version);
    }
}

/// Parses and applies a registry file; returns whether it clashed with the API workloads.
fn apply_registry(hub: &Hub, path: &Path, text: &str) -> bool {
    let parsed = Registry::parse(text, &hub.trust_domain).map_err(|e| e.to_string());
    let workloads = parsed.as_ref().map_or(0, |r| r.workloads().len());
    let result = match parsed {
        Ok(registry) => hub.replace_file_registry(registry),
        Err(error) => Err(ChangeError::Invalid(error)),
    };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    match &result {
        Ok(None) => return false,
        Ok(Some(version)) => {
            tracing::info!(path = %path.display(), version, workloads, "registry reloaded");
        }
        Err(error) => tracing::error!(
            path = %path.display(),
            %error,
            "registry file refused; the previous registry stays in force"
        ),
    }
    hub.metrics
        .registry_reloads
        .with_label_values(&[outcome])
        .inc();
    matches!(result, Err(ChangeError::Conflict(_)))
}
