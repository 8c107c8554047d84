//! Resource limits of a sandbox and the parsers for their user-facing notation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Limits applied to the whole sandbox (every process in it, together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU bandwidth in CPUs (1.5 = one and a half cores); `None` = no limit.
    pub cpus: Option<f64>,
    /// Memory (RAM + swap where the host can limit swap), in bytes.
    pub memory_bytes: u64,
    /// Maximum number of processes and threads.
    pub pids: u64,
}

const MAX_CPUS: f64 = 1024.0;

/// Parses a memory size the way container tools do: a number with an optional binary
/// unit (`k`, `m`, `g`, `t`, optionally followed by `b`/`ib`, case-insensitive).
/// A bare number is bytes. Hand-written because the size crates on crates.io use decimal
/// units for `M`/`G`, which would silently shrink every limit by 5-7%.
pub fn parse_memory(input: &str) -> Result<u64, ConfigError> {
    let invalid = || ConfigError::InvalidMemory(input.to_string());
    let text = input.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(invalid()),
    };
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

/// Parses a duration such as `30s`, `5m`, `1h30m` or `250ms`.
pub fn parse_duration(input: &str) -> Result<Duration, ConfigError> {
    let duration = humantime::parse_duration(input.trim())
        .map_err(|_| ConfigError::InvalidDuration(input.to_string()))?;
    if duration.is_zero() {
        return Err(ConfigError::InvalidDuration(input.to_string()));
    }
    Ok(duration)
}

/// Validates a CPU count.
pub fn parse_cpus(value: f64) -> Result<f64, ConfigError> {
    if value.is_finite() && value > 0.0 && value <= MAX_CPUS {
        Ok(value)
    } else {
        Err(ConfigError::InvalidCpus(value.to_string()))
    }
}

/// Validates a pids limit.
pub fn parse_pids(value: u64) -> Result<u64, ConfigError> {
    if value >= 1 {
        Ok(value)
    } else {
        Err(ConfigError::InvalidPids(value.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units_are_binary() {
        assert_eq!(parse_memory("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        assert_eq!(parse_memory("64k").unwrap(), 64 << 10);
    }

    #[test]
    fn bad_memory_is_an_error() {
        for bad in ["", "M", "12X", "-5M", "0", "1..2G", "nan", "1e99T", "5 M B"] {
            assert!(parse_memory(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "30", "abc", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn cpus_and_pids() {
        assert!(parse_cpus(0.5).is_ok());
        assert!(parse_cpus(0.0).is_err());
        assert!(parse_cpus(f64::NAN).is_err());
        assert!(parse_cpus(5000.0).is_err());
        assert!(parse_pids(0).is_err());
        assert_eq!(parse_pids(64).unwrap(), 64);
    }
}
