//! The TCP tunnel: TLS 1.3 over TCP to the peer's tcp/15008, HTTP/2 on top, one CONNECT stream
//! per captured connection. Connections are pooled by [`PoolKey`]; each is pinged so a silent
//! peer is dropped in bounded time, and each is closed at once when the local address it was
//! made from disappears (a handover), so its streams fail fast instead of hanging.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use edgeward_ca::{tls, CertSlot, PeerPolicy, ServerVerifier, SharedBundle, SpiffeVerifier};
use h2::client::SendRequest;
use http::{Method, Request};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::h2io::{H2Reader, H2Writer};
use super::preamble::Status;
use super::stream::{Transport, TunnelStream};
use super::usage::{Entry, Lease, Pool, Usage};
use super::{PoolKey, StreamRequest, TunnelError, ALPN_H2, CONNECTION_WINDOW, ERROR_HEADER};
use super::{MAX_FRAME, SOURCE_ADDR_HEADER, STREAM_WINDOW};
use crate::metrics::Metrics;

/// Liveness settings of TCP tunnels.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// Bound on connect, handshake and CONNECT exchange.
    pub connect_timeout: Duration,
    /// Interval of HTTP/2 PINGs.
    pub ping_interval: Duration,
    /// How long a PING may go unanswered.
    pub ping_timeout: Duration,
    /// Socket options.
    pub keepalive: edgeward_proto::net::Keepalive,
}

struct Pooled {
    sender: SendRequest<Bytes>,
    generation: SystemTime,
    /// Asks the connection's driver to check the peer now.
    check: Arc<Notify>,
    /// Asks the connection's driver to close it (idle, or made with an older SVID).
    retire: Arc<Retire>,
    usage: Arc<Usage>,
}

impl Entry for Pooled {
    fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Only the driver knows; a connection that ended ignores a request to close.
    fn ended(&self) -> bool {
        false
    }
}

/// A request to a connection's driver to close it because nothing uses it any more.
#[derive(Default)]
struct Retire {
    notify: Notify,
    reason: std::sync::OnceLock<&'static str>,
}

impl Retire {
    /// Asks for the close, for `reason` (`idle` or `renewed`); the first reason given stays.
    fn ask(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.notify.notify_one();
    }
}

/// Open TCP tunnel connections, by the local address they were made from.
#[derive(Default)]
struct Live {
    next_id: AtomicU64,
    by_id: Mutex<HashMap<u64, (IpAddr, Arc<Notify>)>>,
}

/// The pool of TCP tunnel connections.
pub struct TcpPool {
    pool: Pool<Pooled>,
    live: Arc<Live>,
    bundle: SharedBundle,
    metrics: Metrics,
    settings: TcpSettings,
}

impl TcpPool {
    /// An empty pool.
    pub fn new(bundle: SharedBundle, metrics: Metrics, settings: TcpSettings) -> Self {
        Self {
            pool: Pool::default(),
            live: Arc::default(),
            bundle,
            metrics,
            settings,
        }
    }

    /// Opens a CONNECT stream to `req.target` through the peer, reusing a pooled connection.
    pub async fn open(&self, req: &StreamRequest) -> Result<TunnelStream, TunnelError> {
        let (sender, check, lease) = self.sender(req).await?;
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri(req.target.to_string())
            .header(SOURCE_ADDR_HEADER, req.client.to_string())
            .body(())
            .expect("a socket address is a valid authority");
        let (response, send) = sender.clone().send_request(connect, false)?;
        // The peer dials the pod within the connect timeout and then answers either way; no
        // answer by twice that means the tunnel itself may be dead, which the driver now checks.
        let limit = self.settings.connect_timeout * 2;
        let Ok(response) = tokio::time::timeout(limit, response).await else {
            check.notify_one();
            return Err(TunnelError::Timeout("the CONNECT exchange"));
        };
        let response = response?;
        if response.status() != http::StatusCode::OK {
            let message = response
                .headers()
                .get(ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no reason given")
                .to_owned();
            let reason = Status::from_http(response.status()).reason();
            return Err(TunnelError::Refused { reason, message });
        }
        let stream = TunnelStream::h2(H2Reader::new(response.into_body()), H2Writer::new(send));
        Ok(stream.leased(lease))
    }

    /// Closes every tunnel connection made from one of `gone`: its streams fail now rather than
    /// when the dead-peer bound runs out.
    pub fn close_bound_to(&self, gone: &[IpAddr]) {
        let by_id = self.live.by_id.lock().unwrap_or_else(|e| e.into_inner());
        for (local, closer) in by_id.values() {
            if gone.contains(local) {
                closer.notify_one();
            }
        }
    }

    /// A ready sender on the pooled connection, connecting first when there is none, the old
    /// one has closed, or it was made with an older SVID. Callers for one key wait on each
    /// other, so only one connection is made.
    async fn sender(
        &self,
        req: &StreamRequest,
    ) -> Result<(SendRequest<Bytes>, Arc<Notify>, Lease), TunnelError> {
        let (key, generation) = PoolKey::of(req);
        let slot = self.pool.slot(key);
        let mut pooled = slot.lock().await;
        let mut reconnect = false;
        if let Some(p) = pooled.as_ref().filter(|p| p.generation == generation) {
            match p.sender.clone().ready().await {
                Ok(ready) => return Ok((ready, p.check.clone(), p.usage.lease())),
                Err(error) => {
                    tracing::debug!(%error, peer = %req.peer, "pooled tunnel closed");
                    reconnect = true;
                }
            }
        }
        let (sender, check, retire) = self.connect(req).await?;
        if reconnect {
            self.metrics.reconnect(&req.peer_node);
        }
        let usage = Usage::new();
        let lease = usage.lease();
        let old = pooled.replace(Pooled {
            sender: sender.clone(),
            generation,
            check: check.clone(),
            retire,
            usage,
        });
        if let Some(old) = old.filter(|_| !reconnect) {
            self.pool.retire(old);
        }
        Ok((sender.ready().await?, check, lease))
    }

    /// Closes the connections that carried no stream for `idle` and the retired ones that
    /// carry none any more; gives how many it asked to close.
    pub fn sweep(&self, idle: Duration) -> usize {
        self.pool.sweep(idle, |p, reason| p.retire.ask(reason))
    }

    async fn connect(
        &self,
        req: &StreamRequest,
    ) -> Result<(SendRequest<Bytes>, Arc<Notify>, Arc<Retire>), TunnelError> {
        let timeout = self.settings.connect_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(req.peer))
            .await
            .map_err(|_| TunnelError::Timeout("connecting to the peer node"))?
            .map_err(|source| TunnelError::Connect {
                peer: req.peer,
                source,
            })?;
        edgeward_proto::net::tune(&tcp, &self.settings.keepalive);
        let local = tcp.local_addr().map(|a| a.ip()).ok();
        let tls = self.handshake(req, tcp).await?;

        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake::<_, Bytes>(tls)
            .await?;
        tracing::debug!(peer = %req.peer, destination = %req.destination, "TCP tunnel open");
        let closer = Arc::new(Notify::new());
        let id = self.live.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(local) = local {
            let mut by_id = self.live.by_id.lock().unwrap_or_else(|e| e.into_inner());
            by_id.insert(id, (local, closer.clone()));
        }
        let check = Arc::new(Notify::new());
        let retire = Arc::new(Retire::default());
        let driver = Driver {
            peer_node: req.peer_node.clone(),
            metrics: self.metrics.clone(),
            settings: self.settings.clone(),
            closer,
            check: check.clone(),
            retire: retire.clone(),
        };
        let live = self.live.clone();
        tokio::spawn(async move {
            driver.run(connection).await;
            live.by_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
        Ok((sender, check, retire))
    }

    async fn handshake(
        &self,
        req: &StreamRequest,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, TunnelError> {
        let policy = PeerPolicy::Exact(req.destination.clone());
        let verifier = SpiffeVerifier::new(self.bundle.clone(), policy)
            .with_observer(self.metrics.handshake_observer("outbound"));
        let client_cert = Arc::new(CertSlot::with(req.svid.certified_key()));
        let config = tls::client_config(ServerVerifier(verifier), Some(client_cert), &[ALPN_H2]);
        let sni = tls::sni_for(&req.destination);
        let connect = TlsConnector::from(Arc::new(config)).connect(sni, tcp);
        let result = tokio::time::timeout(self.settings.connect_timeout, connect)
            .await
            .map_err(|_| TunnelError::Timeout("the TLS handshake"))?;
        result.map_err(|error| {
            let reason = edgeward_ca::io_rejection_reason(&error);
            if !edgeward_ca::is_verifier_refusal(&error) {
                self.metrics.handshake_failed("outbound", reason);
            }
            TunnelError::Handshake {
                peer: req.peer,
                reason,
                message: error.to_string(),
            }
        })
    }
}

/// Runs one TCP tunnel connection.
struct Driver {
    peer_node: String,
    metrics: Metrics,
    settings: TcpSettings,
    closer: Arc<Notify>,
    check: Arc<Notify>,
    retire: Arc<Retire>,
}

/// How long a PING asked for out of turn (after a stream got no answer) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

impl Driver {
    /// Drives the connection until it closes, pinging the peer (and recording the round trip)
    /// so that a silent peer is dropped, which fails its streams instead of hanging them.
    async fn run(self, mut connection: h2::client::Connection<TlsStream<TcpStream>, Bytes>) {
        let Some(mut ping) = connection.ping_pong() else {
            let _ = connection.await;
            return;
        };
        self.metrics.tunnels_open.inc();
        let keepalive = async {
            loop {
                let (interval, timeout) = (self.settings.ping_interval, self.settings.ping_timeout);
                let limit = tokio::select! {
                    () = tokio::time::sleep(interval) => timeout,
                    () = self.check.notified() => CHECK_TIMEOUT.min(timeout),
                };
                let sent = tokio::time::Instant::now();
                let pong = ping.ping(h2::Ping::opaque());
                match tokio::time::timeout(limit, pong).await {
                    Ok(Ok(_)) => self.metrics.peer_rtt(&self.peer_node, sent.elapsed()),
                    _ => return,
                }
            }
        };
        let peer = self.peer_node.as_str();
        // Biased, the close asked for by the sweep first: the sweep drops the pooled sender just
        // after asking, which lets the connection end at once, and that end must still be
        // counted as the retirement it is.
        tokio::select! {
            biased;
            () = self.retire.notify.notified() => {
                let reason = self.retire.reason.get().copied().unwrap_or("idle");
                self.metrics.tunnel_retired(Transport::Tcp, reason);
                tracing::debug!(peer, reason, "TCP tunnel unused; closed");
            }
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::debug!(peer, %error, "TCP tunnel ended with an error");
                }
            }
            () = keepalive => {
                self.metrics.keepalive_timeout(peer, "tcp");
                tracing::warn!(
                    peer,
                    "tunnel peer stopped answering PINGs; dropping the connection",
                );
            }
            () = self.closer.notified() => {
                tracing::info!(peer, "local address gone; closing the TCP tunnel made from it");
            }
        }
        self.metrics.tunnels_open.dec();
    }
}
