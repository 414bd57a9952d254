//! The edgeward node proxy. It captures the TCP connections that local pods open (iptables in
//! the node's network namespace), tunnels each to the destination node's proxy over mutual TLS
//! with the source workload's SVID, and on the receiving side verifies the peer by SPIFFE ID and
//! connects to the destination pod. Identities come from the control plane by CSR; the keys
//! never leave the node.
//!
//! Reading order follows a connection: `capture` (iptables, original destination), `outbound`
//! (resolve and choose), `tunnel` (pool, HTTP/2 CONNECT), `inbound` (verify, connect the pod),
//! `relay` (bytes both ways), `connection` and `access` (how it ended); `identity`, `watch` and
//! `directory` keep the keys, certificates and view of the mesh current.

pub mod access;
pub mod backoff;
pub mod capture;
pub mod config;
pub mod connection;
pub mod directory;
pub mod identity;
pub mod inbound;
pub mod mesh;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod relay;
pub mod sockets;
pub mod tunnel;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use edgeward_ca::{tls, ClientVerifier, PeerPolicy, ServerVerifier, SharedBundle};
use edgeward_ca::{SpiffeVerifier, TrustDomain};
use edgeward_proto::net::Keepalive;
use http::StatusCode;
use tokio::net::TcpListener;

use crate::capture::iptables::CaptureRules;
use crate::config::ProxyConfig;
use crate::directory::SharedDirectory;
use crate::identity::node::{self, StatePaths};
use crate::identity::store::WorkloadFiles;
use crate::identity::workloads::{self, Identities, IdentityDeps};
use crate::mesh::{MeshCache, MeshState};
use crate::metrics::Metrics;
use crate::policy::SharedPolicies;
use crate::tunnel::peers::PeerChoices;
use crate::tunnel::pool::Tunnels;
use crate::tunnel::quic::{self, QuicPool, QuicSettings};
use crate::tunnel::tcp::{TcpPool, TcpSettings};
use crate::tunnel::{ALPN_H2, ALPN_QUIC};
use crate::watch::WatchTargets;

/// What every connection handler shares.
pub struct Context {
    /// The settings.
    pub config: ProxyConfig,
    /// The view of the mesh.
    pub directory: SharedDirectory,
    /// The authorization policies in force.
    pub policies: SharedPolicies,
    /// SVIDs of local workloads.
    pub identities: Arc<Identities>,
    /// The trust bundle.
    pub bundle: SharedBundle,
    /// Metrics.
    pub metrics: Metrics,
    /// Outbound tunnels, over QUIC and TCP.
    pub tunnels: Arc<Tunnels>,
    /// TLS for the TCP tunnel listener: workload certificates chosen by SNI, client SVIDs
    /// required.
    pub inbound_tls: Arc<rustls::ServerConfig>,
    /// Liveness options of every TCP socket.
    pub keepalive: Keepalive,
}

/// Runs the proxy until SIGINT or SIGTERM, then removes the capture rules.
pub async fn run(config: ProxyConfig) -> Result<()> {
    let td = TrustDomain::parse(&config.trust_domain)
        .with_context(|| format!("--trust-domain {:?}", config.trust_domain))?;
    let paths = StatePaths::new(&config.state_dir);
    edgeward_ca::files::create_private_dir(&config.state_dir)
        .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
    tracing::info!(config = ?config, "effective configuration");

    let metrics = Metrics::new();
    let bundle = SharedBundle::new(node::initial_bundle(
        &paths,
        config.bootstrap_bundle.as_deref(),
        &td,
    )?);
    let node = Arc::new(
        node::load_or_join(
            &paths,
            &config.node_name,
            config.control,
            config.join_token_file.as_deref(),
            &bundle,
        )
        .await?,
    );
    let channel = control_channel(&config, &td, &node, &bundle);

    let identities = Arc::new(Identities::new());
    let keepalive = keepalive(&config);
    let ctx = Arc::new(Context {
        directory: SharedDirectory::new(),
        policies: SharedPolicies::default(),
        inbound_tls: Arc::new(inbound_tls(&bundle, identities.clone(), &metrics, ALPN_H2)),
        identities,
        tunnels: Arc::new(tunnels(&config, &bundle, &metrics, keepalive)?),
        bundle: bundle.clone(),
        metrics: metrics.clone(),
        keepalive,
        config,
    });

    spawn_background(&ctx, &node, channel, paths)?;
    let rules = start_listeners(&ctx).await?;
    tracing::info!(node = %ctx.config.node_name, id = %node.id, "proxy started");
    edgeward_proto::signal::shutdown().await;
    if let Some(rules) = rules {
        rules.remove();
    }
    tracing::info!("proxy stopped");
    Ok(())
}

fn control_channel(
    config: &ProxyConfig,
    td: &TrustDomain,
    node: &node::NodeIdentity,
    bundle: &SharedBundle,
) -> tonic::transport::Channel {
    let verifier = SpiffeVerifier::new(bundle.clone(), PeerPolicy::Exact(td.control_id()));
    let tls = tls::client_config(ServerVerifier(verifier), Some(node.slot.clone()), &[b"h2"]);
    edgeward_proto::channel::connect_lazy(config.control, Arc::new(tls))
}

fn inbound_tls(
    bundle: &SharedBundle,
    identities: Arc<Identities>,
    metrics: &Metrics,
    alpn: &[u8],
) -> rustls::ServerConfig {
    let verifier = SpiffeVerifier::new(bundle.clone(), PeerPolicy::AnyWorkload)
        .with_observer(metrics.handshake_observer("inbound"));
    let verifier = Arc::new(ClientVerifier::new(verifier, true));
    tls::server_config(verifier, identities, &[alpn])
}

/// TCP liveness: keepalive probes 10 s after the last data, every 5 s, four unanswered ones
/// declare the peer dead (30 s in all, the documented dead-peer bound); TCP_USER_TIMEOUT bounds
/// the time sent data may go unacknowledged the same way.
fn keepalive(config: &ProxyConfig) -> Keepalive {
    Keepalive {
        idle: Duration::from_secs(10),
        interval: Duration::from_secs(5),
        probes: 4,
        user_timeout: Some(config.tcp_user_timeout),
    }
}

fn quic_settings(config: &ProxyConfig) -> QuicSettings {
    QuicSettings {
        idle_timeout: config.quic_idle_timeout,
        probe_timeout: config.quic_probe_timeout,
        connect_timeout: config.connect_timeout,
        congestion: config.quic_congestion,
    }
}

fn tunnels(
    config: &ProxyConfig,
    bundle: &SharedBundle,
    metrics: &Metrics,
    keepalive: Keepalive,
) -> Result<Tunnels> {
    let tcp = TcpPool::new(
        bundle.clone(),
        metrics.clone(),
        TcpSettings {
            connect_timeout: config.connect_timeout,
            ping_interval: config.h2_ping_interval,
            ping_timeout: config.h2_ping_timeout,
            keepalive,
        },
    );
    let unspecified = match config.tunnel_listen {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let quic = QuicPool::new(
        unspecified,
        bundle.clone(),
        metrics.clone(),
        quic_settings(config),
    )
    .context("cannot open the QUIC client socket")?;
    let choices = PeerChoices::new(config.tunnel_transport, config.quic_reprobe_interval);
    let timeouts = (config.connect_timeout, config.quic_probe_timeout);
    Ok(Tunnels::new(
        tcp,
        quic,
        choices,
        metrics.clone(),
        timeouts,
        config.tunnel_idle_timeout,
    ))
}

fn spawn_background(
    ctx: &Arc<Context>,
    node: &Arc<node::NodeIdentity>,
    channel: tonic::transport::Channel,
    paths: StatePaths,
) -> Result<()> {
    let targets = WatchTargets {
        node: ctx.config.node_name.clone(),
        directory: ctx.directory.clone(),
        policies: ctx.policies.clone(),
        bundle: ctx.bundle.clone(),
        paths: paths.clone(),
        cache: MeshCache::new(&ctx.config.state_dir),
        metrics: ctx.metrics.clone(),
    };
    let state = cached_state(&targets);
    let addresses = ctx.config.tunnel_addresses();
    tokio::spawn(watch::watch_forever(
        channel.clone(),
        addresses,
        state,
        targets,
    ));
    let deps = IdentityDeps {
        files: WorkloadFiles::new(&ctx.config.state_dir)
            .context("cannot create the workload key directory")?,
        availability_target: ctx.config.availability_target,
        identities: ctx.identities.clone(),
        channel: channel.clone(),
        bundle: ctx.bundle.clone(),
        metrics: ctx.metrics.clone(),
    };
    tokio::spawn(workloads::manage(ctx.directory.clone(), deps));
    tokio::spawn(node::renew_forever(
        node.clone(),
        channel,
        paths,
        ctx.bundle.clone(),
        ctx.metrics.clone(),
        ctx.config.availability_target,
    ));
    Ok(())
}

/// The mesh state cached by the last run, put in force at once so the proxy serves even if the
/// control plane is away. A corrupt cache is set aside and the state fetched afresh.
fn cached_state(targets: &WatchTargets) -> MeshState {
    match targets.cache.load() {
        Ok(Some(state)) if watch::publish(&state, targets) => {
            tracing::info!(
                version = state.version,
                "serving from the cached mesh state"
            );
            state
        }
        Ok(_) => MeshState::default(),
        Err(error) => {
            tracing::error!(
                %error,
                "the cached mesh state is unusable; set aside, fetching it afresh"
            );
            targets.cache.set_aside();
            MeshState::default()
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Binds every listener, then installs the capture rules so that redirected traffic always
/// finds the proxy listening.
async fn start_listeners(ctx: &Arc<Context>) -> Result<Option<CaptureRules>> {
    let config = &ctx.config;
    let outbound = bind(config.outbound_listen, "outbound capture").await?;
    let tunnel = bind(config.tunnel_listen, "tunnel").await?;
    let quic_tls = inbound_tls(&ctx.bundle, ctx.identities.clone(), &ctx.metrics, ALPN_QUIC);
    let quic = quic::server_endpoint(config.tunnel_listen, quic_tls, &quic_settings(config))
        .with_context(|| format!("cannot listen on udp {} (tunnel)", config.tunnel_listen))?;
    let metrics = bind(config.metrics_addr, "metrics").await?;
    let ready = bind(config.ready_addr, "readiness").await?;

    tokio::spawn(outbound::serve(outbound, ctx.clone()));
    tokio::spawn(inbound::tcp::serve(tunnel, ctx.clone()));
    tokio::spawn(inbound::quic::serve(quic, ctx.clone()));
    tokio::spawn(tunnel::netwatch::watch(ctx.tunnels.clone()));
    tokio::spawn(ctx.tunnels.clone().sweep_forever());
    let m = ctx.metrics.clone();
    tokio::spawn(edgeward_proto::http_endpoint::serve(
        metrics,
        move |path| match path {
            "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", m.render()),
            _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        },
    ));
    let c = ctx.clone();
    tokio::spawn(edgeward_proto::http_endpoint::serve(
        ready,
        move |path| match path {
            "/healthz/ready" if is_ready(&c) => (StatusCode::OK, "text/plain", "ready\n".into()),
            "/healthz/ready" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready\n".into(),
            ),
            _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        },
    ));

    if config.capture_cidr.is_empty() {
        return Ok(None);
    }
    let rules = CaptureRules::new(config.capture_cidr.clone(), config.outbound_listen.port());
    rules
        .install()
        .context("cannot install the capture rules")?;
    tracing::info!(cidrs = ?config.capture_cidr, "capture rules installed");
    Ok(Some(rules))
}

/// Ready once a snapshot arrived and every local workload holds an SVID.
fn is_ready(ctx: &Context) -> bool {
    let dir = ctx.directory.get();
    dir.version > 0
        && ctx
            .identities
            .has_all(dir.local_workloads().iter().map(|w| &w.key))
}
