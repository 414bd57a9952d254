//! The QUIC tunnel: one QUIC connection per [`PoolKey`] to the peer's udp/15008, with the same
//! mutual TLS and SPIFFE verification as the TCP tunnel, and one bidirectional stream per
//! captured connection, opened by the [`super::preamble`].
//!
//! The client side uses its own endpoint on an ephemeral port, so that on a local address change
//! it can move to a fresh socket ([`QuicPool::rebind`]): every connection then switches to a new
//! connection ID and pings from the new address, and the peer validates the new path. Streams
//! carry on; nothing reconnects. Each connection also announces its idle timeout to the peer on a
//! unidirectional stream, so both sides send keep-alives at a third of the negotiated (smaller)
//! timeout whatever each was configured with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use edgeward_ca::{tls, CertSlot, PeerPolicy, ServerVerifier, SharedBundle, SpiffeVerifier};
use quinn::congestion::{BbrConfig, CubicConfig};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint, IdleTimeout, TransportConfig, VarInt};
use tokio::time::Instant;

use super::preamble::{self, Status};
use super::stream::{Transport, TunnelStream};
use super::usage::{Entry, Lease, Pool, Usage};
use super::{PoolKey, StreamRequest, TunnelError, ALPN_QUIC, CONNECTION_WINDOW, STREAM_WINDOW};
use crate::config::Congestion;
use crate::metrics::Metrics;

/// Magic of the idle-timeout announcement on the first unidirectional stream.
const HELLO: &[u8; 4] = b"EWK1";

/// Shortest keep-alive interval, whatever the negotiated idle timeout.
const MIN_KEEPALIVE: Duration = Duration::from_millis(200);

/// How often connection statistics (RTT, losses, path) are read into metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of QUIC tunnels.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// Idle timeout offered to peers.
    pub idle_timeout: Duration,
    /// Time allowed for a handshake, and for a silent path, before QUIC counts as unreachable.
    pub probe_timeout: Duration,
    /// Bound on the whole CONNECT exchange.
    pub connect_timeout: Duration,
    /// The congestion controller.
    pub congestion: Congestion,
}

/// The transport parameters of every tunnel connection, both sides.
pub fn transport_config(idle_timeout: Duration, congestion: Congestion) -> TransportConfig {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(idle_timeout).unwrap_or(IdleTimeout::from(VarInt::MAX));
    t.max_idle_timeout(Some(idle));
    // Keep-alives are sent by `maintain`, from the negotiated timeout rather than our own.
    t.keep_alive_interval(None);
    t.max_concurrent_bidi_streams(VarInt::from_u32(4096));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(u64::from(CONNECTION_WINDOW));
    match congestion {
        Congestion::Cubic => t.congestion_controller_factory(Arc::new(CubicConfig::default())),
        Congestion::Bbr => t.congestion_controller_factory(Arc::new(BbrConfig::default())),
    };
    t
}

/// The server endpoint on udp `addr`, presenting workload certificates chosen by SNI.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    settings: &QuicSettings,
) -> std::io::Result<Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let transport = transport_config(settings.idle_timeout, settings.congestion);
    config.transport_config(Arc::new(transport));
    config.migration(true);
    Endpoint::server(config, addr)
}

struct Pooled {
    connection: Connection,
    generation: SystemTime,
    usage: Arc<Usage>,
}

impl Entry for Pooled {
    fn usage(&self) -> &Usage {
        &self.usage
    }

    fn ended(&self) -> bool {
        self.connection.close_reason().is_some()
    }
}

/// The client side: an endpoint and the pool of its connections.
pub struct QuicPool {
    endpoint: Endpoint,
    bind: SocketAddr,
    pool: Pool<Pooled>,
    live: Arc<Mutex<HashMap<usize, (String, Connection)>>>,
    bundle: SharedBundle,
    metrics: Metrics,
    settings: QuicSettings,
}

impl QuicPool {
    /// A client endpoint on `bind` (an unspecified address, ephemeral port).
    pub fn new(
        bind: SocketAddr,
        bundle: SharedBundle,
        metrics: Metrics,
        settings: QuicSettings,
    ) -> std::io::Result<Self> {
        Ok(Self {
            endpoint: Endpoint::client(bind)?,
            bind,
            pool: Pool::default(),
            live: Arc::default(),
            bundle,
            metrics,
            settings,
        })
    }

    /// Opens a stream to `req.target` through the peer. `handshake_limit` bounds a new
    /// connection's handshake (short when TCP can take over, the connect timeout otherwise).
    pub async fn open(
        &self,
        req: &StreamRequest,
        handshake_limit: Duration,
    ) -> Result<TunnelStream, TunnelError> {
        let (connection, lease) = self.connection(req, handshake_limit).await?;
        let request = preamble::Request {
            target: req.target,
            source: req.client,
        };
        // Opening waits while the peer allows no more streams, and writing while it grants no
        // flow-control credit: neither may hold the application's connection forever.
        let open = async {
            let (mut send, recv) = connection.open_bi().await.map_err(|e| quic(req, e))?;
            preamble::write_request(&mut send, &request)
                .await
                .map_err(|e| quic(req, e))?;
            Ok::<_, TunnelError>((send, recv))
        };
        let (send, mut recv) = tokio::time::timeout(self.settings.connect_timeout, open)
            .await
            .map_err(|_| TunnelError::Timeout("opening a QUIC stream"))??;
        let (status, message) = self.reply(req, &connection, &mut recv).await?;
        if status != Status::Connected {
            let reason = status.reason();
            return Err(TunnelError::Refused { reason, message });
        }
        Ok(TunnelStream::quic(recv, send).leased(lease))
    }

    /// Waits for the reply; if nothing at all arrives from the peer within the probe timeout,
    /// the path is dead (UDP blocked since, say): the connection is closed and reported
    /// unreachable so the caller can use TCP for this very stream.
    async fn reply(
        &self,
        req: &StreamRequest,
        connection: &Connection,
        recv: &mut quinn::RecvStream,
    ) -> Result<(Status, String), TunnelError> {
        let received = connection.stats().udp_rx.datagrams;
        let reply = preamble::read_reply(recv);
        let probe = tokio::time::sleep(self.settings.probe_timeout);
        let deadline = tokio::time::sleep(self.settings.connect_timeout);
        tokio::pin!(reply, probe, deadline);
        let mut probed = false;
        loop {
            tokio::select! {
                r = &mut reply => return r.map_err(|e| quic(req, e)),
                () = &mut probe, if !probed => {
                    probed = true;
                    if connection.stats().udp_rx.datagrams == received {
                        connection.close(VarInt::from_u32(0), b"path silent");
                        let why = "the path went silent";
                        return Err(TunnelError::QuicUnreachable { peer: req.peer, why });
                    }
                }
                () = &mut deadline => return Err(TunnelError::Timeout("the CONNECT exchange")),
            }
        }
    }

    /// Makes (or checks) the pooled connection for `req` without opening a stream: the
    /// background probe that moves a peer back from TCP to QUIC.
    pub async fn probe(&self, req: &StreamRequest) -> Result<(), TunnelError> {
        self.connection(req, self.settings.probe_timeout)
            .await
            .map(|_| ())
    }

    /// The pooled connection for `req` (made first when there is none, it closed, or it was
    /// made with an older SVID) and a lease on it, taken while the slot is held so that the
    /// idle sweep cannot close it in between.
    async fn connection(
        &self,
        req: &StreamRequest,
        handshake_limit: Duration,
    ) -> Result<(Connection, Lease), TunnelError> {
        let (key, generation) = PoolKey::of(req);
        let slot = self.pool.slot(key);
        let mut pooled = slot.lock().await;
        let reconnect = match pooled.as_ref() {
            Some(p) if p.generation == generation && p.connection.close_reason().is_none() => {
                return Ok((p.connection.clone(), p.usage.lease()));
            }
            Some(p) => p.connection.close_reason().is_some(),
            None => false,
        };
        let connection = self.connect(req, handshake_limit).await?;
        if reconnect {
            self.metrics.reconnect(&req.peer_node);
        }
        let usage = Usage::new();
        let lease = usage.lease();
        let old = pooled.replace(Pooled {
            connection: connection.clone(),
            generation,
            usage,
        });
        if let Some(old) = old.filter(|p| !p.ended()) {
            self.pool.retire(old);
        }
        Ok((connection, lease))
    }

    /// Closes the connections that carried no stream for `idle` and the retired ones that
    /// carry none any more; gives how many.
    pub fn sweep(&self, idle: Duration) -> usize {
        self.pool.sweep(idle, |p, reason| {
            p.connection.close(VarInt::from_u32(0), reason.as_bytes());
            self.metrics.tunnel_retired(Transport::Quic, reason);
        })
    }

    async fn connect(
        &self,
        req: &StreamRequest,
        handshake_limit: Duration,
    ) -> Result<Connection, TunnelError> {
        let refusal = Arc::new(Mutex::new(None));
        let config = self.client_config(req, refusal.clone())?;
        let sni = tls::sni_for(&req.destination).to_str().into_owned();
        let connecting = self
            .endpoint
            .connect_with(config, req.peer, &sni)
            .map_err(|e| quic(req, e))?;
        let unreachable = TunnelError::QuicUnreachable {
            peer: req.peer,
            why: "no handshake",
        };
        let connection = match tokio::time::timeout(handshake_limit, connecting).await {
            Err(_) | Ok(Err(ConnectionError::TimedOut)) => return Err(unreachable),
            Ok(Err(error)) => return Err(self.handshake_error(req, &refusal, error)),
            Ok(Ok(connection)) => connection,
        };
        tracing::debug!(peer = %req.peer, destination = %req.destination, "QUIC tunnel open");
        self.track(req, &connection);
        Ok(connection)
    }

    fn client_config(
        &self,
        req: &StreamRequest,
        refusal: Arc<Mutex<Option<&'static str>>>,
    ) -> Result<quinn::ClientConfig, TunnelError> {
        let metrics = self.metrics.clone();
        let observer: edgeward_ca::RejectionObserver = Arc::new(move |e| {
            *refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.reason());
            metrics.handshake_failed("outbound", e.reason());
        });
        let policy = PeerPolicy::Exact(req.destination.clone());
        let verifier = SpiffeVerifier::new(self.bundle.clone(), policy).with_observer(observer);
        let client_cert = Arc::new(CertSlot::with(req.svid.certified_key()));
        let rustls = tls::client_config(ServerVerifier(verifier), Some(client_cert), &[ALPN_QUIC]);
        let crypto = QuicClientConfig::try_from(rustls).map_err(|e| quic(req, e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let transport = transport_config(self.settings.idle_timeout, self.settings.congestion);
        config.transport_config(Arc::new(transport));
        Ok(config)
    }

    /// A failed handshake: our verifier's refusal if it refused, the peer's alert otherwise.
    fn handshake_error(
        &self,
        req: &StreamRequest,
        refusal: &Mutex<Option<&'static str>>,
        error: ConnectionError,
    ) -> TunnelError {
        let ours = *refusal.lock().unwrap_or_else(|p| p.into_inner());
        let reason = match (&ours, &error) {
            (Some(reason), _) => reason,
            (None, ConnectionError::ConnectionClosed(_)) => "peer_alert",
            (None, _) => "quic_handshake",
        };
        if ours.is_none() {
            self.metrics.handshake_failed("outbound", reason);
        }
        TunnelError::Handshake {
            peer: req.peer,
            reason,
            message: error.to_string(),
        }
    }

    fn track(&self, req: &StreamRequest, connection: &Connection) {
        let id = connection.stable_id();
        let live = self.live.clone();
        live.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (req.peer_node.clone(), connection.clone()));
        let maintenance = Maintenance {
            connection: connection.clone(),
            peer: req.peer_node.clone(),
            idle_timeout: self.settings.idle_timeout,
            metrics: self.metrics.clone(),
            watch_path: false,
        };
        let open = self.metrics.quic_tunnels_open.clone();
        open.inc();
        tokio::spawn(async move {
            maintenance.run().await;
            live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            open.dec();
        });
    }

    /// Moves every client connection to a fresh socket after a local address change.
    pub fn rebind(&self) -> std::io::Result<()> {
        let socket = std::net::UdpSocket::bind(self.bind)?;
        self.endpoint.rebind(socket)?;
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for (peer, _) in live.values() {
            self.metrics.migration(peer);
        }
        tracing::info!(
            connections = live.len(),
            "QUIC tunnels moved to the new local address"
        );
        Ok(())
    }
}

fn quic(req: &StreamRequest, error: impl std::fmt::Display) -> TunnelError {
    TunnelError::Quic {
        peer: req.peer,
        message: error.to_string(),
    }
}

/// The upkeep of one QUIC tunnel connection, on either side: the idle-timeout exchange,
/// keep-alives, statistics, and (on the server) noticing that the client moved to a new path.
pub struct Maintenance {
    /// The connection.
    pub connection: Connection,
    /// The peer node's name (or address) for metrics.
    pub peer: String,
    /// Our idle timeout.
    pub idle_timeout: Duration,
    /// Metrics.
    pub metrics: Metrics,
    /// Count changes of the peer's address as migrations (the server side).
    pub watch_path: bool,
}

impl Maintenance {
    /// Runs until the connection closes.
    pub async fn run(self) {
        let negotiated = self.negotiated_idle_timeout().await;
        let interval = (negotiated / 3).max(MIN_KEEPALIVE);
        tracing::debug!(peer = %self.peer, ?negotiated, ?interval, "QUIC keep-alive interval");
        let drain = drain_datagrams(self.connection.clone());
        tokio::pin!(drain);
        let mut keepalive = tokio::time::interval(interval);
        let mut stats = tokio::time::interval(STATS_INTERVAL);
        let (mut lost, mut remote) = (0, self.connection.remote_address());
        let mut heard = (self.connection.stats().udp_rx.datagrams, Instant::now());
        loop {
            tokio::select! {
                _ = keepalive.tick() => {
                    // A DATAGRAM frame is ack-eliciting: the peer's ACK refreshes both timers.
                    if self.connection.send_datagram(Bytes::from_static(b"k")).is_err() {
                        break;
                    }
                }
                _ = stats.tick() => {
                    self.record_stats(&mut lost, &mut remote);
                    if self.silent_for_too_long(&mut heard, negotiated) {
                        break;
                    }
                }
                () = &mut drain => {}
                reason = self.connection.closed() => {
                    if matches!(reason, ConnectionError::TimedOut) {
                        self.metrics.keepalive_timeout(&self.peer, "quic");
                        tracing::warn!(peer = %self.peer, "QUIC tunnel peer went silent; closed");
                    }
                    break;
                }
            }
        }
    }

    /// Closes the connection when nothing at all has arrived from the peer for the negotiated
    /// idle timeout. QUIC's own idle timer restarts when a keep-alive goes out after the last
    /// packet received, so on its own it notices a dead peer only up to one keep-alive interval
    /// late; this keeps the dead-peer bound at the idle timeout.
    fn silent_for_too_long(&self, heard: &mut (u64, Instant), limit: Duration) -> bool {
        let received = self.connection.stats().udp_rx.datagrams;
        if received != heard.0 {
            *heard = (received, Instant::now());
            return false;
        }
        if heard.1.elapsed() < limit {
            return false;
        }
        self.connection.close(VarInt::from_u32(0), b"peer silent");
        self.metrics.keepalive_timeout(&self.peer, "quic");
        tracing::warn!(peer = %self.peer, silent = ?limit, "QUIC tunnel peer went silent; closed");
        true
    }

    /// Announces our idle timeout and learns the peer's; keep-alives go at a third of the
    /// smaller, so neither side's timer can expire on an idle but healthy tunnel.
    async fn negotiated_idle_timeout(&self) -> Duration {
        let ours = self.idle_timeout.as_millis() as u64;
        let announce = async {
            let mut s = self.connection.open_uni().await.ok()?;
            let mut hello = HELLO.to_vec();
            hello.extend_from_slice(&ours.to_be_bytes());
            s.write_all(&hello).await.ok()?;
            s.finish().ok()
        };
        let learn = async {
            let mut r = self.connection.accept_uni().await.ok()?;
            let mut hello = [0u8; 12];
            r.read_exact(&mut hello).await.ok()?;
            (&hello[..4] == HELLO).then(|| u64::from_be_bytes(hello[4..].try_into().unwrap()))
        };
        // Wait no longer than one keep-alive interval of our own for the peer's word.
        let wait = self.idle_timeout / 3;
        let (_, theirs) = tokio::join!(announce, tokio::time::timeout(wait, learn));
        let negotiated = match theirs {
            Ok(Some(t)) if t > 0 => ours.min(t),
            _ => ours,
        };
        Duration::from_millis(negotiated)
    }

    fn record_stats(&self, lost: &mut u64, remote: &mut SocketAddr) {
        let stats = self.connection.stats();
        self.metrics.peer_rtt(&self.peer, stats.path.rtt);
        self.metrics
            .lost_packets(&self.peer, stats.path.lost_packets.saturating_sub(*lost));
        *lost = stats.path.lost_packets;
        let now = self.connection.remote_address();
        if self.watch_path && now != *remote {
            self.metrics.migration(&self.peer);
            tracing::info!(
                peer = %self.peer,
                from = %remote,
                to = %now,
                "QUIC peer moved to a new path",
            );
            *remote = now;
        }
    }
}

/// Reads and drops the peer's keep-alive datagrams so they do not fill the receive buffer.
async fn drain_datagrams(connection: Connection) {
    while connection.read_datagram().await.is_ok() {}
    std::future::pending::<()>().await
}
