//! Benchmark and stress harness: drives sandbox lifecycles through the `agentkernel` CLI
//! the way users do, times every step, computes percentiles, checks the host for leaked
//! resources and writes the JSON results that `docs/benchmarks.md` documents.

pub mod driver;
pub mod harness;
pub mod leaks;
pub mod machine;
pub mod report;
pub mod runner;
pub mod stats;

pub use driver::{CliDriver, Outcome};
pub use harness::{
    PhaseKind, Plan, Progress, Target, conclude, env_phases, execute, results_dir,
    run_to_conclusion, table,
};
pub use leaks::HostSnapshot;
pub use machine::Machine;
pub use report::{Detail, Phase, Report, ResultFiles, write_results};
pub use runner::run_bounded;
pub use stats::StepStats;

/// Errors of the harness itself (not of the sandboxes it measures, which are results).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encode results: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid setting {name}={value}: {reason}")]
    Setting {
        name: String,
        value: String,
        reason: String,
    },
}

/// Reads a positive count from the environment variable `name`, `default` when unset.
pub fn env_count(name: &str, default: usize) -> Result<usize, BenchError> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(value)) => Err(BenchError::Setting {
            name: name.into(),
            value: value.to_string_lossy().into_owned(),
            reason: "not UTF-8".into(),
        }),
        Ok(value) => match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(BenchError::Setting {
                name: name.into(),
                value,
                reason: "expected a whole number above 0".into(),
            }),
        },
    }
}
