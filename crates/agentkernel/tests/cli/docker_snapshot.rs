//! Snapshots of docker and podman sandboxes through the CLI: the container's root layer
//! saved by the engine (a commit while paused) and the workdir by the snapshot store,
//! taken while a process writes, restored and compared (contents, modes, owners, setuid
//! bits, symlinks, a FIFO, a sparse 1 GiB file), forks that diverge, survival of a daemon
//! kill -9 and of the sandbox's removal, the engine's images let go once nothing names
//! them, and clear errors. Needs the engines the docker tests need.

use std::process::Stdio;

use crate::common::{
    Mode, ak, ak_with_state, assert_code, sandbox_id, shared_host, stderr, stdout,
};
use crate::docker::{IMAGE, cli, create_started, docker, engine, podman_engine};

const MODE: Mode = Mode::Root;

fn name(test: &str) -> String {
    format!("ds-{test}-{}", std::process::id())
}

/// Every file under `/workspace` and `/app`: path, type, mode, owner, size and link
/// target (busybox's `stat`), sorted; the `busy` files (written while the snapshot is
/// taken) left out.
const FINGERPRINT: &str = "cd / && find workspace app \\( -path workspace/busy -o -path app/busy \\) -prune -o \
     -exec stat -c '%n %F %a %u:%g %s %N' {} \\; | sort";

/// The files the tests compare: in the workdir (the snapshot store's part) and in the
/// container's root (the engine's part).
const SETUP: &str = "set -e
cd /workspace
echo hello > plain
chmod 640 plain
mkdir -p deep/er/est
echo inner > deep/er/est/file
ln -s /etc/shadow escape
ln -s ../plain deep/rel
mkfifo pipe
echo owned > owned
chown 1234:4321 owned
truncate -s 1G sparse
printf 'middle' | dd of=sparse bs=1 seek=536870912 conv=notrunc 2>/dev/null
mkdir -p /app/sub
echo '#!/bin/sh' > /app/tool
chmod 4755 /app/tool
echo deep > /app/sub/f
chown 55:66 /app/sub/f
ln -s sub/f /app/link
mkfifo /app/pipe
rm /bin/vi";

fn sh(sandbox: &str, script: &str) -> String {
    let output = ak(MODE, &["exec", sandbox, "--", "sh", "-c", script]);
    assert_code(&output, 0);
    stdout(&output)
}

fn snapshot_json(args: &[&str]) -> serde_json::Value {
    let output = ak(MODE, args);
    assert_code(&output, 0);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `create NEW --from-snapshot SNAP` (the tests' environment names the native backend
/// for new sandboxes: the snapshot's own is named over it).
fn restore(new: &str, snap: &str, engine: &str) {
    let args = ["create", new, "--from-snapshot", snap, "--backend", engine];
    assert_code(&ak(MODE, &args), 0);
}

/// Whether `engine` still has saved layer `id` (tagged or not).
fn engine_has(engine: &str, id: &str) -> bool {
    cli(engine, &["image", "inspect", id]).status.success()
}

#[test]
fn a_running_docker_sandbox_is_snapshotted_restored_and_compared() {
    let _host = shared_host();
    engine();
    let (source, copy, snap) = (name("src"), name("copy"), name("snap"));
    create_started("docker", &source);
    sh(&source, SETUP);
    let before = sh(&source, FINGERPRINT);
    assert!(
        before.contains("app/tool regular file 4755 0:0"),
        "{before}"
    );
    assert!(
        before.contains("app/sub/f regular file 644 55:66"),
        "{before}"
    );
    assert!(before.contains("workspace/pipe fifo"), "{before}");

    // A process writes while the snapshot is taken: the container is paused for it.
    let mut writer = crate::common::agentkernel(
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
    std::thread::sleep(std::time::Duration::from_millis(300));
    let info = snapshot_json(&["snapshot", "create", &source, "--name", &snap, "--json"]);
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert_eq!(info["taken_while"], "running", "{info}");
    assert_eq!(info["backend"], "docker", "{info}");
    let layer = info["root_layer"].as_str().unwrap().to_string();
    assert!(layer.starts_with("sha256:"), "{info}");
    assert!(engine_has("docker", &layer));
    // The workdir's sparse gigabyte costs its data in the store, not a gigabyte.
    assert!(info["bytes"].as_u64().unwrap() > 1 << 30, "{info}");
    assert!(info["stored_bytes"].as_u64().unwrap() < 64 << 20, "{info}");
    // The sandbox runs on after its snapshot.
    assert_eq!(sh(&source, "cat /app/sub/f"), "deep\n");

    sh(
        &source,
        "rm /workspace/plain /app/sub/f; echo changed > /app/tool; echo new > /workspace/new",
    );

    restore(&copy, &snap, "docker");
    assert_code(&ak(MODE, &["start", &copy]), 0);
    assert_eq!(sh(&copy, FINGERPRINT), before);
    assert_eq!(
        sh(
            &copy,
            "cat /workspace/plain /workspace/deep/rel /app/link; head -c 9 /app/tool"
        ),
        "hello\nhello\ndeep\n#!/bin/sh"
    );
    assert_eq!(sh(&copy, "readlink /workspace/escape"), "/etc/shadow\n");
    // A file the sandbox removed from its image stays removed (the layer's whiteout).
    assert_eq!(sh(&copy, "test -e /bin/vi && echo yes || echo no"), "no\n");
    let sparse = sh(
        &copy,
        "stat -c '%s %b' /workspace/sparse; dd if=/workspace/sparse bs=1 skip=536870912 count=6 2>/dev/null",
    );
    let mut fields = sparse.split_whitespace();
    assert_eq!(fields.next(), Some("1073741824"), "{sparse}");
    let blocks: u64 = fields.next().unwrap().parse().unwrap();
    assert!(
        blocks < 1024,
        "the restored sparse file takes {blocks} blocks"
    );
    assert!(sparse.ends_with("middle"), "{sparse}");
    // One instant of both parts: whole lines only, and no later writes.
    for busy in ["/workspace/busy", "/app/busy"] {
        let lines = sh(&copy, &format!("cat {busy}"));
        assert!(
            !lines.is_empty() && lines.lines().all(|l| l == "line"),
            "{busy} torn: {lines:?}"
        );
    }
    assert_eq!(
        sh(&copy, "test -e /workspace/new && echo yes || echo no"),
        "no\n"
    );

    // Removing the sandbox keeps its snapshot, and the snapshot's layer in the engine.
    assert_code(&ak(MODE, &["remove", &source, "--force"]), 0);
    assert!(stdout(&ak(MODE, &["snapshot", "list"])).contains(&snap));
    assert!(engine_has("docker", &layer));
    // A stopped container sandbox's root is the layer it was made from.
    assert_code(&ak(MODE, &["stop", &copy]), 0);
    let again = format!("{snap}-2");
    let info = snapshot_json(&["snapshot", "create", &copy, "--name", &again, "--json"]);
    assert_eq!(info["taken_while"], "stopped", "{info}");
    assert_eq!(info["root_layer"], layer.as_str(), "{info}");

    // The layer goes once neither a snapshot nor a sandbox names it.
    assert_code(&ak(MODE, &["snapshot", "remove", &snap]), 0);
    assert!(
        engine_has("docker", &layer),
        "the copy and {again} still use it"
    );
    assert_code(&ak(MODE, &["remove", &copy, "--force"]), 0);
    assert!(engine_has("docker", &layer), "{again} still uses it");
    assert_code(&ak(MODE, &["snapshot", "remove", &again]), 0);
    assert!(
        !engine_has("docker", &layer),
        "nothing names {layer} any more"
    );
}

#[test]
fn docker_forks_diverge_independently() {
    let _host = shared_host();
    engine();
    let base = name("base");
    create_started("docker", &base);
    sh(
        &base,
        "echo base > /workspace/n; mkdir -p /app; echo base > /app/n",
    );
    let forks: Vec<String> = (1..=8).map(|i| format!("{base}-f{i}")).collect();
    let mut args = vec!["fork", base.as_str()];
    args.extend(forks.iter().map(String::as_str));
    let output = ak(MODE, &args);
    assert_code(&output, 0);
    assert_eq!(stdout(&output).lines().collect::<Vec<_>>(), forks);
    assert!(!stdout(&ak(MODE, &["snapshot", "list"])).contains("fork-"));
    for (i, fork) in forks.iter().enumerate() {
        sh(fork, &format!("echo {i} > /workspace/n; echo {i} > /app/n"));
    }
    for (i, fork) in forks.iter().enumerate() {
        assert_eq!(sh(fork, "cat /workspace/n /app/n"), format!("{i}\n{i}\n"));
    }
    assert_eq!(sh(&base, "cat /workspace/n /app/n"), "base\nbase\n");
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(MODE, &["inspect", &forks[0], "--json"]).stdout).unwrap();
    let layer = inspected["spec"]["root_layer"]
        .as_str()
        .unwrap_or_else(|| panic!("a fork starts from the saved layer: {inspected}"))
        .to_string();
    for sandbox in forks.iter().chain([&base]) {
        assert_code(&ak(MODE, &["remove", sandbox, "--force"]), 0);
    }
    // The fork's layer went with the last fork.
    assert!(!engine_has("docker", &layer), "{layer} is left behind");
}

#[test]
fn docker_snapshots_survive_a_daemon_kill() {
    let _host = shared_host();
    engine();
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| ak_with_state(state.path(), args);
    assert_code(&run(&["daemon", "start"]), 0);
    let status: serde_json::Value =
        serde_json::from_slice(&run(&["daemon", "status", "--json"]).stdout).unwrap();
    let pid = status["pid"].as_i64().unwrap() as i32;
    let create = [
        "create",
        "kept",
        "--backend",
        "docker",
        "--image",
        IMAGE,
        "--no-network",
    ];
    assert_code(&run(&create), 0);
    assert_code(&run(&["start", "kept"]), 0);
    let script = "echo survived > /workspace/f; echo root > /r";
    assert_code(&run(&["exec", "kept", "--", "sh", "-c", script]), 0);
    assert_code(&run(&["snapshot", "create", "kept", "--name", "k1"]), 0);
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(stdout(&run(&["snapshot", "list"])).contains("k1"));
    let restore = [
        "create",
        "back",
        "--from-snapshot",
        "k1",
        "--backend",
        "docker",
    ];
    assert_code(&run(&restore), 0);
    assert_code(&run(&["start", "back"]), 0);
    let output = run(&["exec", "back", "--", "cat", "/workspace/f", "/r"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "survived\nroot\n");
    for sandbox in ["back", "kept"] {
        assert_code(&run(&["remove", sandbox, "--force"]), 0);
    }
    assert_code(&run(&["snapshot", "remove", "k1"]), 0);
}

#[test]
fn bad_docker_snapshot_requests_are_refused_clearly() {
    let _host = shared_host();
    engine();
    let (sandbox, snap, copy) = (name("bad"), name("bad-snap"), name("bad-copy"));
    create_started("docker", &sandbox);
    for bad in ["..", "a/b", ".hidden"] {
        let output = ak(MODE, &["snapshot", "create", &sandbox, "--name", bad]);
        assert_code(&output, 2);
        assert!(
            stderr(&output).contains("snapshot name"),
            "{}",
            stderr(&output)
        );
    }
    sh(&sandbox, "echo x > /x");
    let info = snapshot_json(&["snapshot", "create", &sandbox, "--name", &snap, "--json"]);
    let layer = info["root_layer"].as_str().unwrap().to_string();
    // The engine lost the layer (removed by hand): a restore says so when it starts.
    assert!(docker(&["rmi", "-f", &layer]).status.success());
    restore(&copy, &snap, "docker");
    let output = ak(MODE, &["start", &copy]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("no longer in the engine"),
        "{}",
        stderr(&output)
    );
    assert_code(&ak(MODE, &["remove", &copy, "--force"]), 0);
    // A sandbox whose container died is failed, and says so rather than being copied.
    let id = sandbox_id(MODE, &sandbox);
    assert!(
        docker(&["kill", &format!("agentkernel-{id}")])
            .status
            .success()
    );
    let output = ak(MODE, &["snapshot", "create", &sandbox, "--name", "never"]);
    assert_code(&output, 2);
    assert!(stderr(&output).contains("failed"), "{}", stderr(&output));
    assert_code(&ak(MODE, &["remove", &sandbox, "--force"]), 0);
    assert_code(&ak(MODE, &["snapshot", "remove", &snap]), 0);
}

#[test]
fn podman_sandboxes_are_snapshotted_and_restored() {
    let _host = shared_host();
    podman_engine();
    let (source, copy, snap) = (name("p-src"), name("p-copy"), name("p-snap"));
    create_started("podman", &source);
    sh(
        &source,
        "echo mine > /workspace/f; mkdir /app; echo root > /app/r; chmod 4711 /app/r; ln -s r /app/l",
    );
    let before = sh(&source, FINGERPRINT);
    let info = snapshot_json(&["snapshot", "create", &source, "--name", &snap, "--json"]);
    assert_eq!(info["backend"], "podman", "{info}");
    let layer = info["root_layer"].as_str().unwrap().to_string();
    sh(&source, "echo changed > /app/r");
    restore(&copy, &snap, "podman");
    assert_code(&ak(MODE, &["start", &copy]), 0);
    assert_eq!(sh(&copy, FINGERPRINT), before);
    assert_eq!(sh(&copy, "cat /workspace/f /app/l"), "mine\nroot\n");
    for sandbox in [&source, &copy] {
        assert_code(&ak(MODE, &["remove", sandbox, "--force"]), 0);
    }
    assert_code(&ak(MODE, &["snapshot", "remove", &snap]), 0);
    assert!(!engine_has("podman", &layer), "{layer} is left behind");
}
