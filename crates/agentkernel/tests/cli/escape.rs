//! Escape tests: each security promise tried from inside a sandbox. Every attempt must
//! fail inside and leave the host untouched.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{
    Mode, ROOTLESS_UID, agentkernel, assert_code, modes, run, shared_host, stderr, stdout,
};

/// Runs a perl one-liner that makes system call `nr` with `args` and prints `ret errno`.
fn syscall_probe(mode: Mode, nr: u32, args: &str) -> String {
    let script = format!("my $r = syscall({nr}{args}); print $r, ' ', $!+0, qq(\\n);");
    let output = run(mode, &["--no-network"], &["perl", "-e", &script]);
    assert_code(&output, 0);
    stdout(&output)
}

#[test]
fn host_files_outside_the_view_are_invisible() {
    let _host = shared_host();
    let canaries = [
        "/root/agentkernel-canary",
        "/tmp/agentkernel-canary",
        "/home/agentkernel-canary",
    ];
    for path in canaries {
        std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
        std::fs::write(path, "secret").unwrap();
    }
    for mode in modes() {
        for path in canaries {
            let output = run(mode, &["--no-network"], &["cat", path]);
            assert_ne!(output.status.code(), Some(0), "{mode:?} read {path}");
            assert!(!stdout(&output).contains("secret"));
        }
        let output = run(
            mode,
            &["--no-network"],
            &["sh", "-c", "cat /etc/shadow; ls /etc/ssh | wc -l"],
        );
        assert!(
            !stdout(&output).contains("root:"),
            "{mode:?}: /etc/shadow readable"
        );
        assert!(
            stdout(&output).ends_with("0\n"),
            "{mode:?}: /etc/ssh not hidden: {}",
            stdout(&output)
        );
    }
    for path in canaries {
        assert_eq!(std::fs::read_to_string(path).unwrap(), "secret");
        std::fs::remove_file(path).unwrap();
    }
}

/// Every hidden host directory (one empty read-only tmpfs, bound over the others) is empty
/// and cannot be written.
#[test]
fn hidden_directories_are_empty_and_read_only() {
    let _host = shared_host();
    let canary = "/var/log/agentkernel-canary";
    std::fs::write(canary, "secret").unwrap();
    for mode in modes() {
        let output = run(
            mode,
            &["--no-network"],
            &[
                "sh",
                "-c",
                "ls -A /etc/ssh /var/log /var/spool; touch /var/log/x /etc/ssh/x 2>&1 && echo written; exit 0",
            ],
        );
        let out = stdout(&output);
        assert!(!out.contains("canary"), "{mode:?}: {out}");
        assert!(!out.contains("written"), "{mode:?}: {out}");
        assert!(out.contains("Read-only"), "{mode:?}: {out}");
    }
    std::fs::remove_file(canary).unwrap();
}

#[test]
fn host_files_cannot_be_written() {
    let _host = shared_host();
    let target = std::env::current_dir()
        .unwrap()
        .join("agentkernel-write-canary");
    for mode in modes() {
        let script = format!(
            "echo x > {} ; echo x > /etc/agentkernel-canary ; echo x >> /etc/hostname ; rm -f /bin/sh ; \
             touch /new-top-level-file && echo created-top-level; exit 0",
            target.display()
        );
        let output = run(mode, &["--no-network"], &["sh", "-c", &script]);
        assert_code(&output, 0);
        assert!(
            stderr(&output).contains("Read-only file system"),
            "{mode:?}: {}",
            stderr(&output)
        );
    }
    assert!(!target.exists());
    assert!(!std::path::Path::new("/etc/agentkernel-canary").exists());
    assert!(std::path::Path::new("/bin/sh").exists());
    // A new top-level entry lands in the sandbox's private root (writable unless the
    // profile is restrictive), never on the host.
    assert!(!std::path::Path::new("/new-top-level-file").exists());
}

#[test]
fn host_processes_are_invisible_and_unsignalable() {
    let _host = shared_host();
    let mut victim = Command::new("sleep").arg("3141.5926").spawn().unwrap();
    let pid = victim.id();
    for mode in modes() {
        let script = format!(
            "for f in /proc/[0-9]*/cmdline; do [ \"$(tr '\\0' ' ' < $f)\" = 'sleep 3141.5926 ' ] && echo found $f; done; \
             kill -0 {pid} && echo signalled; ls /proc | grep -c '^[0-9]'"
        );
        let output = run(mode, &["--no-network"], &["sh", "-c", &script]);
        let text = stdout(&output);
        assert!(
            !text.contains("found"),
            "{mode:?} sees the host process: {text}"
        );
        assert!(
            !text.contains("signalled"),
            "{mode:?} signalled the host process"
        );
        let visible: u32 = text.trim().lines().last().unwrap().parse().unwrap();
        assert!(visible < 10, "{mode:?} sees {visible} processes");
    }
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the host process was killed"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn no_network_means_no_host_loopback() {
    let _host = shared_host();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    for mode in modes() {
        for profile_flags in [&["--no-network"][..], &["--profile", "restrictive"][..]] {
            let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");
            let output = run(mode, profile_flags, &["bash", "-c", &script]);
            assert!(
                !stdout(&output).contains("connected"),
                "{mode:?} {profile_flags:?} reached the host"
            );
            let output = run(mode, profile_flags, &["cat", "/proc/net/dev"]);
            let text = stdout(&output);
            let interfaces: Vec<&str> = text.lines().skip(2).map(|l| l.trim()).collect();
            assert!(
                interfaces.iter().all(|l| l.starts_with("lo:")),
                "{mode:?}: {interfaces:?}"
            );
        }
    }
    assert!(listener.accept().is_err(), "the listener saw a connection");
}

#[test]
fn memory_limit_holds() {
    let _host = shared_host();
    for mode in modes() {
        let output = run(
            mode,
            &["--no-network", "--memory", "64M"],
            &[
                "python3",
                "-c",
                "b = bytearray(512 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('allocated')",
            ],
        );
        assert_ne!(output.status.code(), Some(0), "{mode:?}");
        assert!(!stdout(&output).contains("allocated"), "{mode:?}");
    }
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let _host = shared_host();
    let before = count_processes();
    let output = run(
        Mode::Root,
        &["--no-network", "--pids", "32", "--timeout", "3s"],
        &["bash", "-c", "bomb() { bomb | bomb & }; bomb; sleep 10"],
    );
    if crate::common::BACKEND == "gvisor" {
        // gVisor's kernel has no process limit of its own; the host's, on its tasks, is
        // the one there is, and reaching it ends the sandbox (its kernel cannot make a
        // thread): the bomb stops, the run fails, the host keeps its processes.
        assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
        // The kernel's host processes (systrap stubs) die with it and wait, as zombies, for
        // the host's init to reap them.
        let settled = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            count_processes() < before + 20
        });
        assert!(settled, "processes left behind on the host");
        return;
    }
    assert_code(&output, 124);
    let output = run(
        Mode::Root,
        &["--no-network", "--pids", "16"],
        &[
            "bash",
            "-c",
            "for i in $(seq 40); do sleep 5 & done 2>&1 | grep -c 'retry\\|Resource temporarily unavailable'",
        ],
    );
    let failures: u32 = stdout(&output).trim().parse().unwrap_or(0);
    assert!(
        failures > 0,
        "forks beyond the limit did not fail: {}",
        stderr(&output)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        count_processes() < before + 20,
        "processes left behind on the host"
    );
}

fn count_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count()
}

#[test]
fn mounting_is_denied() {
    let _host = shared_host();
    for mode in modes() {
        let output = run(
            mode,
            &["--no-network"],
            &[
                "sh",
                "-c",
                "mount -t tmpfs none /tmp && echo mounted; unshare -U true && echo unshared; exit 0",
            ],
        );
        assert!(!stdout(&output).contains("mounted"), "{mode:?}");
        assert!(!stdout(&output).contains("unshared"), "{mode:?}");
    }
}

/// The x32 calling convention (the number's bit 30 on x86_64) cannot reach a denied call:
/// the filter compares numbers, and `mount | 0x40000000` is mount where a kernel has x32.
#[cfg(target_arch = "x86_64")]
#[test]
fn x32_system_calls_are_refused() {
    let _host = shared_host();
    // unshare(CLONE_NEWNS) through the x32 number: 0x40000000 + 272.
    for mode in modes() {
        assert_eq!(
            syscall_probe(mode, 0x4000_0000 + 272, ", 0x20000"),
            format!("-1 {}\n", libc::ENOSYS),
            "{mode:?}"
        );
    }
}

#[test]
fn ptrace_is_denied() {
    let _host = shared_host();
    // ptrace(PTRACE_ATTACH = 16, pid 1)
    for mode in modes() {
        assert_eq!(
            syscall_probe(mode, 101, ", 16, 1, 0, 0"),
            format!("-1 {}\n", libc::EPERM),
            "{mode:?}"
        );
    }
}

#[test]
fn kernel_modules_cannot_be_loaded() {
    let _host = shared_host();
    for mode in modes() {
        // init_module(NULL, 0, "") and finit_module(0, "", 0)
        assert_eq!(
            syscall_probe(mode, 175, ", 0, 0, 0"),
            format!("-1 {}\n", libc::EPERM),
            "{mode:?}"
        );
        assert_eq!(
            syscall_probe(mode, 313, ", 0, 0, 0"),
            format!("-1 {}\n", libc::EPERM),
            "{mode:?}"
        );
    }
}

#[test]
fn root_inside_is_not_root_outside() {
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
                "id -u; cat /proc/self/uid_map; exec sleep 2718.28",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut head = [0u8; 2];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(&head, b"0\n", "{mode:?}: not root inside");
        let host_uid = find_process_uid("2718.28");
        let expected = match (crate::common::BACKEND, mode) {
            // Not a host process at all: it runs inside gVisor's own kernel.
            ("gvisor", _) => None,
            (_, Mode::Root) => Some(ak_native::ROOT_MAPPED_BASE),
            (_, Mode::Rootless) => Some(ROOTLESS_UID),
        };
        assert_eq!(
            host_uid, expected,
            "{mode:?}: sandbox root runs as host uid {host_uid:?}"
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        child.wait().unwrap();
    }
    // Files the sandbox's root writes into a shared directory belong to the mapped uid.
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = agentkernel(
        Mode::Root,
        &[
            "run",
            "--no-network",
            "--mount-cwd",
            "--",
            "sh",
            "-c",
            "touch made-inside; chown 0:0 made-inside; cp /bin/true setuid; chmod 4755 setuid; exit 0",
        ],
    )
    .current_dir(dir.path())
    .output()
    .unwrap();
    assert_code(&output, 0);
    if crate::common::BACKEND == "gvisor" {
        // gVisor's gofer, host root, makes the sandbox's files: they are root's, as with a
        // container engine that does not remap uids, but their privilege bits stay inside.
        let setuid = std::fs::metadata(dir.path().join("setuid")).unwrap();
        assert_eq!(setuid.mode() & 0o6000, 0, "a setuid bit reached the host");
        return;
    }
    let owner = std::fs::metadata(dir.path().join("made-inside"))
        .unwrap()
        .uid();
    assert_ne!(
        owner, 0,
        "a file made by the sandbox's root is owned by host root"
    );
}

/// Host uid of the process running exactly `sleep <marker>` (waits up to 5 s).
fn find_process_uid(marker: &str) -> Option<u32> {
    let wanted = format!("sleep\0{marker}\0");
    let dir = crate::common::find_host_process(|cmdline| cmdline == wanted.as_bytes())?;
    std::fs::metadata(dir).ok().map(|m| m.uid())
}

#[test]
fn outbound_network_still_cannot_reach_host_loopback() {
    let _host = shared_host();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // 10.0.2.2 is where user-mode networking would map the host's loopback.
    let script = format!(
        "cat /proc/net/dev | grep -c tap0; \
         for host in 10.0.2.2 127.0.0.1; do timeout 3 bash -c \"exec 3<>/dev/tcp/$host/{port}\" && echo reached $host; done; exit 0"
    );
    let output = run(
        Mode::Root,
        &["--profile", "moderate"],
        &["bash", "-c", &script],
    );
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(
        text.starts_with("1\n"),
        "the sandbox has no outbound interface: {text} {}",
        stderr(&output)
    );
    assert!(!text.contains("reached"), "host loopback reachable: {text}");
    assert!(listener.accept().is_err(), "the listener saw a connection");
}

/// A sandbox sees only its own network; a one-shot `run` by root gets a namespace that
/// belongs to the host's root (made ahead of it, ak-native's netns.rs), so it cannot
/// reconfigure it either: no interface changes, no new devices (the kernel code behind
/// them stays out of its reach).
#[test]
fn a_sandbox_sees_only_its_network_and_root_runs_cannot_reconfigure_it() {
    if crate::common::BACKEND == "gvisor" {
        // gVisor's network is its own kernel's stack, not a host namespace: nothing a root
        // inside configures reaches the host's network code, and its sysfs lists no
        // interfaces. What this checks is the native backend's namespaces.
        return;
    }
    let _host = shared_host();
    for mode in modes() {
        // Rootless outbound network needs a world-usable /dev/net/tun (leaks.rs).
        let networks: &[&[&str]] = match mode {
            Mode::Root => &[&["--no-network"], &[]],
            Mode::Rootless => &[&["--no-network"]],
        };
        for &flags in networks {
            let output = run(
                mode,
                flags,
                &[
                    "sh",
                    "-c",
                    "ls /sys/class/net | tr '\\n' ' '; echo; \
                     ip link set lo down 2>/dev/null && echo changed; \
                     ip link add agentkernel-x type dummy 2>/dev/null && echo added; exit 0",
                ],
            );
            assert_code(&output, 0);
            let text = stdout(&output);
            let interfaces = text.lines().next().unwrap_or_default().trim();
            let expected = if flags.is_empty() { "lo tap0" } else { "lo" };
            assert_eq!(interfaces, expected, "{mode:?} {flags:?}");
            if mode == Mode::Root {
                assert!(
                    !text.contains("changed") && !text.contains("added"),
                    "{mode:?} {flags:?}: {text}"
                );
            }
        }
    }
}
