//! `GET /openapi.json`: the API's OpenAPI document, generated from the handlers' and types'
//! annotations (utoipa), so that it describes what the code does.

use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{error, exec, files, info, output, run, sandboxes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agentkernel",
        description = "Run commands in isolated sandboxes. Every JSON answer is an envelope: \
            {\"success\": true, \"data\": …} (the schemas below describe `data`) or \
            {\"success\": false, \"error\": \"…\"}."
    ),
    paths(
        info::health,
        info::backends,
        run::run,
        run::run_stream,
        run::batch,
        sandboxes::list,
        sandboxes::create,
        sandboxes::get_one,
        sandboxes::by_uuid,
        sandboxes::remove,
        sandboxes::extend,
        sandboxes::logs,
        exec::exec,
        exec::detach,
        exec::detached_list,
        exec::detached_get,
        exec::detached_logs,
        exec::detached_kill,
        files::read,
        files::write,
        files::remove,
        files::write_many,
    ),
    components(schemas(
        error::ErrorBody,
        output::RunResult,
        run::RunRequest,
        run::BatchRequest,
        run::BatchCommand,
        run::BatchResult,
        run::BatchResults,
        info::BackendDescriptor,
        info::BackendDiscovery,
        info::PoolInfo,
        sandboxes::SandboxInfo,
        sandboxes::CreateRequest,
        sandboxes::ExtendRequest,
        sandboxes::ExtendResponse,
        exec::ExecRequest,
        exec::DetachedInfo,
        exec::DetachedLogs,
        files::Encoding,
        files::FileContent,
        files::WriteRequest,
        files::WriteManyRequest,
        files::Written,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Declares the bearer token every endpoint but `/health` needs.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document itself, not wrapped in the envelope: OpenAPI tools read it as is.
pub async fn document() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
