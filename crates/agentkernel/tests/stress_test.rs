//! Stress test: `STRESS_VM_COUNT` named sandboxes (default 10), at most
//! `STRESS_MAX_CONCURRENT` at once (default 50), on `STRESS_BACKEND` (default native), each
//! going create → start → exec `echo hello` → stop → remove through the CLI; then as many
//! `run`s through the daemon's warm pool. `STRESS_PHASES` picks phases (`lifecycle`,
//! `run`, `pool_run`), `STRESS_NETWORK=1` gives sandboxes the profile's network,
//! `STRESS_IMAGE` an image (OCI backends). Writes
//! `benchmark-results/stress_*.json` and fails on any failed sandbox or leaked resource.
//!
//! `cargo test --release --test stress_test -- --nocapture --ignored`

use std::collections::BTreeMap;

use ak_bench::{
    CliDriver, PhaseKind, Plan, Progress, conclude, env_count, env_phases, execute, results_dir,
};

#[test]
#[ignore = "long: run it with --ignored (CI runs it at STRESS_VM_COUNT=50)"]
fn stress() {
    let count = env_count("STRESS_VM_COUNT", 10).unwrap();
    let max_concurrent = env_count("STRESS_MAX_CONCURRENT", 50).unwrap();
    let backend = std::env::var("STRESS_BACKEND").unwrap_or_else(|_| "native".into());
    let network = std::env::var("STRESS_NETWORK").is_ok_and(|v| v == "1");
    let image = std::env::var("STRESS_IMAGE").ok().filter(|i| !i.is_empty());
    let phases = env_phases("STRESS_PHASES", &[PhaseKind::Lifecycle, PhaseKind::PoolRun]).unwrap();

    let state = tempfile::tempdir().unwrap();
    let driver = CliDriver::new(
        env!("CARGO_BIN_EXE_agentkernel").as_ref(),
        state.path(),
        &backend,
        network,
    )
    .with_image(image.clone());
    let plan = Plan {
        kind: "stress",
        backend: backend.clone(),
        phases,
        jobs: count,
        max_concurrent,
        parameters: BTreeMap::from([
            ("STRESS_VM_COUNT".into(), count.into()),
            ("STRESS_MAX_CONCURRENT".into(), max_concurrent.into()),
            ("STRESS_BACKEND".into(), backend.into()),
            ("STRESS_NETWORK".into(), network.into()),
            ("STRESS_IMAGE".into(), image.into()),
        ]),
    };
    let progress = Progress::new(&plan);
    let (report, details) = execute(
        &driver,
        &plan,
        &|phase, index| format!("stress-{}-{index}", phase.as_str()),
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
