//! Duration and size strings used in configuration files.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// A bare number.
    #[error("duration {0:?} has no unit; write e.g. \"500ms\" or \"10s\"")]
    NoUnit(String),
    /// The unit is not preceded by a number.
    #[error("duration {0:?} does not start with a number")]
    NotANumber(String),
    /// A unit other than ms, s, m, h.
    #[error("duration {text:?} has unknown unit {unit:?}; use ms, s, m or h")]
    UnknownUnit {
        /// The whole value.
        text: String,
        /// The unit written.
        unit: String,
    },
    /// Too long to represent.
    #[error("duration {0:?} is too long; write at most a few days")]
    TooLong(String),
}

/// Parses a duration such as `"500ms"`, `"10s"`, `"2m"` or `"1h"`.
///
/// A bare number is refused: the unit is what tells a reader what was meant.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| DurationError::NoUnit(text.to_string()))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| DurationError::NotANumber(text.to_string()))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| DurationError::TooLong(text.to_string()))
}

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No whole number before the unit.
    #[error("size {0:?} does not start with a whole number")]
    NotANumber(String),
    /// A unit other than B, KiB, MiB, GiB.
    #[error("size {text:?} has unknown unit {unit:?}; use B, KiB, MiB or GiB")]
    UnknownUnit {
        /// The whole value.
        text: String,
        /// The unit written.
        unit: String,
    },
    /// More bytes than a u64 holds.
    #[error("size {0:?} is too large")]
    TooLarge(String),
}

/// Parses a size such as `"512KiB"`, `"256MiB"`, `"1GiB"` or `"4096"` (bytes).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| SizeError::NotANumber(text.to_string()))?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => {
            return Err(SizeError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| SizeError::TooLarge(text.to_string()))
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
