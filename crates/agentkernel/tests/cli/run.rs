//! `agentkernel run`: output, exit codes, signals, stdin, streaming, timeouts, concurrency.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{Mode, agentkernel, assert_code, modes, run, shared_host, stderr, stdout};

#[test]
fn hello_world() {
    let _host = shared_host();
    for mode in modes() {
        let output = run(mode, &["--no-network"], &["echo", "hello"]);
        assert_code(&output, 0);
        assert_eq!(stdout(&output), "hello\n", "{mode:?}");
    }
}

#[test]
fn exit_codes_are_the_commands() {
    let _host = shared_host();
    for mode in modes() {
        assert_code(&run(mode, &["--no-network"], &["sh", "-c", "exit 3"]), 3);
        assert_code(&run(mode, &["--no-network"], &["false"]), 1);
        // A signal is reported the shell's way: 128 + N.
        assert_code(
            &run(mode, &["--no-network"], &["sh", "-c", "kill -TERM $$"]),
            128 + 15,
        );
        assert_code(
            &run(mode, &["--no-network"], &["sh", "-c", "kill -KILL $$"]),
            128 + 9,
        );
    }
}

#[test]
fn missing_and_unexecutable_commands_have_distinct_codes() {
    let _host = shared_host();
    for mode in modes() {
        let output = run(mode, &["--no-network"], &["no-such-command-xyz"]);
        assert_code(&output, 127);
        assert!(
            stderr(&output).contains("no-such-command-xyz"),
            "{}",
            stderr(&output)
        );
        assert_code(&run(mode, &["--no-network"], &["/etc/passwd"]), 126);
    }
}

/// Output larger than the agent's read buffer, which starts small and grows while reads
/// fill it: every byte arrives, in order.
#[test]
fn large_output_arrives_whole_and_in_order() {
    let _host = shared_host();
    let output = run(Mode::Root, &["--no-network"], &["seq", "1", "300000"]);
    assert_code(&output, 0);
    let expected: String = (1..=300_000).map(|n| format!("{n}\n")).collect();
    assert!(stdout(&output) == expected, "{} bytes", output.stdout.len());
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let _host = shared_host();
    let output = run(
        Mode::Root,
        &["--no-network"],
        &["sh", "-c", "echo out; echo err >&2"],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "out\n");
    assert!(stderr(&output).ends_with("err\n"), "{}", stderr(&output));
}

#[test]
fn stdin_is_forwarded() {
    let _host = shared_host();
    for mode in modes() {
        let mut child = agentkernel(
            mode,
            &[
                "run",
                "--no-network",
                "--",
                "sh",
                "-c",
                "tr a-z A-Z; echo done",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"hello sandbox\n")
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert_code(&output, 0);
        assert_eq!(stdout(&output), "HELLO SANDBOX\ndone\n", "{mode:?}");
    }
}

#[test]
fn output_streams_before_the_command_ends() {
    let _host = shared_host();
    for mode in modes() {
        let start = Instant::now();
        let mut child = agentkernel(
            mode,
            &[
                "run",
                "--no-network",
                "--",
                "sh",
                "-c",
                "echo first; sleep 3; echo second",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "first");
        let first_after = start.elapsed();
        assert_eq!(lines.next().unwrap().unwrap(), "second");
        let second_after = start.elapsed();
        assert!(child.wait().unwrap().success());
        assert!(
            second_after - first_after > Duration::from_secs(2),
            "{mode:?}: first line arrived at {first_after:?}, second at {second_after:?}"
        );
    }
}

#[test]
fn timeout_kills_the_whole_tree() {
    let _host = shared_host();
    for mode in modes() {
        let start = Instant::now();
        // A background child and a grandchild in its own session: all must die.
        let output = run(
            mode,
            &["--no-network", "--timeout", "1s"],
            &[
                "sh",
                "-c",
                "setsid sleep 300 & sleep 300 & echo started; wait",
            ],
        );
        assert_code(&output, 124);
        assert_eq!(stdout(&output), "started\n");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{mode:?}: took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn concurrent_runs_are_independent() {
    let _host = shared_host();
    let modes = modes();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let mode = modes[i % modes.len()];
            std::thread::spawn(move || {
                let output = run(
                    mode,
                    &["--no-network"],
                    &["sh", "-c", &format!("echo run-{i}; hostname")],
                );
                assert_code(&output, 0);
                let text = stdout(&output);
                assert!(text.starts_with(&format!("run-{i}\nak-")), "{text}");
                text
            })
        })
        .collect();
    let hostnames: std::collections::BTreeSet<String> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(hostnames.len(), 8, "every sandbox has its own hostname");
}

#[test]
fn env_and_workdir_flags_apply() {
    let _host = shared_host();
    let output = run(
        Mode::Root,
        &[
            "--no-network",
            "-e",
            "GREETING=hi there",
            "--workdir",
            "/tmp",
        ],
        &[
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; touch ok && echo writable",
        ],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "hi there\n/tmp\nwritable\n");
}

#[test]
fn default_workdir_is_a_private_writable_tmpfs() {
    let _host = shared_host();
    for mode in modes() {
        let output = run(
            mode,
            &["--no-network"],
            &["sh", "-c", "pwd; echo data > file; cat file; id -u"],
        );
        assert_code(&output, 0);
        assert_eq!(stdout(&output), "/workspace\ndata\n0\n", "{mode:?}");
    }
}

#[test]
fn mount_cwd_shares_the_current_directory() {
    let _host = shared_host();
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(dir.path().join("input.txt"), "from host\n").unwrap();
    for mode in modes() {
        let output = agentkernel(
            mode,
            &[
                "run",
                "--no-network",
                "--mount-cwd",
                "--",
                "sh",
                "-c",
                "pwd; cat input.txt; echo from sandbox > out.txt",
            ],
        )
        .current_dir(dir.path())
        .output()
        .unwrap();
        assert_code(&output, 0);
        assert_eq!(
            stdout(&output),
            format!(
                "{}\nfrom host\n",
                dir.path().canonicalize().unwrap().display()
            )
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
            "from sandbox\n"
        );
        std::fs::remove_file(dir.path().join("out.txt")).unwrap();
    }
}

#[test]
fn status_reports_native_usable() {
    let _host = shared_host();
    for mode in modes() {
        let output = agentkernel(mode, &["status", "--json"]).output().unwrap();
        assert_code(&output, 0);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let native = report["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == "native")
            .unwrap();
        assert_eq!(native["usable"], true, "{mode:?}: {native}");
        assert!(
            report["host"]["landlock_abi"].is_number() || report["host"]["landlock_abi"].is_null()
        );
    }
    let table = agentkernel(Mode::Root, &["status"]).output().unwrap();
    assert!(stdout(&table).contains("native"), "{}", stdout(&table));
}

#[test]
fn ctrl_c_reaches_the_command() {
    let _host = shared_host();
    for mode in modes() {
        let mut child = agentkernel(
            mode,
            &[
                "run",
                "--no-network",
                "--",
                "sh",
                "-c",
                "trap 'echo got INT; exit 5' INT; echo ready; sleep 30 & wait",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        assert_eq!(lines.next().unwrap().unwrap(), "got INT", "{mode:?}");
        assert_eq!(child.wait().unwrap().code(), Some(5), "{mode:?}");
    }
}

#[test]
fn a_directory_image_is_the_whole_root() {
    let _host = shared_host();
    use std::os::unix::fs::PermissionsExt;
    // A root holding only one static executable (our own CLI): nothing of the host shows.
    let image = tempfile::tempdir().unwrap();
    std::fs::set_permissions(image.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(image.path().join("bin")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_agentkernel"),
        image.path().join("bin/tool"),
    )
    .unwrap();
    let image_arg = image.path().to_str().unwrap();
    for mode in modes() {
        let output = run(
            mode,
            &["--no-network", "--image", image_arg],
            &["/bin/tool", "--version"],
        );
        assert_code(&output, 0);
        assert!(
            stdout(&output).starts_with("agentkernel "),
            "{mode:?}: {}",
            stdout(&output)
        );
        // The host's shell is not part of this image.
        assert_code(
            &run(
                mode,
                &["--no-network", "--image", image_arg],
                &["/bin/sh", "-c", "true"],
            ),
            127,
        );
    }
}
