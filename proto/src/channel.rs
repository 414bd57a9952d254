//! A tonic channel to the control plane over a rustls configuration that the caller built (with
//! SPIFFE verification and, after joining, the node or admin SVID).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// How long connecting (TCP and TLS) may take before the call fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Interval of HTTP/2 PINGs on an idle control channel, so a dead control plane is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// How long a PING may go unanswered before the channel is considered dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a channel to `addr`, doing TLS with `tls` (its ALPN must offer `h2`); fails at once
/// when the control plane cannot be reached.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    endpoint(addr)
        .connect_with_connector(TlsConnect::new(addr, tls))
        .await
}

/// A channel like [`connect`]'s that connects on first use and reconnects after failures, for
/// long-lived clients that must start while the control plane is away.
pub fn connect_lazy(addr: SocketAddr, tls: Arc<ClientConfig>) -> Channel {
    endpoint(addr).connect_with_connector_lazy(TlsConnect::new(addr, tls))
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address forms a valid URI")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// Dials the control plane and does TLS; the URI tonic passes is ignored. The server name goes
/// out as SNI only: who the server is gets decided by the verifier in the configuration.
#[derive(Clone)]
struct TlsConnect {
    addr: SocketAddr,
    connector: TlsConnector,
}

impl TlsConnect {
    fn new(addr: SocketAddr, tls: Arc<ClientConfig>) -> Self {
        let connector = TlsConnector::from(tls);
        Self { addr, connector }
    }
}

impl tower::Service<http::Uri> for TlsConnect {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (addr, connector) = (self.addr, self.connector.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
