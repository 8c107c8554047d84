//! The daemon and its warm pools: hand-out under concurrency (no sandbox given twice),
//! status, graceful stop with nothing left behind, and refusals.

use std::os::unix::fs::PermissionsExt;

use crate::common::{
    Mode, ROOTLESS_UID, ak, assert_code, assert_no_leaks, exclusive_host, registry_path, snapshot,
    stderr, stdout,
};

/// Stops the daemon when the test ends, passed or failed, so no other test sees its pools.
struct Running(Mode);

impl Running {
    fn start(mode: Mode) -> Running {
        assert_code(&ak(mode, &["daemon", "start"]), 0);
        Running(mode)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = ak(self.0, &["daemon", "stop"]);
    }
}

fn daemon_status(mode: Mode) -> serde_json::Value {
    let output = ak(mode, &["daemon", "status", "--json"]);
    assert_code(&output, 0);
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn pool_hands_each_sandbox_out_once() {
    // Compares the whole host: no other test may run meanwhile.
    let _host = exclusive_host();
    let before = snapshot();
    let mode = Mode::Root;
    let daemon = Running::start(mode);
    assert!(stderr(&ak(mode, &["daemon", "start"])).contains("already running"));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let output = ak(
                    mode,
                    &[
                        "run",
                        "-F",
                        "--no-network",
                        "-e",
                        &format!("N={i}"),
                        "--",
                        "sh",
                        "-c",
                        "echo $N; hostname; echo used > /tmp/mark; ls /tmp",
                    ],
                );
                assert_code(&output, 0);
                let text = stdout(&output);
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines[0], i.to_string());
                // A never-used sandbox: nothing from an earlier command in it.
                assert_eq!(lines[2..], ["mark"], "{text}");
                lines[1].to_string()
            })
        })
        .collect();
    let hostnames: std::collections::BTreeSet<String> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        hostnames.len(),
        16,
        "a sandbox was handed out twice: {hostnames:?}"
    );

    // A run's environment goes with its command, never into spares others get.
    assert_code(
        &ak(
            mode,
            &[
                "run",
                "-F",
                "--no-network",
                "-e",
                "SECRET_TOKEN=hunter2",
                "--",
                "true",
            ],
        ),
        0,
    );
    for _ in 0..4 {
        let output = ak(
            mode,
            &[
                "run",
                "-F",
                "--no-network",
                "--",
                "sh",
                "-c",
                "env; cat /proc/1/environ 2>&1",
            ],
        );
        assert!(!stdout(&output).contains("hunter2"), "{}", stdout(&output));
    }

    let status = daemon_status(mode);
    let pool = &status["pools"][0];
    let count = |field: &str| pool[field].as_u64().unwrap();
    assert_eq!(
        count("hits") + count("joined") + count("misses"),
        21,
        "{status}"
    );
    assert!(count("created") >= 21, "{status}");
    // Spares were built, and timed.
    assert!(count("refills") >= 1, "{status}");
    assert!(pool["refill_ms"].as_f64().unwrap() > 0.0, "{status}");
    let hit_rate = pool["hit_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&hit_rate), "{status}");
    let text = stdout(&ak(mode, &["daemon", "status"]));
    assert!(
        text.contains("HIT %") && text.contains("REFILL ms"),
        "{text}"
    );
    drop(daemon);
    assert_code(&ak(mode, &["daemon", "status"]), 1);
    assert_no_leaks(&before);
}

#[test]
fn fast_without_a_daemon_fails_clearly() {
    let _host = exclusive_host();
    let output = ak(Mode::Root, &["run", "-F", "--no-network", "--", "true"]);
    assert_code(&output, 125);
    assert!(
        stderr(&output).contains("agentkernel daemon start"),
        "{}",
        stderr(&output)
    );
    // Without -F the run does not need the daemon.
    assert_code(&ak(Mode::Root, &["run", "--no-network", "--", "true"]), 0);
}

#[test]
fn a_daemon_socket_of_another_user_is_refused() {
    let _host = exclusive_host();
    let socket = registry_path(Mode::Root).with_file_name("daemon.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::os::unix::fs::chown(&socket, Some(ROOTLESS_UID), Some(ROOTLESS_UID)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = ak(Mode::Root, &["run", "-F", "--no-network", "--", "true"]);
    assert_code(&output, 125);
    assert!(
        stderr(&output).contains(&format!("owned by uid {ROOTLESS_UID}")),
        "{}",
        stderr(&output)
    );
    let output = ak(Mode::Root, &["daemon", "status"]);
    assert_code(&output, 1);
    assert!(
        stderr(&output).contains("not by you"),
        "{}",
        stderr(&output)
    );
    drop(listener);
    std::fs::remove_file(&socket).unwrap();
}

#[test]
fn a_killed_daemon_lets_running_commands_finish_and_leaves_nothing_behind() {
    let _host = exclusive_host();
    let before = snapshot();
    let mode = Mode::Root;
    assert_code(&ak(mode, &["daemon", "start"]), 0);
    let pid = daemon_status(mode)["pid"].as_i64().unwrap() as i32;
    let running = crate::common::agentkernel(
        mode,
        &[
            "run",
            "-F",
            "--no-network",
            "--",
            "sh",
            "-c",
            "sleep 1; echo finished",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let output = running.wait_with_output().unwrap();
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "finished\n");
    // A new daemon replaces the dead one's socket; the next sandbox set-up sweeps what the
    // dead daemon's sandboxes left.
    assert_code(&ak(mode, &["daemon", "start"]), 0);
    assert_code(&ak(mode, &["daemon", "stop"]), 0);
    // The dead daemon's inits are reaped by the host's init, in its own time; each run's
    // sweep releases what has been reaped by then.
    for _ in 0..50 {
        assert_code(&ak(mode, &["run", "--no-network", "--", "true"]), 0);
        if crate::common::snapshot().cgroups.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_no_leaks(&before);
}

#[test]
fn bad_pool_settings_are_refused() {
    let _host = exclusive_host();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[daemon]\nmin_warm = 5\nmax_warm = 1\n").unwrap();
    let output = crate::common::agentkernel(Mode::Root, &["daemon", "start"])
        .env("AGENTKERNEL_CONFIG", &config)
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("min_warm (5) is above max_warm (1)"),
        "{}",
        stderr(&output)
    );
    assert_code(&ak(Mode::Root, &["daemon", "status"]), 1);
}

/// One HTTP/1.1 request over a Unix socket; the status and the JSON body of the answer.
fn http_over(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: daemon\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, json) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(json).unwrap())
}

#[test]
fn the_daemon_serves_the_http_api_on_its_socket() {
    let _host = exclusive_host();
    let before = snapshot();
    let mode = Mode::Root;
    let daemon = Running::start(mode);
    let socket = registry_path(mode).parent().unwrap().join("api.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let (status, value) = http_over(
        &socket,
        "POST",
        "/run",
        r#"{"command": ["sh", "-c", "echo from the daemon; exit 2"], "profile": "restrictive"}"#,
    );
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["data"]["output"], "from the daemon\n");
    assert_eq!(value["data"]["exit_code"], 2);
    // The API's fast runs come from the daemon's own pools.
    let pools = daemon_status(mode)["pools"].as_array().unwrap().clone();
    assert!(!pools.is_empty(), "no pool was used");
    let (status, value) = http_over(&socket, "GET", "/sandboxes/..%2Fx", "");
    assert_eq!(status, 400, "{value}");
    drop(daemon);
    assert!(!socket.exists(), "the API socket outlived the daemon");
    assert_no_leaks(&before);
}

/// Removes a named sandbox when the test ends, passed or failed: a failing test leaves
/// no sandbox (a VM's QEMU) running behind it.
pub(crate) struct RemovedAtEnd(pub(crate) Mode, pub(crate) String);

impl Drop for RemovedAtEnd {
    fn drop(&mut self) {
        let _ = ak(self.0, &["remove", "--force", &self.1]);
    }
}

/// The parent of process `pid` (field 4 of /proc/PID/stat, after the command's name).
fn parent_of(pid: i64) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn named_commands_go_through_the_daemon_and_survive_its_kill() {
    let _host = exclusive_host();
    let before = snapshot();
    let mode = Mode::Root;
    let daemon = Running::start(mode);
    let daemon_pid = daemon_status(mode)["pid"].as_i64().unwrap();
    let n = format!("t-via-daemon-{}", std::process::id());
    let _removed = RemovedAtEnd(mode, n.clone());
    let host_dir = tempfile::tempdir().unwrap();
    // Root in the sandbox is an unprivileged host user.
    std::fs::set_permissions(host_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A relative --dir is the CLI's directory, not the daemon's.
    let created = crate::common::agentkernel(mode, &["create", &n, "--no-network", "--dir", "."])
        .current_dir(host_dir.path())
        .output()
        .unwrap();
    assert_code(&created, 0);
    assert_code(&ak(mode, &["start", &n]), 0);
    // The daemon started it: the sandbox's init is the daemon's child, not the CLI's.
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(mode, &["inspect", &n, "--json"]).stdout).unwrap();
    let handle: serde_json::Value =
        serde_json::from_str(inspected["handle"].as_str().unwrap()).unwrap();
    let data: serde_json::Value = serde_json::from_str(handle["data"].as_str().unwrap()).unwrap();
    let init = data["pid"].as_i64().unwrap();
    assert_eq!(parent_of(init), daemon_pid, "{inspected}");
    let workdir = host_dir.path().canonicalize().unwrap();
    assert_eq!(
        inspected["spec"]["workdir"].as_str().unwrap(),
        workdir.to_str().unwrap(),
        "{inspected}"
    );

    // Errors come back from the daemon with the CLI's exit codes and messages.
    let output = ak(mode, &["start", &n]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("is running"),
        "{}",
        stderr(&output)
    );
    let output = ak(mode, &["exec", "t-no-such-sandbox", "--", "true"]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("no sandbox named"),
        "{}",
        stderr(&output)
    );
    let output = ak(mode, &["exec", &n, "--", "/no/such/program"]);
    assert_code(&output, 127);

    // exec and cp speak to the agent over the connection the daemon handed out.
    let file = host_dir.path().join("in.bin");
    std::fs::write(&file, [0u8, 1, 2, 255]).unwrap();
    assert_code(
        &ak(
            mode,
            &["cp", file.to_str().unwrap(), &format!("{n}:/tmp/in.bin")],
        ),
        0,
    );
    let output = ak(
        mode,
        &["exec", &n, "--", "od", "-An", "-tu1", "/tmp/in.bin"],
    );
    assert_code(&output, 0);
    assert_eq!(
        stdout(&output).split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "255"]
    );
    let back = host_dir.path().join("back.bin");
    assert_code(
        &ak(
            mode,
            &["cp", &format!("{n}:/tmp/in.bin"), back.to_str().unwrap()],
        ),
        0,
    );
    assert_eq!(std::fs::read(&back).unwrap(), [0u8, 1, 2, 255]);

    // A run with host mounts goes through the daemon too, in a sandbox built for it.
    let output = crate::common::agentkernel(
        mode,
        &[
            "run",
            "--no-network",
            "--mount-cwd",
            "--",
            "sh",
            "-c",
            "echo ran > from-run",
        ],
    )
    .current_dir(host_dir.path())
    .output()
    .unwrap();
    assert_code(&output, 0);
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("from-run")).unwrap(),
        "ran\n"
    );
    let pools = daemon_status(mode)["pools"].as_array().unwrap().clone();
    assert!(
        pools
            .iter()
            .any(|p| p["pool"].as_str().unwrap().starts_with("one-off") && p["misses"] == 1),
        "{pools:?}"
    );

    // kill -9 of the daemon during a running exec: the command finishes (its data never
    // passed through the daemon) and the sandbox keeps running.
    let running = crate::common::agentkernel(
        mode,
        &[
            "exec",
            &n,
            "--",
            "sh",
            "-c",
            "sleep 1; echo finished > done; echo finished",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(daemon_pid as i32, libc::SIGKILL) };
    let output = running.wait_with_output().unwrap();
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "finished\n");
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("done")).unwrap(),
        "finished\n"
    );

    // Without a daemon the CLI does the work itself; a restarted daemon takes over the
    // registry as it was.
    let listed = stdout(&ak(mode, &["list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&n) && l.contains("running")),
        "{listed}"
    );
    drop(daemon);
    let daemon = Running::start(mode);
    assert_eq!(
        stdout(&ak(mode, &["exec", &n, "--", "cat", "done"])),
        "finished\n"
    );
    assert_code(&ak(mode, &["stop", &n]), 0);
    assert_code(&ak(mode, &["remove", &n]), 0);
    let output = ak(mode, &["inspect", &n]);
    assert_code(&output, 2);
    drop(daemon);
    assert_no_leaks(&before);
}

/// The executable a process runs, by file name.
fn executable_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// `agentkernel` is linked at a fixed address for its start-up time; the servers that
/// read other programs' input for as long as they live (the daemon, `serve`, `mcp`) are
/// handed to `ak-server`, the position-independent build, in the same process.
#[test]
fn servers_run_from_the_position_independent_executable() {
    // ELF header's e_type: 2 is an executable at a fixed address, 3 a position-independent one.
    let elf_type = |path: &str| {
        let bytes = std::fs::read(path).unwrap();
        u16::from_le_bytes([bytes[16], bytes[17]])
    };
    assert_eq!(elf_type(env!("CARGO_BIN_EXE_agentkernel")), 2);
    assert_eq!(elf_type(env!("CARGO_BIN_EXE_ak-server")), 3);

    let _host = exclusive_host();
    let mode = Mode::Root;
    let daemon = Running::start(mode);
    let pid = daemon_status(mode)["pid"].as_u64().unwrap();
    assert_eq!(executable_of(pid as u32), "ak-server");
    drop(daemon);

    let socket = registry_path(mode).parent().unwrap().join("pie-test.sock");
    let socket = socket.to_str().unwrap();
    for args in [&["serve", "--socket", socket][..], &["mcp"]] {
        let mut server = crate::common::agentkernel(mode, args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while executable_of(server.id()) != "ak-server" && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let running = executable_of(server.id());
        server.kill().unwrap();
        server.wait().unwrap();
        assert_eq!(running, "ak-server", "{args:?}");
    }
    let _ = std::fs::remove_file(socket);
}

/// Without `ak-server` beside it, `agentkernel` says what is missing instead of serving.
#[test]
fn a_missing_server_executable_is_a_clear_error() {
    let lonely = tempfile::tempdir().unwrap();
    let cli = lonely.path().join("agentkernel");
    std::fs::copy(env!("CARGO_BIN_EXE_agentkernel"), &cli).unwrap();
    for args in [&["mcp"][..], &["daemon", "start"]] {
        let output = std::process::Command::new(&cli)
            .args(args)
            .env("AGENTKERNEL_CONFIG", "/dev/null")
            .env("AGENTKERNEL_REGISTRY", lonely.path().join("registry.db"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr(&output).contains("ak-server"), "{}", stderr(&output));
    }
}
