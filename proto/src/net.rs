//! Socket plumbing: accept loops that survive transient failures such as running out of file
//! descriptors, and the keepalive options every accepted or opened TCP socket gets.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long to pause after a failed accept before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections forever and spawns `handle` for each; `what` names the listener in logs.
pub async fn accept_forever<F, Fut>(listener: TcpListener, what: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle(stream, peer));
            }
            Err(error) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(%error, listener = what, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// TCP liveness settings: how a peer that vanished without a FIN or RST is noticed, whether
/// the connection is idle (keepalive probes) or has data in flight (user timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the kernel declares the peer dead.
    pub probes: u32,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged; `None` keeps the kernel's.
    pub user_timeout: Option<Duration>,
}

impl Default for Keepalive {
    /// 30 s idle, then a probe every 10 s, dead after 3 unanswered: about a minute.
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            probes: 3,
            user_timeout: None,
        }
    }
}

/// Disables Nagle (edgeward writes whole messages) and sets the liveness options.
pub fn tune(stream: &TcpStream, keepalive: &Keepalive) {
    let _ = stream.set_nodelay(true);
    let probes = socket2::TcpKeepalive::new()
        .with_time(keepalive.idle)
        .with_interval(keepalive.interval)
        .with_retries(keepalive.probes);
    let sock = socket2::SockRef::from(stream);
    if let Err(error) = sock.set_tcp_keepalive(&probes) {
        tracing::debug!(%error, "cannot set TCP keepalive");
    }
    if let Err(error) = sock.set_tcp_user_timeout(keepalive.user_timeout) {
        tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
    }
}
