//! Commands in a running named sandbox: `POST /sandboxes/{name}/exec` waits for the end;
//! detached commands run on in the service, which keeps their output (bounded) and status
//! until the sandbox is stopped or removed.

use ak_core::ExecSpec;
use ak_core::exec::ExecOptions;
use ak_core::spec::validate_name;
use ak_service::Caller;
use ak_service::detached::DetachedInfo as Detached;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ok};
use crate::output::RunResult;

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

fn exec_spec(name: &str, request: ExecRequest) -> Result<ExecSpec, ApiError> {
    validate_name(name)?;
    Ok(ExecOptions {
        argv: request.command,
        env: request.env.unwrap_or_default(),
        workdir: request.workdir,
        timeout_ms: request.timeout_ms,
        root: request.sudo.unwrap_or(false),
        ..ExecOptions::default()
    }
    .resolve()?)
}

/// Runs a command in a running sandbox and answers when it ends; a non-zero exit is an
/// answer, not an error. A client that goes away ends the command.
#[utoipa::path(post, path = "/sandboxes/{name}/exec", tag = "exec", params(("name" = String, Path, description = "The sandbox's name")),
    request_body = ExecRequest,
    responses((status = 200, description = "The command ran", body = RunResult)))]
pub async fn exec(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ExecRequest>,
) -> Result<Response, ApiError> {
    let exec = exec_spec(&name, request)?;
    let session = state.service.exec_named(Caller::Api, &name, exec).await?;
    let collected = session.collect(state.service.request_budgets()).await?;
    Ok(ok(RunResult::from(collected)))
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

impl From<Detached> for DetachedInfo {
    fn from(info: Detached) -> Self {
        DetachedInfo {
            id: info.id,
            sandbox: info.sandbox,
            command: info.command,
            pid: info.pid,
            status: info.status.as_str(),
            exit_code: info.exit_code,
            started_at: info.started_at,
        }
    }
}

/// Starts a command that runs on after the answer; the service keeps its output.
#[utoipa::path(post, path = "/sandboxes/{name}/exec/detach", tag = "exec", params(("name" = String, Path, description = "The sandbox's name")),
    request_body = ExecRequest,
    responses((status = 200, description = "Started", body = DetachedInfo)))]
pub async fn detach(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ExecRequest>,
) -> Result<Response, ApiError> {
    let exec = exec_spec(&name, request)?;
    let info = state
        .service
        .exec_detached(Caller::Api, &name, exec)
        .await?;
    Ok(ok(DetachedInfo::from(info)))
}

/// The sandbox's detached commands.
#[utoipa::path(get, path = "/sandboxes/{name}/exec/detached", tag = "exec", params(("name" = String, Path, description = "The sandbox's name")),
    responses((status = 200, description = "Its detached commands", body = Vec<DetachedInfo>)))]
pub async fn detached_list(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let list = state.service.detached_list(&name)?;
    Ok(ok(list
        .into_iter()
        .map(DetachedInfo::from)
        .collect::<Vec<_>>()))
}

/// One detached command.
#[utoipa::path(get, path = "/sandboxes/{name}/exec/detached/{id}", tag = "exec",
    params(("name" = String, Path, description = "The sandbox's name"), ("id" = String, Path, description = "The command's id")),
    responses((status = 200, description = "The command", body = DetachedInfo)))]
pub async fn detached_get(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    Ok(ok(DetachedInfo::from(
        state.service.detached_get(&name, &id)?,
    )))
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
    responses((status = 200, description = "stdout and stderr", body = DetachedLogs)))]
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
    let output = state.service.detached_output(&name, &id)?;
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    Ok(ok(DetachedLogs {
        stdout: want_out.then(|| text(output.stdout)),
        stderr: want_err.then(|| text(output.stderr)),
    }))
}

/// Kills a detached command (SIGKILL to its process group).
#[utoipa::path(delete, path = "/sandboxes/{name}/exec/detached/{id}", tag = "exec",
    params(("name" = String, Path, description = "The sandbox's name"), ("id" = String, Path, description = "The command's id")),
    responses((status = 200, description = "Killed, or already finished", body = String)))]
pub async fn detached_kill(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let running = state.service.detached_kill(Caller::Api, &name, &id).await?;
    Ok(ok(if running {
        "killed"
    } else {
        "already finished"
    }))
}
