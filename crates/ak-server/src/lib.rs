//! ak-server: the HTTP API that the agentkernel SDKs speak (axum, with SSE streaming and
//! bearer-token auth) and the MCP server; both only translate requests into Service calls.

mod auth;
mod body;
mod error;
mod exec;
mod files;
mod info;
pub mod mcp;
mod network;
mod openapi;
mod output;
mod run;
mod sandboxes;
mod serve;
mod snapshots;

use std::path::PathBuf;
use std::sync::Arc;

use ak_core::config::SandboxOptions;
use ak_service::Service;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post, put};

pub use crate::auth::{
    StoredToken, TOKEN_FILE, TokenCheck, TokenFileError, check_listen_address, load_or_create_token,
};
pub use crate::error::ApiError;
pub use crate::openapi::{ApiDoc, OPERATIONS, document as openapi_document};
pub use crate::serve::{
    Bound, DEFAULT_HEADER_READ_TIMEOUT, Listen, ServeError, bind_private_socket,
};

/// Largest request body accepted by default (a file upload is one body).
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

/// How the API behaves, fixed when the server starts.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The bearer token every request (but `GET /health`) must carry; `None` lets every
    /// request in (only for listeners that only this user can reach).
    pub token: Option<String>,
    /// Largest request body, in bytes; larger ones get 413.
    pub max_body: usize,
    /// Sandbox settings from the server's config files, under each request's own.
    pub base_options: SandboxOptions,
    /// The directory relative image paths in requests are taken from.
    pub cwd: PathBuf,
    /// How long a connection may take to send a request's head, and stay idle between
    /// requests, before it is closed.
    pub header_read_timeout: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: None,
            max_body: DEFAULT_MAX_BODY,
            base_options: SandboxOptions::default(),
            cwd: PathBuf::from("/"),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// What every handler shares: the process's one service (its pools, detached commands and
/// budgets live there) and the API's settings. Every request reaches the service as
/// [`ak_service::Caller::Api`].
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) service: Arc<Service>,
    pub(crate) config: Arc<ApiConfig>,
}

impl AppState {
    pub fn new(service: Arc<Service>, config: ApiConfig) -> Self {
        AppState {
            service,
            config: Arc::new(config),
        }
    }
}

/// The whole API. Tests call it without a socket; `serve` binds it to TCP or a Unix socket.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body;
    let mut routes = Router::new();
    for (family, what) in error::UNIMPLEMENTED_FAMILIES {
        let refuse = move |_body: error::Drained| async move { error::not_implemented(what) };
        routes = routes
            .route(&format!("/{family}"), any(refuse))
            .route(&format!("/{family}/{{*rest}}"), any(refuse));
    }
    routes
        .route("/health", get(info::health))
        .route("/backends", get(info::backends))
        .route("/openapi.json", get(openapi::serve))
        .route("/run", post(run::run))
        .route("/run/stream", post(run::run_stream))
        .route("/batch/run", post(run::batch))
        .route("/sandboxes", get(sandboxes::list).post(sandboxes::create))
        .route("/snapshots", get(snapshots::list).post(snapshots::create))
        .route(
            "/snapshots/{name}",
            get(snapshots::get_one).delete(snapshots::remove),
        )
        .route("/snapshots/{name}/restore", post(snapshots::restore))
        .route("/sandboxes/by-uuid/{uuid}", get(sandboxes::by_uuid))
        .route(
            "/sandboxes/{name}",
            get(sandboxes::get_one).delete(sandboxes::remove),
        )
        .route("/sandboxes/{name}/logs", get(sandboxes::logs))
        .route("/sandboxes/{name}/extend", post(sandboxes::extend))
        .route("/sandboxes/{name}/network", put(network::set))
        .route("/sandboxes/{name}/pause", post(sandboxes::pause))
        .route("/sandboxes/{name}/resume", post(sandboxes::resume))
        .route("/sandboxes/{name}/exec", post(exec::exec))
        .route("/sandboxes/{name}/exec/detach", post(exec::detach))
        .route("/sandboxes/{name}/exec/detached", get(exec::detached_list))
        .route(
            "/sandboxes/{name}/exec/detached/{id}",
            get(exec::detached_get).delete(exec::detached_kill),
        )
        .route(
            "/sandboxes/{name}/exec/detached/{id}/logs",
            get(exec::detached_logs),
        )
        .route("/sandboxes/{name}/files", post(files::write_many))
        .route(
            "/sandboxes/{name}/files/{*path}",
            get(files::read).put(files::write).delete(files::remove),
        )
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
