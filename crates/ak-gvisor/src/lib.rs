//! ak-gvisor: the gVisor backend. Each sandbox is an OCI bundle run by `runsc`, with our
//! static agent as the container's process, reached over the same Unix-socket transport as
//! the native and docker backends: the agent binds its socket in a bind-mounted host
//! directory, which gVisor's gofer makes a real host socket (`--host-uds=create`; the
//! sandbox may create sockets there but never connect to host sockets). Limits are the
//! cgroups runsc sets from the bundle; the outbound network is runsc's own network stack
//! over the native backend's user-mode NAT.

mod bundle;
mod error;
mod image;
mod network;
mod runsc;
mod sandbox;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ak_core::backend::{Capabilities, Lifetime, SandboxHandle};
use ak_core::config::GvisorOptions;
use ak_core::watch::SocketWatch;
use ak_core::{
    Backend, BackendError, BackendKind, BackendProbe, NetworkMode, Sandbox, SandboxSpec,
};
use tokio::net::UnixStream;
use tokio::sync::OnceCell;

use crate::bundle::{Bundle, SOCKET_NAME};
pub use crate::error::GvisorError;
use crate::network::{Netns, OutboundNetwork};
pub use crate::runsc::{MIN_RELEASE, Runsc, RunscInfo};
use crate::sandbox::{GvisorSandbox, HandleData, container_id, remove, socket_dir};

/// How long the agent gets to start listening (gVisor boots its kernel first).
const AGENT_START_LIMIT: Duration = Duration::from_secs(30);

/// Directory mode of the runtime base: traversable, never listable.
const BASE_MODE: u32 = 0o711;

/// A one-shot sandbox's file naming the process that made it (`pid:start-time`): once
/// that process is gone, nobody can reach the sandbox and the sweep removes it.
const CREATOR_FILE: &str = "creator";

/// The gVisor backend.
#[derive(Debug)]
pub struct GvisorBackend {
    agent_path: PathBuf,
    options: GvisorOptions,
    /// How allowlist sandboxes get their network (the native backend's egress helper in
    /// front of the sandbox's network namespace).
    egress: ak_egress::Egress,
    runsc: OnceCell<Arc<Runsc>>,
    swept: OnceCell<()>,
}

impl GvisorBackend {
    pub fn new(agent_path: PathBuf, options: GvisorOptions) -> Self {
        GvisorBackend {
            egress: ak_egress::Egress::beside(&agent_path),
            agent_path,
            options,
            runsc: OnceCell::new(),
            swept: OnceCell::new(),
        }
    }

    /// How allowlist sandboxes get their network.
    pub fn with_egress(mut self, egress: ak_egress::Egress) -> Self {
        self.egress = egress;
        self
    }

    fn base(&self) -> PathBuf {
        ak_core::runtime::backend_runtime_base(BackendKind::Gvisor)
    }

    fn state_root(&self) -> PathBuf {
        self.base().join("runsc")
    }

    fn make_base(&self) -> Result<PathBuf, GvisorError> {
        let base = self.base();
        for dir in [base.clone(), self.state_root()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(BASE_MODE)
                .create(&dir)
                .map_err(GvisorError::io(format!("create {}", dir.display())))?;
        }
        Ok(base)
    }

    /// runsc, checked: root only (see [`require_root`]). Makes nothing (the probe calls
    /// it): what runsc supports is cached once the runtime directory exists.
    fn discover(&self) -> Result<Runsc, GvisorError> {
        require_root()?;
        Runsc::discover(&self.options, &self.base())
    }

    async fn runsc(&self) -> Result<Arc<Runsc>, GvisorError> {
        self.runsc
            .get_or_try_init(|| async {
                require_root()?;
                // Made first, so what runsc supports is cached for later processes.
                self.make_base()?;
                Runsc::discover(&self.options, &self.base()).map(Arc::new)
            })
            .await
            .cloned()
    }

    /// Removes one-shot sandboxes whose creating process is gone (killed before it could
    /// clean up): nobody can reach them any more.
    async fn sweep(&self, runsc: &Runsc) -> Result<(), GvisorError> {
        let Ok(entries) = std::fs::read_dir(self.base()) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(creator) = std::fs::read_to_string(dir.join(CREATOR_FILE)) else {
                continue;
            };
            // The file is renamed into place whole, so a creator that cannot be read as one
            // is not a sandbox of ours being set up: skipped rather than removed.
            let creator = creator.trim();
            let well_formed = creator.split_once(':').is_some_and(|(pid, start)| {
                pid.parse::<u32>().is_ok() && start.parse::<u64>().is_ok()
            });
            if !well_formed || ak_core::process::alive(creator) {
                continue;
            }
            let id = entry.file_name().to_string_lossy().into_owned();
            tracing::info!(sandbox = %id, "removing a one-shot gVisor sandbox whose creator is gone");
            let data = HandleData {
                dir,
                state_root: self.state_root(),
                runsc: runsc.path.clone(),
                network_helper: None,
            };
            remove(&id, &data).await?;
        }
        Ok(())
    }

    async fn create_sandbox(
        &self,
        runsc: &Runsc,
        spec: &SandboxSpec,
        lifetime: Lifetime,
    ) -> Result<GvisorSandbox, GvisorError> {
        let base = self.make_base()?;
        let dir = base.join(&spec.id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(GvisorError::io(format!("create {}", dir.display())))?;
        // A stored image's sandbox runs as its mapped root (see `image`), whose gofer must
        // reach the root below this directory: its group may search it, no one else.
        if let Some((base, _)) = image::id_mapping(spec) {
            rustix::fs::chown(&dir, None, Some(rustix::fs::Gid::from_raw(base)))
                .map_err(|e| GvisorError::io(format!("chown {}", dir.display()))(e.into()))?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o710))
                .map_err(GvisorError::io(format!("chmod {}", dir.display())))?;
        }
        let mut data = HandleData {
            dir: dir.clone(),
            state_root: self.state_root(),
            runsc: runsc.path.clone(),
            network_helper: None,
        };
        match self.start(runsc, spec, lifetime, &mut data).await {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                if let Err(cleanup) = remove(&spec.id, &data).await {
                    tracing::warn!("{cleanup}");
                }
                Err(e)
            }
        }
    }

    /// A sandbox with secrets: the secret part of its egress policy, and the files of
    /// `/run/agentkernel` in `agentkernel/` of its bundle directory, owned by its root,
    /// with the image's system roots in their bundle. `on_leak = "kill"` is refused: the
    /// egress helper starts before runsc has made the sandbox, so it holds no process
    /// of the sandbox to stop.
    fn secrets(
        &self,
        spec: &SandboxSpec,
        dir: &Path,
    ) -> Result<
        (
            Option<ak_egress::secrets::SecretPolicy>,
            Option<ak_egress::provision::SecretFiles>,
        ),
        GvisorError,
    > {
        if !ak_egress::provision::has_secrets(spec) {
            return Ok((None, None));
        }
        if !spec.secrets.is_empty() && self.egress.on_leak == ak_core::secrets::OnLeak::Kill {
            return Err(GvisorError::Unsupported(
                "on_leak = \"kill\" is not available on gVisor: its egress helper starts \
                 before the sandbox exists and holds none of its processes to stop; use \
                 on_leak = \"block\" or another backend"
                    .into(),
            ));
        }
        let failed = |e: ak_egress::EgressError| match e {
            ak_egress::EgressError::Secrets(reason) => GvisorError::Unsupported(reason),
            other => GvisorError::Network(other.to_string()),
        };
        let policy = ak_egress::provision::secret_policy(&self.egress, spec).map_err(failed)?;
        let roots_file = match &spec.image {
            ak_core::ImageRef::Host | ak_core::ImageRef::Auto => {
                ak_native::image_bundle(Some(Path::new("/")), &[])
            }
            ak_core::ImageRef::Directory(root) => ak_native::image_bundle(Some(root), &[]),
            ak_core::ImageRef::Stored(image) => ak_native::image_bundle(None, &image.layers),
            ak_core::ImageRef::Oci(_) => None,
        };
        let owner = image::id_mapping(spec)
            .map_or_else(ak_egress::provision::this_process_ids, |(base, _)| {
                (base, base)
            });
        let files = ak_egress::provision::write_files(
            &dir.join("agentkernel"),
            spec,
            policy.as_ref(),
            roots_file.as_deref(),
            owner,
        )
        .map_err(failed)?;
        Ok((policy, files))
    }

    async fn start(
        &self,
        runsc: &Runsc,
        spec: &SandboxSpec,
        lifetime: Lifetime,
        data: &mut HandleData,
    ) -> Result<GvisorSandbox, GvisorError> {
        let dir = data.dir.clone();
        if lifetime == Lifetime::Ephemeral {
            let creator = ak_core::process::identity(std::process::id()).unwrap_or_default();
            // Whole or not at all: another process's sweep may read it at any moment.
            let staged = dir.join(format!(".{CREATOR_FILE}"));
            write_file(&staged, &creator)?;
            std::fs::rename(&staged, dir.join(CREATOR_FILE))
                .map_err(GvisorError::io("put the creator file in place"))?;
        }
        let sockets = socket_dir(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&sockets)
            .map_err(GvisorError::io(format!("create {}", sockets.display())))?;
        // In a sandbox of a stored image, root is the image's mapped root: the agent makes
        // its socket here as that user.
        if let Some((base, _)) = image::id_mapping(spec) {
            rustix::fs::chown(
                &sockets,
                Some(rustix::fs::Uid::from_raw(base)),
                Some(rustix::fs::Gid::from_raw(base)),
            )
            .map_err(|e| GvisorError::io(format!("chown {}", sockets.display()))(e.into()))?;
        }

        // The network: a namespace with the helper's interface, made first (runsc reads
        // the interfaces when it creates the sandbox). The open network's helper is
        // slirp4netns; an allowlist's is the egress helper, as on the native backend, on
        // a TAP device (gVisor's network stack speaks Ethernet).
        let outbound = spec.policy.network.has_network();
        let (secret_policy, secret_files) = self.secrets(spec, &dir)?;
        let netns = outbound.then(Netns::new).transpose()?;
        let mut network = None;
        let resolv_conf = dir.join("resolv.conf");
        if let Some(netns) = &netns {
            let policy = dir.join(ak_native::EGRESS_POLICY_FILE);
            let kind = if spec.policy.network == NetworkMode::Allowlist {
                self.egress
                    .write_policy(&policy, &spec.policy.allowlist, secret_policy)
                    .map_err(|e| GvisorError::Network(e.to_string()))?;
                ak_native::network::egress_helper(&self.egress, &policy, &spec.id, true)
            } else {
                ak_native::network::HelperKind::Slirp
            };
            match lifetime {
                Lifetime::Ephemeral => network = Some(OutboundNetwork::start(netns, kind)?),
                Lifetime::Persistent => {
                    data.network_helper = Some(network::start_detached(
                        netns,
                        kind,
                        &dir.join("network.log"),
                    )?);
                }
            }
            write_file(&resolv_conf, network::resolv_conf())?;
        }
        let netns_path = netns.as_ref().map(Netns::path);
        let seccomp = dir.join("seccomp.bpf");
        write_file(&seccomp, agent_filters()?)?;
        Bundle {
            spec,
            bundle_dir: &dir,
            lifetime,
            agent: &self.agent_path,
            socket_dir: &sockets,
            seccomp: &seccomp,
            netns: netns_path.as_deref(),
            resolv_conf: outbound.then_some(resolv_conf.as_path()),
            secrets: secret_files.as_ref(),
        }
        .write()?;

        let watch = SocketWatch::new(&sockets)
            .map_err(GvisorError::io(format!("watch {}", sockets.display())))?;
        let log = std::fs::File::create(dir.join("runsc.log"))
            .map_err(GvisorError::io("create runsc's log"))?;
        let mut command = runsc.command(&data.state_root);
        command
            .arg(format!("--platform={}", runsc.platform))
            // The agent binds its socket in the bind-mounted directory; the sandbox may
            // not connect to host sockets.
            .arg("--host-uds=create")
            .arg(if outbound {
                "--network=sandbox"
            } else {
                "--network=none"
            })
            .arg(bundle::root_overlay(spec))
            .arg("run")
            .arg(format!("--bundle={}", dir.display()));
        if lifetime == Lifetime::Persistent {
            command.arg("--detach");
        }
        command
            .arg(container_id(&spec.id))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if outbound {
            hide_host_sysctl_probe(&mut command);
        }
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .map_err(GvisorError::io(format!("run {}", runsc.path.display())))?;
        let socket = sockets.join(SOCKET_NAME);
        let running = Arc::new(AtomicBool::new(true));
        let log_path = dir.join("runsc.log");
        let failed = |status: std::io::Result<std::process::ExitStatus>| {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            GvisorError::Agent(format!(
                "did not start: runsc exited ({}) before it listened: {}",
                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                last_lines(&said)
            ))
        };
        let mut runsc_pid = None;
        let watcher = match lifetime {
            Lifetime::Persistent => {
                // `run --detach` returns once the sandbox started.
                let status = child
                    .wait()
                    .await
                    .map_err(GvisorError::io("wait for runsc"))?;
                if !status.success() {
                    return Err(failed(Ok(status)));
                }
                watch
                    .wait_for(&socket, AGENT_START_LIMIT)
                    .await
                    .map_err(|e| GvisorError::Agent(format!("did not listen: {e}")))?;
                None
            }
            Lifetime::Ephemeral => {
                tokio::select! {
                    ready = watch.wait_for(&socket, AGENT_START_LIMIT) => ready
                        .map_err(|e| GvisorError::Agent(format!("did not listen: {e}")))?,
                    status = child.wait() => return Err(failed(status)),
                }
                runsc_pid = child.id().and_then(|pid| i32::try_from(pid).ok());
                let running = running.clone();
                Some(tokio::spawn(async move {
                    let _ = child.wait().await;
                    running.store(false, std::sync::atomic::Ordering::SeqCst);
                }))
            }
        };
        // runsc has joined the namespace: it lives on with the sandbox.
        drop(netns);
        let transport = match lifetime {
            Lifetime::Persistent => None,
            Lifetime::Ephemeral => Some(
                UnixStream::connect(&socket)
                    .await
                    .map_err(GvisorError::io(format!("connect to {}", socket.display())))?,
            ),
        };
        Ok(GvisorSandbox {
            id: spec.id.clone(),
            data: data.clone(),
            lifetime,
            transport,
            running,
            watcher,
            runsc_pid,
            network,
            destroyed: false,
        })
    }
}

/// The seccomp filters every sandbox's agent installs, built once per process: the native
/// deny-list, and (gVisor's gofer is host root) no setuid or setgid bit that could reach a
/// shared directory.
fn agent_filters() -> Result<&'static [u8], GvisorError> {
    static FILTERS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if let Some(filters) = FILTERS.get() {
        return Ok(filters);
    }
    let built = ak_native::seccomp::filters_for_agent(true)
        .map_err(|e| GvisorError::Bundle(e.to_string()))?;
    Ok(FILTERS.get_or_init(|| built))
}

/// The backend runs runsc as root, which sets the sandbox's cgroup limits and network; a
/// rootless runsc was not made to do either here, and a sandbox without its limits is not
/// one we hand out.
fn require_root() -> Result<(), GvisorError> {
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    Err(GvisorError::Unavailable(
        "the gvisor backend needs root: it runs runsc as root, which sets the sandbox's \
         cgroup limits and its network; use the native backend, or run as root"
            .into(),
    ))
}

/// Works around runsc's test for "this is the host's network namespace" (through
/// 20240729 at least): it takes the existence of `/proc/sys/net/core/rmem_default` as the
/// sign, but since Linux 6.x every network namespace has that file, so runsc refuses
/// `--network=sandbox` in the sandbox's own namespace. runsc runs in a mount namespace of
/// its own where an empty read-only tmpfs covers `/proc/sys/net` (a mount on `core` below it would
/// not cover other namespaces' view of it); nothing else of
/// runsc reads it, and the sandbox builds its own `/proc` anyway.
fn hide_host_sysctl_probe(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: unshare and mount are async-signal-safe system calls; nothing allocates.
    unsafe {
        command.pre_exec(|| {
            use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_change};
            rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
            mount_change(
                c"/",
                MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
            )?;
            mount(
                c"tmpfs",
                c"/proc/sys/net",
                c"tmpfs",
                MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                c"size=4k,mode=0555",
            )?;
            Ok(())
        });
    }
}

fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), GvisorError> {
    std::fs::write(path, contents).map_err(GvisorError::io(format!("write {}", path.display())))
}

/// The end of what runsc printed: its last lines say why it failed.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "it printed nothing".into()
    } else {
        tail.join("; ")
    }
}

#[async_trait::async_trait]
impl Backend for GvisorBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Gvisor
    }

    fn probe(&self) -> BackendProbe {
        let mut details = vec![("agent".to_string(), self.agent_path.display().to_string())];
        let problem = match self.discover() {
            Ok(runsc) => {
                details.push(("runsc".into(), runsc.path.display().to_string()));
                details.push(("version".into(), runsc.info.version.clone()));
                details.push((
                    "platform".into(),
                    format!("{} ({})", runsc.platform, runsc.platform_reason),
                ));
                if self.agent_path.is_file() {
                    None
                } else {
                    Some(format!(
                        "the agent {} is missing",
                        self.agent_path.display()
                    ))
                }
            }
            Err(e) => Some(e.to_string()),
        };
        BackendProbe {
            backend: BackendKind::Gvisor,
            usable: problem.is_none(),
            reason: problem.unwrap_or_else(|| "gVisor's application kernel (runsc)".into()),
            details,
        }
    }

    async fn create(
        &self,
        spec: &SandboxSpec,
        lifetime: Lifetime,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        let runsc = self.runsc().await?;
        self.swept.get_or_try_init(|| self.sweep(&runsc)).await?;
        Ok(Box::new(self.create_sandbox(&runsc, spec, lifetime).await?))
    }

    fn capabilities(&self) -> Capabilities {
        // The workdir mount is a bind mount through the gofer; `attach` is the agent's PTY.
        Capabilities {
            mount_cwd: true,
            attach: true,
            image_layers: true,
            // The egress helper substitutes them, as for native sandboxes.
            proxy_secret_bindings: true,
            secret_files: true,
            ..Capabilities::default()
        }
    }

    fn root_owner_of(&self, spec: &SandboxSpec) -> Option<(u32, u32)> {
        image::id_mapping(spec).map(|(base, _)| (base, base))
    }

    async fn attach(&self, handle: &SandboxHandle) -> Result<Box<dyn Sandbox>, BackendError> {
        let data: HandleData = serde_json::from_str(&handle.data)
            .map_err(|e| BackendError::Setup(format!("bad handle of {}: {e}", handle.id)))?;
        // The agent answering on its socket is what "running" means for a sandbox.
        let first = UnixStream::connect(socket_dir(&data.dir).join(SOCKET_NAME))
            .await
            .map_err(|_| BackendError::Gone(handle.id.clone()))?;
        Ok(Box::new(GvisorSandbox {
            id: handle.id.clone(),
            data,
            lifetime: Lifetime::Persistent,
            transport: Some(first),
            running: Arc::new(AtomicBool::new(true)),
            watcher: None,
            runsc_pid: None,
            network: None,
            destroyed: false,
        }))
    }

    async fn set_allowlist(
        &self,
        handle: &SandboxHandle,
        allowlist: &ak_core::egress::Allowlist,
    ) -> Result<(), BackendError> {
        let data: HandleData = serde_json::from_str(&handle.data)
            .map_err(|e| BackendError::Setup(format!("bad handle of {}: {e}", handle.id)))?;
        // The agent answering on its socket is what "running" means for a sandbox.
        UnixStream::connect(socket_dir(&data.dir).join(SOCKET_NAME))
            .await
            .map_err(|_| BackendError::Gone(handle.id.clone()))?;
        // The helper watches this one file, which exists exactly when it was started.
        let policy = data.dir.join(ak_native::EGRESS_POLICY_FILE);
        if !policy.is_file() {
            return Err(GvisorError::Network(format!(
                "sandbox {} has no egress helper to give an allowlist to",
                handle.id
            ))
            .into());
        }
        ak_egress::PolicyFile::replace_allowlist(&policy, allowlist)
            .map_err(|e| GvisorError::Network(e.to_string()).into())
    }

    async fn release(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        let data: HandleData = serde_json::from_str(&handle.data)
            .map_err(|e| BackendError::Setup(format!("bad handle of {}: {e}", handle.id)))?;
        Ok(remove(&handle.id, &data).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runsc_failures_are_summarised() {
        assert_eq!(last_lines(""), "it printed nothing");
        assert_eq!(last_lines("a\n\nb\nc\nd\n"), "b; c; d");
    }
}
