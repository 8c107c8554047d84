//! The allowlist network for containers, enforced outside them as for native sandboxes:
//! the engine gives the container no network (`network_mode: none`, loopback only), and
//! once it runs our egress helper (`ak-egress`) makes a TUN device in the container's
//! network namespace, entered through `/proc/<init pid>/ns/net`, and lets through only
//! what the allowlist allows. Nothing in the container can widen it: it has no other way
//! out, and no capability to make one.
//!
//! What the helper reads (its policy file) lives in a host directory beside the
//! container's runtime directory, `<id>.egress`, which is never mounted into the container:
//! the runtime directory is (it holds the agent's socket), and a sandbox that could write
//! its own policy could widen it. The container's `/etc/resolv.conf` is bound read-only
//! from there, naming the helper's resolver.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ak_core::SandboxSpec;
use ak_core::egress::Allowlist;
use ak_egress::PolicyFile;
use ak_egress::launch::{Detached, start_detached};
use ak_egress::secrets::SecretPolicy;
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::error::DockerError;

/// The helper's policy file, in the egress directory.
const POLICY_FILE: &str = "egress.json";
/// The container's `/etc/resolv.conf`.
const RESOLV_FILE: &str = "resolv.conf";
/// The helper's diagnostics.
const LOG_FILE: &str = "egress.log";
/// How long a release waits for a killed helper to go.
const STOP_LIMIT: Duration = Duration::from_secs(2);

/// How this backend runs the egress helper: the settings every backend that enforces
/// allowlists shares.
#[derive(Debug, Clone)]
pub struct EgressSetup(pub ak_egress::Egress);

/// The egress directory of the sandbox whose runtime directory is `run_dir`.
pub fn dir_of(run_dir: &Path) -> PathBuf {
    run_dir.with_extension("egress")
}

impl EgressSetup {
    /// Before the container is made: the egress directory (0700) with the policy file and
    /// the resolv.conf to bind; returns the resolv.conf.
    pub fn prepare(
        &self,
        run_dir: &Path,
        spec: &SandboxSpec,
        secrets: Option<SecretPolicy>,
    ) -> Result<PathBuf, DockerError> {
        let dir = dir_of(run_dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(DockerError::io(format!("create {}", dir.display())))?;
        self.0
            .write_policy(&dir.join(POLICY_FILE), &spec.policy.allowlist, secrets)?;
        let resolv = dir.join(RESOLV_FILE);
        std::fs::write(&resolv, format!("nameserver {}\n", ak_egress::RESOLVER))
            .map_err(DockerError::io(format!("write {}", resolv.display())))?;
        Ok(resolv)
    }

    /// Once the container runs with `pid` as its first process (a host pid): starts the
    /// helper in its network namespace and returns the helper as `pid:start-time` (what
    /// [`stop`] ends). The helper ends by itself when that process does; it kills that
    /// process on a secret's leak under `on_leak = "kill"` (the container ends with it).
    pub fn start(&self, run_dir: &Path, sandbox: &str, pid: u32) -> Result<String, DockerError> {
        if !ak_core::process::is_executable(&self.0.helper) {
            return Err(DockerError::EgressUnavailable(format!(
                "the allowlist network needs the egress helper {} (built beside agentkernel; set AGENTKERNEL_EGRESS)",
                self.0.helper.display()
            )));
        }
        let init = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| DockerError::Agent(format!("has no usable pid ({pid})")))?;
        let exit = pidfd_open(init, PidfdFlags::empty()).map_err(|e| {
            DockerError::io(format!("open the container's process {pid}"))(e.into())
        })?;
        let dir = dir_of(run_dir);
        let helper = start_detached(
            &Detached {
                program: &self.0.helper,
                netns: Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
                stream: None,
                // The engine runs as root: the helper enters the namespace directly.
                userns: None,
                policy: &dir.join(POLICY_FILE),
                sandbox,
                audit_dir: self.0.audit_dir.as_deref(),
                log: &dir.join(LOG_FILE),
                sandbox_pid: Some(pid),
            },
            Some(&exit),
        )?;
        ak_egress::launch::reap_when_done(helper);
        let recorded = ak_core::process::identity(helper).ok_or_else(|| {
            DockerError::EgressUnavailable(format!(
                "the egress helper (pid {helper}) ended as soon as it started; {} may say why",
                dir.join(LOG_FILE).display()
            ))
        })?;
        // The helper opened `/proc/<pid>/ns/net` by number. Still alive now, the process
        // `exit` was opened on was alive all along, so the number named it when the helper
        // looked (the caller checks that it is the container's).
        if exited(&exit) {
            stop(&recorded);
            return Err(DockerError::Agent(format!(
                "ended (pid {pid}) while its network was set up"
            )));
        }
        Ok(recorded)
    }
}

/// Whether the process of `pidfd` has ended.
fn exited(pidfd: &std::os::fd::OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // An error polling it is no proof that it lives.
    poll(&mut fds, Some(&now)).map_or(true, |ready| ready > 0)
}

/// Ends the helper recorded as `helper` (`pid:start-time`), if it still runs.
pub fn stop(helper: &str) {
    if !ak_core::process::kill_recorded(helper, STOP_LIMIT) {
        tracing::warn!("the egress helper {helper} did not end in {STOP_LIMIT:?}");
    }
}

/// Whether the sandbox whose runtime directory is `run_dir` has a policy file (it has
/// from its creation to its release).
pub fn has_policy(run_dir: &Path) -> bool {
    dir_of(run_dir).join(POLICY_FILE).is_file()
}

/// Gives the running sandbox whose runtime directory is `run_dir` a new allowlist: the
/// helper judges its next connection by it.
pub fn set_allowlist(run_dir: &Path, allowlist: &Allowlist) -> Result<(), DockerError> {
    Ok(PolicyFile::replace_allowlist(
        &dir_of(run_dir).join(POLICY_FILE),
        allowlist,
    )?)
}
