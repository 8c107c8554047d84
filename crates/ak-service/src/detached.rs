//! Commands started detached in a named sandbox: they run on after the request that started
//! them, and the service keeps their output (bounded, drawn from the service's output
//! budget) and how they ended. They belong to their sandbox: stopping or removing it, by any
//! path (CLI, HTTP, MCP, time to live), ends them and forgets them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use ak_core::ExecSpec;
use ak_protocol::{ExecControl, ExecEvent};

use crate::audit::rfc3339;
use crate::error::ServiceError;
use crate::output::Capture;
use crate::session::CommandSession;
use crate::{Caller, Service};

/// Detached commands one service keeps at most (finished ones count until their sandbox is
/// stopped or removed).
pub const MAX_DETACHED: usize = 256;
/// Linux's SIGKILL.
const SIGKILL: i32 = 9;

/// Where a detached command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachedStatus {
    Running,
    /// Ended with exit code 0.
    Completed,
    /// Ended otherwise, or could not be started.
    Failed,
}

impl DetachedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DetachedStatus::Running => "running",
            DetachedStatus::Completed => "completed",
            DetachedStatus::Failed => "failed",
        }
    }
}

/// A detached command as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedInfo {
    pub id: String,
    pub sandbox: String,
    pub command: Vec<String>,
    pub pid: u32,
    pub status: DetachedStatus,
    pub exit_code: Option<i32>,
    /// RFC 3339.
    pub started_at: String,
}

/// A detached command's output so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug)]
struct Entry {
    info: DetachedInfo,
    stdout: Capture,
    stderr: Capture,
    control: ExecControl,
}

/// The detached commands of one service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Detached {
    entries: Arc<Mutex<HashMap<String, Arc<Mutex<Entry>>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is a few field updates: a poisoned lock holds consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Detached {
    fn get(&self, sandbox: &str, id: &str) -> Result<Arc<Mutex<Entry>>, ServiceError> {
        lock(&self.entries)
            .get(id)
            .filter(|entry| lock(entry).info.sandbox == sandbox)
            .cloned()
            .ok_or_else(|| {
                ServiceError::NoSuch(format!(
                    "detached command '{}' in sandbox '{sandbox}'",
                    id.escape_default()
                ))
            })
    }

    /// Kills the detached commands of `sandbox` and forgets them (their output goes back
    /// to the budget).
    pub(crate) async fn forget_sandbox(&self, sandbox: &str) {
        let removed: Vec<Arc<Mutex<Entry>>> = {
            let mut entries = lock(&self.entries);
            let ids: Vec<String> = entries
                .iter()
                .filter(|(_, entry)| lock(entry).info.sandbox == sandbox)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| entries.remove(id)).collect()
        };
        for entry in removed {
            let control = lock(&entry).control.clone();
            let _ = control.signal(SIGKILL).await;
        }
    }

    /// Kills every detached command still running (when the host stops).
    pub(crate) async fn kill_all(&self) {
        let controls: Vec<ExecControl> = lock(&self.entries)
            .values()
            .map(|entry| lock(entry))
            .filter(|entry| entry.info.status == DetachedStatus::Running)
            .map(|entry| entry.control.clone())
            .collect();
        for control in controls {
            let _ = control.signal(SIGKILL).await;
        }
    }
}

impl Service {
    /// Starts `exec` in the running sandbox `name` and lets it run on; the service keeps
    /// its output and status until the sandbox is stopped or removed.
    pub async fn exec_detached(
        &self,
        caller: Caller,
        name: &str,
        exec: ExecSpec,
    ) -> Result<DetachedInfo, ServiceError> {
        if lock(&self.detached.entries).len() >= MAX_DETACHED {
            return Err(ServiceError::Unavailable(format!(
                "this host already keeps {MAX_DETACHED} detached commands; remove sandboxes that are done"
            )));
        }
        let command = exec.argv.clone();
        let mut session = self.exec_named(caller, name, exec).await?;
        let mut info = DetachedInfo {
            // 32 hex digits, like sandbox ids.
            id: ak_core::spec::new_sandbox_id(),
            sandbox: name.to_string(),
            command,
            pid: 0,
            status: DetachedStatus::Running,
            exit_code: None,
            started_at: rfc3339(SystemTime::now()),
        };
        let budgets = vec![self.output_budget.clone()];
        let mut stderr = Capture::new(budgets.clone());
        // The first event says whether it started (and its pid) or why not.
        let running = match session.next_event().await {
            Ok(Some(ExecEvent::Started { pid })) => {
                info.pid = pid;
                true
            }
            Ok(other) => {
                return Err(ServiceError::State(format!(
                    "the agent answered an exec with {other:?} before starting it"
                )));
            }
            Err(error) => match error.spawn_failure_code() {
                Some(code) => {
                    stderr.push(format!("{error}\n").as_bytes());
                    info.status = DetachedStatus::Failed;
                    info.exit_code = Some(code);
                    false
                }
                None => return Err(error),
            },
        };
        let entry = Arc::new(Mutex::new(Entry {
            info: info.clone(),
            stdout: Capture::new(budgets),
            stderr,
            control: session.control(),
        }));
        lock(&self.detached.entries).insert(info.id.clone(), entry.clone());
        if running {
            tokio::spawn(follow(session, entry));
        } else {
            let _ = session.finish().await;
        }
        Ok(info)
    }

    /// The detached commands of the sandbox `name`, oldest first.
    pub fn detached_list(&self, name: &str) -> Result<Vec<DetachedInfo>, ServiceError> {
        self.record(name)?;
        let mut list: Vec<DetachedInfo> = lock(&self.detached.entries)
            .values()
            .map(|entry| lock(entry).info.clone())
            .filter(|info| info.sandbox == name)
            .collect();
        list.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(list)
    }

    /// One detached command of the sandbox `name`.
    pub fn detached_get(&self, name: &str, id: &str) -> Result<DetachedInfo, ServiceError> {
        self.record(name)?;
        let entry = self.detached.get(name, id)?;
        let info = lock(&entry).info.clone();
        Ok(info)
    }

    /// A detached command's output so far.
    pub fn detached_output(&self, name: &str, id: &str) -> Result<DetachedOutput, ServiceError> {
        self.record(name)?;
        let entry = self.detached.get(name, id)?;
        let entry = lock(&entry);
        Ok(DetachedOutput {
            stdout: entry.stdout.bytes().to_vec(),
            stderr: entry.stderr.bytes().to_vec(),
        })
    }

    /// Kills a detached command (SIGKILL to its process group). Returns whether it was
    /// still running.
    pub async fn detached_kill(
        &self,
        caller: Caller,
        name: &str,
        id: &str,
    ) -> Result<bool, ServiceError> {
        let result = async {
            self.record(name)?;
            let entry = self.detached.get(name, id)?;
            let (running, control) = {
                let entry = lock(&entry);
                (
                    entry.info.status == DetachedStatus::Running,
                    entry.control.clone(),
                )
            };
            if running {
                control.signal(SIGKILL).await?;
            }
            Ok(running)
        }
        .await;
        self.audited(
            caller,
            "exec_kill",
            Some(name),
            Some(id.to_string()),
            result,
        )
    }
}

/// Keeps a detached command's output and records how it ended.
async fn follow(mut session: CommandSession, entry: Arc<Mutex<Entry>>) {
    let ended: Result<(), ServiceError> = loop {
        match session.next_event().await {
            Ok(Some(ExecEvent::Stdout(data))) => lock(&entry).stdout.push(&data),
            Ok(Some(ExecEvent::Stderr(data))) => lock(&entry).stderr.push(&data),
            Ok(Some(ExecEvent::Started { .. })) => {}
            Ok(Some(ExecEvent::Exited { .. }) | None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    let outcome = match ended {
        Ok(()) => session.finish().await,
        Err(error) => {
            let _ = session.finish().await;
            Err(error)
        }
    };
    let mut entry = lock(&entry);
    match outcome {
        Ok(outcome) => {
            let code = outcome.exit_code();
            entry.info.exit_code = Some(code);
            entry.info.status = if code == 0 {
                DetachedStatus::Completed
            } else {
                DetachedStatus::Failed
            };
        }
        Err(error) => {
            tracing::warn!(id = %entry.info.id, "detached command lost: {error}");
            entry.info.status = DetachedStatus::Failed;
            entry
                .stderr
                .push(format!("agentkernel: {error}\n").as_bytes());
        }
    }
}
