//! Bounded polling: every wait in the lab has a deadline, so a stuck peer fails the test
//! instead of hanging CI.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often `until` polls (50 ms): quick enough for start-up waits, cheap on 2 cores.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `check` until it yields `Some`, fails with `what` once `timeout` has passed.
///
/// An error from `check` ends the wait at once: it means waiting longer cannot help
/// (for example the process being waited on has exited).
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value() {
        let mut calls = 0;
        let value = until("three calls", Duration::from_secs(5), || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        });
        assert_eq!(value.unwrap(), 3);
    }

    #[test]
    fn times_out_with_the_reason() {
        let err = until::<()>("nothing", Duration::from_millis(120), || Ok(None)).unwrap_err();
        assert!(err.to_string().contains("waiting for nothing"), "{err}");
    }
}
