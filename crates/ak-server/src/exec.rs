//! Commands in a running named sandbox: `POST /sandboxes/{name}/exec` waits for the end;
//! detached commands run on in the server, which keeps their output (bounded) and status
//! until the sandbox is removed. A detached command lives as long as the server: its agent
//! connection is held here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use ak_core::exec::ExecOptions;
use ak_core::spec::validate_name;
use ak_protocol::{ExecControl, ExecEvent};
use ak_service::audit::rfc3339;
use ak_service::{CommandSession, ServiceError};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody, ok};
use crate::output::RunResult;
use crate::output::{Capture, collect, spawn_failure_code};

/// Detached commands one server keeps at most (finished ones count until their sandbox is
/// removed), so that their output cannot grow without bound.
pub const MAX_DETACHED: usize = 256;
/// Linux's SIGKILL.
const SIGKILL: i32 = 9;

/// `POST /sandboxes/{name}/exec` and `…/exec/detach`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// Run as the sandbox's root user.
    #[serde(default)]
    pub sudo: Option<bool>,
    /// Wall-clock limit in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

async fn start(
    state: &AppState,
    name: &str,
    request: ExecRequest,
) -> Result<CommandSession, ApiError> {
    validate_name(name)?;
    let exec = ExecOptions {
        argv: request.command,
        env: request.env.unwrap_or_default(),
        workdir: request.workdir,
        timeout_ms: request.timeout_ms,
        root: request.sudo.unwrap_or(false),
        ..ExecOptions::default()
    }
    .resolve()?;
    Ok(state.service.exec_named(name, exec).await?)
}

/// Runs a command in a running sandbox and answers when it ends; a non-zero exit is an
/// answer, not an error.
#[utoipa::path(post, path = "/sandboxes/{name}/exec", tag = "exec", params(("name" = String, Path, description = "The sandbox's name")),
    request_body = ExecRequest,
    responses((status = 200, description = "The command ran", body = RunResult),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody)))]
pub async fn exec(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ExecRequest>,
) -> Result<Response, ApiError> {
    let session = start(&state, &name, request).await?;
    // A non-zero exit is the command's answer, not a failure of the call.
    Ok(ok(collect(session).await?))
}

/// A detached command as the SDKs describe it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DetachedInfo {
    pub id: String,
    pub sandbox: String,
    pub command: Vec<String>,
    pub pid: u32,
    /// `running`, `completed` (exit code 0) or `failed`.
    pub status: &'static str,
    pub exit_code: Option<i32>,
    /// RFC 3339.
    pub started_at: String,
}

#[derive(Debug)]
struct Entry {
    info: DetachedInfo,
    stdout: Capture,
    stderr: Capture,
    control: ExecControl,
}

/// The detached commands of one server.
#[derive(Debug, Clone, Default)]
pub struct Detached {
    entries: Arc<Mutex<HashMap<String, Arc<Mutex<Entry>>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is a few field updates: a poisoned lock holds consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Detached {
    fn get(&self, sandbox: &str, id: &str) -> Result<Arc<Mutex<Entry>>, ApiError> {
        lock(&self.entries)
            .get(id)
            .filter(|entry| lock(entry).info.sandbox == sandbox)
            .cloned()
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no detached command '{}' in sandbox '{sandbox}'",
                    id.escape_default()
                ))
            })
    }

    /// Kills the detached commands of `sandbox` and forgets them.
    pub async fn kill_sandbox(&self, sandbox: &str) {
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

    /// Kills every detached command still running.
    pub async fn kill_all(&self) {
        let controls: Vec<ExecControl> = lock(&self.entries)
            .values()
            .map(|entry| lock(entry))
            .filter(|entry| entry.info.status == "running")
            .map(|entry| entry.control.clone())
            .collect();
        for control in controls {
            let _ = control.signal(SIGKILL).await;
        }
    }
}

/// Starts a command that runs on after the answer; the server keeps its output.
#[utoipa::path(post, path = "/sandboxes/{name}/exec/detach", tag = "exec", params(("name" = String, Path, description = "The sandbox's name")),
    request_body = ExecRequest,
    responses((status = 200, description = "Started", body = DetachedInfo),
        (status = 404, description = "No such sandbox", body = ErrorBody)))]
pub async fn detach(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ExecRequest>,
) -> Result<Response, ApiError> {
    if lock(&state.detached.entries).len() >= MAX_DETACHED {
        return Err(ApiError::Conflict(format!(
            "this server already keeps {MAX_DETACHED} detached commands; remove sandboxes that are done"
        )));
    }
    let command = request.command.clone();
    let mut session = start(&state, &name, request).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut info = DetachedInfo {
        id: id.clone(),
        sandbox: name,
        command,
        pid: 0,
        status: "running",
        exit_code: None,
        started_at: rfc3339(SystemTime::now()),
    };
    let mut stderr = Capture::default();
    // The first event says whether it started (and its pid) or why not.
    let running = match session.next_event().await {
        Ok(Some(ExecEvent::Started { pid })) => {
            info.pid = pid;
            true
        }
        Ok(other) => {
            return Err(ApiError::Internal(format!(
                "the agent answered an exec with {other:?} before starting it"
            )));
        }
        Err(error) => match spawn_failure_code(&error) {
            Some(code) => {
                stderr.push(format!("{error}\n").as_bytes());
                info.status = "failed";
                info.exit_code = Some(code);
                false
            }
            None => return Err(error.into()),
        },
    };
    let entry = Arc::new(Mutex::new(Entry {
        info: info.clone(),
        stdout: Capture::default(),
        stderr,
        control: session.control(),
    }));
    lock(&state.detached.entries).insert(id, entry.clone());
    if running {
        tokio::spawn(follow(session, entry));
    } else {
        let _ = session.finish().await;
    }
    Ok(ok(info))
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
            let code = outcome.status.shell_code();
            entry.info.exit_code = Some(code);
            entry.info.status = if code == 0 { "completed" } else { "failed" };
        }
        Err(error) => {
            tracing::warn!(id = %entry.info.id, "detached command lost: {error}");
            entry.info.status = "failed";
            entry
                .stderr
                .push(format!("agentkernel: {error}\n").as_bytes());
        }
    }
}

/// The sandbox's detached commands.
#[utoipa::path(get, path = "/sandboxes/{name}/exec/detached", tag = "exec", params(("name" = String, Path, description = "The sandbox's name")),
    responses((status = 200, description = "Its detached commands", body = Vec<DetachedInfo>)))]
pub async fn detached_list(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let mut list: Vec<DetachedInfo> = lock(&state.detached.entries)
        .values()
        .map(|entry| lock(entry).info.clone())
        .filter(|info| info.sandbox == name)
        .collect();
    list.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    Ok(ok(list))
}

/// One detached command.
#[utoipa::path(get, path = "/sandboxes/{name}/exec/detached/{id}", tag = "exec",
    params(("name" = String, Path, description = "The sandbox's name"), ("id" = String, Path, description = "The command's id")),
    responses((status = 200, description = "The command", body = DetachedInfo),
        (status = 404, description = "No such command", body = ErrorBody)))]
pub async fn detached_get(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let entry = state.detached.get(&name, &id)?;
    let info = lock(&entry).info.clone();
    Ok(ok(info))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// `stdout` or `stderr`; both when absent.
    #[serde(default)]
    pub stream: Option<String>,
}

/// `…/exec/detached/{id}/logs`'s answer: the streams asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DetachedLogs {
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

/// A detached command's output so far.
#[utoipa::path(get, path = "/sandboxes/{name}/exec/detached/{id}/logs", tag = "exec",
    params(("name" = String, Path, description = "The sandbox's name"), ("id" = String, Path, description = "The command's id"), LogsQuery),
    responses((status = 200, description = "stdout and stderr", body = DetachedLogs),
        (status = 404, description = "No such command", body = ErrorBody)))]
pub async fn detached_logs(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (want_out, want_err) = match query.stream.as_deref() {
        None => (true, true),
        Some("stdout") => (true, false),
        Some("stderr") => (false, true),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "stream must be stdout or stderr, not '{}'",
                other.escape_default()
            )));
        }
    };
    let entry = state.detached.get(&name, &id)?;
    let entry = lock(&entry);
    let text = |capture: &Capture| String::from_utf8_lossy(&capture.bytes).into_owned();
    Ok(ok(DetachedLogs {
        stdout: want_out.then(|| text(&entry.stdout)),
        stderr: want_err.then(|| text(&entry.stderr)),
    }))
}

/// Kills a detached command (SIGKILL to its process group).
#[utoipa::path(delete, path = "/sandboxes/{name}/exec/detached/{id}", tag = "exec",
    params(("name" = String, Path, description = "The sandbox's name"), ("id" = String, Path, description = "The command's id")),
    responses((status = 200, description = "Killed, or already finished", body = String),
        (status = 404, description = "No such command", body = ErrorBody)))]
pub async fn detached_kill(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let entry = state.detached.get(&name, &id)?;
    let (running, control) = {
        let entry = lock(&entry);
        (entry.info.status == "running", entry.control.clone())
    };
    if running {
        control
            .signal(SIGKILL)
            .await
            .map_err(|e| ApiError::Internal(format!("kill detached command: {e}")))?;
    }
    state
        .service
        .record_audit("exec_kill", Some(&name), ak_service::Outcome::Ok, Some(id));
    Ok(ok(if running {
        "killed"
    } else {
        "already finished"
    }))
}
