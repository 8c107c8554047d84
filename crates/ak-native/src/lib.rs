//! ak-native: the Linux namespace backend. Each sandbox is a `clone3` into fresh user,
//! mount, pid, uts, ipc, net and cgroup namespaces, with a `pivot_root` into a read-only
//! view of its image, seccomp, landlock, dropped capabilities and cgroup limits; the agent
//! is its PID 1, reached over a socket pair (ephemeral sandboxes, which end with their
//! caller) or a listening socket in the runtime directory (persistent ones, which run on
//! until released and are found again from their handle).

mod bpf;
pub mod cgroup;
mod child;
mod error;
mod landlock;
mod netns;
pub mod network;
mod overlay;
mod persistent;
mod plan;
pub mod probe;
mod rawsys;
pub mod rundir;
mod sandbox;
pub mod seccomp;
mod secrets;
mod spawn;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ak_core::backend::{Lifetime, SandboxHandle};
use ak_core::{
    Backend, BackendError, BackendKind, BackendProbe, ImageRef, NetworkMode, Sandbox, SandboxSpec,
};

use crate::cgroup::{CgroupLayout, SandboxCgroup};
pub use crate::error::NativeError;
use crate::network::NetworkHelper;
use crate::overlay::{LayeredRoot, WritableLayer};
use crate::persistent::{HandleData, ProcessRef};
use crate::plan::{HiddenPaths, RootSource, TopEntry, list_top_level};
use crate::probe::HostFeatures;
use crate::rundir::RunDir;
pub use crate::sandbox::NativeSandbox;
use crate::sandbox::Reach;
pub use crate::secrets::image_bundle;
pub use crate::spawn::ROOT_MAPPED_BASE;

/// The host uid and gid that are root inside this process's sandboxes: what a host
/// directory mounted writable must be owned by for the sandbox's root to write to it.
pub fn sandbox_root_host_ids() -> (u32, u32) {
    if rustix::process::geteuid().is_root() {
        (ROOT_MAPPED_BASE, ROOT_MAPPED_BASE)
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }
}

/// A sandbox's secrets that cannot be given as asked are a bad spec; anything else
/// (writing the files, making the CA) is a failure of the host.
fn secrets_error(error: ak_egress::EgressError) -> NativeError {
    match error {
        ak_egress::EgressError::Secrets(reason) => NativeError::InvalidSpec(reason),
        other => NativeError::Network(other.to_string()),
    }
}

/// The native backend. Cheap to create; host facts are probed once, on first use.
#[derive(Debug)]
pub struct NativeBackend {
    agent_path: PathBuf,
    /// How allowlist sandboxes get their network.
    egress: ak_egress::Egress,
    /// What creating a sandbox needs (probed at the first creation).
    state: OnceLock<Result<Prepared, String>>,
    /// What reaching and releasing one needs: the cgroup layout alone, so that `exec`,
    /// `inspect` and `stop` do not also probe for what a creation needs (~0.5 ms here).
    cgroups: OnceLock<CgroupLayout>,
    /// When a creation last swept for stale sandboxes: at most once a second, since each
    /// sweep opens and tries to lock every live sandbox's runtime directory, and a daemon
    /// keeping pools creates many sandboxes a second while many are alive.
    last_sweep: std::sync::Mutex<Option<std::time::Instant>>,
    /// Whether one-shot sandboxes get their network namespace made ahead (netns.rs).
    netns_ahead: bool,
    /// The namespace [`Backend::expect_ephemeral`] started making, and whether it is for
    /// the open network, until the creation it was made for takes it.
    expected_netns: std::sync::Mutex<Option<(bool, netns::Making)>>,
}

/// Host facts and prepared artefacts shared by every sandbox of this backend.
#[derive(Debug)]
struct Prepared {
    agent: OwnedFd,
    host_top_level: Vec<TopEntry>,
    hidden: HiddenPaths,
    cgroups_usable: Result<(), String>,
    landlock_abi: Option<u32>,
    seccomp: Vec<seccompiler::BpfProgram>,
    cap_last: u32,
    runtime_base: PathBuf,
    base_mount: rundir::BaseMount,
}

impl NativeBackend {
    /// `agent_path` is the static `ak-agent` executable to run as each sandbox's init.
    /// The egress helper is looked for beside it (`ak-egress`) unless
    /// [`NativeBackend::with_egress`] says otherwise.
    pub fn new(agent_path: PathBuf) -> Self {
        NativeBackend {
            egress: ak_egress::Egress::beside(&agent_path),
            agent_path,
            state: OnceLock::new(),
            cgroups: OnceLock::new(),
            last_sweep: std::sync::Mutex::new(None),
            netns_ahead: false,
            expected_netns: std::sync::Mutex::new(None),
        }
    }

    /// Makes each one-shot sandbox's network namespace ahead, on a thread of its own
    /// (netns.rs): a cold start's latency for a process that starts one sandbox at a time
    /// on otherwise idle CPUs. Not for a server building many at once: its CPUs are busy
    /// with the other builds, so the overlap has nothing to win there and the thread per
    /// sandbox is only overhead.
    pub fn with_netns_ahead(mut self, enabled: bool) -> Self {
        self.netns_ahead = enabled;
        self
    }

    /// Whether a sandbox for `spec` gets its network namespace made ahead, and if so
    /// whether for the open network (its helper is started there too).
    fn netns_ahead_for(&self, spec: &SandboxSpec, lifetime: Lifetime) -> Option<bool> {
        match (self.netns_ahead, lifetime, spec.policy.network) {
            (true, Lifetime::Ephemeral, NetworkMode::None) => Some(false),
            (true, Lifetime::Ephemeral, NetworkMode::Outbound) => Some(true),
            _ => None,
        }
    }

    /// The network namespace being made for a sandbox about to be created: the one
    /// [`Backend::expect_ephemeral`] started when it fits, else one started now.
    fn netns_for(&self, spec: &SandboxSpec, lifetime: Lifetime) -> Option<netns::Making> {
        let open_network = self.netns_ahead_for(spec, lifetime)?;
        let expected = self
            .expected_netns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match expected {
            Some((open, making)) if open == open_network => Some(making),
            // One that does not fit (another network) is waited for and let go.
            _ => netns::Making::start(open_network),
        }
    }

    /// How allowlist sandboxes get their network: the egress helper, the resolver it
    /// asks, the state directory whose audit log gets its verdicts.
    pub fn with_egress(mut self, egress: ak_egress::Egress) -> Self {
        self.egress = egress;
        self
    }

    /// Writes the egress helper's policy file for `spec` into the runtime directory.
    fn write_egress_policy(
        &self,
        rundir: &RunDir,
        spec: &SandboxSpec,
        secrets: Option<ak_egress::secrets::SecretPolicy>,
    ) -> Result<PathBuf, NativeError> {
        let path = rundir.path().join(EGRESS_POLICY_FILE);
        self.egress
            .write_policy(&path, &spec.policy.allowlist, secrets)
            .map_err(|e| NativeError::Network(e.to_string()))?;
        Ok(path)
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
        let cgroups_usable = self.cgroup_layout().usable();
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        Ok(Prepared {
            agent,
            host_top_level: list_top_level(Path::new("/"))?,
            hidden: HiddenPaths::detect(),
            cgroups_usable,
            landlock_abi: landlock::abi_version(),
            seccomp: seccomp::build_filters()?,
            cap_last,
            runtime_base: rundir::runtime_base(),
            base_mount: rundir::BaseMount::for_runtime_base(),
        })
    }

    /// Releases host resources of sandboxes whose owner died (killed CLI, crash).
    pub fn sweep_stale(&self) {
        let Ok(prepared) = self.prepared() else {
            return;
        };
        for (id, _lock) in rundir::stale_entries(&prepared.runtime_base) {
            tracing::info!(%id, "releasing resources of a sandbox whose owner is gone");
            let cgroup = SandboxCgroup::existing(self.cgroup_layout(), &id);
            let _ = cgroup.kill_all();
            // An init whose parent died stays in its cgroup as a zombie until the host's
            // init reaps it; keep the directory (the record of what to release) until the
            // cgroup is gone, and a later sweep finishes the job.
            if let Err(e) = cgroup.remove() {
                tracing::info!(%id, "stale cgroup not removable yet: {e}");
                continue;
            }
            let _ = std::fs::remove_dir_all(prepared.runtime_base.join(&id));
        }
    }

    /// [`NativeBackend::sweep_stale`], unless a sweep ran within the last second.
    fn sweep_stale_now_and_then(&self) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = std::time::Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < EVERY) {
                return;
            }
            *last = Some(now);
        }
        self.sweep_stale();
    }

    /// The cgroup layout, also when the backend cannot start sandboxes any more (its agent
    /// executable is gone, say) but must still release them.
    fn cgroup_layout(&self) -> &CgroupLayout {
        self.cgroups.get_or_init(CgroupLayout::detect)
    }

    fn create_sandbox(
        &self,
        spec: &SandboxSpec,
        lifetime: Lifetime,
    ) -> Result<NativeSandbox, NativeError> {
        let started = std::time::Instant::now();
        // First of all, so that it overlaps everything up to the clone.
        let making = self.netns_for(spec, lifetime);
        let prepared = self.prepared()?;
        let tree = match &spec.image {
            // The native backend's own choice is the host.
            ImageRef::Host | ImageRef::Auto => {
                Some((PathBuf::from("/"), prepared.host_top_level.clone()))
            }
            ImageRef::Directory(dir) => Some((dir.clone(), list_top_level(dir)?)),
            ImageRef::Stored(_) => None,
            ImageRef::Oci(name) => {
                return Err(NativeError::InvalidSpec(format!(
                    "the OCI image '{name}' must be pulled into the image store before the native backend can run it"
                )));
            }
        };
        self.sweep_stale_now_and_then();

        let rundir = RunDir::create(&prepared.runtime_base, &spec.id, prepared.base_mount)?;
        let new_root = rundir.path().join("root");
        let layered = match &spec.image {
            ImageRef::Stored(image) => {
                let writable = WritableLayer::for_sandbox(spec, rundir.path());
                writable.prepare()?;
                Some(LayeredRoot::open(&image.layers, writable)?)
            }
            _ => None,
        };
        let root = match (&tree, &layered) {
            (Some((image_root, top)), _) => RootSource::Tree { image_root, top },
            (None, Some(layered)) => RootSource::Layers(layered),
            (None, None) => {
                return Err(NativeError::InvalidSpec("no root for this image".into()));
            }
        };
        std::fs::create_dir(&new_root)
            .map_err(NativeError::io(format!("create {}", new_root.display())))?;

        let resolv_conf = if spec.policy.network.has_network() {
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
        // A new CA at every start: the key lives only in the helper's policy file.
        let prepared_secrets = ak_egress::provision::secret_policy(&self.egress, spec)
            .map_err(secrets_error)
            .and_then(|policy| {
                let roots = match &tree {
                    Some((image_root, _)) => secrets::image_bundle(Some(image_root), &[]),
                    None => match &spec.image {
                        ImageRef::Stored(image) => secrets::image_bundle(None, &image.layers),
                        _ => None,
                    },
                };
                let files = ak_egress::provision::write_files(
                    &rundir.path().join("agentkernel"),
                    spec,
                    policy.as_ref(),
                    roots.as_deref(),
                    sandbox_root_host_ids(),
                )
                .map_err(secrets_error)?;
                Ok((policy, files))
            });
        let (secret_policy, secret_files) = match prepared_secrets {
            Ok(prepared) => prepared,
            Err(error) => {
                let _ = rundir.remove();
                return Err(error);
            }
        };

        let mut rlimits = vec![(libc::RLIMIT_CORE, 0)];
        if let Err(reason) = &prepared.cgroups_usable {
            tracing::warn!(
                "cgroups unavailable ({reason}): memory limited by RLIMIT_AS only, pids and CPU not limited"
            );
            rlimits.push((libc::RLIMIT_AS, spec.resources.memory_bytes));
        }

        // Kept until the agent has its copies; all close-on-exec here.
        let persistent_ends = match lifetime {
            Lifetime::Ephemeral => None,
            Lifetime::Persistent => Some(PersistentEnds::open(&rundir)?),
        };

        // Created with its limits before the clone, so that the child starts in it. A
        // failed `create` leaves nothing behind; a cgroup that cannot be entered is removed.
        let (cgroup, entry) = match &prepared.cgroups_usable {
            Ok(()) => {
                let entered =
                    SandboxCgroup::create(self.cgroup_layout(), &spec.id, &spec.resources)
                        .map_err(NativeError::from)
                        .and_then(|cgroup| match cgroup.entry() {
                            Ok(entry) => Ok((Some(cgroup), Some(entry))),
                            Err(error) => {
                                let _ = cgroup.remove();
                                Err(error.into())
                            }
                        });
                match entered {
                    Ok(entered) => entered,
                    Err(error) => {
                        let _ = rundir.remove();
                        return Err(error);
                    }
                }
            }
            Err(_) => (None, None),
        };
        // An ephemeral sandbox's network helper starts as soon as the child has its network
        // namespace; a persistent sandbox's is detached from us and starts afterwards.
        let network = spec.policy.network.has_network();
        let egress_policy = match spec.policy.network {
            NetworkMode::Allowlist => {
                match self.write_egress_policy(&rundir, spec, secret_policy) {
                    Ok(path) => Some(path),
                    Err(error) => {
                        if let Some(cgroup) = &cgroup {
                            let _ = cgroup.remove();
                        }
                        let _ = rundir.remove();
                        return Err(error);
                    }
                }
            }
            _ => None,
        };
        let kind = match &egress_policy {
            Some(policy) => network::egress_helper(&self.egress, policy, &spec.id, false),
            None => network::HelperKind::Slirp,
        };
        let mut helper = None;
        let mut start_helper = |pid: u32| -> Result<(), NativeError> {
            helper = Some(NetworkHelper::start(
                network::HelperTarget::Process(pid),
                kind,
            )?);
            Ok(())
        };
        // The namespace made ahead, and the helper its thread started while everything
        // above ran.
        let made = making
            .map(netns::Making::finish)
            .transpose()
            .and_then(|made| match made.flatten() {
                Some((netns, helper)) => helper.transpose().map(|helper| (Some(netns), helper)),
                None => Ok((None, None)),
            });
        let (ahead, ahead_helper) = match made {
            Ok(made) => made,
            Err(error) => {
                if let Some(cgroup) = &cgroup {
                    let _ = cgroup.remove();
                }
                let _ = rundir.remove();
                return Err(error);
            }
        };
        let after_netns: Option<&mut dyn FnMut(u32) -> Result<(), NativeError>> =
            match (network, lifetime, &ahead) {
                (true, Lifetime::Ephemeral, None) => Some(&mut start_helper),
                _ => None,
            };
        let spawned = spawn::spawn(spawn::SpawnRequest {
            spec,
            root,
            hidden: &prepared.hidden,
            new_root: &new_root,
            resolv_conf: resolv_conf.as_deref(),
            secrets: secret_files.as_ref(),
            agent_fd: prepared.agent.as_raw_fd(),
            landlock_abi: prepared.landlock_abi,
            seccomp: &prepared.seccomp,
            cap_last: prepared.cap_last,
            rlimits,
            persistent: persistent_ends.as_ref().map(|ends| spawn::PersistentFds {
                listener: ends.listener.as_raw_fd(),
                log: ends.log.as_raw_fd(),
            }),
            hold_fd: rundir.lock_fd().ok_or_else(|| {
                NativeError::InvalidSpec("a new runtime directory is always locked".into())
            })?,
            cgroup: entry.as_ref(),
            after_netns,
            netns: ahead.as_ref(),
        });
        let helper = helper.or(ahead_helper);
        tracing::debug!(elapsed = ?started.elapsed(), "sandbox init running the agent");
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                if let Some(helper) = helper {
                    helper.stop();
                }
                if let Some(cgroup) = &cgroup {
                    let _ = cgroup.remove();
                }
                let _ = rundir.remove();
                return Err(error);
            }
        };
        drop(persistent_ends);
        drop(entry);
        match lifetime {
            Lifetime::Ephemeral => {
                let mut sandbox = NativeSandbox {
                    id: spec.id.clone(),
                    pid: spawned.pid,
                    pidfd: Some(spawned.pidfd),
                    cgroup,
                    rundir,
                    reach: Reach::Ephemeral {
                        socket: spawned.socket,
                        network: None,
                    },
                };
                // Started while the child built its root; the agent's commands need it ready.
                if let (Some(helper), Reach::Ephemeral { network, .. }) =
                    (helper, &mut sandbox.reach)
                {
                    network.insert(helper).wait_ready()?;
                    tracing::debug!(elapsed = ?started.elapsed(), "network ready");
                }
                Ok(sandbox)
            }
            Lifetime::Persistent => {
                let start_time = persistent::child_start_time(spawned.pid).unwrap_or_default();
                let mut sandbox = NativeSandbox {
                    id: spec.id.clone(),
                    pid: spawned.pid,
                    pidfd: Some(spawned.pidfd),
                    reach: Reach::Persistent {
                        start_time,
                        socket: rundir.path().join(persistent::SOCKET_FILE),
                        has_cgroup: cgroup.is_some(),
                        network: None,
                    },
                    cgroup,
                    rundir,
                };
                if network {
                    // Dropping does not end a persistent sandbox, so a failure here must.
                    if let Err(error) = self.start_persistent_network(&mut sandbox, kind) {
                        let _ = sandbox.release();
                        return Err(error);
                    }
                    tracing::debug!(elapsed = ?started.elapsed(), "network ready");
                }
                Ok(sandbox)
            }
        }
    }

    fn start_persistent_network(
        &self,
        sandbox: &mut NativeSandbox,
        kind: network::HelperKind<'_>,
    ) -> Result<(), NativeError> {
        let Some(pidfd) = &sandbox.pidfd else {
            return Ok(());
        };
        let log = sandbox.rundir.path().join(persistent::NETWORK_LOG_FILE);
        let pid = network::start_detached(sandbox.pid, kind, pidfd, &log)?;
        let helper = ProcessRef {
            pid,
            start_time: persistent::child_start_time(pid).unwrap_or_default(),
        };
        if let Reach::Persistent { network, .. } = &mut sandbox.reach {
            *network = Some(helper);
        }
        Ok(())
    }

    fn attach_sandbox(&self, handle: &SandboxHandle) -> Result<NativeSandbox, BackendError> {
        let data = HandleData::parse(handle)?;
        if data.lifetime != Lifetime::Persistent {
            return Err(BackendError::Unsupported {
                backend: "native".into(),
                reason: format!(
                    "sandbox {} is ephemeral: it cannot be attached to again",
                    handle.id
                ),
            });
        }
        let pidfd = match persistent::open_process(data.init()) {
            Some((pidfd, true)) => pidfd,
            _ => return Err(BackendError::Gone(handle.id.clone())),
        };
        Ok(self.sandbox_from_handle(handle, data, Some(pidfd)))
    }

    fn release_handle(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        let data = HandleData::parse(handle)?;
        let pidfd = persistent::open_process(data.init()).map(|(pidfd, _)| pidfd);
        self.sandbox_from_handle(handle, data, pidfd).release()?;
        Ok(())
    }

    /// The sandbox a handle describes; `pidfd` is its init, when that still runs.
    fn sandbox_from_handle(
        &self,
        handle: &SandboxHandle,
        data: HandleData,
        pidfd: Option<OwnedFd>,
    ) -> NativeSandbox {
        NativeSandbox {
            id: handle.id.clone(),
            pid: data.pid,
            pidfd,
            cgroup: data
                .cgroup
                .then(|| SandboxCgroup::existing(self.cgroup_layout(), &handle.id)),
            rundir: RunDir::adopt(data.rundir),
            reach: Reach::Persistent {
                start_time: data.start_time,
                socket: data.socket,
                has_cgroup: data.cgroup,
                network: data.network,
            },
        }
    }
}

/// The egress helper's policy file in a sandbox's runtime directory (never visible inside).
pub const EGRESS_POLICY_FILE: &str = "egress.json";

/// A persistent sandbox's inheritance, opened before the clone: the listening socket, the
/// runtime directory's lock and the agent's log.
#[derive(Debug)]
struct PersistentEnds {
    listener: OwnedFd,
    log: std::fs::File,
}

impl PersistentEnds {
    fn open(rundir: &RunDir) -> Result<PersistentEnds, NativeError> {
        Ok(PersistentEnds {
            listener: persistent::listen_at(&rundir.path().join(persistent::SOCKET_FILE))?,
            log: persistent::open_log(&rundir.path().join(persistent::AGENT_LOG_FILE))?,
        })
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

    /// Starts making the network namespace (netns.rs), which then overlaps the rest of the
    /// caller's preparation as well as this backend's.
    fn expect_ephemeral(&self, spec: &SandboxSpec) {
        let Some(open_network) = self.netns_ahead_for(spec, Lifetime::Ephemeral) else {
            return;
        };
        let making = netns::Making::start(open_network).map(|making| (open_network, making));
        let replaced = std::mem::replace(
            &mut *self
                .expected_netns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            making,
        );
        // Let go of an earlier one outside the lock: dropping waits for its thread.
        drop(replaced);
    }

    async fn create(
        &self,
        spec: &SandboxSpec,
        lifetime: Lifetime,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        Ok(Box::new(self.create_sandbox(spec, lifetime)?))
    }

    async fn attach(&self, handle: &SandboxHandle) -> Result<Box<dyn Sandbox>, BackendError> {
        Ok(Box::new(self.attach_sandbox(handle)?))
    }

    async fn release(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        self.release_handle(handle)
    }

    fn sandbox_root_owner(&self) -> Option<(u32, u32)> {
        Some(sandbox_root_host_ids())
    }

    fn capabilities(&self) -> ak_core::backend::Capabilities {
        // `--mount-cwd` binds the current directory; `attach` opens a shell on a terminal;
        // a named sandbox's root lives in the directory the service gives it, frozen
        // through its cgroup for a snapshot.
        ak_core::backend::Capabilities {
            mount_cwd: true,
            attach: true,
            // Secrets through the egress helper's interception, and secret files.
            proxy_secret_bindings: true,
            secret_files: true,
            snapshots: true,
            image_layers: true,
            ..ak_core::backend::Capabilities::default()
        }
    }

    async fn set_frozen(&self, handle: &SandboxHandle, frozen: bool) -> Result<(), BackendError> {
        let data = HandleData::parse(handle)?;
        if !data.cgroup {
            return Err(NativeError::Cgroup(crate::cgroup::CgroupError::NoFreezer).into());
        }
        if persistent::open_process(data.init()).is_none_or(|(_, running)| !running) {
            return Err(BackendError::Gone(handle.id.clone()));
        }
        SandboxCgroup::existing(self.cgroup_layout(), &handle.id)
            .set_frozen(frozen)
            .map_err(|e| NativeError::Cgroup(e).into())
    }

    async fn set_allowlist(
        &self,
        handle: &SandboxHandle,
        allowlist: &ak_core::egress::Allowlist,
    ) -> Result<(), BackendError> {
        let data = HandleData::parse(handle)?;
        if persistent::open_process(data.init()).is_none_or(|(_, running)| !running) {
            return Err(BackendError::Gone(handle.id.clone()));
        }
        let path = data.rundir.join(EGRESS_POLICY_FILE);
        // The helper watches this one file, which exists exactly when it was started.
        if !path.is_file() {
            return Err(NativeError::Network(format!(
                "sandbox {} has no egress helper to give an allowlist to",
                handle.id
            ))
            .into());
        }
        ak_egress::PolicyFile::replace_allowlist(&path, allowlist)
            .map_err(|e| NativeError::Network(e.to_string()).into())
    }
}
