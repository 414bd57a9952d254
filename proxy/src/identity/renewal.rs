//! When to renew an SVID. By default at half its lifetime; with an availability target (how long
//! a control-plane outage must be survived), early enough that the certificate still has that
//! long to live when renewal starts, so an outage beginning then expires nothing.

use std::time::{Duration, SystemTime};

use edgeward_ca::authority::BACKDATE;

/// Never renew before this share of the lifetime has passed: renewal stays a rare event even
/// when the target asks for more than the control plane grants.
const EARLIEST_SHARE: f64 = 0.1;

/// Share of the lifetime the renewal time may move at random, so that nodes spread out.
pub const JITTER: f64 = 0.05;

/// The lifetime to ask the control plane for: twice the target, plus an hour of slack, so that
/// renewing at half-life leaves the target's worth of validity.
pub fn requested_lifetime(target: Duration) -> Duration {
    target * 2 + Duration::from_secs(3600)
}

/// How long a certificate valid from `not_before` to `not_after` was issued for: the CA sets
/// NotBefore back by [`BACKDATE`] for clock skew, which is not lifetime to plan renewal with.
pub fn lifetime(not_before: SystemTime, not_after: SystemTime) -> Duration {
    let issued = (not_before + BACKDATE).min(not_after);
    not_after.duration_since(issued).unwrap_or_default()
}

/// The moment to start renewing a certificate valid from `not_before` to `not_after`.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, target: Duration) -> SystemTime {
    let lifetime = lifetime(not_before, not_after);
    let keep = (lifetime / 2)
        .max(target)
        .min(lifetime.mul_f64(1.0 - EARLIEST_SHARE));
    not_after - keep
}

/// Whether renewing at [`renew_at`] leaves `target` of validity; when not, an outage of that
/// length may expire the certificate, which the proxy reports at start and on each renewal.
pub fn meets_target(not_before: SystemTime, not_after: SystemTime, target: Duration) -> bool {
    let keep = not_after
        .duration_since(renew_at(not_before, not_after, target))
        .unwrap_or_default();
    keep >= target
}

/// The delay until `at`, moved at random by up to [`JITTER`] of the lifetime.
pub fn delay_until(at: SystemTime, lifetime: Duration, now: SystemTime) -> Duration {
    let base = at.duration_since(now).unwrap_or_default();
    let spread = lifetime.mul_f64(JITTER).as_secs_f64();
    let shift = rand::random_range(-spread..=spread);
    Duration::from_secs_f64((base.as_secs_f64() + shift).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// NotBefore of a leaf issued at 1_800_000_000 s (the CA backdates it).
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) - BACKDATE
    }

    /// When that leaf was issued.
    fn issued() -> SystemTime {
        t0() + BACKDATE
    }

    #[test]
    fn half_life_when_the_target_fits() {
        let (nb, na) = (t0(), issued() + 49 * HOUR);
        assert_eq!(renew_at(nb, na, 24 * HOUR), issued() + 24 * HOUR + HOUR / 2);
        assert!(meets_target(nb, na, 24 * HOUR));
        assert_eq!(requested_lifetime(24 * HOUR), 49 * HOUR);
    }

    #[test]
    fn earlier_than_half_life_when_the_target_asks_for_more() {
        let (nb, na) = (t0(), issued() + 30 * HOUR);
        assert_eq!(renew_at(nb, na, 24 * HOUR), issued() + 6 * HOUR);
        assert!(meets_target(nb, na, 24 * HOUR));
    }

    #[test]
    fn never_before_a_tenth_of_the_lifetime() {
        let (nb, na) = (t0(), issued() + 24 * HOUR);
        let at = renew_at(nb, na, 24 * HOUR);
        assert_eq!(at, issued() + Duration::from_secs(24 * 360));
        assert!(
            !meets_target(nb, na, 24 * HOUR),
            "a 24 h leaf cannot ride out 24 h"
        );
    }

    #[test]
    fn a_short_leaf_renews_at_half_its_issued_lifetime() {
        let (nb, na) = (t0(), issued() + Duration::from_secs(60));
        assert_eq!(lifetime(nb, na), Duration::from_secs(60));
        let at = renew_at(nb, na, Duration::from_secs(20));
        assert_eq!(at, issued() + Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let now = t0();
        for _ in 0..100 {
            let d = delay_until(now + HOUR, 10 * HOUR, now);
            assert!(d >= HOUR / 2 && d <= HOUR + HOUR / 2, "{d:?}");
        }
        assert_eq!(delay_until(now - HOUR, Duration::ZERO, now), Duration::ZERO);
    }
}
