//! Shared helpers of the CLI integration tests: run the built `agentkernel` as root or as
//! an unprivileged user, and snapshot host resources to prove nothing leaked.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
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
/// when the build directory lives under a private home. One directory per build tree, so
/// runs do not pile up and two checkouts never swap binaries; each copy is renamed into
/// place, so a running copy is never rewritten.
fn shared_binaries() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        // AGENTKERNEL_TEST_AGENT: another build of the agent to run the sandboxes with (CI
        // runs the run and escape tests again with the static musl agent); part of the
        // directory's name, so a run with one agent never swaps another run's.
        let agent = std::env::var_os("AGENTKERNEL_TEST_AGENT")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_ak-agent").into());
        let mut tree = std::hash::DefaultHasher::new();
        env!("CARGO_BIN_EXE_agentkernel").hash(&mut tree);
        agent.hash(&mut tree);
        let dir = std::env::temp_dir().join(format!("agentkernel-test-bin-{:016x}", tree.finish()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, source) in [
            ("agentkernel", OsStr::new(env!("CARGO_BIN_EXE_agentkernel"))),
            ("ak-server", OsStr::new(env!("CARGO_BIN_EXE_ak-server"))),
            ("ak-agent", agent.as_os_str()),
            ("ak-egress", OsStr::new(env!("CARGO_BIN_EXE_ak-egress"))),
        ] {
            let staged = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::copy(source, &staged).unwrap();
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&staged, dir.join(name)).unwrap();
        }
        dir
    })
}

/// The backend these tests drive: each test binary that includes this file names its own
/// (`native` for the CLI tests, `gvisor` for the same tests on gVisor).
pub(crate) use crate::BACKEND;

/// The modes this host can test. Root is required: CI runs as root, and the rootless mode
/// is entered from root with `setpriv`. The gVisor backend runs as root only (its rootless
/// refusal has a test of its own).
pub fn modes() -> Vec<Mode> {
    assert!(
        is_root(),
        "these integration tests must run as root (CI does); rootless mode is entered with setpriv"
    );
    if BACKEND == "gvisor" {
        return vec![Mode::Root];
    }
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
        .env("AGENTKERNEL_BACKEND", BACKEND)
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

/// The `/proc/PID` directory of a host process whose command line (`\0`-separated)
/// `matches` (waits up to 5 s for one to appear).
pub fn find_host_process(matches: impl Fn(&[u8]) -> bool) -> Option<PathBuf> {
    for _ in 0..100 {
        let found = std::fs::read_dir("/proc").ok()?.flatten().find(|entry| {
            std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| matches(&cmdline))
        });
        if let Some(entry) = found {
            return Some(entry.path());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

/// The pid of a host process started as `program` (its first argument) whose command
/// line mentions `marker` (waits up to 5 s for it to appear).
pub fn host_process_with(marker: &str, program: &str) -> Option<i32> {
    let dir = find_host_process(|cmdline| {
        cmdline.split(|&b| b == 0).next() == Some(program.as_bytes())
            && String::from_utf8_lossy(cmdline).contains(marker)
    })?;
    dir.file_name()?.to_str()?.parse().ok()
}

/// Runs `agentkernel ARGS…` and returns its output.
pub fn ak(mode: Mode, args: &[&str]) -> Output {
    agentkernel(mode, args).output().unwrap()
}

/// Runs `agentkernel ARGS…` as root with a registry (and so a daemon) of its own in
/// `state`, so that its daemon is no other test's.
pub fn ak_with_state(state: &std::path::Path, args: &[&str]) -> Output {
    agentkernel(Mode::Root, args)
        .env("AGENTKERNEL_REGISTRY", state.join("registry.db"))
        .output()
        .unwrap()
}

/// The id of named sandbox `name` (its `uuid` in `inspect --json`).
pub fn sandbox_id(mode: Mode, name: &str) -> String {
    let inspected: serde_json::Value =
        serde_json::from_slice(&ak(mode, &["inspect", name, "--json"]).stdout).unwrap();
    inspected["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("no uuid in {inspected}"))
        .to_string()
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

pub use ak_bench::HostSnapshot;

/// The host's sandbox resources now (see `ak_bench::HostSnapshot`).
pub fn snapshot() -> HostSnapshot {
    HostSnapshot::take(&[ROOTLESS_UID])
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
    let leaks = before.leaks_since(&[ROOTLESS_UID], std::time::Duration::from_secs(5));
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}
