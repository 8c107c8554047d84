//! Snapshots of microVM sandboxes through the CLI (QEMU, emulated here): the root's
//! writable layer is the VM's layer disk, flushed by the guest and copied while the VM is
//! stopped by QMP; the workdir is in that disk too (QEMU VMs keep no 9p share, to be savable). Taken while processes write
//! to both, restored into new VMs and compared (contents, modes, owners, symlinks, a FIFO,
//! sparse 1 GiB files in the root and the workdir), forks that diverge, the root kept
//! across stop/start, a snapshot of a paused VM, and a failed VM refused clearly.
//!
//! Three forks rather than eight: each is a VM booted under emulation (about two seconds
//! of a CPU each, and its memory), on a machine the tests share; the store and the fork's
//! logic are the same as the native backend's, whose test makes eight.

use std::process::Stdio;

use crate::common::{Mode, agentkernel, ak, assert_code, sandbox_id, shared_host, stderr, stdout};
use crate::daemon::RemovedAtEnd;
use crate::microvm::{name, ready, vm_processes, wait_until};
use crate::snapshot::{FINGERPRINT, SETUP};

const MODE: Mode = Mode::Root;
/// Enough for the tests' commands, little enough for several VMs at once.
const MEMORY: &str = "384M";

/// The snapshot tests' files, with the FIFO and the file owned by another user in the
/// root's layer: the workdir was once shared over 9p (`security_model=none`), which made no
/// FIFOs and keeps the host's owners.
fn setup() -> String {
    let moved = SETUP
        .replace("cd /workspace\n", "mkdir -p /app\ncd /workspace\n")
        .replace("mkfifo pipe", "mkfifo /app/pipe")
        .replace(
            "echo owned > owned\nchown 1234:4321 owned",
            "echo owned > /app/owned\nchown 1234:4321 /app/owned",
        );
    assert!(
        !moved.contains("mkfifo pipe") && moved.contains("/app/owned"),
        "the shared set-up changed: {moved}"
    );
    moved
}

fn sh(sandbox: &str, script: &str) -> String {
    let output = ak(MODE, &["exec", sandbox, "--", "sh", "-c", script]);
    assert_code(&output, 0);
    stdout(&output)
}

fn create_started(n: &str) {
    let create = [
        "create",
        n,
        "--backend",
        "microvm",
        "--no-network",
        "--memory",
        MEMORY,
    ];
    assert_code(&ak(MODE, &create), 0);
    assert_code(&ak(MODE, &["start", n]), 0);
}

fn snapshot_json(args: &[&str]) -> serde_json::Value {
    let output = ak(MODE, args);
    assert_code(&output, 0);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `create NEW --from-snapshot SNAP` (the tests' environment names the native backend
/// for new sandboxes: the snapshot's own is named over it).
fn restore(new: &str, snap: &str) {
    let args = [
        "create",
        new,
        "--from-snapshot",
        snap,
        "--backend",
        "microvm",
    ];
    assert_code(&ak(MODE, &args), 0);
}

#[test]
fn a_running_vm_is_snapshotted_restored_and_compared() {
    let _host = shared_host();
    ready();
    let (source, copy, snap) = (name("snap-src"), name("snap-copy"), name("snap"));
    create_started(&source);
    sh(&source, &setup());
    // A sparse gigabyte inside the root's layer disk too.
    sh(
        &source,
        "truncate -s 1G /app/sparse && printf deep | dd of=/app/sparse bs=1 seek=536870912 conv=notrunc 2>/dev/null && rm /usr/bin/perl",
    );
    let before = sh(&source, FINGERPRINT);
    assert!(before.contains("app/tool f 4755 0:0"), "{before}");
    assert!(before.contains("app/owned f 644 1234:4321"), "{before}");
    assert!(before.contains("app/pipe p"), "{before}");

    // Processes write to the root layer and the workdir while the snapshot is taken.
    let mut writer = agentkernel(
        MODE,
        &[
            "exec",
            &source,
            "--",
            "sh",
            "-c",
            "while :; do echo line >> /workspace/busy; echo line >> /app/busy; done",
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    wait_until(
        "the writer to write",
        std::time::Duration::from_secs(30),
        || {
            sh(&source, "wc -l < /app/busy 2>/dev/null || echo 0")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                > 10
        },
    );
    let info = snapshot_json(&["snapshot", "create", &source, "--name", &snap, "--json"]);
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert_eq!(info["taken_while"], "running", "{info}");
    assert_eq!(info["backend"], "microvm", "{info}");
    // The layer disk (which holds the workdir too) costs its data, not its size.
    assert!(info["bytes"].as_u64().unwrap() >= 8 << 30, "{info}");
    assert!(info["stored_bytes"].as_u64().unwrap() < 256 << 20, "{info}");
    assert!(info.get("root_layer").is_none(), "{info}");

    sh(
        &source,
        "rm /workspace/plain; echo changed > /app/tool; echo new > /workspace/new",
    );
    restore(&copy, &snap);
    assert_code(&ak(MODE, &["start", &copy]), 0);
    assert_eq!(sh(&copy, FINGERPRINT), before);
    assert_eq!(
        sh(&copy, "cat /workspace/plain; head -c 9 /app/tool"),
        "hello\n#!/bin/sh"
    );
    assert_eq!(
        sh(&copy, "test -e /usr/bin/perl && echo yes || echo no"),
        "no\n"
    );
    let sparse = sh(
        &copy,
        "stat -c '%s %b' /app/sparse; dd if=/app/sparse bs=1 skip=536870912 count=4 2>/dev/null",
    );
    let mut fields = sparse.split_whitespace();
    assert_eq!(fields.next(), Some("1073741824"), "{sparse}");
    let blocks: u64 = fields.next().unwrap().parse().unwrap();
    assert!(
        blocks < 1024,
        "the restored sparse file takes {blocks} blocks"
    );
    assert!(sparse.ends_with("deep"), "{sparse}");
    // What the writers had written, whole lines only: the guest flushed, then stopped.
    for busy in ["/workspace/busy", "/app/busy"] {
        let lines = sh(&copy, &format!("cat {busy}"));
        assert!(
            !lines.is_empty() && lines.lines().all(|l| l == "line"),
            "{busy} torn: {} lines",
            lines.lines().count()
        );
    }
    assert_eq!(
        sh(&copy, "test -e /workspace/new && echo yes || echo no"),
        "no\n"
    );

    // The root's layer outlives a stop; removing the source keeps its snapshot.
    assert_code(&ak(MODE, &["stop", &copy]), 0);
    assert_code(&ak(MODE, &["start", &copy]), 0);
    assert_eq!(sh(&copy, "head -c 9 /app/tool"), "#!/bin/sh");
    assert_code(&ak(MODE, &["remove", &source, "--force"]), 0);
    assert!(stdout(&ak(MODE, &["snapshot", "list"])).contains(&snap));

    // Snapshots in a row leave the VM reachable (a flush connection closed just before
    // the freeze once left vhost-device-vsock answering no new connection).
    for i in 0..4 {
        let again = format!("{snap}-r{i}");
        assert_code(
            &ak(MODE, &["snapshot", "create", &copy, "--name", &again]),
            0,
        );
        assert_code(&ak(MODE, &["snapshot", "remove", &again]), 0);
    }
    assert_eq!(sh(&copy, "echo reachable"), "reachable\n");

    // A paused VM is copied as it is and stays paused.
    assert_code(&ak(MODE, &["pause", &copy]), 0);
    let paused = format!("{snap}-p");
    let info = snapshot_json(&["snapshot", "create", &copy, "--name", &paused, "--json"]);
    assert_eq!(info["taken_while"], "paused", "{info}");
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(MODE, &["inspect", &copy, "--json"]).stdout).unwrap();
    assert_eq!(inspected["state"], "paused", "{inspected}");
    assert_code(&ak(MODE, &["remove", &copy, "--force"]), 0);
    for s in [&snap, &paused] {
        assert_code(&ak(MODE, &["snapshot", "remove", s]), 0);
    }
}

#[test]
fn vm_forks_diverge_independently() {
    let _host = shared_host();
    ready();
    let base = name("fork-base");
    let forks: Vec<String> = (1..=3).map(|i| format!("{base}-f{i}")).collect();
    // Also when a step fails (a fork that hung once left VMs running).
    let _removed: Vec<RemovedAtEnd> = forks
        .iter()
        .chain([&base])
        .map(|n| RemovedAtEnd(MODE, n.clone()))
        .collect();
    create_started(&base);
    sh(
        &base,
        "echo base > /workspace/n; mkdir -p /app; echo base > /app/n",
    );
    let mut args = vec!["fork", base.as_str()];
    args.extend(forks.iter().map(String::as_str));
    let output = ak(MODE, &args);
    assert_code(&output, 0);
    assert_eq!(stdout(&output).lines().collect::<Vec<_>>(), forks);
    for (i, fork) in forks.iter().enumerate() {
        sh(fork, &format!("echo {i} > /workspace/n; echo {i} > /app/n"));
    }
    for (i, fork) in forks.iter().enumerate() {
        assert_eq!(sh(fork, "cat /workspace/n /app/n"), format!("{i}\n{i}\n"));
    }
    assert_eq!(sh(&base, "cat /workspace/n /app/n"), "base\nbase\n");
    for sandbox in forks.iter().chain([&base]) {
        assert_code(&ak(MODE, &["remove", sandbox, "--force"]), 0);
    }
}

#[test]
fn a_failed_vm_is_not_snapshotted() {
    let _host = shared_host();
    ready();
    let n = name("snap-failed");
    create_started(&n);
    let id = sandbox_id(MODE, &n);
    let pids = vm_processes(&id);
    for &pid in &pids {
        // SAFETY: killing the processes of the VM this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    // Gone and reaped: a zombie still counts as alive to a start-time check.
    wait_until(
        "the VM to be gone",
        std::time::Duration::from_secs(10),
        || {
            pids.iter()
                .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        },
    );
    let output = ak(MODE, &["snapshot", "create", &n, "--name", "never"]);
    assert_code(&output, 2);
    assert!(stderr(&output).contains("failed"), "{}", stderr(&output));
    assert!(!stdout(&ak(MODE, &["snapshot", "list"])).contains("never"));
    assert_code(&ak(MODE, &["remove", &n, "--force"]), 0);
}
