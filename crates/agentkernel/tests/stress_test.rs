//! Stress test: `STRESS_VM_COUNT` named sandboxes (default 10), at most
//! `STRESS_MAX_CONCURRENT` at once (default 50), on `STRESS_BACKEND` (default native), each
//! going create → start → exec `echo hello` → stop → remove through the CLI; then as many
//! `run`s through the daemon's warm pool. `STRESS_PHASES` picks phases (`lifecycle`,
//! `run`, `pool_run`), `STRESS_NETWORK=1` gives sandboxes the profile's network,
//! `STRESS_IMAGE` an image (OCI backends). Writes
//! `benchmark-results/stress_*.json` and fails on any failed sandbox or leaked resource.
//!
//! `cargo test --release --test stress_test -- --nocapture --ignored`

use ak_bench::{PhaseKind, Plan, Target, env_count, env_phases, results_dir, run_to_conclusion};

#[test]
#[ignore = "long: run it with --ignored (CI runs it at STRESS_VM_COUNT=50)"]
fn stress() {
    let count = env_count("STRESS_VM_COUNT", 10).unwrap();
    let max_concurrent = env_count("STRESS_MAX_CONCURRENT", 50).unwrap();
    let phases = env_phases("STRESS_PHASES", &[PhaseKind::Lifecycle, PhaseKind::PoolRun]).unwrap();
    let target = Target::from_env("STRESS");
    let state = tempfile::tempdir().unwrap();
    let driver = target.driver(env!("CARGO_BIN_EXE_agentkernel").as_ref(), state.path());
    let mut parameters = target.parameters("STRESS");
    parameters.extend([
        ("STRESS_VM_COUNT".to_string(), count.into()),
        ("STRESS_MAX_CONCURRENT".to_string(), max_concurrent.into()),
    ]);
    let plan = Plan {
        kind: "stress",
        backend: target.backend.clone(),
        phases,
        jobs: count,
        max_concurrent,
        parameters,
    };
    let name_of = |phase: PhaseKind, index: usize| format!("stress-{}-{index}", phase.as_str());
    let dir = results_dir(env!("CARGO_MANIFEST_DIR"));
    match run_to_conclusion(&driver, &plan, &name_of, &dir, &|line| eprintln!("{line}")) {
        Ok(summary) => eprintln!("{summary}"),
        Err(failure) => panic!("{failure}"),
    }
}
