//! A running native sandbox: how it is reached (the one socket pair of an ephemeral
//! sandbox, or a new connection to a persistent sandbox's listener each time), and how it
//! ends, releasing its cgroup and runtime directory.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use ak_core::backend::{Lifetime, SandboxHandle, SandboxUsage};
use ak_core::{BackendError, Sandbox, Transport};

use crate::cgroup::SandboxCgroup;
use crate::error::NativeError;
use crate::network::NetworkHelper;
use crate::persistent::{self, HandleData, ProcessRef};
use crate::rundir::RunDir;
use crate::spawn;

/// A running native sandbox.
#[derive(Debug)]
pub struct NativeSandbox {
    pub(crate) id: String,
    pub(crate) pid: u32,
    /// `None` once released.
    pub(crate) pidfd: Option<OwnedFd>,
    pub(crate) cgroup: Option<SandboxCgroup>,
    pub(crate) rundir: RunDir,
    pub(crate) reach: Reach,
}

/// How the agent is reached, which also decides how the sandbox ends.
#[derive(Debug)]
pub(crate) enum Reach {
    /// The host's end of the socket pair, until `connect` takes it. The sandbox is our
    /// child and ends when this value is dropped.
    Ephemeral {
        socket: Option<std::os::unix::net::UnixStream>,
        network: Option<NetworkHelper>,
    },
    /// The agent listens at `socket`; the sandbox outlives this value and maybe us.
    Persistent {
        start_time: u64,
        socket: PathBuf,
        /// Whether it has a cgroup (kept apart from `cgroup`, which the release takes).
        has_cgroup: bool,
        network: Option<ProcessRef>,
    },
}

impl NativeSandbox {
    /// Kills every process and releases every host resource; idempotent.
    pub(crate) fn release(&mut self) -> Result<SandboxUsage, NativeError> {
        let mut usage = SandboxUsage::default();
        let started = std::time::Instant::now();
        if let Some(pidfd) = self.pidfd.take() {
            // The whole pid namespace dies with its init.
            match &self.reach {
                Reach::Ephemeral { .. } => spawn::reap(self.pid, &pidfd),
                // Not necessarily our child: attached after a restart.
                Reach::Persistent { .. } => persistent::kill_and_wait(&pidfd),
            }
            tracing::debug!(elapsed = ?started.elapsed(), "sandbox init reaped");
        }
        match &mut self.reach {
            Reach::Ephemeral { socket, network } => {
                *socket = None;
                if let Some(helper) = network.take() {
                    helper.stop();
                }
            }
            Reach::Persistent { network, .. } => {
                if let Some(helper) = network.take() {
                    persistent::kill_recorded(helper);
                }
            }
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

    /// What a handle records about this sandbox.
    fn handle_data(&self) -> HandleData {
        let (lifetime, start_time, cgroup, network) = match &self.reach {
            Reach::Ephemeral { .. } => (
                Lifetime::Ephemeral,
                // Only read when asked for: ephemeral runs never need it.
                persistent::start_time(self.pid).unwrap_or_default(),
                self.cgroup.is_some(),
                None,
            ),
            Reach::Persistent {
                start_time,
                has_cgroup,
                network,
                ..
            } => (Lifetime::Persistent, *start_time, *has_cgroup, *network),
        };
        HandleData {
            lifetime,
            pid: self.pid,
            start_time,
            rundir: self.rundir.path().to_path_buf(),
            socket: self.rundir.path().join(persistent::SOCKET_FILE),
            cgroup,
            network,
        }
    }
}

#[async_trait::async_trait]
impl Sandbox for NativeSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn handle(&self) -> SandboxHandle {
        self.handle_data().to_handle(&self.id)
    }

    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError> {
        match &mut self.reach {
            Reach::Ephemeral { socket, .. } => {
                let socket = socket.take().ok_or_else(|| {
                    BackendError::Connect("the agent connection was already taken".into())
                })?;
                socket.set_nonblocking(true)?;
                Ok(Box::new(tokio::net::UnixStream::from_std(socket)?))
            }
            Reach::Persistent {
                socket, start_time, ..
            } => match tokio::net::UnixStream::connect(&*socket).await {
                Ok(stream) => Ok(Box::new(stream)),
                Err(_) if persistent::start_time(self.pid) != Some(*start_time) => {
                    Err(BackendError::Gone(self.id.clone()))
                }
                Err(e) => Err(BackendError::Connect(format!(
                    "cannot connect to {}: {e}",
                    socket.display()
                ))),
            },
        }
    }

    fn take_transport_fd(&mut self) -> Result<OwnedFd, BackendError> {
        match &mut self.reach {
            Reach::Ephemeral { socket, .. } => socket
                .take()
                .map(OwnedFd::from)
                .ok_or_else(|| BackendError::Connect("the agent connection was already taken".into())),
            Reach::Persistent { .. } => Err(BackendError::Unsupported {
                backend: "native".into(),
                reason: "a persistent sandbox is reached through its socket, not a handed-out connection".into(),
            }),
        }
    }

    fn is_running(&self) -> bool {
        // A pidfd polls readable once its process has exited.
        self.pidfd.as_ref().is_some_and(|pidfd| {
            let mut fds = [rustix::event::PollFd::new(
                pidfd,
                rustix::event::PollFlags::IN,
            )];
            matches!(
                rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())),
                Ok(0)
            )
        })
    }

    async fn destroy(&mut self) -> Result<SandboxUsage, BackendError> {
        Ok(self.release()?)
    }

    fn detach(self: Box<Self>) {
        if let Reach::Ephemeral { .. } = self.reach {
            tracing::debug!(id = %self.id, "an ephemeral sandbox cannot be detached; it ends");
        }
        // Dropping ends an ephemeral sandbox and leaves a persistent one running.
    }
}

impl Drop for NativeSandbox {
    fn drop(&mut self) {
        if matches!(self.reach, Reach::Ephemeral { .. })
            && self.pidfd.is_some()
            && let Err(e) = self.release()
        {
            tracing::warn!(id = %self.id, "releasing sandbox on drop: {e}");
        }
    }
}
