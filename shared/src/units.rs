//! Duration and size strings used in configuration files.

use std::time::Duration;

/// Parses a duration such as `"500ms"`, `"10s"`, `"2m"` or `"1h"`.
///
/// A bare number is refused: the unit is what tells a reader what was meant.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("duration {text:?} has no unit; write e.g. \"500ms\" or \"10s\""))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "duration {text:?} has unknown unit {unit:?}; use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("duration {text:?} is too long; write at most a few days"))
}

/// Parses a size such as `"512KiB"`, `"256MiB"`, `"1GiB"` or `"4096"` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("size {text:?} does not start with a whole number"))?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => {
            return Err(format!(
                "size {text:?} has unknown unit {unit:?}; use B, KiB, MiB or GiB"
            ))
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Serde helpers so config structs can hold `Duration`s written as strings.
pub mod serde_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserialises a duration string with [`super::parse_duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde helpers for optional duration strings (with `#[serde(default)]`).
pub mod serde_duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserialises an optional duration string with [`super::parse_duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Serde helpers for optional size strings.
pub mod serde_size_opt {
    use serde::{Deserialize, Deserializer};

    /// Deserialises an optional size string with [`super::parse_size`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        // Too long for a Duration: an error, not a panic.
        assert!(parse_duration("100000000000000000000s").is_err());
        assert!(parse_duration("1e400h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
