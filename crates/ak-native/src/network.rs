//! Outbound network for sandboxes whose policy allows it. The open network: `slirp4netns`
//! gives the sandbox's own network namespace a user-mode NAT to the outside, with the
//! host's loopback services out of reach (`--disable-host-loopback`). An allowlist: our
//! own egress helper (`ak-egress`, see that crate) holds a TUN device in the namespace and
//! lets through only what the allowlist allows. A sandbox without network keeps its empty
//! namespace with only loopback, and no helper runs.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};

use crate::error::NativeError;

const HELPER: &str = ak_core::runtime::NATIVE_NETWORK_HELPER;
/// The resolver slirp4netns answers on inside the namespace.
pub const SANDBOX_NAMESERVER: &str = "10.0.2.3";

/// Finds the helper on PATH.
pub fn find_helper() -> Option<PathBuf> {
    ak_core::process::find_on_path(HELPER)
}

/// The network namespace a helper gives its interface to.
#[derive(Debug, Clone, Copy)]
pub enum HelperTarget<'a> {
    /// The namespaces (user and network) of this process: a native sandbox's init.
    Process(u32),
    /// A network namespace file, entered without a user namespace (the caller is root): a
    /// gVisor sandbox's namespace, made before runsc starts.
    Netns(&'a Path),
}

/// Which helper gives a sandbox its network.
#[derive(Debug, Clone, Copy)]
pub enum HelperKind<'a> {
    /// `slirp4netns`: NAT to anywhere (the open network).
    Slirp,
    /// Our egress helper at `program`, enforcing the policy file `policy`.
    Egress {
        program: &'a Path,
        policy: &'a Path,
        sandbox: &'a str,
        audit_dir: Option<&'a Path>,
    },
}

/// A running network helper for one sandbox.
#[derive(Debug)]
pub struct NetworkHelper {
    child: Child,
    ready: Option<OwnedFd>,
    /// Closing this ends the helper even if we are killed before `stop`.
    _exit: OwnedFd,
}

impl NetworkHelper {
    /// Starts the helper for the namespaces of `pid`; call [`NetworkHelper::wait_ready`]
    /// before the sandbox's commands need the network.
    pub fn start(
        target: HelperTarget<'_>,
        kind: HelperKind<'_>,
    ) -> Result<NetworkHelper, NativeError> {
        let (ready_read, ready_write) = pipe()?;
        let (exit_read, exit_write) = pipe()?;
        let child = spawn_helper(target, kind, &ready_write, Some(&exit_read), Stdio::piped())?;
        drop(ready_write);
        drop(exit_read);
        Ok(NetworkHelper {
            child,
            ready: Some(ready_read),
            _exit: exit_write,
        })
    }

    /// Blocks until the helper reports the interface configured.
    pub fn wait_ready(&mut self) -> Result<(), NativeError> {
        let Some(ready) = self.ready.take() else {
            return Ok(());
        };
        let mut byte = [0u8; 1];
        let read = std::fs::File::from(ready).read(&mut byte);
        if matches!(read, Ok(1)) {
            keep_tap_past_helper(self.child.id());
            return Ok(());
        }
        let mut message = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut message);
        }
        Err(failure(&message))
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the helper of a persistent sandbox, which must outlive this process: its exit
/// fd is the sandbox init's pidfd (which reports a hang-up once the init is gone, on Linux
/// 6.9 and newer; older kernels leave it to the release, which kills the helper by pid),
/// and its diagnostics go to `log`, not to a pipe whose reader goes away with us. Returns
/// the helper's pid once the network is configured.
pub(crate) fn start_detached(
    pid: u32,
    kind: HelperKind<'_>,
    init_pidfd: &OwnedFd,
    log: &Path,
) -> Result<u32, NativeError> {
    let (ready_read, ready_write) = pipe()?;
    let log_file = crate::persistent::open_log(log)?;
    let child = spawn_helper(
        HelperTarget::Process(pid),
        kind,
        &ready_write,
        Some(init_pidfd),
        Stdio::from(log_file),
    )?;
    wait_detached(child, ready_read, ready_write, log)
}

/// Starts the helper of a persistent sandbox in network namespace `netns`, to outlive
/// this process: it has no exit descriptor, so the sandbox's release ends it by the pid
/// this returns once the network is configured. Its diagnostics go to `log`.
pub fn start_detached_in(netns: &Path, log: &Path) -> Result<u32, NativeError> {
    let (ready_read, ready_write) = pipe()?;
    let log_file = crate::persistent::open_log(log)?;
    let child = spawn_helper(
        HelperTarget::Netns(netns),
        HelperKind::Slirp,
        &ready_write,
        None,
        Stdio::from(log_file),
    )?;
    wait_detached(child, ready_read, ready_write, log)
}

/// Waits for a detached helper to configure the network; returns its pid.
fn wait_detached(
    mut child: Child,
    ready_read: OwnedFd,
    ready_write: OwnedFd,
    log: &Path,
) -> Result<u32, NativeError> {
    drop(ready_write);
    let mut byte = [0u8; 1];
    if matches!(std::fs::File::from(ready_read).read(&mut byte), Ok(1)) {
        keep_tap_past_helper(child.id());
        // Not waited for here: it runs on after we are gone; the release reaps it if we are
        // still its parent then.
        return Ok(child.id());
    }
    let _ = child.kill();
    let _ = child.wait();
    let message = std::fs::read_to_string(log).unwrap_or_default();
    Err(failure(&message))
}

/// Makes the helper's tap device persistent once it is configured, so that the helper's
/// exit no longer deletes it: deleting a tap costs 14-27 ms here (the kernel waits for RCU
/// grace periods under the rtnl lock), and a sandbox's release waits for its helper's exit.
/// The device then goes with the sandbox's network namespace, which the kernel tears down
/// in the background once its last user, the helper's tap file, is gone. Best effort:
/// without it the release is only slower.
fn keep_tap_past_helper(helper: u32) {
    let persistent =
        helper_tap(helper).and_then(|tap| ak_netif::set_tun_persistent(tap.as_fd(), true));
    if let Err(e) = persistent {
        tracing::debug!(
            "cannot make {HELPER}'s tap persistent ({e}): the release waits for its deletion"
        );
    }
}

/// A copy of the helper's open `/dev/net/tun` (its tap), taken with `pidfd_getfd`.
fn helper_tap(helper: u32) -> std::io::Result<OwnedFd> {
    let pid = i32::try_from(helper)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty())?;
    for entry in std::fs::read_dir(format!("/proc/{helper}/fd"))? {
        let entry = entry?;
        let is_tun = std::fs::read_link(entry.path())
            .is_ok_and(|target| target == Path::new("/dev/net/tun"));
        if is_tun && let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            return Ok(pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty())?);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{HELPER} has no /dev/net/tun open"),
    ))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), NativeError> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| NativeError::io("create a pipe")(e.into()))
}

/// Runs the helper for `target`, reporting readiness on `ready` and exiting when `exit`
/// (if any) hangs up.
fn spawn_helper(
    target: HelperTarget<'_>,
    kind: HelperKind<'_>,
    ready: &OwnedFd,
    exit: Option<&OwnedFd>,
    stderr: Stdio,
) -> Result<Child, NativeError> {
    let ready_fd = ready.as_raw_fd();
    let exit_fd = exit.map(AsRawFd::as_raw_fd);
    let mut command = match kind {
        HelperKind::Slirp => slirp_command(target, ready_fd, exit_fd)?,
        HelperKind::Egress {
            program,
            policy,
            sandbox,
            audit_dir,
        } => {
            let (netns, userns, sandbox_pid) = match target {
                HelperTarget::Process(pid) => (
                    PathBuf::from(format!("/proc/{pid}/ns/net")),
                    Some(PathBuf::from(format!("/proc/{pid}/ns/user"))),
                    Some(pid),
                ),
                HelperTarget::Netns(path) => (path.to_path_buf(), None, None),
            };
            let args = ak_egress::HelperArgs {
                netns,
                userns,
                policy: policy.to_path_buf(),
                ready_fd,
                exit_fd,
                sandbox: sandbox.to_string(),
                audit_dir: audit_dir.map(Path::to_path_buf),
                sandbox_pid,
            };
            let mut command = Command::new(program);
            command.args(args.to_args());
            command
        }
    };
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
    let name = command.get_program().to_string_lossy().into_owned();
    command.spawn().map_err(|e| match kind {
        HelperKind::Egress { program, .. } if e.kind() == std::io::ErrorKind::NotFound => {
            NativeError::Unavailable(format!(
                "the allowlist network needs the egress helper {} (built beside agentkernel; set AGENTKERNEL_EGRESS)",
                program.display()
            ))
        }
        _ => NativeError::Network(format!("cannot start {name}: {e}")),
    })
}

/// The `slirp4netns` command line for `target`.
fn slirp_command(
    target: HelperTarget<'_>,
    ready_fd: i32,
    exit_fd: Option<i32>,
) -> Result<Command, NativeError> {
    // Missing from the host, not a failure of this sandbox: the caller sees "unavailable".
    let helper = find_helper().ok_or_else(|| {
        NativeError::Unavailable(format!(
            "outbound network needs {HELPER} (apt install {HELPER}); or run with --no-network"
        ))
    })?;
    let mut command = Command::new(helper);
    command
        .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .arg(format!("--ready-fd={ready_fd}"));
    if let Some(exit_fd) = exit_fd {
        command.arg(format!("--exit-fd={exit_fd}"));
    }
    match target {
        HelperTarget::Process(pid) => {
            command
                .arg(format!("--userns-path=/proc/{pid}/ns/user"))
                .arg("--netns-type=path")
                .arg(format!("/proc/{pid}/ns/net"));
        }
        HelperTarget::Netns(path) => {
            command.arg("--netns-type=path").arg(path);
        }
    }
    command.arg("tap0");
    Ok(command)
}

/// The error for a helper that did not configure the network, from what it printed.
fn failure(message: &str) -> NativeError {
    NativeError::Network(format!(
        "the network helper failed: {}",
        if message.trim().is_empty() {
            "exited without configuring the network".to_string()
        } else {
            message.trim().lines().collect::<Vec<_>>().join("; ")
        }
    ))
}
