//! `GET /health` and `GET /backends`: liveness, and each backend as its probe found it.

use ak_core::BackendKind;
use ak_core::config::DEFAULT_BACKEND;
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use crate::AppState;
use crate::error::{ApiError, ok};

/// Liveness: `"ok"`. Needs no token.
#[utoipa::path(get, path = "/health", tag = "info", security(()),
    responses((status = 200, description = "The server runs", body = String)))]
pub async fn health() -> Response {
    ok("ok")
}

/// One backend as the SDKs describe it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackendDescriptor {
    #[schema(value_type = String, example = "native")]
    pub backend: BackendKind,
    /// Built into this agentkernel.
    pub configured: bool,
    /// Its probe found everything it needs on this host.
    pub usable: bool,
    /// Why it is not usable, or a short note when it is.
    pub readiness_reason: String,
    #[schema(value_type = Object)]
    pub capabilities: ak_core::backend::Capabilities,
}

/// `GET /backends`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackendDiscovery {
    pub default_backend: String,
    pub backends: Vec<BackendDescriptor>,
    /// The server's warm pools, and why one backs off when it cannot build.
    pub pools: Vec<PoolInfo>,
}

/// One warm pool as `/backends` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolInfo {
    /// Backend, image, profile and limits.
    pub pool: String,
    pub warm: usize,
    pub in_use: usize,
    /// Why the last spare could not be built, while the pool backs off.
    pub last_error: Option<String>,
    /// When it tries again, in milliseconds from now.
    pub retry_in_ms: Option<u64>,
}

/// Each backend as its availability probe found it, and what it can do.
#[utoipa::path(get, path = "/backends", tag = "info",
    responses((status = 200, description = "The backends", body = BackendDiscovery)))]
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
    let pools = state
        .service
        .pools()
        .map(|pools| pools.status())
        .unwrap_or_default()
        .into_iter()
        .map(|status| PoolInfo {
            pool: status.pool,
            warm: status.warm,
            in_use: status.in_use,
            last_error: status.last_error,
            retry_in_ms: status.retry_in_ms,
        })
        .collect();
    Ok(ok(BackendDiscovery {
        default_backend,
        backends: probes,
        pools,
    }))
}
