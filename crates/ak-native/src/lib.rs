//! ak-native: the Linux namespace backend. Each sandbox is a `clone3` into fresh user,
//! mount, pid, uts, ipc, net and cgroup namespaces, with a `pivot_root` into a read-only
//! view of its image, seccomp, landlock, dropped capabilities and cgroup limits; the agent
//! is its PID 1, reached over a socket pair.

pub mod cgroup;
mod child;
mod error;
mod landlock;
mod network;
mod plan;
pub mod probe;
pub mod rundir;
mod seccomp;
mod spawn;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ak_core::backend::SandboxUsage;
use ak_core::{
    Backend, BackendError, BackendKind, BackendProbe, ImageRef, NetworkMode, Sandbox, SandboxSpec,
    Transport,
};

use crate::cgroup::{CgroupLayout, SandboxCgroup};
pub use crate::error::NativeError;
use crate::network::NetworkHelper;
use crate::plan::{TopEntry, list_top_level};
use crate::probe::HostFeatures;
use crate::rundir::RunDir;
pub use crate::spawn::ROOT_MAPPED_BASE;

/// The native backend. Cheap to create; host facts are probed once, on first use.
#[derive(Debug)]
pub struct NativeBackend {
    agent_path: PathBuf,
    state: OnceLock<Result<Prepared, String>>,
}

/// Host facts and prepared artefacts shared by every sandbox of this backend.
#[derive(Debug)]
struct Prepared {
    agent: OwnedFd,
    host_top_level: Vec<TopEntry>,
    cgroups: CgroupLayout,
    cgroups_usable: Result<(), String>,
    landlock_abi: Option<u32>,
    seccomp: Vec<seccompiler::BpfProgram>,
    cap_last: u32,
    runtime_base: PathBuf,
}

impl NativeBackend {
    /// `agent_path` is the static `ak-agent` executable to run as each sandbox's init.
    pub fn new(agent_path: PathBuf) -> Self {
        NativeBackend {
            agent_path,
            state: OnceLock::new(),
        }
    }

    fn prepared(&self) -> Result<&Prepared, NativeError> {
        self.state
            .get_or_init(|| self.prepare().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| NativeError::Unavailable(e.clone()))
    }

    fn prepare(&self) -> Result<Prepared, NativeError> {
        let agent = rustix::fs::open(
            &self.agent_path,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| {
            NativeError::Unavailable(format!(
                "the agent executable {} cannot be opened ({e}); build it with `cargo build --release` or set AGENTKERNEL_AGENT",
                self.agent_path.display()
            ))
        })?;
        let cgroups = CgroupLayout::detect();
        let cgroups_usable = cgroups.usable();
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        Ok(Prepared {
            agent,
            host_top_level: list_top_level(Path::new("/"))?,
            cgroups,
            cgroups_usable,
            landlock_abi: landlock::abi_version(),
            seccomp: seccomp::build_filters()?,
            cap_last,
            runtime_base: rundir::runtime_base(),
        })
    }

    /// Releases host resources of sandboxes whose owner died (killed CLI, crash).
    pub fn sweep_stale(&self) {
        let Ok(prepared) = self.prepared() else {
            return;
        };
        for (id, _lock) in rundir::stale_entries(&prepared.runtime_base) {
            tracing::info!(%id, "releasing resources of a sandbox whose owner is gone");
            let cgroup = SandboxCgroup::existing(&prepared.cgroups, &id);
            let _ = cgroup.kill_all();
            if let Err(e) = cgroup.remove() {
                tracing::warn!(%id, "cannot remove stale cgroup: {e}");
            }
            let _ = std::fs::remove_dir_all(prepared.runtime_base.join(&id));
        }
    }

    fn create_sandbox(&self, spec: &SandboxSpec) -> Result<NativeSandbox, NativeError> {
        let started = std::time::Instant::now();
        let prepared = self.prepared()?;
        let (image_root, top_level) = match &spec.image {
            ImageRef::Host => (PathBuf::from("/"), prepared.host_top_level.clone()),
            ImageRef::Directory(dir) => (dir.clone(), list_top_level(dir)?),
            ImageRef::Oci(name) => {
                return Err(NativeError::InvalidSpec(format!(
                    "the native backend runs the `host` image or a directory, not the OCI image '{name}' (use --backend docker)"
                )));
            }
        };
        self.sweep_stale();

        let rundir = RunDir::create(&prepared.runtime_base, &spec.id)?;
        let new_root = rundir.path().join("root");
        std::fs::create_dir(&new_root)
            .map_err(NativeError::io(format!("create {}", new_root.display())))?;

        let resolv_conf = if spec.policy.network == NetworkMode::Outbound {
            let path = rundir.path().join("resolv.conf");
            std::fs::write(
                &path,
                format!("nameserver {}\n", network::SANDBOX_NAMESERVER),
            )
            .map_err(NativeError::io(format!("write {}", path.display())))?;
            Some(path)
        } else {
            None
        };

        let mut rlimits = vec![(libc::RLIMIT_CORE, 0)];
        if let Err(reason) = &prepared.cgroups_usable {
            tracing::warn!(
                "cgroups unavailable ({reason}): memory limited by RLIMIT_AS only, pids and CPU not limited"
            );
            rlimits.push((libc::RLIMIT_AS, spec.resources.memory_bytes));
        }

        let mut cgroup = None;
        let mut before_release = |pid: u32| -> Result<(), NativeError> {
            if prepared.cgroups_usable.is_ok() {
                let created = cgroup.insert(SandboxCgroup::create(
                    &prepared.cgroups,
                    &spec.id,
                    &spec.resources,
                )?);
                created.add_process(pid)?;
            }
            Ok(())
        };
        let spawned = spawn::spawn(spawn::SpawnRequest {
            spec,
            image_root: &image_root,
            top_level: &top_level,
            new_root: &new_root,
            resolv_conf: resolv_conf.as_deref(),
            agent_fd: prepared.agent.as_raw_fd(),
            landlock_abi: prepared.landlock_abi,
            seccomp: &prepared.seccomp,
            cap_last: prepared.cap_last,
            rlimits,
            before_release: &mut before_release,
        });
        tracing::debug!(elapsed = ?started.elapsed(), "sandbox init running the agent");
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                if let Some(cgroup) = &cgroup {
                    let _ = cgroup.remove();
                }
                let _ = rundir.remove();
                return Err(error);
            }
        };
        let mut sandbox = NativeSandbox {
            id: spec.id.clone(),
            pid: spawned.pid,
            pidfd: Some(spawned.pidfd),
            socket: Some(spawned.socket),
            cgroup,
            network: None,
            rundir,
        };
        // Only now is the child certainly in its own network namespace (it makes it itself,
        // before executing the agent), so only now may the helper attach to it.
        if spec.policy.network == NetworkMode::Outbound {
            let helper = sandbox.network.insert(NetworkHelper::start(sandbox.pid)?);
            helper.wait_ready()?;
            tracing::debug!(elapsed = ?started.elapsed(), "network ready");
        }
        Ok(sandbox)
    }
}

#[async_trait::async_trait]
impl Backend for NativeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    fn probe(&self) -> BackendProbe {
        let features = HostFeatures::detect();
        let mut details = vec![
            ("kernel".to_string(), features.kernel.clone()),
            ("cgroups".to_string(), features.cgroups.clone()),
            (
                "landlock".to_string(),
                features
                    .landlock_abi
                    .map_or("absent".to_string(), |abi| format!("ABI {abi}")),
            ),
            ("seccomp".to_string(), features.seccomp.to_string()),
            ("agent".to_string(), self.agent_path.display().to_string()),
        ];
        if let Err(reason) = &features.cgroups_usable {
            details.push((
                "limits".into(),
                format!("not enforced by cgroups: {reason}"),
            ));
        }
        let problem = if let Err(reason) = &features.user_namespaces {
            Some(format!("user namespaces unavailable: {reason}"))
        } else if !features.mount_setattr {
            Some("the kernel lacks mount_setattr (Linux 5.12 or newer is needed)".to_string())
        } else {
            self.prepared().err().map(|e| e.to_string())
        };
        BackendProbe {
            backend: BackendKind::Native,
            usable: problem.is_none(),
            reason: problem
                .unwrap_or_else(|| "namespaces, seccomp and pivot_root work here".into()),
            details,
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, BackendError> {
        Ok(Box::new(self.create_sandbox(spec)?))
    }
}

/// A running native sandbox.
#[derive(Debug)]
pub struct NativeSandbox {
    id: String,
    pid: u32,
    pidfd: Option<OwnedFd>,
    socket: Option<std::os::unix::net::UnixStream>,
    cgroup: Option<SandboxCgroup>,
    network: Option<NetworkHelper>,
    rundir: RunDir,
}

impl NativeSandbox {
    /// Kills every process and releases every host resource; idempotent.
    fn release(&mut self) -> Result<SandboxUsage, NativeError> {
        let mut usage = SandboxUsage::default();
        let started = std::time::Instant::now();
        if let Some(pidfd) = self.pidfd.take() {
            // The whole pid namespace dies with its init.
            spawn::reap(self.pid, &pidfd);
            tracing::debug!(elapsed = ?started.elapsed(), "sandbox init reaped");
        }
        self.socket = None;
        if let Some(helper) = self.network.take() {
            helper.stop();
        }
        if let Some(cgroup) = self.cgroup.take() {
            usage.peak_memory_bytes = cgroup.peak_memory_bytes();
            usage.oom_killed = cgroup.oom_killed();
            // Every process died with the pid namespace's init; should anything still be
            // in the cgroup (it cannot be, short of a kernel surprise), kill it and retry.
            if cgroup.remove().is_err() {
                cgroup.kill_all()?;
                cgroup.remove()?;
            }
        }
        self.rundir.remove()?;
        tracing::debug!(elapsed = ?started.elapsed(), "sandbox released");
        Ok(usage)
    }
}

#[async_trait::async_trait]
impl Sandbox for NativeSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError> {
        let socket = self.socket.take().ok_or_else(|| {
            BackendError::Connect("the agent connection was already taken".into())
        })?;
        socket.set_nonblocking(true)?;
        Ok(Box::new(tokio::net::UnixStream::from_std(socket)?))
    }

    async fn destroy(&mut self) -> Result<SandboxUsage, BackendError> {
        Ok(self.release()?)
    }
}

impl Drop for NativeSandbox {
    fn drop(&mut self) {
        if self.pidfd.is_some()
            && let Err(e) = self.release()
        {
            tracing::warn!(id = %self.id, "releasing sandbox on drop: {e}");
        }
    }
}
