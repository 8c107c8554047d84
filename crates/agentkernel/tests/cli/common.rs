//! Shared helpers of the CLI integration tests: run the built `agentkernel` as root or as
//! an unprivileged user, and snapshot host resources to prove nothing leaked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Who runs the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Root,
    /// uid/gid 65534 through `setpriv`, with no capabilities.
    Rootless,
}

pub const ROOTLESS_UID: u32 = 65534;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Binaries copied to a world-readable directory so an unprivileged user can run them even
/// when the build directory lives under a private home.
fn shared_binaries() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("agentkernel-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, source) in [
            ("agentkernel", env!("CARGO_BIN_EXE_agentkernel")),
            ("ak-agent", env!("CARGO_BIN_EXE_ak-agent")),
        ] {
            let target = dir.join(name);
            std::fs::copy(source, &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    })
}

/// The modes this host can test. Root is required: CI runs as root, and the rootless mode
/// is entered from root with `setpriv`.
pub fn modes() -> Vec<Mode> {
    assert!(
        is_root(),
        "these integration tests must run as root (CI does); rootless mode is entered with setpriv"
    );
    vec![Mode::Root, Mode::Rootless]
}

/// `agentkernel ARGS…` in `mode`, with no user config and a private runtime dir.
pub fn agentkernel(mode: Mode, args: &[&str]) -> Command {
    let bin = shared_binaries().join("agentkernel");
    let mut command = match mode {
        Mode::Root => Command::new(bin),
        Mode::Rootless => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={ROOTLESS_UID}"))
                .arg(format!("--regid={ROOTLESS_UID}"))
                .args(["--clear-groups", "--inh-caps=-all", "--"])
                .arg(bin);
            command
                .env("HOME", "/nonexistent")
                .env_remove("XDG_RUNTIME_DIR");
            command
        }
    };
    command
        .args(args)
        .env("AGENTKERNEL_CONFIG", "/dev/null")
        .env("AGENTKERNEL_REGISTRY", registry_path(mode))
        .env_remove("AGENTKERNEL_PROFILE")
        .env_remove("AGENTKERNEL_BACKEND")
        .env_remove("AGENTKERNEL_IMAGE")
        .current_dir("/")
        .stdin(Stdio::null());
    command
}

/// A registry private to this test process (one per mode: the rootless user cannot write
/// root's), so tests never touch the user's real sandboxes.
pub fn registry_path(mode: Mode) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "agentkernel-test-state-{}-{mode:?}",
        std::process::id()
    ));
    if !dir.exists() {
        // Private, like the real state directory: the service must open it up itself.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        if mode == Mode::Rootless {
            std::os::unix::fs::chown(&dir, Some(ROOTLESS_UID), Some(ROOTLESS_UID)).unwrap();
        }
    }
    dir.join("registry.db")
}

/// Runs `agentkernel ARGS…` and returns its output.
pub fn ak(mode: Mode, args: &[&str]) -> Output {
    agentkernel(mode, args).output().unwrap()
}

/// Runs `agentkernel run [flags] -- cmd…` and returns its output.
pub fn run(mode: Mode, flags: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(cmd);
    agentkernel(mode, &args).output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Panics with the whole output unless the run exited with `code`.
pub fn assert_code(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

/// Host resources a sandbox could leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    pub mounts: usize,
    pub cgroups: Vec<String>,
    pub net_namespaces: Vec<u64>,
    pub sandbox_processes: Vec<u32>,
    pub runtime_dirs: Vec<String>,
}

fn list_dir(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Processes whose host uid is a sandbox uid (root-mapped range or the rootless uid).
fn sandbox_processes() -> Vec<u32> {
    let mut pids = Vec::new();
    for name in list_dir(Path::new("/proc")) {
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let uid: Option<u32> = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok());
        if uid.is_some_and(|uid| uid >= 1_000_000_000 || uid == ROOTLESS_UID) {
            pids.push(pid);
        }
    }
    pids
}

fn net_namespaces() -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut inodes: Vec<u64> = list_dir(Path::new("/proc"))
        .into_iter()
        .filter(|n| n.parse::<u32>().is_ok())
        .filter_map(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).ok())
        .map(|m| m.ino())
        .collect();
    inodes.sort();
    inodes.dedup();
    inodes
}

pub fn snapshot() -> HostSnapshot {
    let mut cgroups = Vec::new();
    for hierarchy in list_dir(Path::new("/sys/fs/cgroup")) {
        for id in list_dir(
            &Path::new("/sys/fs/cgroup")
                .join(&hierarchy)
                .join("agentkernel"),
        ) {
            if Path::new("/sys/fs/cgroup")
                .join(&hierarchy)
                .join("agentkernel")
                .join(&id)
                .is_dir()
            {
                cgroups.push(format!("{hierarchy}/{id}"));
            }
        }
    }
    for id in list_dir(Path::new("/sys/fs/cgroup/agentkernel")) {
        if Path::new("/sys/fs/cgroup/agentkernel").join(&id).is_dir() {
            cgroups.push(id);
        }
    }
    let mut runtime_dirs = list_dir(Path::new("/run/agentkernel"));
    runtime_dirs.extend(list_dir(
        &std::env::temp_dir().join(format!("agentkernel-{ROOTLESS_UID}")),
    ));
    HostSnapshot {
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .count(),
        cgroups,
        net_namespaces: net_namespaces(),
        sandbox_processes: sandbox_processes(),
        runtime_dirs,
    }
}

/// Serialises the leak test against every other test: they take it shared, it exclusive.
static HOST: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by ordinary tests (a failed test must not poison the others).
pub fn shared_host() -> std::sync::RwLockReadGuard<'static, ()> {
    HOST.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by the leak tests, alone.
pub fn exclusive_host() -> std::sync::RwLockWriteGuard<'static, ()> {
    HOST.write().unwrap_or_else(|e| e.into_inner())
}

/// Waits briefly for asynchronous clean-up (process exit) before comparing.
pub fn assert_no_leaks(before: &HostSnapshot) {
    let mut after = snapshot();
    for _ in 0..50 {
        if after.sandbox_processes.is_empty()
            && after.cgroups.is_empty()
            && after.runtime_dirs.is_empty()
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        after = snapshot();
    }
    assert_eq!(after.mounts, before.mounts, "host mounts changed");
    assert!(
        after.cgroups.is_empty(),
        "leftover cgroups: {:?}",
        after.cgroups
    );
    assert!(
        after.runtime_dirs.is_empty(),
        "leftover runtime dirs: {:?}",
        after.runtime_dirs
    );
    assert!(
        after.sandbox_processes.is_empty(),
        "leftover sandbox processes: {:?}",
        after.sandbox_processes
    );
    let new_netns: Vec<_> = after
        .net_namespaces
        .iter()
        .filter(|ns| !before.net_namespaces.contains(ns))
        .collect();
    assert!(
        new_netns.is_empty(),
        "leftover network namespaces: {new_netns:?}"
    );
}
