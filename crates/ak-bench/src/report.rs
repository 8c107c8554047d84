//! The JSON result files: a summary (`{kind}_YYYYMMDD_HHMMSS.json`) and one row per
//! sandbox (`…_details.json`). The schema is documented in `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::driver::Outcome;
use crate::machine::Machine;
use crate::stats::StepStats;

/// One phase of a run (for example every sandbox's lifecycle, then runs from the pool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// `succeeded / total`, from 0 to 1.
    pub success_rate: f64,
    pub wall_ms: f64,
    /// Successful jobs per second of wall time.
    pub throughput_per_s: f64,
    /// Per step, over the jobs where that step succeeded; `total` is the sum of a
    /// job's steps, over fully successful jobs.
    pub steps: BTreeMap<String, StepStats>,
}

impl Phase {
    pub fn from_outcomes(outcomes: &[Outcome], wall: Duration) -> Phase {
        let total = outcomes.len();
        let succeeded = outcomes.iter().filter(|o| o.success()).count();
        let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for outcome in outcomes {
            for (step, ms) in &outcome.steps_ms {
                samples.entry(step.clone()).or_default().push(*ms);
            }
        }
        // Also for one-step phases, so every phase answers the same query.
        samples.insert(
            "total".into(),
            outcomes
                .iter()
                .filter(|o| o.success())
                .map(Outcome::total_ms)
                .collect(),
        );
        let wall_s = wall.as_secs_f64();
        Phase {
            total,
            succeeded,
            failed: total - succeeded,
            success_rate: if total == 0 {
                0.0
            } else {
                succeeded as f64 / total as f64
            },
            wall_ms: millis(wall),
            throughput_per_s: if wall_s > 0.0 {
                (succeeded as f64 / wall_s * 100.0).round() / 100.0
            } else {
                0.0
            },
            steps: samples
                .iter()
                .filter_map(|(step, ms)| Some((step.clone(), StepStats::from_ms(ms)?)))
                .collect(),
        }
    }
}

/// The summary file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `stress` or `benchmark`: the file name's prefix.
    pub kind: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub backend: String,
    pub machine: Machine,
    /// The settings the run was made with (environment variables and their values).
    pub parameters: BTreeMap<String, serde_json::Value>,
    /// Over all phases.
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub success_rate: f64,
    pub wall_ms: f64,
    pub throughput_per_s: f64,
    /// Host resources left behind after the run (empty when none).
    pub leaks: Vec<String>,
    /// Failures of the harness around the jobs (the daemon not starting or stopping).
    pub errors: Vec<String>,
    pub phases: BTreeMap<String, Phase>,
}

impl Report {
    pub fn new(
        kind: &str,
        started: SystemTime,
        backend: &str,
        parameters: BTreeMap<String, serde_json::Value>,
        phases: BTreeMap<String, Phase>,
        leaks: Vec<String>,
        errors: Vec<String>,
    ) -> Report {
        let total: usize = phases.values().map(|p| p.total).sum();
        let succeeded: usize = phases.values().map(|p| p.succeeded).sum();
        let wall_ms: f64 = phases.values().map(|p| p.wall_ms).sum();
        Report {
            kind: kind.into(),
            started_at: humantime::format_rfc3339_seconds(started).to_string(),
            backend: backend.into(),
            machine: Machine::current(),
            parameters,
            total,
            succeeded,
            failed: total - succeeded,
            success_rate: if total == 0 {
                0.0
            } else {
                succeeded as f64 / total as f64
            },
            wall_ms: (wall_ms * 1000.0).round() / 1000.0,
            throughput_per_s: if wall_ms > 0.0 {
                (succeeded as f64 / (wall_ms / 1000.0) * 100.0).round() / 100.0
            } else {
                0.0
            },
            leaks,
            errors,
            phases,
        }
    }

    /// Whether every job of every phase succeeded, nothing leaked and nothing failed
    /// around the jobs.
    pub fn clean(&self) -> bool {
        self.failed == 0 && self.leaks.is_empty() && self.errors.is_empty()
    }
}

/// One row of the details file: one job (a sandbox's lifecycle, or one run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    pub phase: String,
    pub index: usize,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Where the results were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFiles {
    pub summary: PathBuf,
    pub details: PathBuf,
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// `YYYYMMDD_HHMMSS` of `report.started_at` (already UTC RFC 3339).
fn stamp(started_at: &str) -> String {
    let digits: String = started_at.chars().filter(char::is_ascii_digit).collect();
    let (date, time) = digits.split_at(digits.len().min(8));
    format!("{date}_{time}")
}

/// Writes `{kind}_{stamp}.json` and `{kind}_{stamp}_details.json` into `dir` (created if
/// needed), never overwriting an earlier result of the same second.
pub fn write_results(
    dir: &Path,
    report: &Report,
    details: &[Detail],
) -> Result<ResultFiles, BenchError> {
    let io = |what: String| move |source| BenchError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let base = format!("{}_{}", report.kind, stamp(&report.started_at));
    let mut attempt = 1;
    loop {
        let name = if attempt == 1 {
            base.clone()
        } else {
            format!("{base}_{attempt}")
        };
        let files = ResultFiles {
            summary: dir.join(format!("{name}.json")),
            details: dir.join(format!("{name}_details.json")),
        };
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&files.summary);
        match created {
            Ok(file) => {
                serde_json::to_writer_pretty(std::io::BufWriter::new(file), report)?;
                let file = std::fs::File::create(&files.details)
                    .map_err(io(format!("create {}", files.details.display())))?;
                serde_json::to_writer_pretty(std::io::BufWriter::new(file), details)?;
                return Ok(files);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => attempt += 1,
            Err(e) => return Err(io(format!("create {}", files.summary.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(steps: &[(&str, f64)], error: Option<&str>) -> Outcome {
        Outcome {
            name: "s".into(),
            success: error.is_none(),
            steps_ms: steps.iter().map(|(s, ms)| (s.to_string(), *ms)).collect(),
            error: error.map(String::from),
        }
    }

    #[test]
    fn a_phase_counts_failures_and_times_only_what_succeeded() {
        let outcomes = [
            outcome(&[("create", 2.0), ("exec", 4.0)], None),
            outcome(&[("create", 4.0), ("exec", 6.0)], None),
            outcome(&[("create", 3.0)], Some("exec failed")),
        ];
        let phase = Phase::from_outcomes(&outcomes, Duration::from_secs(2));
        assert_eq!((phase.total, phase.succeeded, phase.failed), (3, 2, 1));
        assert!((phase.success_rate - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(phase.throughput_per_s, 1.0);
        assert_eq!(phase.steps["create"].count, 3);
        assert_eq!(phase.steps["exec"].count, 2);
        assert_eq!(phase.steps["total"].count, 2);
        assert_eq!(phase.steps["total"].p50_ms, 8.0);
        assert_eq!(phase.wall_ms, 2000.0);
    }

    #[test]
    fn results_are_named_by_kind_and_time_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let phase =
            Phase::from_outcomes(&[outcome(&[("run", 1.5)], None)], Duration::from_millis(10));
        let report = Report::new(
            "stress",
            started,
            "native",
            BTreeMap::new(),
            BTreeMap::from([("pool_run".to_string(), phase)]),
            Vec::new(),
            Vec::new(),
        );
        assert!(report.clean());
        let details = [Detail {
            phase: "pool_run".into(),
            index: 0,
            outcome: outcome(&[("run", 1.5)], None),
        }];
        let first = write_results(dir.path(), &report, &details).unwrap();
        let second = write_results(dir.path(), &report, &details).unwrap();
        assert_eq!(
            first.summary.file_name().unwrap(),
            "stress_20261130_005320.json"
        );
        assert_eq!(
            second.details.file_name().unwrap(),
            "stress_20261130_005320_2_details.json"
        );
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&first.summary).unwrap()).unwrap();
        assert_eq!(summary["phases"]["pool_run"]["steps"]["run"]["p99_ms"], 1.5);
        assert_eq!(summary["success_rate"], 1.0);
        let rows: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&first.details).unwrap()).unwrap();
        assert_eq!(rows[0]["steps_ms"]["run"], 1.5);
        assert_eq!(rows[0]["success"], true);
    }
}
