//! `GET /openapi.json`: the API's OpenAPI document. Paths, parameters and schemas are
//! generated from the handlers' and types' annotations (utoipa); what is the same for every
//! operation is then added here, in one place each, from the code that does it:
//!
//! - every successful JSON answer is wrapped in the envelope [`crate::error::ok`] sends,
//!   `{"success": true, "data": …}` (the annotations describe `data`);
//! - each operation's error answers (`{"success": false, "error": …}`, [`ApiError`]'s
//!   statuses) and its operation id, from [`OPERATIONS`];
//! - the input constraints the server enforces, from the constants that enforce them (the
//!   name rule, profiles and backends, resource bounds, non-empty commands, batch size);
//! - the events of `/run/stream`.
//!
//! [`ApiError`]: crate::error::ApiError

use ak_core::resources::{MAX_CPUS, MAX_MEMORY, MIN_MEMORY};
use ak_core::spec::{MAX_NAME_LEN, NAME_PATTERN};
use ak_core::{BackendKind, Profile};
use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ApiError;
use crate::run::MAX_BATCH;
use crate::{error, exec, files, info, network, output, run, sandboxes, snapshots};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agentkernel",
        description = "Run commands in isolated sandboxes. Every JSON answer is an envelope: \
            {\"success\": true, \"data\": …} or {\"success\": false, \"error\": \"…\"}. \
            File paths are absolute inside the sandbox."
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
        sandboxes::pause,
        sandboxes::resume,
        sandboxes::logs,
        network::set,
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
        snapshots::list,
        snapshots::create,
        snapshots::get_one,
        snapshots::remove,
        snapshots::restore,
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
        sandboxes::AllowlistInfo,
        network::NetworkRequest,
        exec::ExecRequest,
        exec::DetachedInfo,
        exec::DetachedLogs,
        files::Encoding,
        files::FileContent,
        files::WriteRequest,
        files::WriteManyRequest,
        files::Written,
        snapshots::SnapshotMeta,
        snapshots::SnapshotRequest,
        snapshots::RestoreRequest,
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

/// What every operation that reaches a sandbox's agent may answer besides its own
/// statuses: the agent refusing a file (403), the sandbox gone or not running (404, 409),
/// a fault (500), the backend unable to reach it (503).
const AGENT: &[u16] = &[401, 403, 404, 409, 500, 503];
/// Operations that make a sandbox: the `[api]` policy's caps (403), a backend that cannot
/// run it here or capacity exhausted (503).
const MAKES: &[u16] = &[400, 401, 403, 413, 500, 503];
/// Operations on a named sandbox's record: a bad name (400), none of that name (404).
const NAMED: &[u16] = &[400, 401, 404, 500];

/// Each operation: method, path, operation id, and the error statuses it can answer with
/// (the body of each is `ErrorBody`). Every operation the annotations generate must be
/// here, and nothing else (`document` fails otherwise, and a router test reads it).
pub const OPERATIONS: &[(&str, &str, &str, &[&[u16]])] = &[
    ("get", "/health", "health", &[]),
    ("get", "/backends", "getBackends", &[&[401, 500]]),
    ("post", "/run", "run", &[MAKES]),
    ("post", "/run/stream", "runStream", &[MAKES]),
    ("post", "/batch/run", "batchRun", &[MAKES]),
    ("get", "/sandboxes", "listSandboxes", &[&[401, 500]]),
    ("post", "/sandboxes", "createSandbox", &[MAKES, &[409]]),
    ("get", "/sandboxes/{name}", "getSandbox", &[NAMED]),
    (
        "delete",
        "/sandboxes/{name}",
        "removeSandbox",
        &[NAMED, &[409, 503]],
    ),
    (
        "get",
        "/sandboxes/by-uuid/{uuid}",
        "getSandboxByUuid",
        &[NAMED],
    ),
    (
        "post",
        "/sandboxes/{name}/extend",
        "extendTtl",
        &[NAMED, &[409, 413]],
    ),
    // 409: not in the state the change starts from; 503: a backend that cannot freeze.
    (
        "post",
        "/sandboxes/{name}/pause",
        "pauseSandbox",
        &[NAMED, &[409, 503]],
    ),
    (
        "post",
        "/sandboxes/{name}/resume",
        "resumeSandbox",
        &[NAMED, &[409, 503]],
    ),
    ("get", "/sandboxes/{name}/logs", "getSandboxLogs", &[NAMED]),
    (
        "put",
        "/sandboxes/{name}/network",
        "setSandboxNetwork",
        &[NAMED, &[403, 409, 503]],
    ),
    (
        "post",
        "/sandboxes/{name}/exec",
        "execInSandbox",
        &[NAMED, AGENT, &[413]],
    ),
    (
        "post",
        "/sandboxes/{name}/exec/detach",
        "execDetached",
        &[NAMED, AGENT, &[413]],
    ),
    (
        "get",
        "/sandboxes/{name}/exec/detached",
        "detachedList",
        &[NAMED],
    ),
    (
        "get",
        "/sandboxes/{name}/exec/detached/{id}",
        "detachedStatus",
        &[NAMED],
    ),
    (
        "delete",
        "/sandboxes/{name}/exec/detached/{id}",
        "detachedKill",
        &[NAMED],
    ),
    (
        "get",
        "/sandboxes/{name}/exec/detached/{id}/logs",
        "detachedLogs",
        &[NAMED],
    ),
    (
        "get",
        "/sandboxes/{name}/files/{path}",
        "readFile",
        &[NAMED, AGENT, &[413]],
    ),
    (
        "put",
        "/sandboxes/{name}/files/{path}",
        "writeFile",
        &[NAMED, AGENT, &[413]],
    ),
    (
        "delete",
        "/sandboxes/{name}/files/{path}",
        "deleteFile",
        &[NAMED, AGENT],
    ),
    (
        "post",
        "/sandboxes/{name}/files",
        "writeFiles",
        &[NAMED, AGENT, &[413]],
    ),
    ("get", "/snapshots", "listSnapshots", &[&[401, 500]]),
    (
        "post",
        "/snapshots",
        "takeSnapshot",
        &[NAMED, &[409, 413, 503]],
    ),
    ("get", "/snapshots/{name}", "getSnapshot", &[NAMED]),
    ("delete", "/snapshots/{name}", "deleteSnapshot", &[NAMED]),
    (
        "post",
        "/snapshots/{name}/restore",
        "restoreSnapshot",
        &[MAKES, &[404, 409]],
    ),
];

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad input: malformed JSON, a bad name, path or field",
        401 => "Missing or wrong bearer token",
        403 => "Not allowed: beyond the [api] policy, or refused inside the sandbox",
        404 => "No such sandbox, snapshot, command or file",
        409 => "The name is taken, or the sandbox's state does not allow it",
        413 => "The request body or the file is too large",
        503 => "Not possible here or now: a backend that cannot run it, capacity exhausted",
        _ => "A fault of agentkernel or the host (details in the server's log)",
    }
}

/// The document as served.
pub fn document() -> Result<Value, ApiError> {
    let fault = |what: String| ApiError::Internal(format!("OpenAPI document: {what}"));
    let mut doc = serde_json::to_value(ApiDoc::openapi()).map_err(|e| fault(e.to_string()))?;
    let paths = doc["paths"]
        .as_object_mut()
        .ok_or_else(|| fault("no paths".into()))?;
    let mut seen = 0;
    for (path, item) in paths.iter_mut() {
        for (method, operation) in item.as_object_mut().into_iter().flatten() {
            let Some((_, _, id, errors)) = OPERATIONS
                .iter()
                .find(|(m, p, _, _)| m == method && p == path)
            else {
                return Err(fault(format!("{method} {path} is not in OPERATIONS")));
            };
            seen += 1;
            operation["operationId"] = json!(id);
            let responses = operation["responses"]
                .as_object_mut()
                .ok_or_else(|| fault(format!("{method} {path} has no responses")))?;
            for (status, response) in responses.iter_mut() {
                if status.starts_with('2') {
                    wrap_in_envelope(response);
                }
            }
            for status in errors.iter().flat_map(|group| group.iter()) {
                responses.insert(
                    status.to_string(),
                    json!({
                        "description": reason(*status),
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
                    }),
                );
            }
            constrain_path_parameters(operation);
        }
    }
    if seen != OPERATIONS.len() {
        return Err(fault(format!(
            "{} operations documented, {} in OPERATIONS",
            seen,
            OPERATIONS.len()
        )));
    }
    stream_events(&mut doc);
    constrain_schemas(&mut doc);
    Ok(doc)
}

/// `{"success": true, "data": <what the annotation says>}` for a JSON answer. A plain
/// string answer (`body = String`, which utoipa documents as `text/plain`) is sent as
/// JSON too: `{"success": true, "data": "written"}`.
fn wrap_in_envelope(response: &mut Value) {
    if let Some(content) = response.get_mut("content").and_then(Value::as_object_mut)
        && let Some(text) = content.remove("text/plain")
    {
        content.insert("application/json".to_string(), text);
    }
    let Some(content) = response
        .get_mut("content")
        .and_then(|content| content.get_mut("application/json"))
    else {
        return;
    };
    let data = content["schema"].take();
    content["schema"] = json!({
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"type": "boolean", "enum": [true]}, "data": data},
    });
}

/// The sandbox name rule on every `{name}` path parameter.
fn constrain_path_parameters(operation: &mut Value) {
    let parameters = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut);
    for parameter in parameters.into_iter().flatten() {
        if parameter["in"] != "path" {
            continue;
        }
        if parameter["name"] == "name" {
            parameter["schema"] = name_schema();
        }
        // 32 hex digits, dashes anywhere (the dashed form included).
        if parameter["name"] == "uuid" {
            parameter["schema"] = json!({"type": "string", "pattern": "^-*([0-9A-Fa-f]-*){32}$"});
        }
    }
}

fn name_schema() -> Value {
    json!({"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": MAX_NAME_LEN})
}

/// `/run/stream`'s events, as an SSE client parses them: `event` and its JSON `data`.
fn stream_events(doc: &mut Value) {
    let content = &mut doc["paths"]["/run/stream"]["post"]["responses"]["200"]["content"];
    content["text/event-stream"]["schema"] = json!({
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": ["started", "output", "done", "error"]},
            "data": {
                "type": "string",
                "description": "JSON: started {pid}; output {data, stream: stdout|stderr}; \
                    done {exit_code, success, timed_out}; error {message}",
            },
        },
    });
}

/// What the server refuses, written into the request schemas.
fn constrain_schemas(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    let profiles: Vec<&str> = Profile::ALL.iter().map(|p| p.as_str()).collect();
    let backends: Vec<&str> = BackendKind::ALL.iter().map(|b| b.as_str()).collect();
    // argv[0] must be a non-empty program name; the rest may be anything.
    let command = json!({
        "type": "array",
        "minItems": 1,
        "prefixItems": [{"type": "string", "minLength": 1}],
        "items": {"type": "string"},
    });
    for schema in ["RunRequest", "ExecRequest", "BatchCommand"] {
        schemas[schema]["properties"]["command"] = command.clone();
    }
    let mut network = network::network_schema();
    network["oneOf"]
        .as_array_mut()
        .into_iter()
        .for_each(|choices| choices.push(json!({"type": "null"})));
    for schema in ["RunRequest", "CreateRequest"] {
        schemas[schema]["properties"]["profile"] =
            json!({"type": ["string", "null"], "enum": nullable(&profiles)});
        schemas[schema]["properties"]["network"] = network.clone();
    }
    let create = &mut schemas["CreateRequest"]["properties"];
    create["name"] = name_schema();
    create["backend"] = json!({"type": ["string", "null"], "enum": nullable(&backends)});
    create["vcpus"] =
        json!({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_CPUS as u64});
    create["memory_mb"] = json!({
        "type": ["integer", "null"],
        "minimum": MIN_MEMORY >> 20,
        "maximum": MAX_MEMORY >> 20,
    });
    schemas["ExecRequest"]["properties"]["timeout_ms"] =
        json!({"type": ["integer", "null"], "minimum": 1});
    schemas["BatchRequest"]["properties"]["commands"]["minItems"] = json!(1);
    schemas["BatchRequest"]["properties"]["commands"]["maxItems"] = json!(MAX_BATCH);
    schemas["ErrorBody"]["properties"]["success"] = json!({"type": "boolean", "enum": [false]});
}

fn nullable(names: &[&str]) -> Value {
    let mut values: Vec<Value> = names.iter().map(|n| json!(n)).collect();
    values.push(Value::Null);
    Value::Array(values)
}

/// `GET /openapi.json`: the document itself, not wrapped in the envelope (OpenAPI tools
/// read it as is).
pub async fn serve() -> Response {
    match document() {
        Ok(doc) => Json(doc).into_response(),
        Err(error) => error.into_response(),
    }
}
