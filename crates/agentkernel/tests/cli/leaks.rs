//! No leaks: many runs, including failing and killed ones, leave no mounts, cgroups,
//! network namespaces, processes or runtime directories behind.

use std::time::Duration;

use crate::common::{
    Mode, agentkernel, assert_code, assert_no_leaks, exclusive_host, run, snapshot, stderr,
};

#[test]
fn two_hundred_runs_leave_nothing_behind() {
    let _host = exclusive_host();
    let before = snapshot();
    for i in 0..200 {
        let mode = if i % 4 == 3 {
            Mode::Rootless
        } else {
            Mode::Root
        };
        let (cmd, code): (&[&str], i32) = match i % 5 {
            0 => (&["sh", "-c", "exit 7"], 7),
            1 => (&["sh", "-c", "sleep 100 & echo bg"], 0),
            _ => (&["true"], 0),
        };
        assert_code(&run(mode, &["--no-network"], cmd), code);
    }
    assert_no_leaks(&before);
}

/// Outbound network adds a helper process and a tap to each sandbox; both go with it (the
/// tap with the sandbox's network namespace, after the helper made it persistent). As root
/// only: rootless outbound network needs a world-usable /dev/net/tun (this machine's is 0600).
#[test]
fn runs_with_outbound_network_leave_nothing_behind() {
    let _host = exclusive_host();
    let before = snapshot();
    for _ in 0..4 {
        let output = run(
            Mode::Root,
            &["--profile", "moderate"],
            &["grep", "-c", "tap0", "/proc/net/dev"],
        );
        assert_code(&output, 0);
    }
    assert_no_leaks(&before);
}

/// The helper starts while the sandbox is half built; when it cannot start at all, the run
/// fails clearly and what was built is released.
#[test]
fn a_network_helper_that_cannot_start_leaves_nothing_behind() {
    let _host = exclusive_host();
    let before = snapshot();
    let output = agentkernel(Mode::Root, &["run", "--profile", "moderate", "--", "true"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_code(&output, 125);
    assert!(
        stderr(&output).contains("apt install slirp4netns"),
        "{}",
        stderr(&output)
    );
    assert_no_leaks(&before);
}

#[test]
fn a_killed_cli_leaves_nothing_behind() {
    let _host = exclusive_host();
    let before = snapshot();
    for mode in [Mode::Root, Mode::Rootless] {
        let mut child = agentkernel(mode, &["run", "--no-network", "--", "sleep", "600"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // The next run sweeps what the killed ones could not release themselves.
    std::thread::sleep(Duration::from_millis(300));
    assert_code(&run(Mode::Root, &["--no-network"], &["true"]), 0);
    assert_code(&run(Mode::Rootless, &["--no-network"], &["true"]), 0);
    assert_no_leaks(&before);
}

/// A one-shot `run` returns only once every process of its sandbox is gone, also one its
/// command left running in the background.
#[test]
fn a_run_returns_with_every_process_of_its_sandbox_gone() {
    let _host = exclusive_host();
    let before = snapshot();
    // Found on the host by its unusual argument.
    let marker = "4242.4242";
    for mode in [Mode::Root, Mode::Rootless] {
        let output = run(
            mode,
            &["--no-network"],
            &["sh", "-c", &format!("sleep {marker} & echo started")],
        );
        assert_code(&output, 0);
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
            .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
            // The command's own `sleep`, not a process that names it (the CLI's argv).
            .filter(|cmdline| cmdline.starts_with("sleep ") && cmdline.contains(marker))
            .collect();
        assert!(left.is_empty(), "{mode:?}: still running: {left:?}");
    }
    assert_no_leaks(&before);
}
