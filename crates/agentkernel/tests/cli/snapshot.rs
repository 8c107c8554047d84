//! Snapshots of named sandboxes through the CLI: taken while a process writes, restored
//! into new sandboxes and compared (contents, modes, owners, symlinks, a sparse 1 GiB
//! file that stays sparse), forks that diverge, survival of a daemon kill -9 and of the
//! sandbox's removal, and clear refusals of bad input.

use std::process::Stdio;

use crate::common::{Mode, ak, ak_with_state, assert_code, shared_host, stderr, stdout};

fn name(test: &str, mode: Mode) -> String {
    format!("s-{test}-{mode:?}-{}", std::process::id()).to_lowercase()
}

/// Every file under the sandbox's `/workspace` and `/app`: path, type, mode, owner, size
/// and link target, sorted; the `busy` files (written to while the snapshot is taken)
/// left out.
pub(crate) const FINGERPRINT: &str = "cd / && find workspace app \\( -path workspace/busy \
     -o -path app/busy \\) -prune -o -printf '%p %y %m %U:%G %s %l\\n' | sort";

/// The files the tests compare, made in a running sandbox as its root.
pub(crate) const SETUP: &str = "set -e
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
mkdir -p /app
echo '#!/bin/sh' > /app/tool
chmod 4755 /app/tool";

fn sh(mode: Mode, sandbox: &str, script: &str) -> String {
    let output = ak(mode, &["exec", sandbox, "--", "sh", "-c", script]);
    assert_code(&output, 0);
    stdout(&output)
}

#[test]
fn a_running_sandbox_is_snapshotted_restored_and_compared() {
    let _host = shared_host();
    let mode = Mode::Root;
    let source = name("src", mode);
    let copy = name("copy", mode);
    let snap = name("snap", mode);
    assert_code(&ak(mode, &["create", &source, "--no-network"]), 0);
    assert_code(&ak(mode, &["start", &source]), 0);
    sh(mode, &source, SETUP);
    let before = sh(mode, &source, FINGERPRINT);
    assert!(
        before.contains("workspace/escape l 777") && before.contains("/etc/shadow"),
        "{before}"
    );
    assert!(before.contains("app/tool f 4755 0:0"), "{before}");
    assert!(
        before.contains("workspace/owned f 644 1234:4321"),
        "{before}"
    );

    // A process writes while the snapshot is taken: its processes are frozen for the copy.
    let mut writer = crate::common::agentkernel(
        mode,
        &[
            "exec",
            &source,
            "--",
            "sh",
            "-c",
            "while :; do echo line >> /workspace/busy; done",
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let output = ak(
        mode,
        &["snapshot", "create", &source, "--name", &snap, "--json"],
    );
    assert_code(&output, 0);
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert_eq!(info["taken_while"], "running", "{info}");
    assert_eq!(info["backend"], "native", "{info}");
    assert!(info["bytes"].as_u64().unwrap() > 1 << 30, "{info}");
    // The sparse gigabyte costs its data in the store, not a gigabyte.
    assert!(info["stored_bytes"].as_u64().unwrap() < 64 << 20, "{info}");

    // The source changes after the snapshot; the copy must not see it.
    sh(
        mode,
        &source,
        "rm /workspace/plain; echo changed > /app/tool; echo new > /workspace/new",
    );

    assert_code(&ak(mode, &["create", &copy, "--from-snapshot", &snap]), 0);
    assert_code(&ak(mode, &["start", &copy]), 0);
    assert_eq!(sh(mode, &copy, FINGERPRINT), before);
    assert_eq!(
        sh(
            mode,
            &copy,
            "cat /workspace/plain /workspace/deep/rel /workspace/deep/er/est/file"
        ),
        "hello\nhello\ninner\n"
    );
    // The symlink is kept as it was (data), and resolves inside the new sandbox only.
    assert_eq!(
        sh(mode, &copy, "readlink /workspace/escape"),
        "/etc/shadow\n"
    );
    assert_eq!(sh(mode, &copy, "head -c 9 /app/tool"), "#!/bin/sh");
    // Sparse: a gigabyte long, a few blocks on disk, the data where it was.
    let sparse = sh(
        mode,
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
    // What the writer had written, whole lines only: the copy is one instant.
    let busy = sh(mode, &copy, "cat /workspace/busy");
    assert!(
        !busy.is_empty() && busy.lines().all(|l| l == "line"),
        "torn: {busy:?}"
    );
    assert_eq!(
        sh(mode, &copy, "test -e /workspace/new && echo yes || echo no"),
        "no\n"
    );

    // Removing the sandbox keeps its snapshots; a stopped sandbox is snapshotted as it lies.
    assert_code(&ak(mode, &["remove", &source, "--force"]), 0);
    let listed = stdout(&ak(mode, &["snapshot", "list"]));
    assert!(listed.contains(&snap), "{listed}");
    assert_code(&ak(mode, &["stop", &copy]), 0);
    let again = format!("{snap}-2");
    let output = ak(
        mode,
        &["snapshot", "create", &copy, "--name", &again, "--json"],
    );
    assert_code(&output, 0);
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["taken_while"], "stopped", "{info}");
    // Its unchanged files were in the store already.
    assert_eq!(info["stored_bytes"], 0, "{info}");
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(mode, &["snapshot", "inspect", &snap, "--json"]).stdout)
            .unwrap();
    assert_eq!(inspected["sandbox"], source.as_str(), "{inspected}");

    assert_code(&ak(mode, &["remove", &copy, "--force"]), 0);
    for s in [&snap, &again] {
        assert_code(&ak(mode, &["snapshot", "remove", s]), 0);
    }
    assert!(!stdout(&ak(mode, &["snapshot", "list"])).contains(&snap));
}

#[test]
fn forks_diverge_independently() {
    let _host = shared_host();
    let mode = Mode::Root;
    let base = name("base", mode);
    assert_code(&ak(mode, &["create", &base, "--no-network"]), 0);
    assert_code(&ak(mode, &["start", &base]), 0);
    sh(
        mode,
        &base,
        "echo base > /workspace/n; mkdir -p /app; echo base > /app/n",
    );
    let forks: Vec<String> = (1..=8).map(|i| format!("{base}-f{i}")).collect();
    let mut args = vec!["fork", base.as_str()];
    args.extend(forks.iter().map(String::as_str));
    let output = ak(mode, &args);
    assert_code(&output, 0);
    assert_eq!(stdout(&output).lines().collect::<Vec<_>>(), forks);
    // The fork's own snapshot is not left behind.
    assert!(!stdout(&ak(mode, &["snapshot", "list"])).contains("fork-"));
    for (i, fork) in forks.iter().enumerate() {
        sh(
            mode,
            fork,
            &format!("echo {i} > /workspace/n; echo {i} > /app/n"),
        );
    }
    for (i, fork) in forks.iter().enumerate() {
        assert_eq!(
            sh(mode, fork, "cat /workspace/n /app/n"),
            format!("{i}\n{i}\n")
        );
    }
    assert_eq!(sh(mode, &base, "cat /workspace/n /app/n"), "base\nbase\n");
    for sandbox in forks.iter().chain([&base]) {
        assert_code(&ak(mode, &["remove", sandbox, "--force"]), 0);
    }
}

#[test]
fn snapshots_survive_a_daemon_kill() {
    let _host = shared_host();
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| ak_with_state(state.path(), args);
    assert_code(&run(&["daemon", "start"]), 0);
    let status: serde_json::Value =
        serde_json::from_slice(&run(&["daemon", "status", "--json"]).stdout).unwrap();
    let pid = status["pid"].as_i64().unwrap() as i32;
    assert_code(&run(&["create", "kept", "--no-network"]), 0);
    assert_code(&run(&["start", "kept"]), 0);
    assert_code(
        &run(&[
            "exec",
            "kept",
            "--",
            "sh",
            "-c",
            "echo survived > /workspace/f",
        ]),
        0,
    );
    assert_code(&run(&["snapshot", "create", "kept", "--name", "k1"]), 0);
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Without a daemon, this process reads the same store.
    assert!(stdout(&run(&["snapshot", "list"])).contains("k1"));
    assert_code(&run(&["create", "back", "--from-snapshot", "k1"]), 0);
    assert_code(&run(&["start", "back"]), 0);
    let output = run(&["exec", "back", "--", "cat", "/workspace/f"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "survived\n");
    for sandbox in ["back", "kept"] {
        assert_code(&run(&["remove", sandbox, "--force"]), 0);
    }
    assert_code(&run(&["snapshot", "remove", "k1"]), 0);
}

#[test]
fn a_stopped_rootless_sandbox_is_snapshotted_and_restored() {
    let _host = shared_host();
    let mode = Mode::Rootless;
    let source = name("src", mode);
    let copy = name("copy", mode);
    let snap = name("snap", mode);
    assert_code(&ak(mode, &["create", &source, "--no-network"]), 0);
    assert_code(&ak(mode, &["start", &source]), 0);
    sh(
        mode,
        &source,
        "echo mine > /workspace/f; chmod 600 /workspace/f; mkdir -p /app; ln -s f /workspace/l",
    );
    let before = sh(mode, &source, FINGERPRINT);
    assert_code(&ak(mode, &["stop", &source]), 0);
    assert_code(
        &ak(mode, &["snapshot", "create", &source, "--name", &snap]),
        0,
    );
    assert_code(&ak(mode, &["create", &copy, "--from-snapshot", &snap]), 0);
    assert_code(&ak(mode, &["start", &copy]), 0);
    assert_eq!(sh(mode, &copy, FINGERPRINT), before);
    assert_eq!(sh(mode, &copy, "cat /workspace/l"), "mine\n");
    for sandbox in [&source, &copy] {
        assert_code(&ak(mode, &["remove", sandbox, "--force"]), 0);
    }
    assert_code(&ak(mode, &["snapshot", "remove", &snap]), 0);
}

#[test]
fn bad_snapshot_requests_are_refused_clearly() {
    let _host = shared_host();
    let mode = Mode::Root;
    let sandbox = name("bad", mode);
    let refused = |args: &[&str], needle: &str| {
        let output = ak(mode, args);
        assert_code(&output, 2);
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    };
    refused(
        &["snapshot", "create", "no-such-sandbox"],
        "no sandbox named 'no-such-sandbox'",
    );
    refused(
        &["snapshot", "inspect", "no-such-snapshot"],
        "no snapshot named 'no-such-snapshot'",
    );
    refused(
        &["snapshot", "remove", "no-such-snapshot"],
        "no snapshot named 'no-such-snapshot'",
    );
    refused(
        &[
            "create",
            "x-from-nothing",
            "--from-snapshot",
            "no-such-snapshot",
        ],
        "no snapshot named",
    );
    refused(&["snapshot", "inspect", ".."], "snapshot name");
    refused(
        &["create", "x-dots", "--from-snapshot", "../etc"],
        "snapshot name",
    );
    assert_code(&ak(mode, &["create", &sandbox, "--no-network"]), 0);
    for bad in ["..", "../up", "a/b", ".hidden", ""] {
        refused(
            &["snapshot", "create", &sandbox, "--name", bad],
            "snapshot name",
        );
    }
    let snap = name("dup", mode);
    assert_code(
        &ak(mode, &["snapshot", "create", &sandbox, "--name", &snap]),
        0,
    );
    refused(
        &["snapshot", "create", &sandbox, "--name", &snap],
        "already exists",
    );
    refused(
        &["create", &sandbox, "--from-snapshot", &snap],
        "already exists",
    );
    refused(
        &[
            "create",
            "x-opts",
            "--from-snapshot",
            &snap,
            "--memory",
            "1G",
        ],
        "from the snapshot",
    );
    refused(&["fork", &sandbox, &sandbox], "already exists");
    // A sandbox whose processes died is failed, and says so rather than being copied.
    assert_code(&ak(mode, &["start", &sandbox]), 0);
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(mode, &["inspect", &sandbox, "--json"]).stdout).unwrap();
    let handle: serde_json::Value =
        serde_json::from_str(inspected["handle"].as_str().unwrap()).unwrap();
    let data: serde_json::Value = serde_json::from_str(handle["data"].as_str().unwrap()).unwrap();
    // SAFETY: killing the init of the sandbox this test started.
    unsafe { libc::kill(data["pid"].as_i64().unwrap() as i32, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(200));
    refused(
        &["snapshot", "create", &sandbox, "--name", "never"],
        "failed",
    );
    assert_code(&ak(mode, &["remove", &sandbox, "--force"]), 0);
    // A removed sandbox is no sandbox at all; its snapshot stays.
    refused(&["snapshot", "create", &sandbox], "no sandbox named");
    assert_code(&ak(mode, &["snapshot", "inspect", &snap]), 0);
    assert_code(&ak(mode, &["snapshot", "remove", &snap]), 0);
}
