//! Capped exponential backoff with jitter, for retries against the control plane and peers.

use std::time::Duration;

/// Delays that double from `base` up to `max`, each drawn at random from its upper half so that
/// many proxies retrying at once spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `base`, never exceeds `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current.mul_f64(rand::random_range(0.5..=1.0));
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Back to `base`, after a success.
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        for (d, ceiling) in delays.iter().zip([1, 2, 4, 8, 8, 8]) {
            let ceiling = Duration::from_secs(ceiling);
            assert!(*d <= ceiling && *d >= ceiling / 2, "{d:?} vs {ceiling:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
