//! The transport choice for each peer node, and the backoff after failures. Pure state with
//! the time passed in, so the rules are tested on a controlled clock.
//!
//! In `auto` mode a peer starts on QUIC. When QUIC does not get through (no handshake, or a path
//! that went silent) the peer falls back to TCP, and QUIC is probed again in the background once
//! the re-probe interval has passed; a successful probe moves new streams back to QUIC. When a
//! peer cannot be reached at all, new connections to it fail at once during a backoff window
//! that doubles with each failure (with jitter) up to a cap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::TunnelTransport;

/// First backoff after a peer could not be reached.
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);

/// Longest backoff: a peer that comes back is used again within this much time.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// What to do for one new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Try QUIC; on [`super::TunnelError::QuicUnreachable`] fall back to TCP if allowed.
    Quic {
        /// Whether TCP may be used when QUIC does not get through.
        fallback: bool,
    },
    /// Use TCP; when `reprobe` is set, also try QUIC again in the background.
    Tcp {
        /// Time to probe QUIC again.
        reprobe: bool,
    },
    /// The peer failed recently: fail at once.
    Backoff,
}

#[derive(Debug)]
struct Peer {
    /// While set, the peer is on TCP until this instant.
    tcp_until: Option<Instant>,
    probing: bool,
    backoff: Backoff,
    failed_until: Option<Instant>,
}

impl Peer {
    fn new() -> Self {
        Self {
            tcp_until: None,
            probing: false,
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP),
            failed_until: None,
        }
    }
}

/// Per-peer transport state.
#[derive(Debug)]
pub struct PeerChoices {
    mode: TunnelTransport,
    reprobe: Duration,
    peers: Mutex<HashMap<SocketAddr, Peer>>,
}

impl PeerChoices {
    /// Choices for `mode`, re-probing QUIC `reprobe` after a fallback.
    pub fn new(mode: TunnelTransport, reprobe: Duration) -> Self {
        Self {
            mode,
            reprobe,
            peers: Mutex::default(),
        }
    }

    /// The plan for a new stream to `peer`.
    pub fn plan(&self, peer: SocketAddr, now: Instant) -> Plan {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let state = peers.entry(peer).or_insert_with(Peer::new);
        if state.failed_until.is_some_and(|t| now < t) {
            return Plan::Backoff;
        }
        match self.mode {
            TunnelTransport::Quic => Plan::Quic { fallback: false },
            TunnelTransport::Tcp => Plan::Tcp { reprobe: false },
            TunnelTransport::Auto => match state.tcp_until {
                None => Plan::Quic { fallback: true },
                Some(t) if now < t || state.probing => Plan::Tcp { reprobe: false },
                Some(_) => {
                    state.probing = true;
                    Plan::Tcp { reprobe: true }
                }
            },
        }
    }

    /// QUIC did not get through to `peer`: use TCP until the re-probe interval has passed.
    pub fn quic_unreachable(&self, peer: SocketAddr, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let state = peers.entry(peer).or_insert_with(Peer::new);
        state.tcp_until = Some(now + self.reprobe);
        state.probing = false;
    }

    /// QUIC works with `peer`: new streams use it.
    pub fn quic_works(&self, peer: SocketAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = peers.get_mut(&peer) {
            state.tcp_until = None;
            state.probing = false;
        }
    }

    /// A stream to `peer` was opened: clear any backoff.
    pub fn succeeded(&self, peer: SocketAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = peers.get_mut(&peer) {
            state.failed_until = None;
            state.backoff.reset();
        }
    }

    /// `peer` could not be reached by any allowed transport: back off.
    pub fn unreachable(&self, peer: SocketAddr, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let state = peers.entry(peer).or_insert_with(Peer::new);
        state.failed_until = Some(now + state.backoff.next_delay());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "198.18.0.2:15008".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn auto_falls_back_to_tcp_and_reprobes_once_per_interval() {
        let choices = PeerChoices::new(TunnelTransport::Auto, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(choices.plan(peer(), t0), Plan::Quic { fallback: true });

        choices.quic_unreachable(peer(), t0);
        let t1 = t0 + Duration::from_secs(59);
        assert_eq!(choices.plan(peer(), t1), Plan::Tcp { reprobe: false });
        let t2 = t0 + Duration::from_secs(61);
        assert_eq!(choices.plan(peer(), t2), Plan::Tcp { reprobe: true });
        assert_eq!(
            choices.plan(peer(), t2),
            Plan::Tcp { reprobe: false },
            "one probe at a time"
        );

        choices.quic_works(peer());
        assert_eq!(choices.plan(peer(), t2), Plan::Quic { fallback: true });
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_modes_never_switch() {
        let quic = PeerChoices::new(TunnelTransport::Quic, Duration::from_secs(60));
        quic.quic_unreachable(peer(), Instant::now());
        assert_eq!(
            quic.plan(peer(), Instant::now()),
            Plan::Quic { fallback: false }
        );
        let tcp = PeerChoices::new(TunnelTransport::Tcp, Duration::from_secs(60));
        assert_eq!(
            tcp.plan(peer(), Instant::now()),
            Plan::Tcp { reprobe: false }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_to_the_cap_and_clears_on_success() {
        let choices = PeerChoices::new(TunnelTransport::Tcp, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..10 {
            choices.unreachable(peer(), now);
        }
        assert_eq!(choices.plan(peer(), now), Plan::Backoff);
        assert_eq!(
            choices.plan(peer(), now + BACKOFF_CAP),
            Plan::Tcp { reprobe: false }
        );
        choices.unreachable(peer(), now);
        choices.succeeded(peer());
        assert_eq!(choices.plan(peer(), now), Plan::Tcp { reprobe: false });
    }
}
