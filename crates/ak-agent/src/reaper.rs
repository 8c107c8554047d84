//! Child reaping: turns SIGCHLD into one exit status per started command.
//!
//! tokio::process is not used because it reaps children by itself, which would race with
//! the PID 1 duty of reaping every orphan with `waitpid(-1)`. Commands are started with
//! std's `Command` and never `wait()`ed on; this module waits instead.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ak_protocol::ExitStatus;
use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions, WaitStatus};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Which children the agent waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapPolicy {
    /// Every child, orphans included (`waitpid(-1)`): the duty of PID 1 and of a child
    /// subreaper, which inherit orphans that nobody else will ever wait for.
    All,
    /// Only the commands this agent started (`waitpid(pid)`): for an agent embedded in
    /// another program, such as a test, whose other children are not the agent's to reap.
    Tracked,
}

/// Reported when a command's status was lost: its child was reaped by someone else.
const UNKNOWN_STATUS: ExitStatus = ExitStatus::Code(-1);

/// The started commands that have not been reaped yet, each with whom to tell.
#[derive(Debug)]
pub(crate) struct Children {
    policy: ReapPolicy,
    waiting: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

/// Resolves to a command's exit status once it has been reaped.
#[derive(Debug)]
pub(crate) struct ExitWaiter(oneshot::Receiver<ExitStatus>);

impl ExitWaiter {
    pub(crate) async fn wait(&mut self) -> ExitStatus {
        (&mut self.0).await.unwrap_or_else(|_| {
            tracing::warn!("a command's exit status was lost (reaped elsewhere)");
            UNKNOWN_STATUS
        })
    }
}

impl Children {
    /// Starts listening for SIGCHLD and the task that reaps. Must run inside a tokio
    /// runtime; the listener exists before any command is started, so no exit is missed.
    pub(crate) fn start(policy: ReapPolicy) -> std::io::Result<Arc<Children>> {
        let mut sigchld = signal(SignalKind::child())?;
        let children = Arc::new(Children {
            policy,
            waiting: Mutex::new(HashMap::new()),
        });
        let weak: Weak<Children> = Arc::downgrade(&children);
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                let Some(children) = weak.upgrade() else {
                    break;
                };
                children.reap();
            }
        });
        Ok(children)
    }

    /// Starts a child with `start` (which returns its pid) and registers it for reaping.
    ///
    /// The table stays locked from the start to registration, and reaping also takes the
    /// lock, so a command that exits at once cannot be reaped before it is known. It also
    /// keeps `waitpid(-1)` away from the window in which std reaps a child whose exec failed.
    pub(crate) fn register<T>(
        &self,
        start: impl FnOnce() -> std::io::Result<(i32, T)>,
    ) -> std::io::Result<(T, ExitWaiter)> {
        let mut waiting = self.lock();
        let (pid, started) = start()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid, tx);
        Ok((started, ExitWaiter(rx)))
    }

    /// Spawns `command` and registers it for reaping (see [`Children::register`]).
    pub(crate) fn spawn(&self, command: &mut Command) -> std::io::Result<(Child, ExitWaiter)> {
        self.register(|| {
            let child = command.spawn()?;
            Ok((i32::try_from(child.id()).unwrap_or(i32::MAX), child))
        })
    }

    /// Collects every child that has ended, without blocking.
    fn reap(&self) {
        let mut waiting = self.lock();
        match self.policy {
            ReapPolicy::All => loop {
                match rustix::process::wait(WaitOptions::NOHANG) {
                    Ok(Some((pid, status))) => {
                        deliver(&mut waiting, pid.as_raw_nonzero().get(), status)
                    }
                    Ok(None) | Err(Errno::CHILD) => break,
                    Err(Errno::INTR) => {}
                    Err(errno) => {
                        tracing::warn!("waitpid(-1) failed: {errno}");
                        break;
                    }
                }
            },
            ReapPolicy::Tracked => {
                let pids: Vec<i32> = waiting.keys().copied().collect();
                for raw in pids {
                    let Some(pid) = Pid::from_raw(raw) else {
                        continue;
                    };
                    match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
                        Ok(Some((_, status))) => deliver(&mut waiting, raw, status),
                        Ok(None) => {}
                        // Dropping the sender reports the status as lost.
                        Err(Errno::CHILD) => {
                            waiting.remove(&raw);
                        }
                        Err(errno) => tracing::warn!(pid = raw, "waitpid failed: {errno}"),
                    }
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitStatus>>> {
        // The map stays consistent even if a holder panicked (single inserts/removes).
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn deliver(waiting: &mut HashMap<i32, oneshot::Sender<ExitStatus>>, pid: i32, status: WaitStatus) {
    let status = if let Some(code) = status.exit_status() {
        ExitStatus::Code(code)
    } else if let Some(signal) = status.terminating_signal() {
        ExitStatus::Signal(signal)
    } else {
        // Stopped or continued: not an end (only reported with flags this agent never uses).
        return;
    };
    match waiting.remove(&pid) {
        // The command's task may be gone already (its connection dropped): nothing to tell.
        Some(tx) => {
            let _ = tx.send(status);
        }
        None => tracing::debug!(pid, ?status, "reaped an orphan"),
    }
}
