//! A small soak of the HTTP API (`scripts/soak.py`): many mixed requests from concurrent
//! clients against `agentkernel serve` over TCP and against the daemon's API socket; the
//! server must answer them all and hold no more descriptors or memory afterwards than
//! before, and the host must have nothing left once it stops.
//! `SOAK_REQUESTS` and `SOAK_CLIENTS` size it (400 and 8 by default).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ak_bench::HostSnapshot;

use crate::server::{Server, TOKEN, agentkernel, assert_root, exclusive_host};

/// Descriptors the server may hold beyond its count after the warm-up (a pool spare
/// being built at the moment of the sample, a connection being closed).
const FD_SLACK: i64 = 8;
/// Resident memory the server may grow by over the soak.
const RSS_SLACK_KIB: i64 = 30 * 1024;
/// How long asynchronous clean-up (processes being reaped) may take once a server stops.
const SETTLE: Duration = Duration::from_secs(5);

fn setting(name: &str, default: u32) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| v.parse::<u32>().is_ok_and(|n| n > 0))
        .unwrap_or_else(|| default.to_string())
}

/// Runs the soak against `target` (`--url …` or `--socket …`) served by process `pid`; its
/// JSON summary.
fn soak(target: &[&str], pid: u32) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/soak.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(target)
        .args(["--pid", &pid.to_string()])
        .args(["--requests", &setting("SOAK_REQUESTS", 400)])
        .args(["--clients", &setting("SOAK_CLIENTS", 8)])
        // A failing server is reported after a few errors, not after every request has
        // waited out its timeout.
        .args(["--max-errors", "10", "--timeout", "30"])
        .env_remove("AGENTKERNEL_API_KEY")
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is required for this test (apt-get install python3): {e}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The numbers docs/benchmarks.md reports, shown with --nocapture.
    #[allow(clippy::print_stderr, reason = "the soak's summary for the reader")]
    {
        eprintln!("soak summary: {stdout}");
    }
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "soak.py printed no summary ({e})\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Every bound the soak broke, each with its numbers.
fn broken_bounds(summary: &serde_json::Value) -> Vec<String> {
    let number = |key: &str| {
        summary[key]
            .as_i64()
            .unwrap_or_else(|| panic!("no {key}: {summary}"))
    };
    let mut broken = Vec::new();
    if number("errors") != 0 {
        broken.push(format!(
            "{} of {} requests failed: {}",
            number("errors"),
            number("requests"),
            summary["error_samples"]
        ));
    }
    let (fds_before, fds_after) = (number("fds_before"), number("fds_after"));
    if fds_after > fds_before + FD_SLACK {
        broken.push(format!(
            "open descriptors grew from {fds_before} to {fds_after} over {} requests",
            number("measured_requests")
        ));
    }
    let (rss_before, rss_after) = (number("rss_kib_before"), number("rss_kib_after"));
    if rss_after - rss_before > RSS_SLACK_KIB {
        broken.push(format!(
            "resident memory grew from {rss_before} KiB to {rss_after} KiB"
        ));
    }
    broken
}

/// Fails with every broken bound and every leaked host resource at once, so that one run
/// shows the whole picture.
fn assert_sound(summary: &serde_json::Value, before: &HostSnapshot) {
    let mut broken = broken_bounds(summary);
    broken.extend(before.leaks_since(&[], SETTLE));
    assert!(
        broken.is_empty(),
        "the soak found:\n  {}\nsummary: {summary:#}",
        broken.join("\n  ")
    );
}

#[test]
fn soak_serve_over_tcp() {
    assert_root();
    let _host = exclusive_host();
    let before = HostSnapshot::take(&[]);
    let server = Server::start_exclusive(Some(TOKEN), &[]);
    let summary = soak(&["--url", &server.address, "--token", TOKEN], server.pid());
    drop(server);
    assert_sound(&summary, &before);
}

/// The daemon of a private state directory; stopped when dropped.
struct Daemon {
    state: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let state = tempfile::tempdir().unwrap();
        let output = agentkernel(state.path(), &["daemon", "start"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "daemon start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Daemon { state }
    }

    fn pid(&self) -> u32 {
        let output = agentkernel(self.state.path(), &["daemon", "status", "--json"])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        u32::try_from(status["pid"].as_u64().unwrap()).unwrap()
    }

    fn api_socket(&self) -> PathBuf {
        self.state.path().join("api.sock")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = agentkernel(self.state.path(), &["daemon", "stop"]).output();
    }
}

#[test]
fn soak_the_daemon_over_its_socket() {
    assert_root();
    let _host = exclusive_host();
    let before = HostSnapshot::take(&[]);
    let daemon = Daemon::start();
    let socket = daemon.api_socket();
    let summary = soak(&["--socket", socket.to_str().unwrap()], daemon.pid());
    drop(daemon);
    assert_sound(&summary, &before);
}
