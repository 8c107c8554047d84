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

/// The most CPUs a sandbox may be given.
pub const MAX_CPUS: f64 = 1024.0;
/// One millicpu: the CFS quota cannot express less (the kernel refuses a quota under 1 ms
/// per 100 ms period), so a smaller value could only be rounded, never honoured.
const MIN_CPUS: f64 = 0.001;

/// Below this a sandbox cannot even start its agent and a shell; a smaller limit would
/// only fail later as an obscure out-of-memory kill.
pub const MIN_MEMORY: u64 = 8 << 20;
/// The largest memory size accepted: 1 PiB. cgroup limits are signed 64-bit byte counts,
/// and no host has this much; anything larger is a typo (e.g. `9999999T`).
pub const MAX_MEMORY: u64 = 1 << 50;
/// The kernel's largest possible `pid_max` (`PID_MAX_LIMIT` on 64-bit): a pids limit
/// above it can never bind.
pub const MAX_PIDS: u64 = 4_194_304;

/// Parses a memory size the way container tools do: a number with an optional binary
/// unit (`k`, `m`, `g`, `t`, optionally followed by `b`/`ib`, case-insensitive).
/// A bare number is bytes; at most [`MAX_MEMORY`]. Hand-written because the size crates on crates.io use decimal
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
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(invalid());
    }
    if bytes > MAX_MEMORY as f64 {
        return Err(ConfigError::MemoryOutOfRange {
            value: input.to_string(),
            reason: "above the largest accepted size, 1P (1024T)",
        });
    }
    Ok(bytes as u64)
}

/// Parses a sandbox's memory limit: a size as [`parse_memory`] reads it, at least
/// [`MIN_MEMORY`].
pub fn parse_memory_limit(input: &str) -> Result<u64, ConfigError> {
    let bytes = parse_memory(input)?;
    if bytes < MIN_MEMORY {
        return Err(ConfigError::MemoryOutOfRange {
            value: input.to_string(),
            reason: "below the smallest workable limit, 8M",
        });
    }
    Ok(bytes)
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
    if value.is_finite() && (MIN_CPUS..=MAX_CPUS).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::InvalidCpus(value.to_string()))
    }
}

/// Validates a pids limit.
pub fn parse_pids(value: u64) -> Result<u64, ConfigError> {
    if (1..=MAX_PIDS).contains(&value) {
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
    fn memory_beyond_the_kernels_range_is_refused_clearly() {
        // Above i64::MAX bytes (what a cgroup limit can hold) but below u64::MAX.
        let message = parse_memory("9999999T").unwrap_err().to_string();
        assert!(
            message.contains("invalid memory size '9999999T'"),
            "{message}"
        );
        assert!(message.contains("largest"), "{message}");
        assert!(parse_memory("1025T").is_err());
        assert!(parse_memory(&format!("{}", u64::MAX)).is_err());
        assert_eq!(parse_memory("1024T").unwrap(), MAX_MEMORY);
    }

    #[test]
    fn memory_limits_have_a_workable_minimum() {
        assert_eq!(parse_memory_limit("8M").unwrap(), MIN_MEMORY);
        assert_eq!(parse_memory_limit("1G").unwrap(), 1 << 30);
        for small in ["1", "4096", "64k", "7.9M"] {
            let message = parse_memory_limit(small).unwrap_err().to_string();
            assert!(message.contains("smallest workable"), "{small}: {message}");
        }
        assert!(parse_memory_limit("9999999T").is_err());
        assert!(parse_memory_limit("lots").is_err());
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
        assert!(parse_cpus(0.001).is_ok());
        assert!(parse_cpus(0.0009).is_err());
        assert!(parse_cpus(f64::MIN_POSITIVE).is_err());
        assert!(parse_pids(0).is_err());
        assert_eq!(parse_pids(64).unwrap(), 64);
        assert_eq!(parse_pids(MAX_PIDS).unwrap(), MAX_PIDS);
        assert!(parse_pids(MAX_PIDS + 1).is_err());
        assert!(parse_pids(u64::MAX).is_err());
    }
}
