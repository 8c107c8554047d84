//! `GET /health` and `GET /backends`: liveness, and each backend as its probe found it.

use ak_core::BackendKind;
use ak_core::config::DEFAULT_BACKEND;
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use crate::AppState;
use crate::error::{ApiError, ok};

pub async fn health() -> Response {
    ok("ok")
}

/// One backend as the SDKs describe it.
#[derive(Debug, Serialize)]
pub struct BackendDescriptor {
    pub backend: BackendKind,
    /// Built into this agentkernel.
    pub configured: bool,
    /// Its probe found everything it needs on this host.
    pub usable: bool,
    /// Why it is not usable, or a short note when it is.
    pub readiness_reason: String,
    pub capabilities: ak_core::backend::Capabilities,
}

pub async fn backends(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Probes read /proc and /sys and may run helpers: keep them off the async workers.
    let service = state.service.clone();
    let probes = tokio::task::spawn_blocking(move || {
        let probes = service.status();
        probes
            .into_iter()
            .map(|probe| BackendDescriptor {
                backend: probe.backend,
                configured: service.has_backend(probe.backend),
                usable: probe.usable,
                readiness_reason: probe.reason,
                capabilities: service.capabilities(probe.backend),
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("backend probes: {e}")))?;
    // What a run that names no backend gets: the server's config, else the default.
    let default_backend = state
        .config
        .base_options
        .backend
        .clone()
        .unwrap_or_else(|| DEFAULT_BACKEND.to_string());
    Ok(ok(serde_json::json!({
        "default_backend": default_backend,
        "backends": probes,
    })))
}
