//! The recent steps between versions, kept in memory so that a proxy that reconnects a little
//! behind receives only what changed since the version it holds.

use std::collections::VecDeque;

use super::view::Touched;

/// How many steps are remembered: the last 1024 versions.
pub const RETAINED_STEPS: usize = 1024;

/// The keys each recent version changed, oldest first.
#[derive(Debug, Default)]
pub struct History {
    /// `(version, keys changed from version - 1 to version)`, consecutive versions.
    steps: VecDeque<(u64, Touched)>,
}

impl History {
    /// Remembers that `version` changed `touched` since `version - 1`; forgets the oldest step
    /// beyond [`RETAINED_STEPS`], and everything when the versions are not consecutive.
    pub fn record(&mut self, version: u64, touched: Touched) {
        let follows = self
            .steps
            .back()
            .is_none_or(|(last, _)| last.checked_add(1) == Some(version));
        if !follows {
            self.steps.clear();
        }
        self.steps.push_back((version, touched));
        while self.steps.len() > RETAINED_STEPS {
            self.steps.pop_front();
        }
    }

    /// The keys changed from `from` to `to`, when every step between is remembered.
    pub fn since(&self, from: u64, to: u64) -> Option<Touched> {
        if from == to {
            return Some(Touched::default());
        }
        let (first, _) = self.steps.front()?;
        let (last, _) = self.steps.back()?;
        if from >= to || from.checked_add(1)? < *first || to > *last {
            return None;
        }
        let mut merged = Touched::default();
        let span = self.steps.iter().filter(|(v, _)| *v > from && *v <= to);
        span.for_each(|(_, touched)| merged.merge(touched));
        Some(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touching(policy: &str) -> Touched {
        Touched {
            policies: [policy.to_string()].into(),
            ..Default::default()
        }
    }

    #[test]
    fn merges_the_steps_between_two_versions() {
        let mut h = History::default();
        for v in 5..=8 {
            h.record(v, touching(&format!("p{v}")));
        }
        let merged = h.since(5, 8).unwrap();
        assert_eq!(merged.policies, ["p6", "p7", "p8"].map(String::from).into());
        assert_eq!(h.since(4, 6).unwrap().policies.len(), 2);
        assert!(h.since(8, 8).unwrap().is_empty());
    }

    #[test]
    fn refuses_what_it_does_not_remember() {
        let mut h = History::default();
        assert!(h.since(1, 2).is_none());
        for v in 10..=12 {
            h.record(v, touching("p"));
        }
        assert!(h.since(8, 12).is_none(), "step 9 was never seen");
        assert!(h.since(9, 13).is_none(), "13 is in the future");
        assert!(h.since(12, 11).is_none(), "backwards");
        assert!(h.since(9, 12).is_some());
    }

    #[test]
    fn keeps_the_last_1024_steps_and_restarts_on_a_gap() {
        let mut h = History::default();
        for v in 1..=2000 {
            h.record(v, touching("p"));
        }
        assert!(h.since(2000 - 1024, 2000).is_some());
        assert!(h.since(2000 - 1025, 2000).is_none());
        h.record(2005, touching("q"));
        assert!(h.since(2000, 2005).is_none());
        assert!(h.since(2004, 2005).is_some());
    }
}
