//! Snapshots over HTTP, in the SDKs' routes and shapes: `GET`/`POST /snapshots`,
//! `GET`/`DELETE /snapshots/{name}`, `POST /snapshots/{name}/restore`.

use ak_core::spec::{MAX_NAME_LEN, new_sandbox_id};
use ak_service::{Caller, SnapshotInfo};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::body::{JsonBody, OptionalJsonBody};
use crate::error::{ApiError, ok, with_status};
use crate::sandboxes::SandboxInfo;

/// A snapshot as the SDKs describe it (`SnapshotMeta`), with what it holds.
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct SnapshotMeta {
    pub name: String,
    /// The sandbox it was taken of (it may be gone since).
    pub sandbox: String,
    /// The image a restore starts from; the snapshot's files go on top of it.
    pub image_tag: String,
    pub backend: String,
    pub base_image: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u64>,
    /// RFC 3339.
    pub created_at: String,
    /// `running` (its processes frozen for the copy) or `stopped`.
    pub taken_while: String,
    pub frozen_ms: u64,
    pub files: u64,
    pub bytes: u64,
    /// File data this snapshot added to the store.
    pub stored_bytes: u64,
    /// Sockets and device nodes, left out.
    pub skipped: u64,
}

impl From<SnapshotInfo> for SnapshotMeta {
    fn from(info: SnapshotInfo) -> Self {
        SnapshotMeta {
            name: info.name,
            sandbox: info.sandbox,
            image_tag: info.image_tag,
            backend: info.backend.to_string(),
            base_image: info.base_image,
            vcpus: info.vcpus,
            memory_mb: info.memory_mb,
            created_at: info.created_at,
            taken_while: info.taken_while,
            frozen_ms: info.frozen_ms,
            files: info.files,
            bytes: info.bytes,
            stored_bytes: info.stored_bytes,
            skipped: info.skipped,
        }
    }
}

/// `POST /snapshots`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The sandbox to snapshot (running: frozen for the copy; or stopped).
    pub sandbox: String,
    /// The snapshot's name; default `<sandbox>-<unix seconds>`.
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /snapshots/{name}/restore` (the body may be left out).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The new sandbox's name; default `<snapshot>-<8 hex digits>`.
    #[serde(default)]
    pub name: Option<String>,
}

/// Every snapshot.
#[utoipa::path(get, path = "/snapshots", tag = "snapshots",
    responses((status = 200, description = "Every snapshot", body = Vec<SnapshotMeta>)))]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let infos = state.service.snapshot_list()?;
    Ok(ok(infos
        .into_iter()
        .map(SnapshotMeta::from)
        .collect::<Vec<_>>()))
}

/// Snapshots a named sandbox's writable state (its root's writable layer and workdir).
#[utoipa::path(post, path = "/snapshots", tag = "snapshots", request_body = SnapshotRequest,
    responses((status = 201, description = "Taken", body = SnapshotMeta)))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<SnapshotRequest>,
) -> Result<Response, ApiError> {
    let info = state
        .service
        .snapshot_create(Caller::Api, &request.sandbox, request.name.as_deref())
        .await?;
    Ok(with_status(StatusCode::CREATED, SnapshotMeta::from(info)))
}

/// One snapshot.
#[utoipa::path(get, path = "/snapshots/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "The snapshot's name")),
    responses((status = 200, description = "The snapshot", body = SnapshotMeta)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(SnapshotMeta::from(
        state.service.snapshot_inspect(&name)?,
    )))
}

/// Removes a snapshot; sandboxes made from it keep their files.
#[utoipa::path(delete, path = "/snapshots/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "The snapshot's name")),
    responses((status = 200, description = "Removed", body = String)))]
pub async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.service.snapshot_remove(Caller::Api, &name).await?;
    Ok(ok("removed"))
}

/// A new running sandbox from a snapshot: its settings (through the `[api]` policy, as a
/// create) and its files.
#[utoipa::path(post, path = "/snapshots/{name}/restore", tag = "snapshots",
    params(("name" = String, Path, description = "The snapshot's name")),
    request_body(content = Option<RestoreRequest>, description = "May be left out"),
    responses((status = 201, description = "Created and running", body = SandboxInfo)))]
pub async fn restore(
    State(state): State<AppState>,
    Path(name): Path<String>,
    OptionalJsonBody(request): OptionalJsonBody<RestoreRequest>,
) -> Result<Response, ApiError> {
    let sandbox = match request.and_then(|r| r.name) {
        Some(sandbox) => sandbox,
        None => {
            let suffix = &new_sandbox_id()[..8];
            let prefix: String = name.chars().take(MAX_NAME_LEN - suffix.len() - 1).collect();
            format!("{prefix}-{suffix}")
        }
    };
    let record = state
        .service
        .create_from_snapshot(Caller::Api, &sandbox, &name, true)
        .await?;
    Ok(with_status(StatusCode::CREATED, SandboxInfo::from(&record)))
}
