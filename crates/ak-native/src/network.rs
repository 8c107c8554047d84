//! Outbound network for sandboxes whose policy allows it. The open network: `slirp4netns`
//! gives the sandbox's own network namespace a user-mode NAT to the outside, with the
//! host's loopback services out of reach (`--disable-host-loopback`). An allowlist: our
//! own egress helper (`ak-egress`, see that crate) holds a TUN device in the namespace and
//! lets through only what the allowlist allows. A sandbox without network keeps its empty
//! namespace with only loopback, and no helper runs.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
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
        /// A TAP device instead of a TUN one (the sandbox speaks Ethernet).
        ethernet: bool,
    },
}

/// The egress helper, as `egress` says, for sandbox `sandbox` enforcing the policy file
/// `policy`; `ethernet` for a sandbox whose network stack speaks Ethernet (gVisor's).
pub fn egress_helper<'a>(
    egress: &'a ak_egress::Egress,
    policy: &'a Path,
    sandbox: &'a str,
    ethernet: bool,
) -> HelperKind<'a> {
    HelperKind::Egress {
        program: &egress.helper,
        policy,
        sandbox,
        audit_dir: egress.audit_dir.as_deref(),
        ethernet,
    }
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
pub fn start_detached_in(
    netns: &Path,
    kind: HelperKind<'_>,
    log: &Path,
) -> Result<u32, NativeError> {
    let (ready_read, ready_write) = pipe()?;
    let log_file = crate::persistent::open_log(log)?;
    let child = spawn_helper(
        HelperTarget::Netns(netns),
        kind,
        &ready_write,
        None,
        Stdio::from(log_file),
    )?;
    wait_detached(child, ready_read, ready_write, log)
}

/// Waits for a detached helper to configure the network; returns its pid.
fn wait_detached(
    child: Child,
    ready_read: OwnedFd,
    ready_write: OwnedFd,
    log: &Path,
) -> Result<u32, NativeError> {
    let pid = ak_egress::launch::wait_detached(child, ready_read, ready_write, log)
        .map_err(|message| NativeError::Network(format!("the network helper failed: {message}")))?;
    keep_tap_past_helper(pid);
    Ok(pid)
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
    ak_egress::launch::pipe().map_err(NativeError::io("create a pipe"))
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
            ethernet,
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
                netns: Some(netns),
                stream: None,
                userns,
                policy: policy.to_path_buf(),
                ready_fd,
                exit_fd,
                sandbox: sandbox.to_string(),
                audit_dir: audit_dir.map(Path::to_path_buf),
                ethernet,
                sandbox_pid,
            };
            let mut command = Command::new(program);
            command.args(args.to_args());
            command
        }
    };
    let name = command.get_program().to_string_lossy().into_owned();
    ak_egress::launch::spawn(&mut command, ready, exit, stderr).map_err(|e| match kind {
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
        ak_egress::launch::failure(message)
    ))
}
