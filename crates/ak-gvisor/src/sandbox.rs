//! One sandbox run by runsc: reached through its agent's socket in a host directory that
//! gVisor's gofer binds it in (`--host-uds=create`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ak_core::backend::{Lifetime, SandboxHandle, SandboxUsage, Transport};
use ak_core::{BackendError, BackendKind, Sandbox};
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::bundle::SOCKET_NAME;
use crate::error::GvisorError;
use crate::network::OutboundNetwork;

/// How long a one-shot sandbox gets to end by itself once its connection is closed.
const ONE_SHOT_END_LIMIT: Duration = Duration::from_secs(2);

/// What a handle stores to find the sandbox again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleData {
    /// The sandbox's directory: bundle, socket directory, runsc's output.
    pub dir: PathBuf,
    /// runsc's state directory (`--root`).
    pub state_root: PathBuf,
    pub runsc: PathBuf,
    /// The persistent sandbox's network helper (`pid:start-time`), if any.
    #[serde(default)]
    pub network_helper: Option<String>,
}

/// The directory the agent's socket is made in, inside a sandbox's directory.
pub fn socket_dir(dir: &Path) -> PathBuf {
    dir.join("sock")
}

/// The container id of sandbox `id`.
pub fn container_id(id: &str) -> String {
    format!("agentkernel-{id}")
}

/// Ends the sandbox `id` (if it runs) and removes runsc's state of it, its network helper
/// and its directory; what is already gone is fine.
pub async fn remove(id: &str, data: &HandleData) -> Result<(), GvisorError> {
    let container = container_id(id);
    // Killed first: `delete --force` alone asks the sandbox to stop and may time out
    // waiting for a sandbox that is busy ending by itself.
    let _ = runsc(data, &["kill", "--all", &container, "KILL"]).await;
    let deleted = match runsc(data, &["delete", "--force", &container]).await {
        Err(GvisorError::Runsc { message, .. }) if is_not_found(&message) => Ok(()),
        other => other,
    };
    remove_cgroups(id);
    if let Some(helper) = &data.network_helper {
        ak_core::process::kill_recorded(helper, Duration::from_secs(2));
    }
    let dir_removed = remove_dir(&data.dir);
    deleted.and(dir_removed)
}

/// Runs `runsc --root=… ARGS…` to its end.
async fn runsc(data: &HandleData, args: &[&str]) -> Result<(), GvisorError> {
    let output = tokio::process::Command::new(&data.runsc)
        .arg(format!("--root={}", data.state_root.display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(GvisorError::io(format!("run {}", data.runsc.display())))?;
    if output.status.success() {
        return Ok(());
    }
    Err(GvisorError::Runsc {
        command: args.first().copied().unwrap_or_default().to_string(),
        message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// The cgroup path runsc makes for sandbox `id` in every hierarchy (set in its bundle).
pub fn cgroup_path(id: &str) -> PathBuf {
    Path::new("/")
        .join(ak_core::runtime::GVISOR_CGROUP_PARENT)
        .join(id)
}

/// Removes sandbox `id`'s cgroups that runsc left: a runsc killed while it deleted its
/// container leaves them. Empty cgroups only (the kernel refuses others).
fn remove_cgroups(id: &str) {
    let relative = cgroup_path(id);
    let relative = relative.strip_prefix("/").unwrap_or(&relative);
    let root = Path::new("/sys/fs/cgroup");
    let Ok(hierarchies) = std::fs::read_dir(root) else {
        return;
    };
    let mut places: Vec<PathBuf> = hierarchies
        .flatten()
        .map(|hierarchy| hierarchy.path().join(relative))
        .collect();
    places.push(root.join(relative));
    for place in places {
        match std::fs::remove_dir(&place) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", place.display()),
        }
    }
}

/// runsc's words for a container it does not know.
fn is_not_found(message: &str) -> bool {
    message.contains("does not exist") || message.contains("not found")
}

pub fn remove_dir(dir: &Path) -> Result<(), GvisorError> {
    // A stored image's root is unmounted first: removing the directory must never reach
    // through the overlay (a failed unmount leaves the directory in place).
    crate::image::unmount(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GvisorError::io(format!("remove {}", dir.display()))(e)),
    }
}

#[derive(Debug)]
pub struct GvisorSandbox {
    pub(crate) id: String,
    pub(crate) data: HandleData,
    pub(crate) lifetime: Lifetime,
    /// Ephemeral: the one connection, until handed out.
    pub(crate) transport: Option<UnixStream>,
    /// Cleared when the foreground `runsc run` of a one-shot sandbox exits; a persistent
    /// sandbox counts as running while its agent answers.
    pub(crate) running: Arc<AtomicBool>,
    /// Ephemeral: waits for the foreground `runsc run`, so it is reaped.
    pub(crate) watcher: Option<JoinHandle<()>>,
    /// Ephemeral: the foreground `runsc run`'s pid, while the watcher has not reaped it.
    pub(crate) runsc_pid: Option<i32>,
    /// Ephemeral: the outbound network's helper, ended with the sandbox.
    pub(crate) network: Option<OutboundNetwork>,
    pub(crate) destroyed: bool,
}

impl GvisorSandbox {
    fn socket(&self) -> PathBuf {
        socket_dir(&self.data.dir).join(SOCKET_NAME)
    }
}

#[async_trait::async_trait]
impl Sandbox for GvisorSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn handle(&self) -> SandboxHandle {
        SandboxHandle {
            backend: BackendKind::Gvisor,
            id: self.id.clone(),
            data: serde_json::to_string(&self.data).unwrap_or_default(),
        }
    }

    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError> {
        match self.lifetime {
            Lifetime::Ephemeral => ak_core::backend::take_one_shot_transport(&mut self.transport),
            Lifetime::Persistent => {
                if let Some(stream) = self.transport.take() {
                    return Ok(Box::new(stream));
                }
                match UnixStream::connect(self.socket()).await {
                    Ok(stream) => Ok(Box::new(stream)),
                    Err(_) => {
                        self.running.store(false, Ordering::SeqCst);
                        Err(BackendError::Gone(self.id.clone()))
                    }
                }
            }
        }
    }

    async fn destroy(&mut self) -> Result<SandboxUsage, BackendError> {
        // Closing the connection first lets a one-shot agent end by itself, and its
        // foreground runsc then deletes the container: only a sandbox that does not end
        // in time is killed.
        drop(self.transport.take());
        let ended = match self.watcher.take() {
            Some(mut watcher) => {
                match tokio::time::timeout(ONE_SHOT_END_LIMIT, &mut watcher).await {
                    Ok(_) => true,
                    Err(_) => {
                        self.watcher = Some(watcher);
                        false
                    }
                }
            }
            None => false,
        };
        if ended {
            remove_dir(&self.data.dir)?;
        } else {
            // Killing the foreground runsc ends its sandbox and gofer with it (they are
            // started attached: they die with their parent); `delete` then removes its
            // state and cgroups. Asking runsc to stop a sandbox that is busy ending by
            // itself can time out instead.
            if let Some(pid) = self.runsc_pid.and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            if let Some(watcher) = self.watcher.take() {
                let _ = tokio::time::timeout(ONE_SHOT_END_LIMIT, watcher).await;
            }
            remove(&self.id, &self.data).await?;
        }
        if let Some(network) = self.network.take() {
            network.stop();
        }
        self.running.store(false, Ordering::SeqCst);
        self.destroyed = true;
        Ok(SandboxUsage::default())
    }

    fn take_transport_fd(&mut self) -> Result<OwnedFd, BackendError> {
        ak_core::backend::hand_out_transport(self.transport.take())
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    fn detach(mut self: Box<Self>) {
        if self.lifetime == Lifetime::Persistent {
            // Forgotten, still running: its handle finds it again.
            self.destroyed = true;
        }
    }
}

impl Drop for GvisorSandbox {
    fn drop(&mut self) {
        if self.destroyed || self.lifetime == Lifetime::Persistent {
            return;
        }
        // Ephemeral, dropped without `destroy` (a command that failed in a one-shot CLI,
        // which exits right after): nothing may outlive us. Killing the foreground runsc
        // ends its sandbox and gofer with it (they are started attached); `delete` then
        // removes its state and cgroups, waited for here since no task runs after us.
        drop(self.transport.take());
        if let Some(pid) = self.runsc_pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let deleted = std::process::Command::new(&self.data.runsc)
            .arg(format!("--root={}", self.data.state_root.display()))
            .args(["delete", "--force", &container_id(&self.id)])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Err(e) = deleted {
            tracing::warn!("cannot run runsc delete: {e}");
        }
        remove_cgroups(&self.id);
        drop(self.network.take());
        if let Err(e) = remove_dir(&self.data.dir) {
            tracing::warn!("{e}");
        }
    }
}
