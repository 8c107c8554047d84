//! `agentkernel bench`: where a sandbox's time goes on each usable backend (boot, ready,
//! exec, shutdown) and how many sandboxes per second it runs, with a live progress bar.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ak_bench::{Machine, StepStats};
use ak_core::spec::new_sandbox_id;
use ak_core::{BackendKind, SandboxSpec};
use ak_service::{ComponentTimes, Service};
use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::exit;
use crate::wiring;

/// The results of one backend.
#[derive(Debug, Serialize)]
struct BackendBench {
    backend: BackendKind,
    /// Per component over `iterations` sandboxes, in milliseconds; `total` is their sum.
    components: BTreeMap<&'static str, StepStats>,
    /// `boot` phase by phase (in milliseconds), for backends that tell (microvm).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    boot_phases: Vec<(&'static str, StepStats)>,
    throughput: Throughput,
}

#[derive(Debug, Serialize)]
struct Throughput {
    runs: u32,
    concurrency: u32,
    wall_ms: f64,
    sandboxes_per_s: f64,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    machine: Machine,
    iterations: u32,
    backends: Vec<BackendBench>,
    /// Usable backends that could not be measured, and why.
    failed: Vec<FailedBackend>,
}

#[derive(Debug, Serialize)]
struct FailedBackend {
    backend: BackendKind,
    error: String,
}

/// The program each measured sandbox runs (`echo hello`), which also picks the image of
/// OCI backends when none is given.
const PROBE_PROGRAM: &str = "echo";

pub async fn bench(args: BenchArgs) -> i32 {
    let spec = super::resolve_spec(&args.sandbox);
    let service = Arc::new(wiring::service());
    let backends: Vec<BackendKind> = if args.sandbox.backend.is_some() {
        vec![spec.backend]
    } else {
        service
            .status()
            .into_iter()
            .filter(|probe| probe.usable)
            .map(|probe| probe.backend)
            .collect()
    };
    if backends.is_empty() {
        exit::fail(
            exit::SANDBOX_FAILURE,
            &anyhow!("no backend is usable here; `agentkernel status` says why"),
        );
    }
    let concurrency = args
        .concurrency
        .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let mut report = BenchReport {
        machine: Machine::current(),
        iterations: args.iterations,
        backends: Vec::new(),
        failed: Vec::new(),
    };
    let explicit = args.sandbox.backend.is_some();
    for backend in backends {
        // Resolved again for each backend: its default image is the config's rule.
        let mut options = args.sandbox.options();
        options.backend = Some(backend.to_string());
        let mut spec = super::resolve_options(options);
        ak_service::settle_image(&mut spec, Some(&[PROBE_PROGRAM.to_string()]));
        match bench_backend(&service, &spec, &args, concurrency).await {
            Ok(result) => report.backends.push(result),
            Err(error) if explicit => exit::fail(
                exit::SANDBOX_FAILURE,
                &error.context(format!("benchmark of the {backend} backend")),
            ),
            // Measuring every usable backend: one that cannot run here (its default image
            // missing, say) is reported, and the others are still measured.
            Err(error) => report.failed.push(FailedBackend {
                backend,
                error: format!("{error:#}"),
            }),
        }
    }
    if report.backends.is_empty() {
        let reasons: Vec<String> = report
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.backend, f.error))
            .collect();
        exit::fail(
            exit::SANDBOX_FAILURE,
            &anyhow!("no backend could be measured: {}", reasons.join("; ")),
        );
    }
    let text = if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => json,
            Err(e) => exit::fail(exit::SANDBOX_FAILURE, &e.into()),
        }
    } else {
        render(&report)
    };
    super::say(&text);
    0
}

fn progress(args: &BenchArgs, length: u32, message: String) -> ProgressBar {
    if args.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(u64::from(length)).with_message(message);
    if let Ok(style) = ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A spec for one more sandbox: each needs its own id.
fn fresh(spec: &SandboxSpec) -> SandboxSpec {
    let id = new_sandbox_id();
    SandboxSpec {
        hostname: format!("ak-{}", &id[..12]),
        root_dir: None,
        root_layer: None,
        id,
        ..spec.clone()
    }
}

async fn bench_backend(
    service: &Arc<Service>,
    spec: &SandboxSpec,
    args: &BenchArgs,
    concurrency: u32,
) -> anyhow::Result<BackendBench> {
    let bar = progress(
        args,
        args.iterations,
        format!("{}: components", spec.backend),
    );
    let mut samples: Vec<ComponentTimes> = Vec::new();
    for _ in 0..args.iterations {
        samples.push(service.time_components(&fresh(spec)).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let components = ComponentTimes::NAMES
        .iter()
        .enumerate()
        .filter_map(|(index, name)| {
            let durations: Vec<Duration> = samples.iter().map(|t| t.values()[index]).collect();
            Some((*name, StepStats::from_durations(&durations)?))
        })
        .collect();
    // Phases in the order the first sample lists them.
    let boot_phases = samples
        .first()
        .map(|first| {
            first
                .boot_phases
                .iter()
                .filter_map(|(name, _)| {
                    let durations: Vec<Duration> = samples
                        .iter()
                        .filter_map(|t| t.boot_phases.iter().find(|(n, _)| n == name))
                        .map(|(_, d)| *d)
                        .collect();
                    Some((*name, StepStats::from_durations(&durations)?))
                })
                .collect()
        })
        .unwrap_or_default();

    let bar = progress(args, args.runs, format!("{}: throughput", spec.backend));
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.runs {
        let (service, spec, limit, bar) =
            (service.clone(), fresh(spec), limit.clone(), bar.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            service.time_components(&spec).await?;
            bar.inc(1);
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a throughput task panicked")??;
    }
    let wall = started.elapsed();
    bar.finish_and_clear();
    Ok(BackendBench {
        backend: spec.backend,
        components,
        boot_phases,
        throughput: Throughput {
            runs: args.runs,
            concurrency,
            wall_ms: (wall.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            sandboxes_per_s: (f64::from(args.runs) / wall.as_secs_f64() * 10.0).round() / 10.0,
        },
    })
}

fn render(report: &BenchReport) -> String {
    let machine = &report.machine;
    let mut text = format!(
        "{} cores ({}), kernel {}, {} sandboxes per backend\n",
        machine.cores, machine.cpu_model, machine.kernel, report.iterations
    );
    for failed in &report.failed {
        text.push_str(&format!(
            "\n{}: not measured: {}\n",
            failed.backend, failed.error
        ));
    }
    for backend in &report.backends {
        text.push_str(&format!(
            "\n{}\n{:10} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            backend.backend, "component", "mean ms", "p50 ms", "p95 ms", "p99 ms", "max ms"
        ));
        for name in ComponentTimes::NAMES {
            if let Some(s) = backend.components.get(name) {
                text.push_str(&format!(
                    "{name:10} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
                    s.mean_ms, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms
                ));
            }
            if name == "boot" {
                for (phase, s) in &backend.boot_phases {
                    text.push_str(&format!(
                        "  {phase}: {:.2} mean, {:.2} p50, {:.2} p95 ms\n",
                        s.mean_ms, s.p50_ms, s.p95_ms
                    ));
                }
            }
        }
        let t = &backend.throughput;
        text.push_str(&format!(
            "throughput {:.1} sandboxes/s ({} sandboxes, {} at once, {:.0} ms)\n",
            t.sandboxes_per_s, t.runs, t.concurrency, t.wall_ms
        ));
    }
    text
}
