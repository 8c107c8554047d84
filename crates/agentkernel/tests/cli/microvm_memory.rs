//! microVMs saved with their memory (QEMU, emulated here): `pause --save` writes the VM's
//! whole state to disk and ends QEMU, `resume` (after the daemon was killed -9 and
//! started again) restores it where it was, and `fork` restores copies of a running VM's
//! memory. What lives only in the guest's memory survives: a process started before the
//! save, a file in its `/tmp` (tmpfs). Forks draw different random numbers (their
//! generators are reseeded from the host). A VM with a host directory shared into it is
//! refused clearly. Its own registry and daemon: no other test's.

use std::path::Path;
use std::time::Duration;

use crate::common::{Mode, agentkernel, ak_with_state, assert_code, shared_host, stderr, stdout};
use crate::microvm::{name, ready, wait_until};

/// Ends what a test made in its private state when the test ends, passed or failed: its
/// named VMs and its daemon (with the daemon's pooled VMs). A failing test once left its
/// daemon and two VMs running, which loaded both CPUs under every later test.
struct CleanedUp<'a>(&'a Path);

impl Drop for CleanedUp<'_> {
    fn drop(&mut self) {
        let listed = ak_with_state(self.0, &["list", "--json"]);
        if let Ok(rows) = serde_json::from_slice::<Vec<serde_json::Value>>(&listed.stdout) {
            for name in rows.iter().filter_map(|row| row["name"].as_str()) {
                let _ = ak_with_state(self.0, &["remove", name, "--force"]);
            }
        }
        let _ = ak_with_state(self.0, &["daemon", "stop"]);
    }
}

fn sh(state: &Path, sandbox: &str, script: &str) -> String {
    let output = ak_with_state(state, &["exec", sandbox, "--", "sh", "-c", script]);
    assert_code(&output, 0);
    stdout(&output)
}

fn sandbox_state(state: &Path, sandbox: &str) -> String {
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak_with_state(state, &["inspect", sandbox, "--json"]).stdout)
            .unwrap();
    inspected["state"].as_str().unwrap_or_default().to_string()
}

/// The guest's ticker is alive (its pid, recorded at its start) and still counting.
fn ticking(state: &Path, sandbox: &str) {
    let alive = sh(
        state,
        sandbox,
        "kill -0 $(cat /tmp/ticker.pid) && echo alive",
    );
    assert_eq!(alive, "alive\n", "{sandbox}");
    let count = || {
        sh(state, sandbox, "wc -l < /tmp/ticks")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = count();
    wait_until("the ticker goes on", Duration::from_secs(30), || {
        count() > before
    });
}

/// Commands kept running in `sandbox`, one on each of its serial ports (each on a host
/// connection of its own, open until the process is killed or the connection ends), so
/// that whichever port a host takes next had a connection open; returns once all run.
/// Some stream output that nobody reads, so the guest is also stopped mid-write.
fn held_on_every_port(state: &Path, sandbox: &str) -> Vec<std::process::Child> {
    use std::io::BufRead;
    (0..8)
        .map(|i| {
            let script = if i % 4 == 0 {
                "echo held; while :; do echo output; done"
            } else {
                "echo held; exec sleep 1000"
            };
            let mut child = agentkernel(Mode::Root, &["exec", sandbox, "--", "sh", "-c", script])
                .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut first = String::new();
            std::io::BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut first)
                .unwrap();
            assert_eq!(first, "held\n");
            child
        })
        .collect()
}

/// More commands than the VM has serial ports, each on a new host connection: every
/// port takes a connection after the restore.
fn every_port_answers(state: &Path, sandbox: &str) {
    for i in 0..10 {
        assert_eq!(sh(state, sandbox, &format!("echo {i}")), format!("{i}\n"));
    }
}

/// How many QEMU processes map each forks' memory file (an unlinked memfd; by device and
/// inode) privately, i.e. copy-on-write.
fn memory_file_mappings() -> std::collections::HashMap<String, usize> {
    let mut sharing = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let is_qemu = std::fs::read(dir.join("cmdline"))
            .is_ok_and(|cmdline| cmdline.starts_with(b"/usr/bin/qemu-system-x86_64"));
        let Ok(maps) = std::fs::read_to_string(dir.join("maps")) else {
            continue;
        };
        if !is_qemu {
            continue;
        }
        let files: std::collections::HashSet<String> = maps
            .lines()
            .filter(|line| line.ends_with("/memfd:agentkernel-fork-memory (deleted)"))
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // address, permissions, offset, device, inode, path…
                (fields[1].ends_with('p')).then(|| format!("{} {}", fields[3], fields[4]))
            })
            .collect();
        for file in files {
            *sharing.entry(file).or_insert(0) += 1;
        }
    }
    sharing
}

#[test]
fn microvm_memory_saved_resumed_after_a_daemon_restart_and_forked() {
    let _host = shared_host();
    ready();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _cleanup = CleanedUp(state);
    assert_code(&ak_with_state(state, &["daemon", "start"]), 0);
    let n = name("mem");
    let create = [
        "create",
        &n,
        "--backend",
        "microvm",
        "--no-network",
        "--memory",
        "256M",
    ];
    assert_code(&ak_with_state(state, &create), 0);
    assert_code(&ak_with_state(state, &["start", &n]), 0);
    // In the guest's memory only: a file on tmpfs and a process of its own session.
    sh(
        state,
        &n,
        "echo kept > /tmp/mem; setsid sh -c 'echo $$ > /tmp/ticker.pid; while :; do echo t >> /tmp/ticks; sleep 0.2; done' </dev/null >/dev/null 2>&1 &",
    );
    wait_until("the ticker starts", Duration::from_secs(30), || {
        sh(state, &n, "cat /tmp/ticks 2>/dev/null | wc -l").trim() != "0"
    });

    // Host connections open over the save, one idle and one streaming output: the guest
    // still serves them when it is restored, and QEMU tells it they ended only as it
    // runs again (the restore once read the next connection as more of such a one and
    // never answered it).
    let held = held_on_every_port(state, &n);
    assert_code(&ak_with_state(state, &["pause", &n, "--save"]), 0);
    assert_eq!(sandbox_state(state, &n), "saved");
    // Their connections ended with the save (a streaming one's writer, blocked on its
    // unread output, ends once nobody reads it).
    for mut child in held {
        drop(child.stdout.take());
        assert_ne!(child.wait().unwrap().code(), Some(0));
    }
    let refused = ak_with_state(state, &["exec", &n, "--", "true"]);
    assert_ne!(refused.status.code(), Some(0));
    assert!(stderr(&refused).contains("resume"), "{}", stderr(&refused));

    // The daemon dies; the saved state is on disk and in the registry.
    let status: serde_json::Value =
        serde_json::from_slice(&ak_with_state(state, &["daemon", "status", "--json"]).stdout)
            .unwrap();
    let pid = status["pid"].as_i64().unwrap() as i32;
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_code(&ak_with_state(state, &["daemon", "start"]), 0);
    assert_eq!(sandbox_state(state, &n), "saved");

    assert_code(&ak_with_state(state, &["resume", &n]), 0);
    assert_eq!(sandbox_state(state, &n), "running");
    every_port_answers(state, &n);
    assert_eq!(sh(state, &n, "cat /tmp/mem"), "kept\n");
    ticking(state, &n);
    // Its clock is the host's again, not the one it was saved with.
    let guest: u64 = sh(state, &n, "date +%s").trim().parse().unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(host.abs_diff(guest) <= 3, "host {host}, guest {guest}");

    // Two forks of the running VM: its memory, each with a generator of its own.
    // Forked with connections open: the copies' guests hold them too.
    let held = held_on_every_port(state, &n);
    let forks = [format!("{n}-f1"), format!("{n}-f2")];
    let output = ak_with_state(state, &["fork", &n, &forks[0], &forks[1]]);
    assert_code(&output, 0);
    // The original's go on.
    for mut child in held {
        assert_eq!(child.try_wait().unwrap(), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // They share one memory file copy-on-write (private mappings of one inode), which
    // the forking process no longer holds: only their mappings do.
    let sharing = memory_file_mappings();
    assert!(
        sharing.values().any(|vms| *vms == forks.len()),
        "the forks share no memory file: {sharing:?}"
    );
    let mut draws = Vec::new();
    for fork in &forks {
        every_port_answers(state, fork);
        assert_eq!(sh(state, fork, "cat /tmp/mem"), "kept\n");
        ticking(state, fork);
        draws.push(sh(state, fork, "od -An -tx1 -N32 /dev/urandom"));
    }
    assert_ne!(draws[0], draws[1], "the forks drew the same random bytes");
    // They diverge: a file written in one is in neither the other nor the original.
    sh(state, &forks[0], "echo one > /tmp/mine");
    assert_eq!(
        sh(state, &forks[1], "cat /tmp/mine 2>/dev/null || echo none"),
        "none\n"
    );
    assert_eq!(
        sh(state, &n, "cat /tmp/mine 2>/dev/null || echo none"),
        "none\n"
    );
    // A fork, whose memory maps the (removed) shared file, saves and resumes whole,
    // its own writes and the pages it shares alike.
    assert_code(&ak_with_state(state, &["pause", &forks[0], "--save"]), 0);
    assert_eq!(sandbox_state(state, &forks[0]), "saved");
    assert_code(&ak_with_state(state, &["resume", &forks[0]]), 0);
    assert_eq!(
        sh(state, &forks[0], "cat /tmp/mine /tmp/mem"),
        "one\nkept\n"
    );
    every_port_answers(state, &forks[0]);

    // A host directory shared over 9p cannot migrate: refused, the VM left running.
    let shared = tempfile::tempdir().unwrap();
    let m = name("mem-dir");
    let with_dir = [
        "create",
        &m,
        "--backend",
        "microvm",
        "--no-network",
        "--dir",
        shared.path().to_str().unwrap(),
    ];
    assert_code(&ak_with_state(state, &with_dir), 0);
    assert_code(&ak_with_state(state, &["start", &m]), 0);
    let refused = ak_with_state(state, &["pause", &m, "--save"]);
    assert_ne!(refused.status.code(), Some(0));
    assert!(stderr(&refused).contains("9p"), "{}", stderr(&refused));
    assert_eq!(sandbox_state(state, &m), "running");

    for sandbox in forks.iter().chain([&n, &m]) {
        assert_code(&ak_with_state(state, &["remove", sandbox, "--force"]), 0);
    }
    assert_code(&ak_with_state(state, &["daemon", "stop"]), 0);
}

/// One-shot VMs without network start from a template (a VM booted once and saved before
/// it served anything): cold runs and the daemon's pool alike. Each copy draws its own
/// random bytes, has the host's time, runs one command and ends; the template is the
/// owner's alone. With `restore_one_shot = false` each VM boots, and says nothing of a
/// template.
#[test]
fn microvm_one_shot_runs_restore_a_template() {
    let _host = shared_host();
    ready();
    let script = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";
    let state = tempfile::tempdir().unwrap();
    let _cleanup = CleanedUp(state.path());
    let with_state = |args: &[&str]| ak_with_state(state.path(), args);
    let mut draws = Vec::new();
    let mut check = |output: std::process::Output| {
        assert_code(&output, 0);
        let text = stdout(&output);
        let (random, time) = text.trim().split_once('\n').unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let guest: u64 = time.parse().unwrap();
        assert!(now.abs_diff(guest) <= 10, "guest clock {guest}, host {now}");
        assert_eq!(random.len(), 32, "{text}");
        draws.push(random.to_string());
    };
    // `-vv` logs where each VM's start went.
    let cold = || {
        let args = [
            "run",
            "--backend",
            "microvm",
            "--no-network",
            "-vv",
            "--",
            "sh",
            "-c",
            script,
        ];
        agentkernel(Mode::Root, &args).output().unwrap()
    };
    for _ in 0..2 {
        let output = cold();
        assert!(
            stderr(&output).contains("memory state loaded"),
            "not restored: {}",
            stderr(&output)
        );
        check(output);
    }
    assert_code(&with_state(&["daemon", "start"]), 0);
    let pooled = || {
        with_state(&[
            "run",
            "-F",
            "--backend",
            "microvm",
            "--no-network",
            "--",
            "sh",
            "-c",
            script,
        ])
    };
    for _ in 0..3 {
        check(pooled());
    }
    // Spares outlive the daemon's thread that built them: tokio's blocking threads end
    // after 10 s idle, and a VM's death signal was tied to that thread (every spare of
    // an idle pool died). Past that, the next run is served by a spare.
    let hits = |status: &serde_json::Value| {
        crate::microvm::microvm_pool(status)["hits"]
            .as_u64()
            .unwrap()
    };
    let status = |with_state: &dyn Fn(&[&str]) -> std::process::Output| {
        serde_json::from_slice::<serde_json::Value>(
            &with_state(&["daemon", "status", "--json"]).stdout,
        )
        .unwrap()
    };
    let before = status(&with_state);
    std::thread::sleep(std::time::Duration::from_secs(12));
    check(pooled());
    let status = status(&with_state);
    assert_eq!(hits(&status), hits(&before) + 1, "{before}\n{status}");
    assert_code(&with_state(&["daemon", "stop"]), 0);
    let pool = crate::microvm::microvm_pool(&status);
    assert!(pool["refills"].as_u64().unwrap() >= 1, "{status}");
    let mut distinct = draws.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        draws.len(),
        "copies drew the same bytes: {draws:?}"
    );

    let templates = Path::new("/var/cache/agentkernel/microvm/templates");
    let states: Vec<_> = std::fs::read_dir(templates)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "state" || x == "memory")
        })
        .collect();
    assert!(states.len() >= 2, "no template in {}", templates.display());
    for entry in states {
        use std::os::unix::fs::PermissionsExt;
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path().display());
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[microvm]\nrestore_one_shot = false\n").unwrap();
    let booted = agentkernel(
        Mode::Root,
        &[
            "run",
            "--backend",
            "microvm",
            "--no-network",
            "-vv",
            "--",
            "true",
        ],
    )
    .env("AGENTKERNEL_CONFIG", &config)
    .output()
    .unwrap();
    assert_code(&booted, 0);
    let log = stderr(&booted);
    assert!(
        log.contains("guest boot until the agent is ready") && !log.contains("memory state"),
        "{log}"
    );
}
