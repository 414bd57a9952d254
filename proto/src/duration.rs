//! Durations given on the command line or in the environment (`90s`, `10m`, `24h`, `7d`), for
//! every edgeward binary alike.

use std::time::Duration;

/// The longest duration any setting takes: ten years. Nothing edgeward waits for or issues
/// lives longer, and the bound keeps the arithmetic on clocks and lifetimes from overflowing.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration of at most [`MAX`]; zero is allowed.
pub fn parse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d > MAX {
        return Err("must be at most ten years (3650d)".into());
    }
    Ok(d)
}

/// A duration of more than zero and at most [`MAX`]: a zero interval or timeout would spin or
/// close everything at once.
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    let d = parse(text)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced_with_a_reason() {
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("3650d"), Ok(MAX));
        assert!(parse("3651d").unwrap_err().contains("at most ten years"));
        assert!(parse("99999999999999y").is_err());
        assert!(parse("soon").is_err());
        assert_eq!(parse_positive("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_positive("0s").unwrap_err().contains("more than zero"));
    }
}
