//! One sandbox in a container: reached through its agent's socket in the host directory.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ak_core::backend::{Lifetime, SandboxHandle, SandboxUsage, Transport};
use ak_core::{BackendError, BackendKind, Sandbox};
use bollard::Docker;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::container::SOCKET_NAME;
use crate::error::{DockerError, is_not_found};

/// What a handle stores to find the container again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleData {
    pub container: String,
    pub run_dir: PathBuf,
    /// An allowlist sandbox's egress helper, `pid:start-time` (absent in the handles of
    /// sandboxes made before allowlists reached containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_helper: Option<String>,
}

impl HandleData {
    /// Ends the egress helper, if there is one: the container's end ends it too, but a
    /// release returns only once every host process of the sandbox is gone.
    pub fn stop_helper(&self) {
        if let Some(helper) = &self.egress_helper {
            crate::egress::stop(helper);
        }
    }
}

/// Watches the container and clears `running` when it stops (an event from the engine,
/// not a poll).
pub fn watch_exit(client: &Docker, container: &str) -> (Arc<AtomicBool>, JoinHandle<i64>) {
    let running = Arc::new(AtomicBool::new(true));
    let task = {
        let (client, container, running) = (client.clone(), container.to_string(), running.clone());
        tokio::spawn(async move {
            let options = bollard::query_parameters::WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut waits = client.wait_container(&container, Some(options));
            let code = match waits.next().await {
                Some(Ok(response)) => response.status_code,
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                // Gone already (auto-removed), or the engine went away: not running.
                Some(Err(_)) | None => -1,
            };
            running.store(false, Ordering::SeqCst);
            code
        })
    };
    (running, task)
}

/// Removes the container (killing it first) and its runtime directory; what is already
/// gone is fine. The directory goes even when the engine refuses, so nothing of ours is
/// left on the host whatever the engine does.
pub async fn remove(client: &Docker, container: &str, run_dir: &Path) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    // Podman answers 500 "could not be stopped … container state improper: stopped" when
    // the container's process ended while it was killing it (about one removal in twenty
    // of a container whose command had just finished); the container is stopped by then,
    // so trying again removes it.
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    let removed = loop {
        match client
            .remove_container(container, Some(options.clone()))
            .await
        {
            Ok(()) => break Ok(()),
            Err(e) if is_not_found(&e) => break Ok(()),
            // Already being removed (auto-remove racing us): it is going away by itself.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => break Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 500,
                message,
            }) if attempt < ATTEMPTS && message.contains("state improper") => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => {
                break Err(DockerError::engine(format!("remove container {container}"))(e));
            }
        }
    };
    let dir_removed = remove_run_dir(run_dir);
    removed.and(dir_removed)
}

/// Removes the runtime directory and, beside it, the egress directory of an allowlist
/// sandbox.
pub fn remove_run_dir(run_dir: &Path) -> Result<(), DockerError> {
    for dir in [
        run_dir.to_path_buf(),
        crate::egress::dir_of(run_dir),
        crate::secrets::dir_of(run_dir),
    ] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DockerError::io(format!("remove {}", dir.display()))(e)),
        }
    }
    Ok(())
}

#[derive(Debug)]
pub struct DockerSandbox {
    pub(crate) kind: BackendKind,
    pub(crate) id: String,
    pub(crate) client: Docker,
    pub(crate) data: HandleData,
    pub(crate) lifetime: Lifetime,
    /// Ephemeral: the one connection, until handed out.
    pub(crate) transport: Option<UnixStream>,
    /// Cleared when the engine reports the container stopped (sandboxes this process
    /// created); a sandbox found again from its handle counts as running while its agent
    /// answers.
    pub(crate) running: Arc<AtomicBool>,
    pub(crate) watcher: Option<JoinHandle<i64>>,
    pub(crate) destroyed: bool,
}

impl DockerSandbox {
    fn socket(&self) -> PathBuf {
        self.data.run_dir.join(SOCKET_NAME)
    }
}

#[async_trait::async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn handle(&self) -> SandboxHandle {
        SandboxHandle {
            backend: self.kind,
            id: self.id.clone(),
            data: serde_json::to_string(&self.data).unwrap_or_default(),
        }
    }

    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError> {
        match self.lifetime {
            Lifetime::Ephemeral => ak_core::backend::take_one_shot_transport(&mut self.transport),
            Lifetime::Persistent => {
                if !self.running.load(Ordering::SeqCst) {
                    return Err(BackendError::Gone(self.id.clone()));
                }
                // The connection made when it was found again, first.
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
        // Closing the connection first lets a one-shot agent end by itself.
        drop(self.transport.take());
        let removed = remove(&self.client, &self.data.container, &self.data.run_dir).await;
        self.data.stop_helper();
        removed?;
        if let Some(watcher) = &self.watcher {
            watcher.abort();
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

impl Drop for DockerSandbox {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
        if self.destroyed || self.lifetime == Lifetime::Persistent {
            return;
        }
        // Ephemeral: the connection closes with this value, the agent ends, and the engine
        // removes the auto-remove container; the host directory is ours to remove (and
        // the egress helper ends with the container's first process).
        drop(self.transport.take());
        if let Err(e) = remove_run_dir(&self.data.run_dir) {
            tracing::warn!("{e}");
        }
    }
}
