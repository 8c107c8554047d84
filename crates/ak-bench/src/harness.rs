//! One harness run: phases of jobs through the CLI, a leak check, and the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::BenchError;
use crate::driver::{CliDriver, Outcome};
use crate::leaks::HostSnapshot;
use crate::report::{Detail, Phase, Report};
use crate::runner::run_bounded;

/// What a phase's jobs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// Each job: create → start → exec → stop → remove of a named sandbox.
    Lifecycle,
    /// Each job: `run -- echo hello` with no daemon (a cold sandbox each time).
    Run,
    /// Each job: `run -- echo hello` with the daemon running (its warm pool).
    PoolRun,
    /// Each job: a bare `/bin/echo hello` on the host, timed the same way: the baseline
    /// the other phases are compared with, measured in the same run.
    Bare,
}

impl PhaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::Lifecycle => "lifecycle",
            PhaseKind::Run => "run",
            PhaseKind::PoolRun => "pool_run",
            PhaseKind::Bare => "bare",
        }
    }
}

impl FromStr for PhaseKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "lifecycle" => Ok(PhaseKind::Lifecycle),
            "run" => Ok(PhaseKind::Run),
            "pool_run" => Ok(PhaseKind::PoolRun),
            "bare" => Ok(PhaseKind::Bare),
            other => Err(format!(
                "unknown phase {other:?} (expected lifecycle, run, pool_run or bare)"
            )),
        }
    }
}

/// Reads a comma-separated phase list from `name`, `default` when unset.
pub fn env_phases(name: &str, default: &[PhaseKind]) -> Result<Vec<PhaseKind>, BenchError> {
    let Ok(value) = std::env::var(name) else {
        return Ok(default.to_vec());
    };
    value
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| BenchError::Setting {
            name: name.into(),
            value,
            reason,
        })
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `stress` or `benchmark`: names the result files.
    pub kind: &'static str,
    pub backend: String,
    pub phases: Vec<PhaseKind>,
    /// Jobs per phase.
    pub jobs: usize,
    pub max_concurrent: usize,
    /// Recorded in the report as given.
    pub parameters: BTreeMap<String, serde_json::Value>,
}

/// Runs every phase of `plan` through `driver`, then checks the host for leftovers.
/// `name_of(phase, index)` names each job's sandbox; `progress` sees every outcome.
pub fn execute(
    driver: &CliDriver,
    plan: &Plan,
    name_of: &(dyn Fn(PhaseKind, usize) -> String + Sync),
    progress: &(dyn Fn(PhaseKind, &Outcome) + Sync),
) -> (Report, Vec<Detail>) {
    let rootless_uids = own_uid_if_unprivileged();
    let before = HostSnapshot::take(&rootless_uids);
    let started = SystemTime::now();
    let mut phases = BTreeMap::new();
    let mut details = Vec::new();
    let mut errors = Vec::new();
    for &kind in &plan.phases {
        let (outcomes, wall) = run_phase(driver, plan, kind, name_of, progress, &mut errors);
        phases.insert(
            kind.as_str().to_string(),
            Phase::from_outcomes(&outcomes, wall),
        );
        details.extend(
            outcomes
                .into_iter()
                .enumerate()
                .map(|(index, outcome)| Detail {
                    phase: kind.as_str().into(),
                    index,
                    outcome,
                }),
        );
    }
    let leaks = before.leaks_since(&rootless_uids, Duration::from_secs(10));
    let report = Report::new(
        plan.kind,
        started,
        &plan.backend,
        plan.parameters.clone(),
        phases,
        leaks,
        errors,
    );
    (report, details)
}

fn run_phase(
    driver: &CliDriver,
    plan: &Plan,
    kind: PhaseKind,
    name_of: &(dyn Fn(PhaseKind, usize) -> String + Sync),
    progress: &(dyn Fn(PhaseKind, &Outcome) + Sync),
    errors: &mut Vec<String>,
) -> (Vec<Outcome>, Duration) {
    let job = |index: usize| {
        let name = name_of(kind, index);
        match kind {
            PhaseKind::Lifecycle => driver.lifecycle(&name),
            PhaseKind::Run | PhaseKind::PoolRun => driver.run(&name),
            PhaseKind::Bare => driver.bare(&name),
        }
    };
    let done = |outcome: &Outcome| progress(kind, outcome);
    if kind != PhaseKind::PoolRun {
        return run_bounded(plan.jobs, plan.max_concurrent, job, &done);
    }
    // Every job of the phase fails with the reason when the daemon cannot start: a pool
    // phase without a pool would silently measure cold runs.
    if let Err(error) = driver.daemon_start() {
        errors.push(format!("the daemon did not start: {error}"));
        let failed = (0..plan.jobs)
            .map(|index| Outcome {
                name: name_of(kind, index),
                success: false,
                error: Some(format!("the daemon did not start: {error}")),
                steps_ms: BTreeMap::new(),
            })
            .collect();
        return (failed, Duration::ZERO);
    }
    let (outcomes, wall) = run_bounded(plan.jobs, plan.max_concurrent, job, &done);
    if let Err(error) = driver.daemon_stop() {
        errors.push(format!("the daemon did not stop cleanly: {error}"));
    }
    (outcomes, wall)
}

/// Progress lines for a run of `total` jobs: every failure, and every 50th job.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: std::sync::atomic::AtomicUsize,
}

impl Progress {
    pub fn new(plan: &Plan) -> Progress {
        Progress {
            total: plan.jobs * plan.phases.len(),
            done: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Counts one finished job; the line to show for it, if any.
    pub fn record(&self, phase: PhaseKind, outcome: &Outcome) -> Option<String> {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let total = self.total;
        match &outcome.error {
            Some(error) => Some(format!(
                "[{done}/{total}] {} {} FAILED: {error}",
                phase.as_str(),
                outcome.name
            )),
            None if done.is_multiple_of(50) || done == total => {
                Some(format!("[{done}/{total}] done"))
            }
            None => None,
        }
    }
}

/// What the long tests share from their environment, read as `{PREFIX}_BACKEND` (default
/// native), `{PREFIX}_NETWORK` (`1`: the profile's network) and `{PREFIX}_IMAGE`.
#[derive(Debug, Clone)]
pub struct Target {
    pub backend: String,
    pub network: bool,
    pub image: Option<String>,
}

impl Target {
    pub fn from_env(prefix: &str) -> Target {
        let var = |name: &str| std::env::var(format!("{prefix}_{name}")).ok();
        Target {
            backend: var("BACKEND").unwrap_or_else(|| "native".into()),
            network: var("NETWORK").is_some_and(|v| v == "1"),
            image: var("IMAGE").filter(|i| !i.is_empty()),
        }
    }

    /// A driver of `binary` with a private state directory, for this target.
    pub fn driver(&self, binary: &std::path::Path, state_dir: &std::path::Path) -> CliDriver {
        CliDriver::new(binary, state_dir, &self.backend, self.network)
            .with_image(self.image.clone())
    }

    /// The target's settings as the report's parameters, under their variables' names.
    pub fn parameters(&self, prefix: &str) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::from([
            (format!("{prefix}_BACKEND"), self.backend.clone().into()),
            (format!("{prefix}_NETWORK"), self.network.into()),
            (format!("{prefix}_IMAGE"), self.image.clone().into()),
        ])
    }
}

/// Runs `plan` (progress lines to `say`), writes its results into `dir` and concludes:
/// the summary, or `Err` with the reasons when anything failed or leaked.
pub fn run_to_conclusion(
    driver: &CliDriver,
    plan: &Plan,
    name_of: &(dyn Fn(PhaseKind, usize) -> String + Sync),
    dir: &std::path::Path,
    say: &(dyn Fn(&str) + Sync),
) -> Result<String, String> {
    let progress = Progress::new(plan);
    let (report, details) = execute(driver, plan, name_of, &|phase, outcome| {
        if let Some(line) = progress.record(phase, outcome) {
            say(&line);
        }
    });
    conclude(&report, &details, dir)
}

/// Writes the result files of a finished run and describes it: the table and where the
/// files are, and `Err` with the reasons when anything failed or leaked.
pub fn conclude(
    report: &Report,
    details: &[Detail],
    dir: &std::path::Path,
) -> Result<String, String> {
    let files = crate::report::write_results(dir, report, details)
        .map_err(|e| format!("cannot write the results: {e}"))?;
    let text = format!(
        "{}results: {}\n         {}",
        table(report),
        files.summary.display(),
        files.details.display()
    );
    if report.clean() {
        Ok(text)
    } else {
        Err(format!(
            "{text}\n{} of {} jobs failed; leaks: {:?}; errors: {:?}",
            report.failed, report.total, report.leaks, report.errors
        ))
    }
}

/// Rootless sandboxes run as the caller's own uid, which the leak check must watch.
fn own_uid_if_unprivileged() -> Vec<u32> {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        Vec::new()
    } else {
        vec![uid.as_raw()]
    }
}

/// `BENCH_RESULTS_DIR`, else `benchmark-results` in the workspace `manifest_dir` is in.
pub fn results_dir(manifest_dir: &str) -> PathBuf {
    std::env::var_os("BENCH_RESULTS_DIR").map_or_else(
        || {
            let manifest_dir = std::path::Path::new(manifest_dir);
            // crates/<name> → the workspace root.
            manifest_dir
                .ancestors()
                .nth(2)
                .unwrap_or(manifest_dir)
                .join("benchmark-results")
        },
        PathBuf::from,
    )
}

/// The order steps happen in (and are shown in); unknown steps go last.
const STEP_ORDER: [&str; 7] = ["create", "start", "exec", "stop", "remove", "run", "total"];

/// A human-readable table of a report, one row per phase and step.
pub fn table(report: &Report) -> String {
    let mut text = format!(
        "{} on {} ({} cores, {}, kernel {}): {}/{} succeeded in {:.1} s, {} leak(s)\n",
        report.kind,
        report.backend,
        report.machine.cores,
        report.machine.cpu_model,
        report.machine.kernel,
        report.succeeded,
        report.total,
        report.wall_ms / 1000.0,
        report.leaks.len()
    );
    text.push_str(&format!(
        "{:10} {:8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}\n",
        "phase", "step", "n", "mean ms", "p50 ms", "p95 ms", "p99 ms", "max ms", "jobs/s"
    ));
    for (name, phase) in &report.phases {
        let mut steps: Vec<_> = phase.steps.iter().collect();
        steps.sort_by_key(|(step, _)| STEP_ORDER.iter().position(|s| s == step));
        for (step, stats) in steps {
            text.push_str(&format!(
                "{:10} {:8} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>11.1}\n",
                name,
                step,
                stats.count,
                stats.mean_ms,
                stats.p50_ms,
                stats.p95_ms,
                stats.p99_ms,
                stats.max_ms,
                phase.throughput_per_s
            ));
        }
    }
    if let Some(bare) = report.phases.get("bare").and_then(|p| p.steps.get("run")) {
        for (name, phase) in &report.phases {
            if let Some(run) = phase.steps.get("run").filter(|_| name != "bare") {
                text.push_str(&format!(
                    "{name}: p50 {:.2}x the bare command's, mean {:.2}x\n",
                    run.p50_ms / bare.p50_ms,
                    run.mean_ms / bare.mean_ms
                ));
            }
        }
    }
    for leak in &report.leaks {
        text.push_str(&format!("LEAK: {leak}\n"));
    }
    for error in &report.errors {
        text.push_str(&format!("ERROR: {error}\n"));
    }
    text
}
