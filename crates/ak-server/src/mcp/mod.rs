//! The MCP server (`agentkernel mcp`, over stdio, built on rmcp): each tool is one service
//! call, and its input goes through the same validation as the CLI's (names, images,
//! profiles, paths, environment entries), so `--privileged` as an image or `../x` as a name
//! is refused the same way. Long commands report progress to a client that asks for it,
//! and end when the client cancels them.

mod network;
mod transport;

use ak_core::source::GitSource;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ak_core::config::{SandboxOptions, resolve};
use ak_core::exec::ExecOptions;
use ak_core::spec::new_sandbox_id;
use ak_service::{Caller, CommandSession, ErrorClass, Placement, Service, ServiceError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::files::Encoding;
use crate::network::NetworkField;
use crate::output::RunResult;
use crate::sandboxes::SandboxInfo;
use crate::snapshots::SnapshotMeta;

/// Largest file `sandbox_file_read` returns.
const MAX_READ: u64 = 16 << 20;

/// How often a command's progress is reported to a client that asked for it.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The MCP server over one service.
#[derive(Debug, Clone)]
pub struct McpServer {
    service: Arc<Service>,
    base_options: SandboxOptions,
    cwd: PathBuf,
    tool_router: ToolRouter<Self>,
}

/// Why `agentkernel mcp` stopped.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("MCP session: {0}")]
    Session(String),
}

impl McpServer {
    /// A server whose sandboxes get `base_options` (the config files) under each call's
    /// own settings; relative image paths start at `cwd`.
    pub fn new(service: Arc<Service>, base_options: SandboxOptions, cwd: PathBuf) -> Self {
        McpServer {
            service,
            base_options,
            cwd,
            tool_router: Self::tool_router() + Self::network_router(),
        }
    }

    /// Serves MCP on stdin/stdout until the client disconnects. A message is at most as
    /// large as an HTTP request body may be.
    pub async fn serve_stdio(self) -> Result<(), McpError> {
        self.serve_lines(
            std::io::stdin(),
            tokio::io::stdout(),
            crate::DEFAULT_MAX_BODY,
        )
        .await
    }

    /// Serves MCP as JSON lines read from `read` and written to `write`, until `read`
    /// ends; a message over `limit` bytes gets an error answer.
    pub async fn serve_lines(
        self,
        read: impl std::io::Read + Send + 'static,
        write: impl tokio::io::AsyncWrite + Send + Unpin + 'static,
        limit: usize,
    ) -> Result<(), McpError> {
        let transport = transport::BoundedTransport::new(read, write, limit)
            .map_err(|e| McpError::Session(format!("set up the transport: {e}")))?;
        let running = self
            .serve(transport)
            .await
            .map_err(|e| McpError::Session(e.to_string()))?;
        running
            .waiting()
            .await
            .map_err(|e| McpError::Session(e.to_string()))?;
        Ok(())
    }

    fn spec(&self, tool: &str, options: SandboxOptions) -> Result<ak_core::SandboxSpec, String> {
        let options = options.over(self.base_options.clone());
        resolve(options, &self.cwd, new_sandbox_id()).map_err(|e| self.refuse(tool, None, e))
    }

    fn exec(
        &self,
        tool: &str,
        sandbox: Option<&str>,
        options: ExecOptions,
    ) -> Result<ak_core::ExecSpec, String> {
        options.resolve().map_err(|e| self.refuse(tool, sandbox, e))
    }

    /// Input refused before any service call: recorded in the audit log like the API's
    /// refusals (the service records its own).
    fn refuse(&self, tool: &str, sandbox: Option<&str>, error: impl std::fmt::Display) -> String {
        let message = error.to_string();
        self.service.record_audit(
            Caller::Mcp,
            "request",
            sandbox,
            ak_service::Outcome::Refused,
            Some(format!("mcp {tool}: {message}")),
        );
        message
    }
}

/// Runs a tool's command to its end: every [`PROGRESS_EVERY`] a client that passed a
/// progress token hears the time so far (the progress) and the output so far; when the
/// client cancels the call, the command is killed (and a one-shot sandbox released) before
/// this returns, and the answer is an error that rmcp does not send (a cancelled request
/// gets none).
async fn collect(
    service: &Service,
    session: CommandSession,
    timeout_ms: Option<u64>,
    context: &RequestContext<RoleServer>,
) -> Result<Json<RunResult>, String> {
    let output = AtomicU64::new(0);
    let collecting = session.collect_until(
        service.request_budgets(),
        |bytes| {
            output.fetch_add(bytes as u64, Ordering::Relaxed);
        },
        context.ct.cancelled(),
    );
    let mut collecting = std::pin::pin!(collecting);
    let token = context.meta.get_progress_token();
    let begun = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval_at(begun + PROGRESS_EVERY, PROGRESS_EVERY);
    let collected = loop {
        tokio::select! {
            collected = &mut collecting => break collected,
            _ = ticks.tick(), if token.is_some() => {
                let Some(token) = token.clone() else { continue };
                let elapsed = begun.elapsed().as_secs_f64();
                let bytes = output.load(Ordering::Relaxed);
                let mut progress = ProgressNotificationParam::new(token, elapsed)
                    .with_message(format!("running for {elapsed:.0} s, {bytes} bytes of output"));
                if let Some(ms) = timeout_ms {
                    progress = progress.with_total(ms as f64 / 1000.0);
                }
                if let Err(e) = context.peer.notify_progress(progress).await {
                    tracing::debug!("sending progress: {e}");
                }
            }
        }
    };
    match collected.map_err(message)? {
        Some(collected) => Ok(Json(RunResult::from(collected))),
        None => Err("cancelled: the command was killed".into()),
    }
}

/// The one mapping of a service error's class to a tool error: the class leads the text
/// so an agent can tell a refusal from a fault; faults are logged in full and summarised.
fn message(error: ServiceError) -> String {
    let class = match error.class() {
        ErrorClass::Invalid => "invalid",
        ErrorClass::Forbidden => "forbidden",
        ErrorClass::NotFound => "not found",
        ErrorClass::Conflict => "conflict",
        ErrorClass::TooLarge => "too large",
        ErrorClass::Unavailable => "unavailable",
        ErrorClass::Fault => {
            tracing::error!("MCP tool failed: {error}");
            return "internal error; agentkernel's log (stderr) has the details".into();
        }
    };
    format!("{class}: {error}")
}

/// `sandbox_list`'s answer (structured content is an object).
#[derive(Debug, Serialize, JsonSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

/// `sandbox_file_read`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileRead {
    /// The file's text, or base64 of its bytes when it is not UTF-8.
    pub content: String,
    pub encoding: Encoding,
    pub size: usize,
}

/// `sandbox_remove`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Removed {
    pub removed: String,
}

/// `sandbox_file_write`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Written {
    pub path: String,
    pub bytes: usize,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// The command and its arguments (never joined into a shell string).
    pub command: Vec<String>,
    /// `host` (the host's root, read-only), a directory, or an OCI image name.
    pub image: Option<String>,
    /// `permissive`, `moderate` (default) or `restrictive`.
    pub profile: Option<String>,
    /// `none`, `allowlist` (only `allow_hosts`, `allow_cidrs` and `allow_ports`) or `open`;
    /// `false` is none and `true` open, as before modes existed.
    pub network: Option<NetworkField>,
    /// Host names, `*.domain` patterns or presets (`pypi`, `npm`, `crates`, `github`,
    /// `debian`) an allowlist sandbox may reach.
    pub allow_hosts: Option<Vec<String>>,
    /// CIDRs (or single addresses) an allowlist sandbox may reach.
    pub allow_cidrs: Option<Vec<String>>,
    /// Destination ports an allowlist sandbox may connect to (default: any).
    pub allow_ports: Option<Vec<u16>>,
    /// Absolute working directory inside the sandbox (`cwd` is accepted too).
    #[serde(alias = "cwd")]
    pub workdir: Option<String>,
    /// `KEY=VALUE` entries.
    pub env: Option<Vec<String>>,
    /// Wall-clock limit in milliseconds; the command is killed after it.
    pub timeout_ms: Option<u64>,
    /// Named volumes: `NAME:/path`, `NAME:/path:ro` or `NAME:/path:shared` (created when
    /// missing; they outlive the sandbox).
    pub volumes: Option<Vec<String>>,
    /// A git repository cloned into the workdir before the command runs.
    pub source_url: Option<String>,
    /// The branch, tag or commit of `source_url` (its default branch when absent).
    pub source_ref: Option<String>,
    /// Secrets used through placeholders: `KEY=value:host`, `KEY:host` or `KEY:host:header`;
    /// `$KEY` holds a placeholder that becomes the value only in HTTPS requests to `host`
    /// (the allowlist network, with `host` on it). Values not given inline come from the
    /// host only where `[api]` allows it.
    pub secrets: Option<Vec<String>>,
    /// Keys whose real values the sandbox reads from `/run/agentkernel/secrets/KEY`.
    pub secret_files: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit.
    pub name: String,
    pub image: Option<String>,
    pub profile: Option<String>,
    /// `none`, `allowlist` (only `allow_hosts`, `allow_cidrs` and `allow_ports`) or `open`;
    /// `false` is none and `true` open, as before modes existed.
    pub network: Option<NetworkField>,
    /// Host names, `*.domain` patterns or presets (`pypi`, `npm`, `crates`, `github`,
    /// `debian`) an allowlist sandbox may reach.
    pub allow_hosts: Option<Vec<String>>,
    /// CIDRs (or single addresses) an allowlist sandbox may reach.
    pub allow_cidrs: Option<Vec<String>>,
    /// Destination ports an allowlist sandbox may connect to (default: any).
    pub allow_ports: Option<Vec<u16>>,
    /// Memory limit, e.g. `512M`.
    pub memory: Option<String>,
    /// CPU limit, e.g. 1 or 0.5.
    pub cpus: Option<f64>,
    /// How long it may live, e.g. `30m` or `2h` (at most 30 days), as the HTTP API's
    /// `ttl`: it is removed when that runs out.
    pub ttl: Option<String>,
    /// Named volumes: `NAME:/path`, `NAME:/path:ro` or `NAME:/path:shared` (created when
    /// missing; they outlive the sandbox).
    pub volumes: Option<Vec<String>>,
    /// A git repository cloned into /workspace before the sandbox starts.
    pub source_url: Option<String>,
    /// The branch, tag or commit of `source_url` (its default branch when absent).
    pub source_ref: Option<String>,
    /// Secrets used through placeholders: `KEY=value:host`, `KEY:host` or `KEY:host:header`;
    /// `$KEY` holds a placeholder that becomes the value only in HTTPS requests to `host`
    /// (the allowlist network, with `host` on it). Values not given inline come from the
    /// host only where `[api]` allows it.
    pub secrets: Option<Vec<String>>,
    /// Keys whose real values the sandbox reads from `/run/agentkernel/secrets/KEY`.
    pub secret_files: Option<Vec<String>>,
}

/// `snapshot_list`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotMeta>,
}

/// `sandbox_fork`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Forked {
    pub sandboxes: Vec<SandboxInfo>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotParams {
    /// The sandbox to snapshot.
    pub name: String,
    /// The snapshot's name (default `<sandbox>-<unix seconds>`).
    pub snapshot: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    pub snapshot: String,
    /// The new sandbox's name.
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotNameParams {
    pub snapshot: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkParams {
    /// The sandbox to fork.
    pub name: String,
    /// Names of the new sandboxes.
    pub new: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameParams {
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseParams {
    pub name: String,
    /// Save it to disk with its memory and end its processes (QEMU microVMs only).
    pub save: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    pub name: String,
    /// Stop it first if it runs.
    pub force: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    pub name: String,
    pub command: Vec<String>,
    /// Working directory inside the sandbox (`cwd` is accepted too), as the HTTP API's.
    #[serde(alias = "cwd")]
    pub workdir: Option<String>,
    pub env: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileReadParams {
    pub name: String,
    /// Absolute, or relative to the sandbox's workdir.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileWriteParams {
    pub name: String,
    /// Absolute, or relative to the sandbox's workdir.
    pub path: String,
    pub content: String,
    /// `utf8` (default) or `base64`.
    pub encoding: Option<String>,
}

#[tool_router]
impl McpServer {
    #[tool(
        title = "Run a command in a fresh sandbox",
        description = "Run a command in a fresh, isolated sandbox that is destroyed afterwards. Returns output (stdout, then stderr; base64 when encoding says so), exit_code, timed_out and truncated. Reports progress every second when the call carries a progress token; cancelling the call kills the command.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn sandbox_run(
        &self,
        Parameters(params): Parameters<RunParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<RunResult>, String> {
        let timeout_ms = params.timeout_ms;
        let source =
            GitSource::from_fields(params.source_url.as_deref(), params.source_ref.as_deref())
                .map_err(|e| self.refuse("sandbox_run", None, e))?;
        let exec = self.exec(
            "sandbox_run",
            None,
            ExecOptions {
                argv: params.command,
                env: params.env.unwrap_or_default(),
                workdir: params.workdir,
                timeout_ms: params.timeout_ms,
                ..ExecOptions::default()
            },
        )?;
        let spec = self.spec(
            "sandbox_run",
            SandboxOptions {
                image: params.image,
                profile: params.profile,
                network: params.network.map(|field| field.0),
                allow_hosts: params.allow_hosts,
                allow_cidrs: params.allow_cidrs,
                allow_ports: params.allow_ports,
                volumes: params.volumes,
                source,
                secrets: params.secrets,
                secret_files: params.secret_files,
                ..SandboxOptions::default()
            },
        )?;
        let session = self
            .service
            .start_run(Caller::Mcp, &spec, exec, Placement::Pooled)
            .await
            .map_err(message)?;
        collect(&self.service, session, timeout_ms, &context).await
    }

    #[tool(
        title = "Create and start a named sandbox",
        description = "Create a named sandbox and start it, as the HTTP API's create does (one that cannot start is not kept). Its /workspace persists until it is removed; sandbox_stop and sandbox_start stop and restart it.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_create(
        &self,
        Parameters(params): Parameters<CreateParams>,
    ) -> Result<Json<SandboxInfo>, String> {
        let source =
            GitSource::from_fields(params.source_url.as_deref(), params.source_ref.as_deref())
                .map_err(|e| self.refuse("sandbox_create", Some(&params.name), e))?;
        let spec = self.spec(
            "sandbox_create",
            SandboxOptions {
                image: params.image,
                profile: params.profile,
                network: params.network.map(|field| field.0),
                allow_hosts: params.allow_hosts,
                allow_cidrs: params.allow_cidrs,
                allow_ports: params.allow_ports,
                memory: params.memory,
                cpus: params.cpus,
                volumes: params.volumes,
                source,
                secrets: params.secrets,
                secret_files: params.secret_files,
                ..SandboxOptions::default()
            },
        )?;
        let ttl = params
            .ttl
            .as_deref()
            .map(ak_core::resources::parse_duration)
            .transpose()
            .map_err(|e| self.refuse("sandbox_create", Some(&params.name), e))?;
        let record = self
            .service
            .create_running(Caller::Mcp, &params.name, spec, ttl)
            .await
            .map_err(message)?;
        Ok(Json(SandboxInfo::from(&record)))
    }

    #[tool(
        title = "Start a named sandbox",
        description = "Start a stopped named sandbox.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_start(
        &self,
        Parameters(params): Parameters<NameParams>,
    ) -> Result<Json<SandboxInfo>, String> {
        let record = self
            .service
            .start_named(Caller::Mcp, &params.name)
            .await
            .map_err(message)?;
        Ok(Json(SandboxInfo::from(&record)))
    }

    #[tool(
        title = "Stop a named sandbox",
        description = "Stop a running named sandbox: its processes end; its /workspace is kept.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_stop(
        &self,
        Parameters(params): Parameters<NameParams>,
    ) -> Result<Json<SandboxInfo>, String> {
        let record = self
            .service
            .stop_named(Caller::Mcp, &params.name)
            .await
            .map_err(message)?;
        Ok(Json(SandboxInfo::from(&record)))
    }

    #[tool(
        title = "Pause a named sandbox",
        description = "Pause a running named sandbox: its processes stop where they are and use no CPU, keeping their memory and connections, until sandbox_resume. With save, it is saved to disk with its memory and its processes end (QEMU microVMs only) until sandbox_resume.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_pause(
        &self,
        Parameters(params): Parameters<PauseParams>,
    ) -> Result<Json<SandboxInfo>, String> {
        let record = self
            .service
            .pause_named(Caller::Mcp, &params.name, params.save.unwrap_or(false))
            .await
            .map_err(message)?;
        Ok(Json(SandboxInfo::from(&record)))
    }

    #[tool(
        title = "Resume a paused sandbox",
        description = "Resume a paused named sandbox where it stopped.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_resume(
        &self,
        Parameters(params): Parameters<NameParams>,
    ) -> Result<Json<SandboxInfo>, String> {
        let record = self
            .service
            .resume_named(Caller::Mcp, &params.name)
            .await
            .map_err(message)?;
        Ok(Json(SandboxInfo::from(&record)))
    }

    #[tool(
        title = "Run a command in a named sandbox",
        description = "Run a command in a running named sandbox. Returns output (stdout, then stderr; base64 when encoding says so), exit_code, timed_out and truncated. Reports progress every second when the call carries a progress token; cancelling the call kills the command.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn sandbox_exec(
        &self,
        Parameters(params): Parameters<ExecParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<RunResult>, String> {
        let timeout_ms = params.timeout_ms;
        let exec = self.exec(
            "sandbox_exec",
            Some(&params.name),
            ExecOptions {
                argv: params.command,
                env: params.env.unwrap_or_default(),
                workdir: params.workdir,
                timeout_ms: params.timeout_ms,
                ..ExecOptions::default()
            },
        )?;
        let session = self
            .service
            .exec_named(Caller::Mcp, &params.name, exec)
            .await
            .map_err(message)?;
        collect(&self.service, session, timeout_ms, &context).await
    }

    #[tool(
        title = "List named sandboxes",
        description = "List the named sandboxes.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn sandbox_list(&self) -> Result<Json<SandboxList>, String> {
        let records = self.service.list_named().await.map_err(message)?;
        Ok(Json(SandboxList {
            sandboxes: records.iter().map(SandboxInfo::from).collect(),
        }))
    }

    #[tool(
        title = "Remove a named sandbox",
        description = "Remove a named sandbox and its /workspace (force: stop it first).",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_remove(
        &self,
        Parameters(params): Parameters<RemoveParams>,
    ) -> Result<Json<Removed>, String> {
        self.service
            .remove_named(Caller::Mcp, &params.name, params.force.unwrap_or(false))
            .await
            .map_err(message)?;
        Ok(Json(Removed {
            removed: params.name,
        }))
    }

    #[tool(
        title = "Read a file in a named sandbox",
        description = "Read a file of a running named sandbox. Returns content, encoding (utf8 or base64) and size.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn sandbox_file_read(
        &self,
        Parameters(params): Parameters<FileReadParams>,
    ) -> Result<Json<FileRead>, String> {
        let bytes = self
            .service
            .read_file_named(Caller::Mcp, &params.name, &params.path, MAX_READ)
            .await
            .map_err(message)?;
        let size = bytes.len();
        let (content, encoding) = Encoding::encode(bytes);
        Ok(Json(FileRead {
            content,
            encoding,
            size,
        }))
    }

    #[tool(
        title = "Write a file in a named sandbox",
        description = "Write a file into a running named sandbox (atomically; parent directories are created).",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn sandbox_file_write(
        &self,
        Parameters(params): Parameters<FileWriteParams>,
    ) -> Result<Json<Written>, String> {
        let content = match params.encoding.as_deref() {
            None | Some("utf8") => params.content.into_bytes(),
            Some("base64") => BASE64.decode(params.content.as_bytes()).map_err(|e| {
                self.refuse(
                    "sandbox_file_write",
                    Some(&params.name),
                    format!("content is not valid base64: {e}"),
                )
            })?,
            Some(other) => {
                return Err(self.refuse(
                    "sandbox_file_write",
                    Some(&params.name),
                    format!(
                        "encoding must be utf8 or base64, not '{}'",
                        other.escape_default()
                    ),
                ));
            }
        };
        self.service
            .write_file_named(Caller::Mcp, &params.name, &params.path, &content)
            .await
            .map_err(message)?;
        Ok(Json(Written {
            path: params.path,
            bytes: content.len(),
        }))
    }

    #[tool(
        title = "Snapshot a named sandbox",
        description = "Snapshot a named sandbox's files (its root's writable layer and /workspace), running (its processes frozen for the copy) or stopped. snapshot_restore makes new sandboxes from it.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_snapshot(
        &self,
        Parameters(params): Parameters<SnapshotParams>,
    ) -> Result<Json<SnapshotMeta>, String> {
        let info = self
            .service
            .snapshot_create(Caller::Mcp, &params.name, params.snapshot.as_deref())
            .await
            .map_err(message)?;
        Ok(Json(SnapshotMeta::from(info)))
    }

    #[tool(
        title = "List snapshots",
        description = "List the snapshots.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn snapshot_list(&self) -> Result<Json<SnapshotList>, String> {
        let infos = self.service.snapshot_list().map_err(message)?;
        Ok(Json(SnapshotList {
            snapshots: infos.into_iter().map(SnapshotMeta::from).collect(),
        }))
    }

    #[tool(
        title = "Restore a snapshot",
        description = "Create and start a named sandbox from a snapshot: its settings and its files.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn snapshot_restore(
        &self,
        Parameters(params): Parameters<RestoreParams>,
    ) -> Result<Json<SandboxInfo>, String> {
        let record = self
            .service
            .create_from_snapshot(Caller::Mcp, &params.name, &params.snapshot, true)
            .await
            .map_err(message)?;
        Ok(Json(SandboxInfo::from(&record)))
    }

    #[tool(
        title = "Remove a snapshot",
        description = "Remove a snapshot; sandboxes made from it keep their files.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn snapshot_remove(
        &self,
        Parameters(params): Parameters<SnapshotNameParams>,
    ) -> Result<Json<Removed>, String> {
        self.service
            .snapshot_remove(Caller::Mcp, &params.snapshot)
            .await
            .map_err(message)?;
        Ok(Json(Removed {
            removed: params.snapshot,
        }))
    }

    #[tool(
        title = "Fork a named sandbox",
        description = "Make new named sandboxes from one instant of a sandbox's files (running if it runs); each then goes its own way.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn sandbox_fork(
        &self,
        Parameters(params): Parameters<ForkParams>,
    ) -> Result<Json<Forked>, String> {
        let records = self
            .service
            .fork(Caller::Mcp, &params.name, &params.new)
            .await
            .map_err(message)?;
        Ok(Json(Forked {
            sandboxes: records.iter().map(SandboxInfo::from).collect(),
        }))
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "agentkernel",
    instructions = "Run commands in isolated sandboxes: sandbox_run for one-shot commands; sandbox_create, sandbox_start, sandbox_exec, sandbox_file_read/write, sandbox_stop and sandbox_remove for sandboxes that persist; sandbox_pause and sandbox_resume to freeze one where it is; sandbox_snapshot, snapshot_list, snapshot_restore, snapshot_remove and sandbox_fork to keep and branch their files."
)]
impl ServerHandler for McpServer {}
