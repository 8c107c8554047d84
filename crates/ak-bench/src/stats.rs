//! Latency statistics of one step: mean and percentiles in milliseconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Statistics of one step over all samples, every time in milliseconds (numbers, so `jq`
/// can compare them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub count: usize,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The `q`-th percentile (0–100) of sorted `values` by linear interpolation between the
/// closest ranks (the definition NumPy and most tools use by default): rank
/// `q/100 * (n-1)`, interpolated between its neighbours.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (q.clamp(0.0, 100.0) / 100.0) * last as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let fraction = rank - below as f64;
    Some(sorted[below] + (sorted[above] - sorted[below]) * fraction)
}

impl StepStats {
    /// Statistics of `samples` (milliseconds); `None` without samples.
    pub fn from_ms(samples: &[f64]) -> Option<StepStats> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        Some(StepStats {
            count,
            mean_ms: round(sorted.iter().sum::<f64>() / count.max(1) as f64),
            min_ms: round(*sorted.first()?),
            p50_ms: round(percentile(&sorted, 50.0)?),
            p95_ms: round(percentile(&sorted, 95.0)?),
            p99_ms: round(percentile(&sorted, 99.0)?),
            max_ms: round(*sorted.last()?),
        })
    }

    pub fn from_durations(samples: &[Duration]) -> Option<StepStats> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        StepStats::from_ms(&ms)
    }
}

/// Microsecond resolution is all a millisecond figure needs, and keeps the JSON readable.
fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_on_known_data() {
        // numpy.percentile(range(1, 101), [50, 95, 99]) == [50.5, 95.05, 99.01]
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let stats = StepStats::from_ms(&values).unwrap();
        assert_eq!(stats.count, 100);
        assert_eq!(stats.p50_ms, 50.5);
        assert_eq!(stats.p95_ms, 95.05);
        assert_eq!(stats.p99_ms, 99.01);
        assert_eq!(
            (stats.min_ms, stats.max_ms, stats.mean_ms),
            (1.0, 100.0, 50.5)
        );
    }

    #[test]
    fn order_of_samples_does_not_matter() {
        // numpy.percentile([15, 20, 35, 40, 50], [50, 95, 99]) == [35, 48, 49.6]
        let stats = StepStats::from_ms(&[40.0, 15.0, 50.0, 35.0, 20.0]).unwrap();
        assert_eq!(stats.p50_ms, 35.0);
        assert_eq!(stats.p95_ms, 48.0);
        assert_eq!(stats.p99_ms, 49.6);
        assert_eq!(stats.mean_ms, 32.0);
    }

    #[test]
    fn one_sample_is_every_percentile_and_none_is_no_statistics() {
        let stats = StepStats::from_durations(&[Duration::from_micros(2500)]).unwrap();
        assert_eq!((stats.p50_ms, stats.p99_ms, stats.max_ms), (2.5, 2.5, 2.5));
        assert_eq!(StepStats::from_ms(&[]), None);
        assert_eq!(percentile(&[], 50.0), None);
    }
}
