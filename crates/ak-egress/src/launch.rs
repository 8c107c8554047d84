//! Starting a sandbox's network helper from the host, for every backend that puts one in
//! front of its sandboxes (the native backend's `slirp4netns` or ours; the container
//! backends' ours): the descriptors it inherits (a readiness pipe it writes one byte to
//! once the sandbox's network is configured, and an optional descriptor whose hang-up ends
//! it), and the wait for that byte.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::EgressError;
use crate::helper::HelperArgs;

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(Into::into)
}

/// Spawns `command` with `ready` and `exit` (when given) inherited under their own numbers
/// (every other descriptor of ours stays closed to it), no stdin or stdout, and `stderr`.
pub fn spawn(
    command: &mut Command,
    ready: &OwnedFd,
    exit: Option<&OwnedFd>,
    stderr: Stdio,
) -> std::io::Result<Child> {
    let ready_fd = ready.as_raw_fd();
    let exit_fd = exit.map(AsRawFd::as_raw_fd);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: only fcntl on descriptors that exist in the forked child.
    unsafe {
        command.pre_exec(move || {
            for fd in std::iter::once(ready_fd).chain(exit_fd) {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Waits for a helper that must outlive this process to report readiness on the pipe
/// (`ready_write` is our copy of its write end, closed first so that a helper that dies
/// reads as an end of file); returns its pid. A helper that fails is killed and reaped,
/// and the error is what it wrote to `log`.
pub fn wait_detached(
    mut child: Child,
    ready_read: OwnedFd,
    ready_write: OwnedFd,
    log: &Path,
) -> Result<u32, String> {
    drop(ready_write);
    let mut byte = [0u8; 1];
    if matches!(std::fs::File::from(ready_read).read(&mut byte), Ok(1)) {
        // Not waited for here: it runs on after we are gone; whoever releases the
        // sandbox ends it.
        return Ok(child.id());
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(failure(&std::fs::read_to_string(log).unwrap_or_default()))
}

/// What a helper that did not configure the network said, on one line.
pub fn failure(message: &str) -> String {
    if message.trim().is_empty() {
        "exited without configuring the network".to_string()
    } else {
        message.trim().lines().collect::<Vec<_>>().join("; ")
    }
}

/// What [`start_detached`] needs besides its descriptors.
#[derive(Debug, Clone)]
pub struct Detached<'a> {
    /// The `ak-egress` executable.
    pub program: &'a Path,
    /// The sandbox's network namespace; or else
    pub netns: Option<PathBuf>,
    /// the socket a VM's NIC connects to (see [`HelperArgs::stream`]).
    pub stream: Option<PathBuf>,
    /// Its user namespace, when the helper must enter one first (see [`HelperArgs`]).
    pub userns: Option<PathBuf>,
    pub policy: &'a Path,
    pub sandbox: &'a str,
    pub audit_dir: Option<&'a Path>,
    /// Where the helper's diagnostics go.
    pub log: &'a Path,
    /// The sandbox's first process, stopped on a secret's leak under `on_leak = "kill"`
    /// (see [`HelperArgs::sandbox_pid`]).
    pub sandbox_pid: Option<u32>,
}

/// Starts our helper for a sandbox that outlives this process, ending when `exit` (a
/// pidfd of the sandbox's first process) reports its end (a VM's: when its connection
/// does), or when killed by the pid this returns once the sandbox's network is configured.
pub fn start_detached(launch: &Detached<'_>, exit: Option<&OwnedFd>) -> Result<u32, EgressError> {
    let (ready_read, ready_write) = pipe().map_err(EgressError::io("create a pipe"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(launch.log)
        .map_err(EgressError::io(format!("open {}", launch.log.display())))?;
    let args = HelperArgs {
        netns: launch.netns.clone(),
        stream: launch.stream.clone(),
        ethernet: false,
        sandbox_pid: launch.sandbox_pid,
        userns: launch.userns.clone(),
        policy: launch.policy.to_path_buf(),
        ready_fd: ready_write.as_raw_fd(),
        exit_fd: exit.map(AsRawFd::as_raw_fd),
        sandbox: launch.sandbox.to_string(),
        audit_dir: launch.audit_dir.map(Path::to_path_buf),
    };
    let mut command = Command::new(launch.program);
    command.args(args.to_args());
    let child = spawn(&mut command, &ready_write, exit, Stdio::from(log)).map_err(|e| {
        EgressError::io(format!(
            "start the egress helper {}",
            launch.program.display()
        ))(e)
    })?;
    wait_detached(child, ready_read, ready_write, launch.log).map_err(EgressError::Helper)
}

/// Reaps the detached helper `pid` (our child, see [`start_detached`]) once it ends, so
/// that a long-lived process (the daemon, `serve`) collects no zombies: its pidfd becomes
/// readable at its end.
pub fn reap_when_done(pid: u32) {
    let Some(child) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(child, rustix::process::PidfdFlags::empty()) else {
        return;
    };
    // Outside a runtime there is no long-lived process to keep clean (a one-shot CLI).
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        // SAFETY: the OwnedFd moves into the AsyncFd, which owns it for its whole life.
        if let Ok(fd) = unsafe { tokio::io::unix::AsyncFd::register(pidfd) } {
            let _ = fd.readable().await;
        }
        let _ = rustix::process::waitpid(Some(child), rustix::process::WaitOptions::NOHANG);
    });
}
