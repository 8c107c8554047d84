//! A test backend: each "sandbox" is an in-process agent rooted at a temporary directory,
//! reached over a Unix socket pair. Nothing is isolated; it exists so that the router can
//! be tested end to end (service, agent, protocol) without root or a real backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ak_agent::{Agent, AgentConfig, ReapPolicy};
use ak_core::backend::{Lifetime, SandboxHandle, SandboxUsage};
use ak_core::{Backend, BackendError, BackendKind, BackendProbe, Sandbox, SandboxSpec, Transport};

/// The running agents by sandbox id, each with the directory that is its root.
type Running = Arc<Mutex<HashMap<String, (Agent, Arc<tempfile::TempDir>)>>>;

/// Sandboxes that die the next time a connection to them is made.
type Dying = Arc<Mutex<std::collections::HashSet<String>>>;

#[derive(Debug, Default)]
pub struct LocalBackend {
    running: Running,
    dying: Dying,
    /// Each creation blocks its thread this long, as a real backend's system calls do.
    blocking_create: Option<std::time::Duration>,
    /// The threads creations ran on.
    create_threads: Mutex<Vec<std::thread::ThreadId>>,
    /// Creations that finished.
    created: std::sync::atomic::AtomicUsize,
}

impl LocalBackend {
    /// A backend whose creations each block their thread for `blocking_create`.
    pub fn blocking(blocking_create: Option<std::time::Duration>) -> Self {
        LocalBackend {
            blocking_create,
            ..LocalBackend::default()
        }
    }

    /// The threads creations ran on, so far.
    pub fn create_threads(&self) -> Vec<std::thread::ThreadId> {
        self.create_threads.lock().unwrap().clone()
    }

    /// Sandbox `id` dies while the next connection to it is made: the connection breaks
    /// and the sandbox is gone, as when its processes are killed at that moment.
    pub fn dies_on_next_connect(&self, id: &str) {
        self.dying.lock().unwrap().insert(id.to_string());
    }

    /// Creations that finished, released since or not.
    pub fn created(&self) -> usize {
        self.created.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sandboxes created and not yet released.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    fn probe(&self) -> BackendProbe {
        BackendProbe {
            backend: BackendKind::Native,
            usable: true,
            reason: "in-process test agent".into(),
            details: Vec::new(),
        }
    }

    async fn create(
        &self,
        spec: &SandboxSpec,
        _lifetime: Lifetime,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        self.create_threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        if let Some(blocking) = self.blocking_create {
            std::thread::sleep(blocking);
        }
        let root = Arc::new(tempfile::tempdir()?);
        let workdir = spec.workdir.clone();
        std::fs::create_dir_all(
            root.path()
                .join(workdir.strip_prefix("/").unwrap_or(&workdir)),
        )?;
        let agent = Agent::start(AgentConfig {
            root: root.path().to_path_buf(),
            workdir,
            reap: ReapPolicy::Tracked,
        })?;
        self.running
            .lock()
            .unwrap()
            .insert(spec.id.clone(), (agent.clone(), root.clone()));
        self.created
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(LocalSandbox {
            id: spec.id.clone(),
            agent,
            running: self.running.clone(),
            dying: self.dying.clone(),
        }))
    }

    async fn attach(&self, handle: &SandboxHandle) -> Result<Box<dyn Sandbox>, BackendError> {
        let found = self.running.lock().unwrap().get(&handle.id).cloned();
        let Some((agent, _root)) = found else {
            return Err(BackendError::Gone(handle.id.clone()));
        };
        Ok(Box::new(LocalSandbox {
            id: handle.id.clone(),
            agent,
            running: self.running.clone(),
            dying: self.dying.clone(),
        }))
    }

    async fn release(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        if let Some((agent, _root)) = self.running.lock().unwrap().remove(&handle.id) {
            agent.shutdown();
        }
        Ok(())
    }
}

#[derive(Debug)]
struct LocalSandbox {
    id: String,
    agent: Agent,
    running: Running,
    dying: Dying,
}

#[async_trait::async_trait]
impl Sandbox for LocalSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn handle(&self) -> SandboxHandle {
        SandboxHandle {
            backend: BackendKind::Native,
            id: self.id.clone(),
            data: "{}".into(),
        }
    }

    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError> {
        let (host, guest) = tokio::net::UnixStream::pair()?;
        if self.dying.lock().unwrap().remove(&self.id) {
            if let Some((agent, _root)) = self.running.lock().unwrap().remove(&self.id) {
                agent.shutdown();
            }
            drop(guest);
            return Ok(Box::new(host));
        }
        let agent = self.agent.clone();
        tokio::spawn(async move { agent.serve_connection(guest).await });
        Ok(Box::new(host))
    }

    async fn destroy(&mut self) -> Result<SandboxUsage, BackendError> {
        if let Some((agent, _root)) = self.running.lock().unwrap().remove(&self.id) {
            agent.shutdown();
        }
        Ok(SandboxUsage::default())
    }

    fn take_transport_fd(&mut self) -> Result<std::os::fd::OwnedFd, BackendError> {
        Err(BackendError::Unsupported {
            backend: "local test".into(),
            reason: "no pools in router tests".into(),
        })
    }

    fn is_running(&self) -> bool {
        self.running.lock().unwrap().contains_key(&self.id)
    }

    fn detach(self: Box<Self>) {}
}
