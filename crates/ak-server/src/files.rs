//! Files of a running named sandbox: read, write (atomic), delete, and several writes in one
//! request. Paths are checked by the service and resolved by the agent inside the sandbox.
//!
//! Every path here is absolute, as in the server the SDKs were written for: the URL's
//! `/files/tmp/x` names `/tmp/x`, and a batch's `app/main.py` names `/app/main.py`.

use std::collections::BTreeMap;

use ak_core::spec::validate_name;
use axum::extract::{Path, State};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use ak_service::Caller;

use crate::AppState;
use crate::body::JsonBody;
use crate::error::{ApiError, ok};

/// How bytes (a file's content, a command's output) travel in JSON.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

impl Encoding {
    /// `bytes` as JSON text: themselves when they are UTF-8, else base64 (never text with
    /// replacement characters).
    pub fn encode(bytes: Vec<u8>) -> (String, Encoding) {
        match String::from_utf8(bytes) {
            Ok(text) => (text, Encoding::Utf8),
            Err(not_text) => (BASE64.encode(not_text.as_bytes()), Encoding::Base64),
        }
    }
}

/// The absolute path a request names: the SDKs send `app/main.py` and `/app/main.py` alike
/// for `/app/main.py` (a URL's wildcard carries no leading slash).
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// `GET /sandboxes/{name}/files/{path}`: text when the file is UTF-8, base64 otherwise.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileContent {
    pub content: String,
    pub encoding: Encoding,
    pub size: u64,
}

/// Reads a file of a running sandbox.
#[utoipa::path(get, path = "/sandboxes/{name}/files/{path}", tag = "files", params(("name" = String, Path, description = "The sandbox's name"), ("path" = String, Path, description = "Absolute path inside the sandbox, without its leading slash (`tmp/x` is `/tmp/x`)")),
    responses((status = 200, description = "The file", body = FileContent)))]
pub async fn read(
    State(state): State<AppState>,
    Path((name, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let max = state.config.max_body as u64;
    let bytes = state
        .service
        .read_file_named(Caller::Api, &name, &absolute(&path), max)
        .await?;
    let size = bytes.len() as u64;
    let (content, encoding) = Encoding::encode(bytes);
    Ok(ok(FileContent {
        content,
        encoding,
        size,
    }))
}

/// `PUT /sandboxes/{name}/files/{path}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    pub content: String,
    #[serde(default)]
    pub encoding: Encoding,
}

/// Writes a file of a running sandbox atomically (parent directories are created).
#[utoipa::path(put, path = "/sandboxes/{name}/files/{path}", tag = "files", params(("name" = String, Path, description = "The sandbox's name"), ("path" = String, Path, description = "Absolute path inside the sandbox, without its leading slash (`tmp/x` is `/tmp/x`)")),
    request_body = WriteRequest,
    responses((status = 200, description = "Written", body = String)))]
pub async fn write(
    State(state): State<AppState>,
    Path((name, path)): Path<(String, String)>,
    JsonBody(request): JsonBody<WriteRequest>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let content = match request.encoding {
        Encoding::Utf8 => request.content.into_bytes(),
        Encoding::Base64 => BASE64
            .decode(request.content.as_bytes())
            .map_err(|e| ApiError::BadRequest(format!("content is not valid base64: {e}")))?,
    };
    state
        .service
        .write_file_named(Caller::Api, &name, &absolute(&path), &content)
        .await?;
    Ok(ok("written"))
}

/// Deletes a file of a running sandbox.
#[utoipa::path(delete, path = "/sandboxes/{name}/files/{path}", tag = "files", params(("name" = String, Path, description = "The sandbox's name"), ("path" = String, Path, description = "Absolute path inside the sandbox, without its leading slash (`tmp/x` is `/tmp/x`)")),
    responses((status = 200, description = "Deleted", body = String)))]
pub async fn remove(
    State(state): State<AppState>,
    Path((name, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    state
        .service
        .remove_file_named(Caller::Api, &name, &absolute(&path))
        .await?;
    Ok(ok("deleted"))
}

/// `POST /sandboxes/{name}/files`: UTF-8 contents by absolute path (`app/x` is `/app/x`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteManyRequest {
    pub files: BTreeMap<String, String>,
}

/// `POST /sandboxes/{name}/files`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Written {
    pub written: usize,
}

/// Writes several UTF-8 files; every path is checked before anything is written.
#[utoipa::path(post, path = "/sandboxes/{name}/files", tag = "files", params(("name" = String, Path, description = "The sandbox's name")),
    request_body = WriteManyRequest,
    responses((status = 200, description = "How many were written", body = Written)))]
pub async fn write_many(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<WriteManyRequest>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    // Every path is checked before anything is written, so a bad one changes nothing.
    let files: Vec<(String, &String)> = request
        .files
        .iter()
        .map(|(path, content)| (absolute(path), content))
        .collect();
    for (path, _) in &files {
        state.service.sandbox_path(&name, path)?;
    }
    for (path, content) in &files {
        state
            .service
            .write_file_named(Caller::Api, &name, path, content.as_bytes())
            .await?;
    }
    Ok(ok(Written {
        written: request.files.len(),
    }))
}
