//! Benchmark: `BENCH_SANDBOXES` sandboxes (default 10) each going through
//! `BENCH_ITERATIONS` lifecycles (default 10: create → start → exec → stop → remove), at
//! most `BENCH_MAX_CONCURRENT` at once (default 50), on `BENCH_BACKEND` (default native);
//! then as many cold `run`s, `run`s through the daemon's warm pool, and bare
//! `/bin/echo hello`s (the baseline, in the same run). Throughput and
//! p50/p95/p99 per step go to `benchmark-results/benchmark_*.json`. `BENCH_PHASES` picks
//! phases (`bare`, `lifecycle`, `run`, `pool_run`), `BENCH_NETWORK=1` gives sandboxes network,
//! `BENCH_IMAGE` an image (OCI backends).
//!
//! `cargo test --release --test benchmark_test -- --nocapture --ignored`

use std::collections::BTreeMap;

use ak_bench::{
    CliDriver, PhaseKind, Plan, Progress, conclude, env_count, env_phases, execute, results_dir,
};

#[test]
#[ignore = "long: run it with --ignored"]
fn benchmark() {
    let sandboxes = env_count("BENCH_SANDBOXES", 10).unwrap();
    let iterations = env_count("BENCH_ITERATIONS", 10).unwrap();
    let max_concurrent = env_count("BENCH_MAX_CONCURRENT", 50).unwrap();
    let backend = std::env::var("BENCH_BACKEND").unwrap_or_else(|_| "native".into());
    let network = std::env::var("BENCH_NETWORK").is_ok_and(|v| v == "1");
    let image = std::env::var("BENCH_IMAGE").ok().filter(|i| !i.is_empty());
    let phases = env_phases(
        "BENCH_PHASES",
        &[
            PhaseKind::Bare,
            PhaseKind::Lifecycle,
            PhaseKind::Run,
            PhaseKind::PoolRun,
        ],
    )
    .unwrap();

    let state = tempfile::tempdir().unwrap();
    let driver = CliDriver::new(
        env!("CARGO_BIN_EXE_agentkernel").as_ref(),
        state.path(),
        &backend,
        network,
    )
    .with_image(image.clone());
    // Sandbox s does its iterations one after another: at most `sandboxes` run at once.
    let plan = Plan {
        kind: "benchmark",
        backend: backend.clone(),
        phases,
        jobs: sandboxes * iterations,
        max_concurrent: max_concurrent.min(sandboxes),
        parameters: BTreeMap::from([
            ("BENCH_SANDBOXES".into(), sandboxes.into()),
            ("BENCH_ITERATIONS".into(), iterations.into()),
            ("BENCH_MAX_CONCURRENT".into(), max_concurrent.into()),
            ("BENCH_BACKEND".into(), backend.into()),
            ("BENCH_NETWORK".into(), network.into()),
            ("BENCH_IMAGE".into(), image.into()),
        ]),
    };
    let progress = Progress::new(&plan);
    let (report, details) = execute(
        &driver,
        &plan,
        &|phase, index| {
            format!(
                "bench-{}-{}-{}",
                phase.as_str(),
                index % sandboxes,
                index / sandboxes
            )
        },
        &|phase, outcome| {
            if let Some(line) = progress.record(phase, outcome) {
                eprintln!("{line}");
            }
        },
    );
    match conclude(&report, &details, &results_dir(env!("CARGO_MANIFEST_DIR"))) {
        Ok(summary) => eprintln!("{summary}"),
        Err(failure) => panic!("{failure}"),
    }
}
