//! Named sandboxes over HTTP: list, create (and start), inspect (by name or uuid), remove,
//! and their audit entries.

use ak_core::config::{SandboxOptions, resolve};
use ak_core::resources::parse_duration;
use ak_core::source::GitSource;
use ak_core::spec::{new_sandbox_id, validate_name};
use ak_core::{NetworkMode, SandboxState};
use ak_service::audit::rfc3339_unix;
use ak_service::{Caller, SandboxRecord};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ok, with_status};
use crate::network::NetworkField;

/// A sandbox as the SDKs describe it.
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct SandboxInfo {
    pub name: String,
    pub uuid: String,
    /// In the SDKs' words: `running`, or `stopped` for every state that is not (a paused
    /// sandbox too: `state` says `paused`).
    pub status: &'static str,
    /// agentkernel's own state (`running`, `stopped`, `failed`, …).
    #[schema(value_type = String, example = "running")]
    #[schemars(with = "String")]
    pub state: SandboxState,
    pub backend: String,
    pub image: String,
    /// CPUs it may use, rounded up; absent when unlimited.
    pub vcpus: Option<u32>,
    pub memory_mb: u64,
    /// RFC 3339.
    pub created_at: String,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339: when the service removes it; absent when it lives until removed.
    pub expires_at: Option<String>,
    /// `none`, `allowlist` or `open`.
    pub network: &'static str,
    /// What an allowlist sandbox may reach (absent for the other networks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowlist: Option<AllowlistInfo>,
    /// How many connections and lookups its allowlist refused (one sandbox's answers
    /// only, not lists; absent for the other networks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_denied: Option<usize>,
}

/// An allowlist as answers show it.
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct AllowlistInfo {
    /// Host names and `*.domain` patterns (presets expanded).
    pub hosts: Vec<String>,
    pub cidrs: Vec<String>,
    /// Empty: any port.
    pub ports: Vec<u16>,
}

impl SandboxInfo {
    /// With the count of refused connections (see [`ak_service::Service::egress_denied`]).
    pub fn with_denied(self, egress_denied: Option<usize>) -> SandboxInfo {
        SandboxInfo {
            egress_denied,
            ..self
        }
    }
}

impl From<&SandboxRecord> for SandboxInfo {
    fn from(record: &SandboxRecord) -> Self {
        let resources = &record.spec.resources;
        SandboxInfo {
            name: record.name.clone(),
            uuid: record.uuid.clone(),
            status: match record.state {
                SandboxState::Running => "running",
                _ => "stopped",
            },
            state: record.state,
            backend: record.backend.to_string(),
            image: record.spec.image.to_string(),
            vcpus: resources.cpus.map(|cpus| cpus.ceil() as u32),
            memory_mb: resources.memory_bytes >> 20,
            created_at: rfc3339_unix(record.created_at),
            error: record.error.clone(),
            expires_at: record.expires_at.map(rfc3339_unix),
            network: record.spec.policy.network.as_str(),
            allowlist: (record.spec.policy.network == NetworkMode::Allowlist).then(|| {
                let list = &record.spec.policy.allowlist;
                AllowlistInfo {
                    hosts: list.hosts.iter().map(ToString::to_string).collect(),
                    cidrs: list.cidrs.iter().map(ToString::to_string).collect(),
                    ports: list.ports.clone(),
                }
            }),
            egress_denied: None,
        }
    }
}

/// The named sandboxes.
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes",
    responses((status = 200, description = "Every named sandbox", body = Vec<SandboxInfo>)))]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let records = state.service.list_named().await?;
    Ok(ok(records
        .iter()
        .map(SandboxInfo::from)
        .collect::<Vec<_>>()))
}

/// `POST /sandboxes`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub profile: Option<String>,
    /// Named volumes, `NAME:/path`, `NAME:/path:ro` or `NAME:/path:shared`; a volume that
    /// does not exist yet is created.
    #[serde(default)]
    pub volumes: Option<Vec<String>>,
    /// Time to live, e.g. `30m`: the service removes the sandbox after it (see `extend`).
    #[serde(default)]
    pub ttl: Option<String>,
    /// A git repository cloned into the sandbox's workdir before it starts (the protocols
    /// allowed are `source_protocols` under `[api]`: `https` by default).
    #[serde(default)]
    pub source_url: Option<String>,
    /// The branch, tag or commit of `source_url` to check out (its default branch when
    /// absent).
    #[serde(default)]
    pub source_ref: Option<String>,
    /// `none`, `allowlist` or `open` (or a boolean: `true` open, `false` none); default the
    /// profile's, or `allowlist` when allowed hosts or CIDRs are given.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub network: Option<NetworkField>,
    /// What an allowlist sandbox may reach: host names, `*.domain` patterns or presets
    /// (`pypi`, `npm`, `crates`, `github`, `debian`).
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
    /// CIDRs (or single addresses) an allowlist sandbox may reach.
    #[serde(default)]
    pub allow_cidrs: Option<Vec<String>>,
    /// Destination ports an allowlist sandbox may connect to (default: any).
    #[serde(default)]
    pub allow_ports: Option<Vec<u16>>,
    /// Secrets the sandbox uses through placeholders: `KEY=value:host`, `KEY:host` or
    /// `KEY:host:header`. Inside, `$KEY` holds a placeholder that the egress proxy replaces
    /// with the value only in HTTPS requests to `host`; implies the allowlist network with
    /// `host` on it. A value not given inline comes from the host's secret store or
    /// environment only where `[api]` allows it (`secrets_from_store`, `secrets_from_env`).
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// Keys whose real values the sandbox reads from `/run/agentkernel/secrets/KEY`
    /// (visible to the sandbox; values found as for `secrets`).
    #[serde(default)]
    pub secret_files: Option<Vec<String>>,
}

/// Creates a named sandbox and starts it.
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes", request_body = CreateRequest,
    responses((status = 201, description = "Created and running", body = SandboxInfo)))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    validate_name(&request.name)?;
    let source =
        GitSource::from_fields(request.source_url.as_deref(), request.source_ref.as_deref())?;
    let options = SandboxOptions {
        backend: request.backend,
        image: request.image,
        profile: request.profile,
        cpus: request.vcpus.map(f64::from),
        memory: request.memory_mb.map(|mb| format!("{mb}M")),
        volumes: request.volumes.filter(|v| !v.is_empty()),
        source,
        network: request.network.map(|field| field.0),
        allow_hosts: request.allow_hosts,
        allow_cidrs: request.allow_cidrs,
        allow_ports: request.allow_ports,
        secrets: request.secrets.filter(|v| !v.is_empty()),
        secret_files: request.secret_files.filter(|v| !v.is_empty()),
        ..SandboxOptions::default()
    }
    .over(state.config.base_options.clone());
    let spec = resolve(options, &state.config.cwd, new_sandbox_id())?;
    let ttl = request.ttl.as_deref().map(parse_duration).transpose()?;
    // Created running, as MCP's create: the one service call for both.
    let record = state
        .service
        .create_running(Caller::Api, &request.name, spec, ttl)
        .await?;
    Ok(with_status(StatusCode::CREATED, SandboxInfo::from(&record)))
}

/// One named sandbox.
#[utoipa::path(get, path = "/sandboxes/{name}", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox's name")),
    responses((status = 200, description = "The sandbox", body = SandboxInfo)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.service.inspect_named(&name).await?;
    let denied = state.service.egress_denied(&record)?;
    Ok(ok(SandboxInfo::from(&record).with_denied(denied)))
}

/// One named sandbox, by its uuid.
#[utoipa::path(get, path = "/sandboxes/by-uuid/{uuid}", tag = "sandboxes",
    params(("uuid" = String, Path, description = "The sandbox's uuid")),
    responses((status = 200, description = "The sandbox", body = SandboxInfo)))]
pub async fn by_uuid(
    State(state): State<AppState>,
    Path(uuid): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.service.inspect_by_uuid(&uuid).await?;
    let denied = state.service.egress_denied(&record)?;
    Ok(ok(SandboxInfo::from(&record).with_denied(denied)))
}

/// Removes a sandbox (stopping it first) and its workdir.
#[utoipa::path(delete, path = "/sandboxes/{name}", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox's name")),
    responses((status = 200, description = "Removed", body = String)))]
pub async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    state.service.remove_named(Caller::Api, &name, true).await?;
    Ok(ok("removed"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PauseQuery {
    /// Save it to disk with its memory.
    #[serde(default)]
    pub save: bool,
}

/// Pauses a running sandbox: its processes (a VM's vCPUs) stop where they are and use no
/// CPU, keeping their memory and connections, until resumed.
/// With `?save=true`, it is saved to disk with its memory and its processes end (state
/// `saved`; QEMU microVMs only, 503 elsewhere) until resumed.
#[utoipa::path(post, path = "/sandboxes/{name}/pause", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox's name"), PauseQuery),
    responses((status = 200, description = "Paused", body = SandboxInfo)))]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<PauseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let record = state
        .service
        .pause_named(Caller::Api, &name, query.save)
        .await?;
    Ok(ok(SandboxInfo::from(&record)))
}

/// Resumes a paused sandbox where it stopped.
#[utoipa::path(post, path = "/sandboxes/{name}/resume", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox's name")),
    responses((status = 200, description = "Running again", body = SandboxInfo)))]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let record = state.service.resume_named(Caller::Api, &name).await?;
    Ok(ok(SandboxInfo::from(&record)))
}

/// `POST /sandboxes/{name}/extend`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// How much longer it may live, e.g. `30m`.
    pub by: String,
}

/// `POST /sandboxes/{name}/extend`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExtendResponse {
    /// RFC 3339.
    pub expires_at: Option<String>,
}

/// Pushes the sandbox's expiry back; the service removes it once the expiry passes.
#[utoipa::path(post, path = "/sandboxes/{name}/extend", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox's name")),
    request_body = ExtendRequest,
    responses((status = 200, description = "The new expiry", body = ExtendResponse)))]
pub async fn extend(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ExtendRequest>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let by = parse_duration(&request.by)?;
    let record = state.service.extend_named(Caller::Api, &name, by).await?;
    Ok(ok(ExtendResponse {
        expires_at: record.expires_at.map(rfc3339_unix),
    }))
}

/// The sandbox's audit log entries.
#[utoipa::path(get, path = "/sandboxes/{name}/logs", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox's name")),
    responses((status = 200, description = "Audit entries, oldest first", body = Vec<Object>)))]
pub async fn logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    // A sandbox that does not exist (or no longer does) has no logs to show: 404.
    state.service.require_named(&name)?;
    let log = state.service.audit_log()?;
    let entries = tokio::task::spawn_blocking(move || log.read(Some(&name)))
        .await
        .map_err(|e| ApiError::Internal(format!("audit log reader: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ok(entries))
}
