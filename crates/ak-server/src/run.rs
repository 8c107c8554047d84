//! One-shot runs: `POST /run` (the whole output at the end), `POST /run/stream` (Server-Sent
//! Events as the output is produced) and `POST /batch/run` (several runs in parallel).

use std::collections::VecDeque;
use std::convert::Infallible;

use ak_core::config::{SandboxOptions, resolve};
use ak_core::exec::ExecOptions;
use ak_core::spec::new_sandbox_id;
use ak_core::{ExecSpec, SandboxSpec};
use ak_protocol::ExecEvent;
use ak_service::{Caller, CommandSession, Placement, ServiceError};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ok};
use crate::network::NetworkField;
use crate::output::{RunResult, Utf8Chunks};

/// Most commands one batch may hold.
pub const MAX_BATCH: usize = 64;

/// `POST /run` and `POST /run/stream`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub command: Vec<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    /// Take a never-used sandbox from the warm pool when the server keeps one.
    #[serde(default)]
    pub fast: Option<bool>,
    /// `none`, `allowlist` or `open` (or a boolean: `true` open, `false` none); default the
    /// profile's, or `allowlist` when allowed hosts or CIDRs are given.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub network: Option<NetworkField>,
    /// What an allowlist sandbox may reach: host names, `*.domain` patterns or presets.
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
    /// CIDRs (or single addresses) an allowlist sandbox may reach.
    #[serde(default)]
    pub allow_cidrs: Option<Vec<String>>,
    /// Destination ports an allowlist sandbox may connect to (default: any).
    #[serde(default)]
    pub allow_ports: Option<Vec<u16>>,
}

/// The sandbox of a one-shot run: the request's settings over the server's config files.
pub(crate) fn run_spec(state: &AppState, options: SandboxOptions) -> Result<SandboxSpec, ApiError> {
    let options = options.over(state.config.base_options.clone());
    Ok(resolve(options, &state.config.cwd, new_sandbox_id())?)
}

/// Starts `exec` in a one-shot sandbox for `spec`: a warm one from the pool when asked and
/// possible, else a new one. The session releases it when the command ends, and when it is
/// dropped because the client went away.
pub(crate) async fn start(
    state: &AppState,
    spec: &SandboxSpec,
    exec: ExecSpec,
    fast: bool,
) -> Result<CommandSession, ServiceError> {
    let placement = if fast {
        Placement::Pooled
    } else {
        Placement::Fresh
    };
    state
        .service
        .start_run(Caller::Api, spec, exec, placement)
        .await
}

fn prepare(
    state: &AppState,
    request: RunRequest,
) -> Result<(SandboxSpec, ExecSpec, bool), ApiError> {
    let exec = ExecOptions {
        argv: request.command,
        ..ExecOptions::default()
    }
    .resolve()?;
    let spec = run_spec(
        state,
        SandboxOptions {
            image: request.image,
            profile: request.profile,
            network: request.network.map(|field| field.0),
            allow_hosts: request.allow_hosts,
            allow_cidrs: request.allow_cidrs,
            allow_ports: request.allow_ports,
            ..SandboxOptions::default()
        },
    )?;
    Ok((spec, exec, request.fast.unwrap_or(true)))
}

/// Runs a command in a fresh sandbox and answers when it ends.
#[utoipa::path(post, path = "/run", tag = "run", request_body = RunRequest,
    responses((status = 200, description = "The command ran (whatever its exit code)", body = RunResult)))]
pub async fn run(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<Response, ApiError> {
    let (spec, exec, fast) = prepare(&state, request)?;
    let budgets = state.service.request_budgets();
    Ok(ok(run_once(&state, &spec, exec, fast, budgets).await?))
}

async fn run_once(
    state: &AppState,
    spec: &SandboxSpec,
    exec: ExecSpec,
    fast: bool,
    budgets: Vec<std::sync::Arc<ak_service::output::ByteBudget>>,
) -> Result<RunResult, ApiError> {
    let session = start(state, spec, exec, fast).await?;
    Ok(session.collect(budgets).await?.into())
}

/// `POST /batch/run`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub commands: Vec<BatchCommand>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCommand {
    pub command: Vec<String>,
}

/// One command's result in a batch: its output, or why it could not run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Output {
        output: String,
        exit_code: i32,
        /// Output beyond the batch's shared budget was dropped.
        truncated: bool,
        /// Keeps the output counted in the budgets until the answer is gone.
        #[serde(skip)]
        #[schema(ignore)]
        held: ak_service::output::Held,
    },
    Error {
        error: String,
    },
}

/// Runs several commands in parallel, each in its own fresh sandbox.
#[utoipa::path(post, path = "/batch/run", tag = "run", request_body = BatchRequest,
    responses((status = 200, description = "One result per command: its output or why it could not run", body = BatchResults)))]
pub async fn batch(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    if request.commands.is_empty() || request.commands.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a batch holds 1 to {MAX_BATCH} commands, not {}",
            request.commands.len()
        )));
    }
    // One request: its commands share one output budget, so a batch holds no more output
    // than a single run may.
    let budgets = state.service.request_budgets();
    let runs = request.commands.into_iter().map(|command| {
        let (state, budgets) = (state.clone(), budgets.clone());
        async move {
            let request = RunRequest {
                command: command.command,
                image: None,
                profile: None,
                fast: Some(true),
                network: None,
                allow_hosts: None,
                allow_cidrs: None,
                allow_ports: None,
            };
            let result = match prepare(&state, request) {
                Ok((spec, exec, fast)) => run_once(&state, &spec, exec, fast, budgets).await,
                Err(error) => Err(error),
            };
            match result {
                Ok(result) => BatchResult::Output {
                    output: result.output,
                    exit_code: result.exit_code,
                    truncated: result.truncated,
                    held: result.held,
                },
                Err(error) => BatchResult::Error {
                    error: client_message(error),
                },
            }
        }
    });
    let results = futures_util::future::join_all(runs).await;
    Ok(ok(BatchResults { results }))
}

/// `POST /batch/run`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResults {
    pub results: Vec<BatchResult>,
}

/// What a client may read of an error inside a successful answer (faults are logged).
fn client_message(error: ApiError) -> String {
    match error {
        ApiError::Internal(details) => {
            tracing::error!("batch command failed: {details}");
            "internal error; the server's log has the details".into()
        }
        other => other.to_string(),
    }
}

/// Runs a command in a fresh sandbox and streams Server-Sent Events as it runs:
/// `started {pid}`, `output {data, stream}`, then `done {exit_code}` or `error {message}`.
#[utoipa::path(post, path = "/run/stream", tag = "run", request_body = RunRequest,
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String)))]
pub async fn run_stream(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<Response, ApiError> {
    let (spec, exec, fast) = prepare(&state, request)?;
    // Errors before the command starts are ordinary error answers with their status.
    let session = start(&state, &spec, exec, fast).await?;
    Ok(Sse::new(events(session))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Turns a running command into SSE events: `started`, `output {data, stream}` as output
/// arrives, then `done {exit_code}` or `error {message}`.
pub(crate) fn events(session: CommandSession) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = Streaming {
        session: Some(session),
        stdout: Utf8Chunks::default(),
        stderr: Utf8Chunks::default(),
        queue: VecDeque::new(),
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.queue.pop_front() {
                return Some((Ok(event), state));
            }
            let session = state.session.as_mut()?;
            let next = session.next_event().await;
            state.step(next).await;
        }
    })
}

struct Streaming {
    /// `None` once the command has ended and the session is finished.
    session: Option<CommandSession>,
    stdout: Utf8Chunks,
    stderr: Utf8Chunks,
    queue: VecDeque<Event>,
}

impl Streaming {
    async fn step(&mut self, next: Result<Option<ExecEvent>, ServiceError>) {
        match next {
            Ok(Some(ExecEvent::Started { pid })) => {
                self.queue
                    .push_back(sse("started", serde_json::json!({ "pid": pid })));
            }
            Ok(Some(ExecEvent::Stdout(data))) => {
                let text = self.stdout.decode(&data);
                self.output(text, "stdout");
            }
            Ok(Some(ExecEvent::Stderr(data))) => {
                let text = self.stderr.decode(&data);
                self.output(text, "stderr");
            }
            Ok(Some(ExecEvent::Exited { .. }) | None) => {
                let (out, err) = (self.stdout.finish(), self.stderr.finish());
                self.output(out, "stdout");
                self.output(err, "stderr");
                let Some(session) = self.session.take() else {
                    return;
                };
                match session.finish().await {
                    Ok(outcome) => self.done(outcome.exit_code(), outcome.timed_out),
                    Err(error) => self.fail(error.into()),
                }
            }
            Err(error) => {
                if let Some(session) = self.session.take() {
                    let _ = session.finish().await;
                }
                match error.spawn_failure_code() {
                    Some(exit_code) => {
                        self.output(format!("{error}\n"), "stderr");
                        self.done(exit_code, false);
                    }
                    None => self.fail(error.into()),
                }
            }
        }
    }

    /// The last event: how the command ended (`success` as the SDKs read it).
    fn done(&mut self, exit_code: i32, timed_out: bool) {
        self.queue.push_back(sse(
            "done",
            serde_json::json!({
                "exit_code": exit_code,
                "success": exit_code == 0,
                "timed_out": timed_out,
            }),
        ));
    }

    fn output(&mut self, text: String, stream: &str) {
        if !text.is_empty() {
            self.queue.push_back(sse(
                "output",
                serde_json::json!({ "data": text, "stream": stream }),
            ));
        }
    }

    fn fail(&mut self, error: ApiError) {
        self.queue.push_back(sse(
            "error",
            serde_json::json!({ "message": client_message(error) }),
        ));
    }
}

fn sse(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}
