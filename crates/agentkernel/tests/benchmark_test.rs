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

use ak_bench::{PhaseKind, Plan, Target, env_count, env_phases, results_dir, run_to_conclusion};

#[test]
#[ignore = "long: run it with --ignored (CI runs a small instance)"]
fn benchmark() {
    let sandboxes = env_count("BENCH_SANDBOXES", 10).unwrap();
    let iterations = env_count("BENCH_ITERATIONS", 10).unwrap();
    let max_concurrent = env_count("BENCH_MAX_CONCURRENT", 50).unwrap();
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
    let target = Target::from_env("BENCH");
    let state = tempfile::tempdir().unwrap();
    let driver = target.driver(env!("CARGO_BIN_EXE_agentkernel").as_ref(), state.path());
    let mut parameters = target.parameters("BENCH");
    parameters.extend([
        ("BENCH_SANDBOXES".to_string(), sandboxes.into()),
        ("BENCH_ITERATIONS".to_string(), iterations.into()),
        ("BENCH_MAX_CONCURRENT".to_string(), max_concurrent.into()),
    ]);
    // Sandbox s does its iterations one after another: at most `sandboxes` run at once.
    let plan = Plan {
        kind: "benchmark",
        backend: target.backend.clone(),
        phases,
        jobs: sandboxes * iterations,
        max_concurrent: max_concurrent.min(sandboxes),
        parameters,
    };
    let name_of = |phase: PhaseKind, index: usize| {
        let (sandbox, iteration) = (index % sandboxes, index / sandboxes);
        format!("bench-{}-{sandbox}-{iteration}", phase.as_str())
    };
    let dir = results_dir(env!("CARGO_MANIFEST_DIR"));
    match run_to_conclusion(&driver, &plan, &name_of, &dir, &|line| eprintln!("{line}")) {
        Ok(summary) => eprintln!("{summary}"),
        Err(failure) => panic!("{failure}"),
    }
}
