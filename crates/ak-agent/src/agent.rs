//! The agent's shared state and its public handle: serve connections, shut down.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::paths::Root;
use crate::reaper::{Children, ReapPolicy};

/// How an [`Agent`] is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The directory file requests are confined to: `/` in a sandbox, where `/` is the
    /// sandbox's own root; a scratch directory in tests.
    pub root: PathBuf,
    /// The default working directory, as a path inside `root`. Relative request paths and
    /// execs without a `cwd` start here.
    pub workdir: PathBuf,
    /// Which children to wait for; see [`ReapPolicy`].
    pub reap: ReapPolicy,
}

impl AgentConfig {
    /// Root `/`, reaping only the agent's own commands: the right setup for an agent
    /// embedded in another process.
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            root: PathBuf::from("/"),
            workdir: workdir.into(),
            reap: ReapPolicy::Tracked,
        }
    }
}

/// A running agent. Cheap to clone; every clone serves the same commands and files.
#[derive(Debug, Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

/// What every connection of an agent shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) root: Root,
    pub(crate) children: Arc<Children>,
    pub(crate) groups: Groups,
    shutdown: watch::Sender<bool>,
}

impl Agent {
    /// Opens the root and starts reaping children. Must be called inside a tokio runtime.
    pub fn start(config: AgentConfig) -> std::io::Result<Agent> {
        let root = Root::open(&config.root, &config.workdir)?;
        let children = Children::start(config.reap)?;
        Ok(Agent {
            shared: Arc::new(Shared {
                root,
                children,
                groups: Groups::default(),
                shutdown: watch::channel(false).0,
            }),
        })
    }

    /// Serves one host connection: handshake, then requests until the host disconnects,
    /// sends garbage, or the agent shuts down. Commands started on this connection are
    /// killed when it ends. Never panics on bad input.
    pub async fn serve_connection<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        crate::server::serve(self.shared.clone(), stream).await;
    }

    /// Kills every command (SIGKILL to each process group) and tells every connection and
    /// [`Agent::shutdown_requested`] that the agent is going away.
    pub fn shutdown(&self) {
        self.shared.request_shutdown();
    }

    /// Resolves once a shutdown was requested (by a host's `Shutdown` or [`Agent::shutdown`]).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shared.shutdown.subscribe();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|requested| *requested).await;
    }

    /// Sends `signal` to every running command's process group.
    pub(crate) fn signal_all(&self, signal: Signal) {
        self.shared.groups.signal_all(signal);
    }

    /// Resolves once no command is running.
    pub(crate) async fn wait_idle(&self) {
        self.shared.groups.wait_empty().await;
    }
}

impl Shared {
    pub(crate) fn request_shutdown(&self) {
        self.groups.signal_all(Signal::KILL);
        self.shutdown.send_replace(true);
    }

    pub(crate) fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// The process groups of all running commands, across connections.
#[derive(Debug)]
pub(crate) struct Groups(watch::Sender<HashSet<i32>>);

impl Default for Groups {
    fn default() -> Self {
        Groups(watch::channel(HashSet::new()).0)
    }
}

impl Groups {
    pub(crate) fn insert(&self, pgid: Pid) {
        self.0.send_modify(|groups| {
            groups.insert(pgid.as_raw_nonzero().get());
        });
    }

    pub(crate) fn remove(&self, pgid: Pid) {
        self.0.send_modify(|groups| {
            groups.remove(&pgid.as_raw_nonzero().get());
        });
    }

    fn signal_all(&self, signal: Signal) {
        for raw in self.0.borrow().iter() {
            if let Some(pgid) = Pid::from_raw(*raw) {
                kill_group(pgid, signal);
            }
        }
    }

    async fn wait_empty(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(HashSet::is_empty).await;
    }
}

/// `kill(-pgid, signal)`; a group that is gone already is not an error.
pub(crate) fn kill_group(pgid: Pid, signal: Signal) {
    match rustix::process::kill_process_group(pgid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(errno) => tracing::warn!(pgid = pgid.as_raw_nonzero().get(), "kill failed: {errno}"),
    }
}
