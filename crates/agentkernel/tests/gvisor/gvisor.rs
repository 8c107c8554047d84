//! What only the gVisor backend has to show.

use crate::common::{Mode, ak, assert_code, run, shared_host, stderr, stdout};

#[test]
fn the_kernel_inside_is_gvisors() {
    let _host = shared_host();
    // gVisor's kernel reports a fixed version of its own, not the host's (`dmesg`, where it
    // introduces itself, is denied by the sandbox's seccomp filter, as on the native
    // backend).
    let output = run(Mode::Root, &["--no-network"], &["uname", "-rv"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert_eq!(text, "4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016\n");
    let host_version = std::fs::read_to_string("/proc/sys/kernel/version").unwrap();
    assert!(!text.contains(host_version.trim()), "{text}");
}

#[test]
fn status_reports_gvisor_with_its_platform() {
    let _host = shared_host();
    let output = ak(Mode::Root, &["status", "--json"]);
    assert_code(&output, 0);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let gvisor = report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "gvisor")
        .unwrap()
        .clone();
    assert_eq!(gvisor["usable"], true, "{gvisor}");
    let details = gvisor["details"].to_string();
    assert!(details.contains("platform"), "{details}");
    assert!(
        details.contains("systrap") || details.contains("ptrace"),
        "{details}"
    );
}

#[test]
fn a_user_other_than_root_is_refused_clearly() {
    let _host = shared_host();
    let output = run(Mode::Rootless, &["--no-network"], &["true"]);
    assert_code(&output, 125);
    assert!(
        stderr(&output).contains("needs root"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn no_setuid_or_setgid_bit_reaches_a_shared_directory() {
    use std::os::unix::fs::MetadataExt;
    let _host = shared_host();
    let dir = tempfile::tempdir().unwrap();
    let output = crate::common::agentkernel(
        Mode::Root,
        &[
            "run",
            "--no-network",
            "--mount-cwd",
            "--",
            "sh",
            "-c",
            "cp /bin/true t; chmod 4755 t; chmod 2755 t; chmod u+s t; echo chmod $?; \
             python3 -c 'import os; os.open(\"u\", os.O_CREAT | os.O_WRONLY, 0o6755)'; \
             echo open $?; chmod 755 t && echo plain",
        ],
    )
    .current_dir(dir.path())
    .output()
    .unwrap();
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(text.contains("chmod 1\n"), "{text}");
    assert!(text.contains("open 1\n"), "{text}");
    assert!(text.ends_with("plain\n"), "{text}");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().mode();
        assert_eq!(mode & 0o6000, 0, "a privilege bit reached the host");
    }
}

/// Stops the daemon of the state directory when the test ends, passed or failed.
struct Daemon<'a>(&'a std::path::Path);

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let _ = crate::common::ak_with_state(self.0, &["daemon", "stop"]);
    }
}

#[test]
fn pooled_runs_get_fresh_sandboxes_and_leave_nothing_behind() {
    use crate::common::ak_with_state;
    let _host = crate::common::exclusive_host();
    let before = crate::common::snapshot();
    // A daemon of its own: no other test's pools.
    let state = tempfile::tempdir().unwrap();
    assert_code(&ak_with_state(state.path(), &["daemon", "start"]), 0);
    let daemon = Daemon(state.path());
    let mut hostnames = std::collections::BTreeSet::new();
    for i in 0..6 {
        let output = ak_with_state(
            state.path(),
            &[
                "run",
                "-F",
                "--no-network",
                "--",
                "sh",
                "-c",
                &format!("echo {i}; hostname; ls /tmp; echo used > /tmp/mark; uname -r"),
            ],
        );
        assert_code(&output, 0);
        let text = stdout(&output);
        let lines: Vec<&str> = text.lines().collect();
        // A never-used gVisor sandbox each time.
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], i.to_string());
        assert_eq!(lines[2], "4.4.0", "{text}");
        hostnames.insert(lines[1].to_string());
    }
    assert_eq!(hostnames.len(), 6, "a sandbox was handed out twice");
    let status = ak_with_state(state.path(), &["daemon", "status", "--json"]);
    assert_code(&status, 0);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pools = status["pools"].to_string();
    assert!(pools.contains("gvisor"), "{status}");
    drop(daemon);
    crate::common::assert_no_leaks(&before);
}

#[test]
fn runs_and_killed_clis_leave_nothing_behind() {
    let _host = crate::common::exclusive_host();
    let before = crate::common::snapshot();
    for i in 0..12 {
        let (flags, cmd, code): (&[&str], &[&str], i32) = match i % 4 {
            0 => (&["--no-network"], &["sh", "-c", "exit 7"], 7),
            1 => (&["--no-network"], &["sh", "-c", "sleep 100 & echo bg"], 0),
            2 => (&["--profile", "moderate"], &["true"], 0),
            _ => (&["--no-network"], &["true"], 0),
        };
        assert_code(&run(Mode::Root, flags, cmd), code);
    }
    // A CLI killed mid-run: its sandbox ends with its connection, and the next run's
    // sweep removes what the foreground runsc could not.
    let mut child = crate::common::agentkernel(
        Mode::Root,
        &["run", "--profile", "moderate", "--", "sleep", "1000"],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_code(&run(Mode::Root, &["--no-network"], &["true"]), 0);
    crate::common::assert_no_leaks(&before);
}

#[test]
fn a_killed_daemon_lets_its_command_finish_and_leaves_nothing_after_the_next_sweep() {
    use crate::common::ak_with_state;
    let _host = crate::common::exclusive_host();
    let before = crate::common::snapshot();
    let state = tempfile::tempdir().unwrap();
    assert_code(&ak_with_state(state.path(), &["daemon", "start"]), 0);
    let daemon = Daemon(state.path());
    let status = ak_with_state(state.path(), &["daemon", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pid = status["pid"].as_i64().unwrap() as i32;
    let running = crate::common::agentkernel(
        Mode::Root,
        &[
            "run",
            "-F",
            "--no-network",
            "--",
            "sh",
            "-c",
            "sleep 2; echo finished",
        ],
    )
    .env("AGENTKERNEL_REGISTRY", state.path().join("registry.db"))
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let output = running.wait_with_output().unwrap();
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "finished\n");
    drop(daemon);
    // The dead daemon's spares end with its connections; the next create sweeps their
    // directories.
    assert_code(&run(Mode::Root, &["--no-network"], &["true"]), 0);
    crate::common::assert_no_leaks(&before);
}

#[test]
fn the_sdk_file_examples_round_trip() {
    let _host = shared_host();
    crate::sdk_files::sdk_file_examples_round_trip("gvisor", None);
}
