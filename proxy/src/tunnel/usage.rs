//! The bookkeeping both tunnel pools share: one slot per [`PoolKey`], how busy each pooled
//! connection is (the streams open on it and since when it has had none), the connections
//! made with an SVID since renewed, and the sweep that closes what nobody uses any more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::{Duration, Instant};

use super::PoolKey;

/// The pooled connection of one key, if any; held locked while it is looked at or made, so
/// that callers for one key wait for each other and only one connection is made.
pub type Slot<P> = Arc<tokio::sync::Mutex<Option<P>>>;

/// What the sweep needs to know of a pooled connection.
pub trait Entry {
    /// Its use count.
    fn usage(&self) -> &Usage;
    /// Whether it is known to have ended already (nothing left to close).
    fn ended(&self) -> bool;
}

/// The slots of one transport's pool and its retired connections.
pub struct Pool<P> {
    slots: Mutex<HashMap<PoolKey, Slot<P>>>,
    /// Connections made with an SVID since renewed, closed once their last stream ends.
    retired: Mutex<Vec<P>>,
}

impl<P> Default for Pool<P> {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
            retired: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<P: Entry> Pool<P> {
    /// The slot of `key`, made empty when there is none.
    pub fn slot(&self, key: PoolKey) -> Slot<P> {
        lock(&self.slots).entry(key).or_default().clone()
    }

    /// Keeps `old`, replaced in its slot by a connection with a newer SVID, until its last
    /// stream ends.
    pub fn retire(&self, old: P) {
        lock(&self.retired).push(old);
    }

    /// Closes, through `close`, the connections that carried no stream for `idle` (reason
    /// `idle`) and the retired ones that carry none any more (`renewed`), and forgets the
    /// slots left empty. Gives how many it closed.
    pub fn sweep(&self, idle: Duration, mut close: impl FnMut(&P, &'static str)) -> usize {
        let mut closed = 0;
        lock(&self.retired).retain(|p| {
            if p.ended() {
                return false;
            }
            if !p.usage().unused() {
                return true;
            }
            close(p, "renewed");
            closed += 1;
            false
        });
        lock(&self.slots).retain(|_, slot| {
            // Slots are cloned only under this lock: a count of one means nobody is opening a
            // stream on it now, so it can go.
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            let Ok(pooled) = slot.try_lock() else {
                return true;
            };
            match pooled.as_ref() {
                Some(p) if p.ended() => false,
                Some(p) if !p.usage().idle_for(idle) => true,
                Some(p) => {
                    close(p, "idle");
                    closed += 1;
                    false
                }
                None => false,
            }
        });
        closed
    }
}

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
