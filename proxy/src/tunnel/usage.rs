//! How busy a pooled tunnel connection is: the streams open on it and since when it has had
//! none, so that the pools can close connections nobody uses any more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::{Duration, Instant};

/// How often the pools look for connections idle longer than `idle`: a quarter of it, between
/// 1 s and 30 s, so a connection closes at most a quarter (or 30 s) after its limit.
pub fn sweep_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The use count of one tunnel connection.
#[derive(Debug)]
pub struct Usage {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Usage {
    /// A connection with no stream yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// Counts one more stream on the connection until the lease is dropped.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.active.fetch_add(1, Ordering::AcqRel);
        Lease(self.clone())
    }

    /// Whether no stream is open.
    pub fn unused(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// Whether no stream has been open for `limit`.
    pub fn idle_for(&self, limit: Duration) -> bool {
        self.unused()
            && self
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                >= limit
    }
}

/// One open stream on a pooled connection; dropping it ends the count.
#[derive(Debug)]
pub struct Lease(Arc<Usage>);

impl Drop for Lease {
    fn drop(&mut self) {
        let usage = &self.0;
        // Stamp first, so a sweep that sees the count at zero also sees a fresh time.
        *usage.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        usage.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_interval_follows_the_idle_limit_within_bounds() {
        assert_eq!(
            sweep_interval(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(8)),
            Duration::from_secs(2)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(100)),
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_after_its_last_stream_ends_and_the_limit_passes() {
        let usage = Usage::new();
        let limit = Duration::from_secs(10);
        let first = usage.lease();
        let second = usage.lease();
        tokio::time::advance(limit * 2).await;
        assert!(!usage.idle_for(limit), "streams are open");
        drop(first);
        assert!(!usage.unused());
        drop(second);
        assert!(usage.unused());
        assert!(!usage.idle_for(limit), "the last stream just ended");
        tokio::time::advance(limit).await;
        assert!(usage.idle_for(limit));
    }
}
