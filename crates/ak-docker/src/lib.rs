//! ak-docker: the Docker and Podman backend. Each sandbox is a container whose entrypoint
//! is our static agent (bind-mounted read-only), reached through a Unix socket in a
//! bind-mounted host directory, so exec, files, PTYs and signals cost what they cost on
//! the native backend; the engine is driven through its API (bollard), never its CLI.

mod container;
mod egress;
mod engine;
mod error;
mod export;
mod images;
mod layers;
mod sandbox;
mod secrets;

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use ak_core::backend::{Lifetime, RootLayer, SandboxHandle};
use ak_core::{
    Backend, BackendError, BackendKind, BackendProbe, ImageRef, NetworkMode, Sandbox, SandboxSpec,
};
use bollard::Docker;
use bollard::query_parameters::{CreateContainerOptionsBuilder, ListContainersOptionsBuilder};
use tokio::net::UnixStream;
use tokio::sync::OnceCell;

use crate::container::{LABEL_CREATOR, LABEL_LIFETIME, LABEL_SANDBOX, Plan, SOCKET_NAME};
pub use crate::egress::EgressSetup;
pub use crate::engine::EngineInfo;
pub use crate::error::DockerError;
pub use crate::images::PullProgress;
use crate::sandbox::{DockerSandbox, HandleData, remove, remove_run_dir, watch_exit};
use ak_core::watch::SocketWatch;

/// How long a container's agent gets to start listening.
const AGENT_START_LIMIT: Duration = Duration::from_secs(30);

/// Directory mode of runtime directories: traversable (the socket's own mode guards it),
/// never listable.
const DIR_MODE: u32 = 0o711;

/// Receives image pull progress (the CLI draws it).
pub type ProgressSink = std::sync::Arc<dyn Fn(&PullProgress) + Send + Sync>;

/// The Docker or Podman backend (one value per engine kind).
pub struct DockerBackend {
    kind: BackendKind,
    agent_path: PathBuf,
    configured_socket: Option<String>,
    client: OnceCell<Docker>,
    swept: OnceCell<()>,
    progress: Option<ProgressSink>,
    egress: EgressSetup,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("kind", &self.kind)
            .field("agent_path", &self.agent_path)
            .field("configured_socket", &self.configured_socket)
            .finish_non_exhaustive()
    }
}

impl DockerBackend {
    /// `kind` is `Docker` or `Podman`; `socket` the configured engine socket, if any.
    pub fn new(kind: BackendKind, agent_path: PathBuf, socket: Option<String>) -> Self {
        DockerBackend {
            kind,
            configured_socket: socket,
            client: OnceCell::new(),
            swept: OnceCell::new(),
            progress: None,
            egress: EgressSetup(ak_egress::Egress::beside(&agent_path)),
            agent_path,
        }
    }

    /// How allowlist sandboxes' egress helper runs (the native backend's, see
    /// `NativeBackend::with_egress`).
    pub fn with_egress(mut self, egress: EgressSetup) -> Self {
        self.egress = egress;
        self
    }

    /// Reports image pulls to `sink`.
    pub fn with_pull_progress(mut self, sink: ProgressSink) -> Self {
        self.progress = Some(sink);
        self
    }

    async fn client(&self) -> Result<&Docker, DockerError> {
        self.client
            .get_or_try_init(|| async {
                let socket = engine::find_socket(self.kind, self.configured_socket.as_deref())?;
                engine::client(&socket)
            })
            .await
    }

    fn run_base(&self) -> PathBuf {
        ak_core::runtime::backend_runtime_base(self.kind)
    }

    /// Removes one-shot containers whose creating process is gone (it was killed before it
    /// could clean up): nobody can reach them any more.
    async fn sweep(&self, client: &Docker) -> Result<(), DockerError> {
        let filters = std::collections::HashMap::from([(
            "label",
            vec![format!("{LABEL_LIFETIME}=ephemeral")],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = client
            .list_containers(Some(options))
            .await
            .map_err(DockerError::engine("list containers"))?;
        for summary in containers {
            let labels = summary.labels.unwrap_or_default();
            let (Some(id), Some(container)) = (labels.get(LABEL_SANDBOX), summary.id) else {
                continue;
            };
            let creator_alive = labels
                .get(LABEL_CREATOR)
                .is_some_and(|creator| ak_core::process::alive(creator));
            if !creator_alive {
                tracing::info!(sandbox = %id, "removing a one-shot container whose creator is gone");
                remove(client, &container, &self.run_base().join(id)).await?;
            }
        }
        Ok(())
    }

    fn image_name<'a>(&self, spec: &'a SandboxSpec) -> Result<&'a str, DockerError> {
        match &spec.image {
            ImageRef::Oci(name) => Ok(name),
            other => Err(DockerError::Image(self.kind, other.to_string())),
        }
    }

    async fn create_container(
        &self,
        client: &Docker,
        spec: &SandboxSpec,
        lifetime: Lifetime,
    ) -> Result<DockerSandbox, DockerError> {
        let image = self.image_name(spec)?;
        images::ensure_present(client, image, self.progress.as_deref()).await?;
        // A sandbox restored from a snapshot starts from the layer saved on top of its
        // image, by id: a saved layer is never pulled, and the name's image may have moved.
        let image = match &spec.root_layer {
            Some(layer) => {
                layers::check_present(client, layer).await?;
                layer.as_str()
            }
            None => image,
        };
        let base = self.run_base();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&base)
            .map_err(DockerError::io(format!("create {}", base.display())))?;
        let run_dir = base.join(&spec.id);
        std::fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(&run_dir)
            .map_err(DockerError::io(format!("create {}", run_dir.display())))?;
        let watch = SocketWatch::new(&run_dir)
            .map_err(DockerError::io(format!("watch {}", run_dir.display())))?;
        let secrets = match secrets::prepare(client, &self.egress.0, &run_dir, spec).await {
            Ok(secrets) => secrets,
            Err(e) => {
                let _ = remove_run_dir(&run_dir);
                return Err(e);
            }
        };
        let secret_policy = secrets.as_ref().and_then(|s| s.policy.clone());
        let resolv_conf = match spec.policy.network {
            NetworkMode::Allowlist => match self.egress.prepare(&run_dir, spec, secret_policy) {
                Ok(resolv_conf) => Some(resolv_conf),
                Err(e) => {
                    let _ = remove_run_dir(&run_dir);
                    return Err(e);
                }
            },
            _ => None,
        };
        let creator = ak_core::process::identity(std::process::id()).unwrap_or_default();
        let plan = Plan {
            kind: self.kind,
            spec,
            image,
            lifetime,
            agent: &self.agent_path,
            run_dir: &run_dir,
            creator: &creator,
            ulimits: if self.kind == BackendKind::Podman {
                explicit_ulimits()
            } else {
                Vec::new()
            },
            resolv_conf: resolv_conf.as_deref(),
            secrets_dir: secrets.as_ref().map(|s| s.files.dir.as_path()),
        };
        let read_only_root = plan.read_only_root();
        let body = plan.body();
        let name = container::container_name(&spec.id);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = match client.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) => {
                let _ = remove_run_dir(&run_dir);
                return Err(DockerError::engine(format!(
                    "create container from {image}"
                ))(e));
            }
        };
        let container = created.id;
        if let Some(secrets) = &secrets
            && let Err(e) =
                secrets::install_bundle(client, &container, secrets, read_only_root).await
        {
            let _ = remove(client, &container, &run_dir).await;
            return Err(e);
        }
        let mut data = HandleData {
            container: container.clone(),
            run_dir: run_dir.clone(),
            egress_helper: None,
        };
        if let Err(e) = client
            .start_container(
                &container,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            let _ = remove(client, &container, &run_dir).await;
            return Err(DockerError::engine(format!("start container {name}"))(e));
        }
        let (running, mut watcher) = watch_exit(client, &container);
        let socket = run_dir.join(SOCKET_NAME);
        let ready = tokio::select! {
            ready = watch.wait_for(&socket, AGENT_START_LIMIT) => ready
                .map_err(|e| DockerError::Agent(e.to_string())),
            code = &mut watcher => Err(DockerError::Agent(format!(
                "exited (status {}) before it listened; `{} logs {name}` may say why",
                code.unwrap_or(-1),
                self.kind
            ))),
        };
        // The network before the first command: the agent is up, so the container's first
        // process (whose namespace the helper enters) is the one that stays.
        let ready = match ready {
            Ok(()) if resolv_conf.is_some() => self
                .start_egress(client, &container, &run_dir, &spec.id)
                .await
                .map(|helper| data.egress_helper = Some(helper)),
            ready => ready,
        };
        let transport = match (ready, lifetime) {
            (Err(e), _) => Err(e),
            (Ok(()), Lifetime::Persistent) => Ok(None),
            (Ok(()), Lifetime::Ephemeral) => UnixStream::connect(&socket)
                .await
                .map(Some)
                .map_err(DockerError::io(format!("connect to {}", socket.display()))),
        };
        match transport {
            Ok(transport) => Ok(DockerSandbox {
                kind: self.kind,
                id: spec.id.clone(),
                client: client.clone(),
                data,
                lifetime,
                transport,
                running,
                watcher: Some(watcher),
                destroyed: false,
            }),
            Err(e) => {
                watcher.abort();
                let _ = remove(client, &container, &run_dir).await;
                data.stop_helper();
                Err(e)
            }
        }
    }

    /// Starts the egress helper of allowlist container `container`; returns it as
    /// `pid:start-time`.
    async fn start_egress(
        &self,
        client: &Docker,
        container: &str,
        run_dir: &std::path::Path,
        sandbox: &str,
    ) -> Result<String, DockerError> {
        let pid = init_pid(client, container).await?;
        let (egress, dir, id) = (
            self.egress.clone(),
            run_dir.to_path_buf(),
            sandbox.to_string(),
        );
        // The helper's start forks and waits for its readiness: blocking work.
        let helper = tokio::task::spawn_blocking(move || egress.start(&dir, &id, pid))
            .await
            .map_err(|e| DockerError::Agent(format!("egress helper start: {e}")))??;
        // The process the helper's namespace came from lived throughout (`start` checks);
        // the engine still naming it the container's first process makes it the
        // container's, not another that took a freed pid number.
        let checked = match init_pid(client, container).await {
            Ok(now) if now == pid => return Ok(helper),
            Ok(_) => DockerError::Agent("changed its first process during set-up".into()),
            Err(error) => error,
        };
        egress::stop(&helper);
        Err(checked)
    }

    fn probe_blocking(&self) -> Result<(PathBuf, EngineInfo), DockerError> {
        let socket = engine::find_socket(self.kind, self.configured_socket.as_deref())?;
        let kind = self.kind;
        // Probing is synchronous and may run inside the caller's runtime: the engine is
        // asked from a thread with a runtime of its own.
        let asked = socket.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(DockerError::io("start a runtime for the probe"))?;
            runtime.block_on(async {
                let client = engine::connect(kind, &asked).await?;
                engine::engine_info(&client).await
            })
        })
        .join()
        .map_err(|_| DockerError::Agent("probe thread panicked".into()))?
        .map(|info| (socket, info))
    }
}

/// The host pid of running container `container`'s first process, as the engine reports it.
async fn init_pid(client: &Docker, container: &str) -> Result<u32, DockerError> {
    let inspected = client
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(DockerError::engine(format!(
            "inspect container {container}"
        )))?;
    inspected
        .state
        .filter(|state| state.running == Some(true))
        .and_then(|state| state.pid)
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| DockerError::Agent("is not running (the engine reports no pid)".into()))
}

/// Explicit open-file and process limits for Podman, whose defaults (1M files) exceed
/// what its service may grant when root lacks CAP_SYS_RESOURCE, and which sets them even
/// when not asked. This process's soft limits, capped at a value any default service
/// grants (Debian's Podman service runs with 32768 processes): enough for builds and test
/// runners, and the pids cgroup limit still bounds the sandbox.
fn explicit_ulimits() -> Vec<(&'static str, u64, u64)> {
    use rustix::process::{Resource, getrlimit};
    const CAP: u64 = 32_768;
    [("nofile", Resource::Nofile), ("nproc", Resource::Nproc)]
        .into_iter()
        .map(|(name, resource)| {
            let limit = getrlimit(resource);
            let value = limit.current.unwrap_or(CAP).min(CAP);
            (name, value, value)
        })
        .collect()
}

#[async_trait::async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn probe(&self) -> BackendProbe {
        let mut details = vec![("agent".to_string(), self.agent_path.display().to_string())];
        let problem = match self.probe_blocking() {
            Ok((socket, info)) => {
                details.push(("socket".into(), socket.display().to_string()));
                details.push(("engine".into(), format!("{} {}", info.engine, info.version)));
                details.push(("api".into(), info.api_version.clone()));
                details.push((
                    "container root".into(),
                    if info.user_namespaces {
                        "an unprivileged host uid (user namespaces)".into()
                    } else {
                        "host root with no capabilities (the engine does not remap uids)".into()
                    },
                ));
                let wrong_engine = match self.kind {
                    BackendKind::Podman => !info.engine.to_lowercase().contains("podman"),
                    _ => info.engine.to_lowercase().contains("podman"),
                };
                if wrong_engine {
                    Some(format!(
                        "the socket at {} is {}, not {}",
                        socket.display(),
                        info.engine,
                        self.kind
                    ))
                } else if !self.agent_path.is_file() {
                    Some(format!(
                        "the agent {} is missing",
                        self.agent_path.display()
                    ))
                } else {
                    None
                }
            }
            Err(e) => Some(e.to_string()),
        };
        BackendProbe {
            backend: self.kind,
            usable: problem.is_none(),
            reason: problem.unwrap_or_else(|| "containers through the Engine API".into()),
            details,
        }
    }

    async fn create(
        &self,
        spec: &SandboxSpec,
        lifetime: Lifetime,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        let created = async {
            let client = self.client().await?;
            self.swept.get_or_try_init(|| self.sweep(client)).await?;
            self.create_container(client, spec, lifetime).await
        };
        match created.await {
            Ok(sandbox) => Ok(Box::new(sandbox)),
            Err(error) => Err(error.into_backend(Some(self.kind))),
        }
    }

    fn capabilities(&self) -> ak_core::backend::Capabilities {
        // The workdir mount (`--mount-cwd`, `--dir`) is a bind mount; `attach` is the
        // agent's PTY, as on the native backend; snapshots save the container's layer
        // through the engine (`layers.rs`).
        ak_core::backend::Capabilities {
            mount_cwd: true,
            attach: true,
            snapshots: true,
            // The egress helper substitutes them, as for native sandboxes (`secrets.rs`).
            proxy_secret_bindings: true,
            secret_files: true,
            ..ak_core::backend::Capabilities::default()
        }
    }

    fn root_layer(&self) -> RootLayer {
        RootLayer::Backend
    }

    async fn set_frozen(&self, handle: &SandboxHandle, frozen: bool) -> Result<(), BackendError> {
        let data = decode(handle)?;
        let client = self.client().await?;
        Ok(layers::set_paused(client, &data.container, frozen).await?)
    }

    async fn save_root_layer(&self, handle: &SandboxHandle) -> Result<String, BackendError> {
        let data = decode(handle)?;
        let client = self.client().await?;
        Ok(layers::save(client, &data.container).await?)
    }

    async fn remove_root_layer(&self, layer: &str) -> Result<(), BackendError> {
        let client = self.client().await?;
        Ok(layers::remove(client, layer).await?)
    }

    async fn attach(&self, handle: &SandboxHandle) -> Result<Box<dyn Sandbox>, BackendError> {
        let data = decode(handle)?;
        // No engine round trip on this path (every `exec` takes it): the agent answering
        // on its socket is what "running" means for a sandbox.
        let first = UnixStream::connect(data.run_dir.join(SOCKET_NAME))
            .await
            .map_err(|_| BackendError::Gone(handle.id.clone()))?;
        let client = self.client().await?;
        Ok(Box::new(DockerSandbox {
            kind: self.kind,
            id: handle.id.clone(),
            client: client.clone(),
            data,
            lifetime: Lifetime::Persistent,
            transport: Some(first),
            running: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            watcher: None,
            destroyed: false,
        }))
    }

    async fn release(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        let data = decode(handle)?;
        let client = self.client().await?;
        let removed = remove(client, &data.container, &data.run_dir).await;
        data.stop_helper();
        Ok(removed?)
    }

    async fn set_allowlist(
        &self,
        handle: &SandboxHandle,
        allowlist: &ak_core::egress::Allowlist,
    ) -> Result<(), BackendError> {
        let data: HandleData = serde_json::from_str(&handle.data)
            .map_err(|e| BackendError::Setup(format!("bad handle of {}: {e}", handle.id)))?;
        if data.egress_helper.is_none() {
            return Err(BackendError::Setup(format!(
                "sandbox {} has no egress helper to give an allowlist to",
                handle.id
            )));
        }
        // Its release removes the policy file with the container.
        if !egress::has_policy(&data.run_dir) {
            return Err(BackendError::Gone(handle.id.clone()));
        }
        Ok(egress::set_allowlist(&data.run_dir, allowlist)?)
    }
}

fn decode(handle: &SandboxHandle) -> Result<HandleData, BackendError> {
    serde_json::from_str(&handle.data)
        .map_err(|e| BackendError::Setup(format!("bad handle of {}: {e}", handle.id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn paths_are_not_images() {
        let backend = DockerBackend::new(BackendKind::Docker, "/x".into(), None);
        let spec = SandboxSpec {
            image: ImageRef::Host,
            ..ak_core::config::resolve(
                Default::default(),
                Path::new("/"),
                "0123456789abcdef".into(),
            )
            .unwrap()
        };
        let error = backend.image_name(&spec).unwrap_err().to_string();
        assert!(error.contains("--image"), "{error}");
    }
}
