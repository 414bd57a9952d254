//! Outbound tunnel connections, pooled per (source workload, destination identity, peer node
//! address): each captured connection becomes one CONNECT stream on a shared HTTP/2 connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgeward_ca::{tls, CertSlot, PeerPolicy, ServerVerifier, SharedBundle, SpiffeId};
use edgeward_ca::{SpiffeVerifier, Svid};
use h2::client::SendRequest;
use http::{Method, Request};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::h2io::{H2Reader, H2Writer};
use super::STREAM_WINDOW;
use super::{TunnelError, CONNECTION_WINDOW, ERROR_HEADER, MAX_FRAME, SOURCE_ADDR_HEADER};
use crate::directory::WorkloadKey;
use crate::metrics::Metrics;

/// Interval of HTTP/2 PINGs on a tunnel connection, to notice a peer that went silent.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// How long a PING may go unanswered before the tunnel connection is dropped.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: WorkloadKey,
    destination: SpiffeId,
    peer: SocketAddr,
}

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Bytes>>>>;

/// One CONNECT to open.
pub struct StreamRequest {
    /// The source workload.
    pub source: WorkloadKey,
    /// Its SVID, presented as the client certificate.
    pub svid: Arc<Svid>,
    /// The SPIFFE ID the peer must present.
    pub destination: SpiffeId,
    /// The peer node's tunnel address.
    pub peer: SocketAddr,
    /// The pod address to connect to, on the peer's side.
    pub target: SocketAddr,
    /// The address of the pod that opened the connection.
    pub client: SocketAddr,
}

/// The pool of tunnel connections.
pub struct Pool {
    slots: Mutex<HashMap<PoolKey, Slot>>,
    bundle: SharedBundle,
    metrics: Metrics,
    timeout: Duration,
}

impl Pool {
    /// An empty pool; `timeout` bounds each connect, handshake and CONNECT.
    pub fn new(bundle: SharedBundle, metrics: Metrics, timeout: Duration) -> Self {
        Self {
            slots: Mutex::default(),
            bundle,
            metrics,
            timeout,
        }
    }

    /// Opens a CONNECT stream to `req.target` through the peer, reusing a pooled connection.
    pub async fn open(&self, req: &StreamRequest) -> Result<(H2Reader, H2Writer), TunnelError> {
        let sender = self.sender(req).await?;
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri(req.target.to_string())
            .header(SOURCE_ADDR_HEADER, req.client.to_string())
            .body(())
            .expect("a socket address is a valid authority");
        let (response, send) = sender.clone().send_request(connect, false)?;
        let response = tokio::time::timeout(self.timeout, response)
            .await
            .map_err(|_| TunnelError::Timeout("the CONNECT exchange"))??;
        if response.status() != http::StatusCode::OK {
            let message = response
                .headers()
                .get(ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no reason given")
                .to_owned();
            let status = response.status().as_u16();
            return Err(TunnelError::Refused { status, message });
        }
        Ok((H2Reader::new(response.into_body()), H2Writer::new(send)))
    }

    /// A ready sender on the pooled connection, connecting first when there is none or the old
    /// one has closed. Callers for one key wait on each other, so only one connection is made.
    async fn sender(&self, req: &StreamRequest) -> Result<SendRequest<Bytes>, TunnelError> {
        let key = PoolKey {
            source: req.source.clone(),
            destination: req.destination.clone(),
            peer: req.peer,
        };
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut pooled = slot.lock().await;
        if let Some(sender) = pooled.clone() {
            match sender.ready().await {
                Ok(ready) => return Ok(ready),
                Err(error) => tracing::debug!(%error, peer = %req.peer, "pooled tunnel closed"),
            }
        }
        let sender = self.connect(req).await?;
        *pooled = Some(sender.clone());
        Ok(sender.ready().await?)
    }

    async fn connect(&self, req: &StreamRequest) -> Result<SendRequest<Bytes>, TunnelError> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(req.peer))
            .await
            .map_err(|_| TunnelError::Timeout("connecting to the peer node"))?
            .map_err(|source| TunnelError::Connect {
                peer: req.peer,
                source,
            })?;
        crate::sockets::tune(&tcp);
        let tls = self.handshake(req, tcp).await?;

        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake::<_, Bytes>(tls)
            .await?;
        tracing::debug!(peer = %req.peer, destination = %req.destination, "tunnel connection open");
        tokio::spawn(drive(connection, req.peer, self.metrics.clone()));
        Ok(sender)
    }

    async fn handshake(
        &self,
        req: &StreamRequest,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, TunnelError> {
        let policy = PeerPolicy::Exact(req.destination.clone());
        let verifier = ServerVerifier(SpiffeVerifier::new(self.bundle.clone(), policy));
        let client_cert = Arc::new(CertSlot::with(req.svid.certified_key()));
        let config = tls::client_config(verifier, Some(client_cert), &[b"h2"]);
        let connect =
            TlsConnector::from(Arc::new(config)).connect(tls::sni_for(&req.destination), tcp);
        let result = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| TunnelError::Timeout("the TLS handshake"))?;
        result.map_err(|error| {
            let reason = edgeward_ca::io_rejection_reason(&error);
            self.metrics
                .handshake_failures
                .with_label_values(&["outbound", reason])
                .inc();
            TunnelError::Handshake {
                peer: req.peer,
                reason,
                message: error.to_string(),
            }
        })
    }
}

/// Runs a tunnel connection until it closes, pinging the peer so that a silent one is dropped
/// (which fails its streams) instead of hanging them.
async fn drive(
    mut connection: h2::client::Connection<TlsStream<TcpStream>, Bytes>,
    peer: SocketAddr,
    metrics: Metrics,
) {
    let Some(mut ping) = connection.ping_pong() else {
        let _ = connection.await;
        return;
    };
    metrics.tunnels_open.inc();
    let keepalive = async {
        loop {
            tokio::time::sleep(PING_INTERVAL).await;
            let pong = tokio::time::timeout(PING_TIMEOUT, ping.ping(h2::Ping::opaque())).await;
            if !matches!(pong, Ok(Ok(_))) {
                return;
            }
        }
    };
    tokio::select! {
        result = &mut connection => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "tunnel connection ended with an error");
            }
        }
        () = keepalive => {
            tracing::warn!(
                %peer,
                "tunnel peer stopped answering PINGs; dropping the connection",
            )
        },
    }
    metrics.tunnels_open.dec();
}
