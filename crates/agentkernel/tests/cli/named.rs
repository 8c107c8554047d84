//! Named sandboxes: lifecycle, state errors, exec, cp, survival of the CLI, bad names.

use std::io::Write;
use std::process::Stdio;

use crate::common::{Mode, agentkernel, ak, assert_code, modes, shared_host, stderr, stdout};

/// A unique sandbox name for one test.
fn name(test: &str, mode: Mode) -> String {
    format!("t-{test}-{mode:?}-{}", std::process::id()).to_lowercase()
}

#[test]
fn full_lifecycle() {
    let _host = shared_host();
    for mode in modes() {
        let n = name("life", mode);
        assert_code(&ak(mode, &["create", &n, "--no-network"]), 0);
        let listed = stdout(&ak(mode, &["list"]));
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&n) && l.contains("stopped")),
            "{listed}"
        );
        assert_code(&ak(mode, &["start", &n]), 0);
        // The sandbox outlives the CLI that started it: a later CLI reaches it.
        let output = ak(
            mode,
            &[
                "exec",
                &n,
                "--",
                "sh",
                "-c",
                "echo state > /workspace/kept; hostname",
            ],
        );
        assert_code(&output, 0);
        let output = ak(
            mode,
            &["exec", &n, "--", "sh", "-c", "cat /workspace/kept; exit 4"],
        );
        assert_code(&output, 4);
        assert_eq!(stdout(&output), "state\n");
        let inspected: serde_json::Value =
            serde_json::from_slice(&ak(mode, &["inspect", &n, "--json"]).stdout).unwrap();
        assert_eq!(inspected["state"], "running", "{inspected}");
        // Stop keeps the workdir; start again and the file is still there.
        assert_code(&ak(mode, &["stop", &n]), 0);
        assert_code(&ak(mode, &["start", &n]), 0);
        assert_eq!(
            stdout(&ak(mode, &["exec", &n, "--", "cat", "/workspace/kept"])),
            "state\n"
        );
        assert_code(&ak(mode, &["remove", &n, "--force"]), 0);
        assert!(!stdout(&ak(mode, &["list"])).contains(&n));
    }
}

#[test]
fn wrong_states_say_what_to_do() {
    let _host = shared_host();
    let mode = Mode::Root;
    let n = name("states", mode);
    assert_code(&ak(mode, &["create", &n, "--no-network"]), 0);
    let output = ak(mode, &["exec", &n, "--", "true"]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("is stopped") && stderr(&output).contains("agentkernel start"),
        "{}",
        stderr(&output)
    );
    assert_code(&ak(mode, &["stop", &n]), 2);
    assert_code(&ak(mode, &["start", &n]), 0);
    let output = ak(mode, &["start", &n]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("already running"),
        "{}",
        stderr(&output)
    );
    let output = ak(mode, &["remove", &n]);
    assert_code(&output, 2);
    assert!(stderr(&output).contains("--force"), "{}", stderr(&output));
    let output = ak(mode, &["create", &n]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("already exists"),
        "{}",
        stderr(&output)
    );
    assert_code(&ak(mode, &["remove", &n, "--force"]), 0);
    let output = ak(mode, &["start", &n]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("no sandbox named"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_names_are_refused() {
    let _host = shared_host();
    let long = "a".repeat(200);
    for bad in [
        "../x",
        "",
        long.as_str(),
        "a;rm -rf /",
        "$(id)",
        "a b",
        "-x",
    ] {
        let output = ak(Mode::Root, &["create", bad]);
        assert_ne!(output.status.code(), Some(0), "{bad:?} accepted");
        assert!(!stdout(&ak(Mode::Root, &["list"])).contains(bad) || bad.is_empty());
    }
    let output = ak(Mode::Root, &["create", "../x"]);
    assert!(
        stderr(&output).contains("invalid sandbox name"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn exec_streams_stdin_and_runs_concurrently() {
    let _host = shared_host();
    let mode = Mode::Root;
    let n = name("exec", mode);
    assert_code(&ak(mode, &["create", &n, "--no-network"]), 0);
    assert_code(&ak(mode, &["start", &n]), 0);
    let mut child = agentkernel(mode, &["exec", &n, "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    assert_eq!(stdout(&child.wait_with_output().unwrap()), "SHOUT\n");
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let n = n.clone();
            std::thread::spawn(move || {
                let output = ak(
                    mode,
                    &[
                        "exec",
                        &n,
                        "--",
                        "sh",
                        "-c",
                        &format!("sleep 0.3; echo {i}"),
                    ],
                );
                assert_code(&output, 0);
                stdout(&output)
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.join().unwrap(), format!("{i}\n"));
    }
    assert_code(&ak(mode, &["remove", &n, "--force"]), 0);
}

#[test]
fn cp_both_ways_with_binary_files_and_directories() {
    let _host = shared_host();
    let mode = Mode::Root;
    let n = name("cp", mode);
    assert_code(&ak(mode, &["create", &n, "--no-network"]), 0);
    assert_code(&ak(mode, &["start", &n]), 0);
    let dir = tempfile::tempdir().unwrap();
    let binary: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(dir.path().join("blob.bin"), &binary).unwrap();
    std::fs::create_dir_all(dir.path().join("tree/sub")).unwrap();
    std::fs::write(dir.path().join("tree/a.txt"), "a").unwrap();
    std::fs::write(dir.path().join("tree/sub/b.txt"), "b").unwrap();
    let host = |p: &str| dir.path().join(p).to_string_lossy().into_owned();

    assert_code(
        &ak(
            mode,
            &["cp", &host("blob.bin"), &format!("{n}:/workspace/blob.bin")],
        ),
        0,
    );
    assert_code(
        &ak(mode, &["cp", &host("tree"), &format!("{n}:/tmp/tree")]),
        0,
    );
    let output = ak(
        mode,
        &[
            "exec",
            &n,
            "--",
            "sh",
            "-c",
            "md5sum < /workspace/blob.bin; cat /tmp/tree/a.txt /tmp/tree/sub/b.txt",
        ],
    );
    assert_code(&output, 0);
    assert!(stdout(&output).ends_with("ab"), "{}", stdout(&output));
    // A directory appears whole, in one rename, and never replaces one that is there: a
    // second copy onto it is refused and leaves no staging directory behind.
    let again = ak(mode, &["cp", &host("tree"), &format!("{n}:/tmp/tree")]);
    assert_code(&again, 1);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let listing = stdout(&ak(mode, &["exec", &n, "--", "ls", "-a", "/tmp"]));
    assert!(!listing.contains("ak-cp"), "{listing}");

    assert_code(
        &ak(
            mode,
            &["cp", &format!("{n}:/workspace/blob.bin"), &host("back.bin")],
        ),
        0,
    );
    assert_eq!(std::fs::read(dir.path().join("back.bin")).unwrap(), binary);
    assert_code(
        &ak(mode, &["cp", &format!("{n}:/tmp/tree"), &host("tree-back")]),
        0,
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tree-back/sub/b.txt")).unwrap(),
        "b"
    );
    // Copies are in the audit log like every other operation on the sandbox, failed ones
    // too, with the local user as the caller.
    let audit = stdout(&ak(mode, &["audit", "--sandbox", &n, "--json"]));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let copies: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "cp_in" || e["action"] == "cp_out")
        .collect();
    assert_eq!(copies.len(), 5, "{audit}");
    assert!(copies.iter().all(|e| e["source"] == "local"), "{audit}");
    assert!(
        copies
            .iter()
            .any(|e| e["outcome"] == "error" && e["detail"].as_str().unwrap().contains("exists")),
        "{audit}"
    );

    // Paths outside the sandbox are refused before anything is copied.
    let output = ak(
        mode,
        &[
            "cp",
            &host("blob.bin"),
            &format!("{n}:/workspace/../../etc/x"),
        ],
    );
    assert_code(&output, 2);
    assert_code(&ak(mode, &["remove", &n, "--force"]), 0);
}

#[test]
fn a_killed_cli_ends_its_command_but_not_the_sandbox() {
    let _host = shared_host();
    for mode in modes() {
        let n = name("killcli", mode);
        assert_code(&ak(mode, &["create", &n, "--no-network"]), 0);
        assert_code(&ak(mode, &["start", &n]), 0);
        let mut child = agentkernel(mode, &["exec", &n, "--", "sleep", "4242"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let script = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '^sleep 4242' || true";
        let output = ak(mode, &["exec", &n, "--", "sh", "-c", script]);
        assert_code(&output, 0);
        assert_eq!(
            stdout(&output),
            "0\n",
            "{mode:?}: the orphaned command still runs"
        );
        assert_code(&ak(mode, &["remove", &n, "--force"]), 0);
    }
}

#[test]
fn a_sandbox_killed_from_outside_becomes_failed_and_is_released() {
    let _host = shared_host();
    let mode = Mode::Root;
    let n = name("killed", mode);
    assert_code(&ak(mode, &["create", &n, "--no-network"]), 0);
    assert_code(&ak(mode, &["start", &n]), 0);
    let record: serde_json::Value =
        serde_json::from_slice(&ak(mode, &["inspect", &n, "--json"]).stdout).unwrap();
    let uuid = record["uuid"].as_str().unwrap().to_string();
    let handle: serde_json::Value =
        serde_json::from_str(record["handle"].as_str().unwrap()).unwrap();
    let data: serde_json::Value = serde_json::from_str(handle["data"].as_str().unwrap()).unwrap();
    let pid = match crate::common::BACKEND {
        // The sandbox's kernel: runsc's sandbox process for this sandbox.
        "gvisor" => crate::common::host_process_with(&uuid, "runsc-sandbox")
            .expect("the sandbox's runsc-sandbox process"),
        _ => data["pid"].as_i64().unwrap() as i32,
    };
    // SAFETY: killing the sandbox's init, which this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let listed = stdout(&ak(mode, &["list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&n) && l.contains("failed")),
        "{listed}"
    );
    let runtime_base = match crate::common::BACKEND {
        "native" => "/run/agentkernel".to_string(),
        other => format!("/run/agentkernel-{other}"),
    };
    assert!(
        !std::path::Path::new(&runtime_base).join(&uuid).exists(),
        "runtime dir left"
    );
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/pids/agentkernel")
            .join(&uuid)
            .exists(),
        "cgroup left"
    );
    let output = ak(mode, &["exec", &n, "--", "true"]);
    assert_code(&output, 2);
    assert!(stderr(&output).contains("remove it"), "{}", stderr(&output));
    assert_code(&ak(mode, &["remove", &n]), 0);
}

/// `agentkernel ARGS…` as root with the registry (and state directory) in `state`, its
/// output captured.
fn with_private_state(state: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut command = agentkernel(Mode::Root, args);
    command
        .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The file at `path` (created if need be), locked as the service locks a name.
fn held_lock(path: &std::path::Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    file
}

/// Returns once some process waits for the lock on `file` (`/proc/locks`).
fn wait_until_waited_for(file: &std::fs::File) {
    let inode = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
    let waiting = |locks: &str| {
        locks.lines().any(|l| {
            l.contains("->")
                && l.split_whitespace()
                    .any(|f| f.ends_with(&format!(":{inode}")))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !waiting(&std::fs::read_to_string("/proc/locks").unwrap()) {
        assert!(
            std::time::Instant::now() < deadline,
            "nobody waited for the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_sandbox_removed_while_the_list_runs_is_left_out_of_it() {
    let _host = shared_host();
    // A registry of its own, so that the list holds these two sandboxes and nothing else.
    let state = tempfile::tempdir().unwrap();
    let with_state = |args: &[&str]| with_private_state(state.path(), args);
    let first = name("listed-first", Mode::Root);
    let second = name("removed-meanwhile", Mode::Root);
    for n in [&first, &second] {
        assert_code(
            &with_state(&["create", n, "--no-network"]).output().unwrap(),
            0,
        );
        assert_code(&with_state(&["start", n]).output().unwrap(), 0);
    }
    // Holding the first sandbox's lock stops the list there, after it has read both
    // records: the second is removed while the list waits, as another caller would.
    let lock = held_lock(&state.path().join(format!("locks/{first}.lock")));
    let list = with_state(&["list"]).spawn().unwrap();
    wait_until_waited_for(&lock);
    assert_code(
        &with_state(&["remove", &second, "--force"])
            .output()
            .unwrap(),
        0,
    );
    drop(lock);
    let listed = list.wait_with_output().unwrap();
    assert_code(&listed, 0);
    let text = stdout(&listed);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&first) && l.contains("running")),
        "{text}"
    );
    assert!(!text.contains(&second), "{text}");
    assert_code(
        &with_state(&["remove", &first, "--force"]).output().unwrap(),
        0,
    );
}

#[test]
fn a_removed_sandbox_takes_its_lock_file_and_a_waiter_follows_the_name_to_its_new_one() {
    let _host = shared_host();
    let state = tempfile::tempdir().unwrap();
    let with_state = |args: &[&str]| with_private_state(state.path(), args);
    let n = name("lock-file", Mode::Root);
    let path = state.path().join(format!("locks/{n}.lock"));
    assert_code(
        &with_state(&["create", &n, "--no-network"])
            .output()
            .unwrap(),
        0,
    );
    assert!(path.exists(), "a sandbox's lock file");
    assert_code(&with_state(&["remove", &n]).output().unwrap(), 0);
    assert!(!path.exists(), "a removed sandbox's lock file is left");

    // A caller waiting on a file that the holder removes (as a removal does) must lock the
    // name's new file, not the removed one that nobody else can see any more.
    assert_code(
        &with_state(&["create", &n, "--no-network"])
            .output()
            .unwrap(),
        0,
    );
    let removed = held_lock(&path);
    let start = with_state(&["start", &n]).spawn().unwrap();
    wait_until_waited_for(&removed);
    std::fs::remove_file(&path).unwrap();
    let current = held_lock(&path);
    drop(removed);
    wait_until_waited_for(&current);
    drop(current);
    assert_code(&start.wait_with_output().unwrap(), 0);
    assert_code(&with_state(&["remove", &n, "--force"]).output().unwrap(), 0);
}

#[test]
fn a_shared_state_directory_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let _host = shared_host();
    // A registry the user placed in a shared directory (like /tmp): the service only adds
    // the search bits its sandboxes need, never takes the sticky or write bits away.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let n = name("shared-state", Mode::Root);
    let with_registry = |args: &[&str]| {
        agentkernel(Mode::Root, args)
            .env("AGENTKERNEL_REGISTRY", shared.path().join("registry.db"))
            .output()
            .unwrap()
    };
    assert_code(&with_registry(&["create", &n, "--no-network"]), 0);
    let mode = std::fs::metadata(shared.path())
        .unwrap()
        .permissions()
        .mode();
    assert_code(&with_registry(&["remove", &n]), 0);
    assert_eq!(
        mode & 0o7777,
        0o1777,
        "the state directory's mode changed: {mode:o}"
    );
}

#[test]
fn cp_out_strips_privilege_bits_and_follows_no_planted_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let _host = shared_host();
    let mode = Mode::Root;
    let n = name("cp-hostile", mode);
    assert_code(&ak(mode, &["create", &n, "--no-network"]), 0);
    assert_code(&ak(mode, &["start", &n]), 0);
    let made = ak(
        mode,
        &[
            "exec",
            &n,
            "--",
            "sh",
            "-c",
            "cd /workspace && echo x > suid && chmod 6777 suid \
             && mkdir d && echo y > d/f && chmod 4766 d/f && chmod 3777 d \
             && stat -c %a suid d d/f",
        ],
    );
    if crate::common::BACKEND == "gvisor" {
        // Nothing to strip: on gVisor the sandbox cannot set these bits at all.
        assert_code(&made, 1);
        assert!(
            stderr(&made).contains("Operation not permitted"),
            "{}",
            stderr(&made)
        );
        assert_code(&ak(mode, &["remove", &n, "--force"]), 0);
        return;
    }
    assert_code(&made, 0);
    // The sandbox really made them privileged, so the copy has something to strip.
    assert_eq!(stdout(&made), "6777\n3777\n4766\n");

    let dir = tempfile::tempdir().unwrap();
    let host = |p: &str| dir.path().join(p);
    // What a hostile local user (or an earlier, killed copy) left where staging entries
    // go: symlinks into a directory that must stay untouched, and a stale staging tree.
    let victim = host("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), "precious").unwrap();
    let random = "0123456789abcdef0123456789abcdef";
    for planted in [".suid-back", ".d-back"] {
        for pid in ["4194305", "1"] {
            std::os::unix::fs::symlink(&victim, host(&format!("{planted}.ak-cp-{pid}-{random}")))
                .unwrap();
        }
    }
    let stale = host(&format!(".d-back.ak-cp-4194305-{}", "f".repeat(32)));
    std::fs::create_dir_all(stale.join("half")).unwrap();

    let cp_out = |from: &str, to: &str| {
        let output = ak(
            mode,
            &[
                "cp",
                &format!("{n}:/workspace/{from}"),
                &host(to).to_string_lossy(),
            ],
        );
        assert_code(&output, 0);
    };
    cp_out("suid", "suid-back");
    cp_out("d", "d-back");
    let mode_of = |p: &str| {
        std::fs::symlink_metadata(host(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode_of("suid-back"), 0o755);
    assert_eq!(mode_of("d-back"), 0o755);
    assert_eq!(mode_of("d-back/f"), 0o744);
    assert_eq!(std::fs::read_to_string(host("d-back/f")).unwrap(), "y\n");

    // Nothing was written through a planted symlink.
    let victim_entries: Vec<_> = std::fs::read_dir(&victim)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(victim_entries, ["keep"]);
    assert_eq!(
        std::fs::read_to_string(victim.join("keep")).unwrap(),
        "precious"
    );
    // Stale staging entries (their copy no longer runs) are gone, a symlink as a link;
    // those of a copy that may still run (pid 1) stay; no staging entry of ours is left.
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            format!(".d-back.ak-cp-1-{random}"),
            format!(".suid-back.ak-cp-1-{random}"),
            "d-back".to_string(),
            "suid-back".to_string(),
            "victim".to_string(),
        ]
    );
    assert_code(&ak(mode, &["remove", &n, "--force"]), 0);
}

#[test]
fn a_named_sandboxs_workspace_is_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _host = shared_host();
    for mode in modes() {
        let n = name("private", mode);
        assert_code(&ak(mode, &["create", &n, "--no-network"]), 0);
        let state = crate::common::registry_path(mode);
        let sandbox_dir = state
            .parent()
            .unwrap()
            .join("sandboxes")
            .join(crate::common::sandbox_id(mode, &n));
        let workspace = sandbox_dir.join("workspace");
        let meta = std::fs::metadata(&workspace).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "{mode:?}");
        let sandbox_dir_mode = std::fs::metadata(&sandbox_dir)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        match mode {
            // gVisor's gofer, host root, does the sandbox's file work: nothing else needs
            // to pass through.
            Mode::Root if crate::common::BACKEND == "gvisor" => {
                assert_eq!(sandbox_dir_mode, 0o700);
                assert_eq!(meta.uid(), 0);
            }
            // The sandbox's root is another uid, which must pass through.
            Mode::Root => {
                assert_eq!(sandbox_dir_mode, 0o711);
                assert_ne!(meta.uid(), 0);
            }
            Mode::Rootless => {
                assert_eq!(sandbox_dir_mode, 0o700);
                assert_eq!(meta.uid(), crate::common::ROOTLESS_UID);
            }
        }
        // The sandbox itself still uses it.
        assert_code(&ak(mode, &["start", &n]), 0);
        let output = ak(
            mode,
            &[
                "exec",
                &n,
                "--",
                "sh",
                "-c",
                "cd /workspace && echo hi > f && cat f && ls",
            ],
        );
        assert_code(&output, 0);
        assert_eq!(stdout(&output), "hi\nf\n", "{mode:?}");
        assert_code(&ak(mode, &["remove", &n, "--force"]), 0);
    }
}

#[test]
fn a_state_directory_the_sandbox_cannot_reach_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let _host = shared_host();
    if crate::common::BACKEND == "gvisor" {
        // Nothing to check: gVisor's gofer, host root, reaches any state directory; only
        // a backend whose sandbox root is another host uid can be locked out.
        return;
    }
    let n = name("unreachable", Mode::Root);
    // Private: the sandbox's root (another uid) cannot pass through it.
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let output = agentkernel(Mode::Root, &["create", &n, "--no-network"])
        .env(
            "AGENTKERNEL_REGISTRY",
            private.path().join("state/registry.db"),
        )
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("cannot reach"), "{message}");
    assert!(
        message.contains(&format!("{} (mode 0700", private.path().display())),
        "{message}"
    );
    assert!(!message.contains("Broken pipe"), "{message}");

    // The same for a directory given with --dir.
    let project = private.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = ak(
        Mode::Root,
        &[
            "create",
            &n,
            "--no-network",
            "--dir",
            &project.to_string_lossy(),
        ],
    );
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains(&format!("{} (mode 0700", private.path().display())),
        "{}",
        stderr(&output)
    );
}
