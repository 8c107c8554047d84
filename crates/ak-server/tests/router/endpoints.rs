//! Health, auth, backends, runs (whole, streamed, batched), fallbacks and hidden faults.

use std::time::{Duration, Instant};

use ak_server::ApiConfig;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::{App, TOKEN, app, app_with, request};

#[tokio::test]
async fn health_needs_no_token() {
    let app = app();
    let request = Request::get("/health").body(Body::empty()).unwrap();
    let (status, value) = app.send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value, json!({"success": true, "data": "ok"}));
}

#[tokio::test]
async fn every_other_endpoint_needs_the_token() {
    let app = app();
    for (method, uri) in [
        ("GET", "/backends"),
        ("GET", "/sandboxes"),
        ("POST", "/run"),
        ("GET", "/sandboxes/x/files/a"),
        ("DELETE", "/sandboxes/x"),
        ("GET", "/no/such/route"),
    ] {
        let missing = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let (status, value) = app.send(missing).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert!(
            value["error"].as_str().unwrap().contains("missing"),
            "{value}"
        );
        for wrong in [
            "Bearer wrong-token".to_string(),
            format!("Bearer {TOKEN}x"),
            format!("Basic {TOKEN}"),
            TOKEN.to_string(),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .header(header::AUTHORIZATION, wrong.clone())
                .body(Body::empty())
                .unwrap();
            let (status, _) = app.send(request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} {wrong}");
        }
    }
    // The refusals are in the audit log, with the sandbox they were about.
    let entries = app.service.audit_log().unwrap().read(None).unwrap();
    let refused = entries
        .iter()
        .filter(|e| e.action == "request" && e.outcome == ak_service::Outcome::Refused)
        .count();
    assert_eq!(refused, 6 * 5);
    assert!(
        app.service
            .audit_log()
            .unwrap()
            .read(Some("x"))
            .unwrap()
            .len()
            >= 10,
        "refusals about sandbox x are filed under it"
    );
    // Nothing was created by the refused requests.
    assert!(app.service.registry().unwrap().list().unwrap().is_empty());
}

#[tokio::test]
async fn without_a_configured_token_requests_pass() {
    let app = app_with(ApiConfig::default());
    let request = Request::get("/sandboxes").body(Body::empty()).unwrap();
    let (status, value) = app.send(request).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["data"], json!([]));
}

#[tokio::test]
async fn backends_report_probes_and_capabilities() {
    let app = app();
    let data = app.data("GET", "/backends", None).await;
    assert_eq!(data["default_backend"], "native");
    let backends = data["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 6, "{data}");
    let native = &backends[0];
    assert_eq!(native["backend"], "native");
    assert_eq!(native["configured"], true);
    assert_eq!(native["usable"], true);
    assert!(native["readiness_reason"].is_string());
    for field in [
        "mount_cwd",
        "mount_home",
        "attach",
        "host_volumes",
        "ssh",
        "proxy_secret_bindings",
        "secret_files",
        "snapshots",
        "resume",
        "full_state_pause_resume",
        "full_state_fork",
        "endpoints",
    ] {
        assert!(
            native["capabilities"][field].is_boolean(),
            "{field}: {native}"
        );
    }
    // What the backends here do not have is not claimed (this test's in-process backend
    // has no snapshots; the real native backend's claim is checked by the SDK tests).
    for backend in backends {
        for field in [
            "mount_home",
            "host_volumes",
            "ssh",
            "proxy_secret_bindings",
            "secret_files",
            "snapshots",
            "resume",
            "full_state_pause_resume",
            "full_state_fork",
            "endpoints",
        ] {
            assert_eq!(backend["capabilities"][field], false, "{field}: {backend}");
        }
    }
    let docker = backends.iter().find(|b| b["backend"] == "docker").unwrap();
    assert_eq!(docker["configured"], false);
    assert_eq!(docker["usable"], false);
    assert_eq!(docker["capabilities"]["attach"], false);
}

#[tokio::test]
async fn sdk_endpoint_families_this_server_lacks_say_so() {
    let app = app();
    // The routes the published SDKs call for them (Python 0.21, npm 0.18).
    for (method, uri, family) in [
        ("GET", "/orchestrations", "orchestrations"),
        ("POST", "/orchestrations/o1/events", "orchestrations"),
        ("POST", "/orchestrations/o1/terminate", "orchestrations"),
        ("DELETE", "/orchestrations/definitions/d", "orchestrations"),
        ("GET", "/objects", "durable objects"),
        ("PATCH", "/objects/o1", "durable objects"),
        ("POST", "/objects/Counter/c1/call/inc", "durable objects"),
        ("GET", "/schedules/s1", "schedules"),
        ("POST", "/schedules", "schedules"),
        ("GET", "/stores", "durable stores"),
        ("POST", "/stores/s1/query", "durable stores"),
        ("POST", "/stores/s1/command", "durable stores"),
    ] {
        let message = app
            .error(method, uri, Some(json!({})), StatusCode::NOT_FOUND)
            .await;
        assert!(
            message.contains(family) && message.contains("not implemented in this server"),
            "{method} {uri}: {message}"
        );
    }
    // A body over the limit changes nothing: still the JSON refusal.
    let huge = Request::post("/schedules")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(vec![b' '; ak_server::DEFAULT_MAX_BODY + 1]))
        .unwrap();
    let (status, value) = app.send(huge).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
    assert!(
        value["error"].as_str().unwrap().contains("not implemented"),
        "{value}"
    );
    // Only those prefixes: a path that merely starts alike is no endpoint at all.
    let message = app
        .error("GET", "/schedulesx", None, StatusCode::NOT_FOUND)
        .await;
    assert_eq!(message, "no such endpoint");
}

#[tokio::test]
async fn remote_secrets_from_the_host_need_the_api_policy() {
    let app = app();
    for (field, value) in [
        ("secrets", json!(["KEY:api.example.com"])),
        ("secret_files", json!(["KEY"])),
    ] {
        let mut body = json!({"name": "refused"});
        body[field] = value;
        let message = app
            .error("POST", "/sandboxes", Some(body), StatusCode::FORBIDDEN)
            .await;
        assert!(
            message.contains("secrets_from_store") && message.contains("KEY"),
            "{field}: {message}"
        );
    }
    // Nothing was created by a refused request.
    assert_eq!(app.data("GET", "/sandboxes", None).await, json!([]));
}

#[tokio::test]
async fn run_reports_output_and_exit_code() {
    let app = app();
    let data = app
        .data(
            "POST",
            "/run",
            Some(json!({"command": ["sh", "-c", "echo out; echo err >&2; exit 3"], "image": null, "profile": "restrictive", "fast": true})),
        )
        .await;
    // The output is held once: stdout, then stderr.
    assert_eq!(data["output"], "out\nerr\n");
    assert!(
        data.get("stdout").is_none() && data.get("stderr").is_none(),
        "{data}"
    );
    assert_eq!(data["exit_code"], 3);
    assert_eq!(data["timed_out"], false);

    let data = app
        .data(
            "POST",
            "/run",
            Some(json!({"command": ["no-such-command-xyz"]})),
        )
        .await;
    assert_eq!(data["exit_code"], 127);
    assert!(
        data["output"].as_str().unwrap().contains("not found"),
        "{data}"
    );

    let entries = app.service.audit_log().unwrap().read(None).unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.action == "run" && e.detail.as_deref().unwrap().contains("exit 3"))
    );
}

#[tokio::test]
async fn run_refuses_bad_settings() {
    let app = app();
    for body in [
        json!({"command": []}),
        json!({"command": [""]}),
        json!({"command": ["true"], "profile": "strict"}),
        json!({"command": ["true"], "image": "--privileged"}),
        json!({"command": ["true"], "image": "/no/such/dir"}),
    ] {
        app.error("POST", "/run", Some(body), StatusCode::BAD_REQUEST)
            .await;
    }
}

/// Reads SSE events from a streaming body until `stop` says so or it ends.
async fn read_events(
    body: &mut Body,
    mut stop: impl FnMut(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    while !stop(&events) {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame.unwrap().into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if !name.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

#[tokio::test]
async fn stream_delivers_output_before_the_command_ends() {
    let app = app();
    let begun = Instant::now();
    let response = app
        .router
        .clone()
        .oneshot(request(
            "POST",
            "/run/stream",
            Some(json!({"command": ["sh", "-c", "echo first; sleep 20; echo second"]})),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    let events = tokio::time::timeout(
        Duration::from_secs(10),
        read_events(&mut body, |events| {
            events.iter().any(|(n, _)| n == "output")
        }),
    )
    .await
    .expect("the first output event arrives while the command still runs");
    assert!(begun.elapsed() < Duration::from_secs(15));
    assert_eq!(events[0].0, "started");
    assert!(events[0].1["pid"].as_u64().unwrap() > 0);
    assert_eq!(events[1].0, "output");
    assert_eq!(events[1].1, json!({"data": "first\n", "stream": "stdout"}));
    // Dropping the body is the client going away: the command is not waited for.
}

#[tokio::test]
async fn stream_ends_with_done_and_the_exit_code() {
    let app = app();
    let response = app
        .router
        .clone()
        .oneshot(request(
            "POST",
            "/run/stream",
            Some(json!({"command": ["sh", "-c", "echo a; echo b >&2; exit 2"]})),
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let events = read_events(&mut body, |_| false).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"started"));
    assert_eq!(names.last(), Some(&"done"), "{events:?}");
    assert_eq!(events.last().unwrap().1["exit_code"], 2);
    assert_eq!(events.last().unwrap().1["success"], false);
    let mut stdout = String::new();
    let mut stderr = String::new();
    for (name, data) in &events {
        if name == "output" {
            let text = data["data"].as_str().unwrap();
            match data["stream"].as_str().unwrap() {
                "stdout" => stdout.push_str(text),
                "stderr" => stderr.push_str(text),
                other => panic!("stream {other}"),
            }
        }
    }
    assert_eq!((stdout.as_str(), stderr.as_str()), ("a\n", "b\n"));

    // Bad input is refused before any event, with its status.
    app.error(
        "POST",
        "/run/stream",
        Some(json!({"command": []})),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn batch_runs_each_command() {
    let app = app();
    let data = app
        .data(
            "POST",
            "/batch/run",
            Some(json!({"commands": [
                {"command": ["echo", "one"]},
                {"command": ["sh", "-c", "echo two; exit 1"]},
                {"command": []},
            ]})),
        )
        .await;
    let results = data["results"].as_array().unwrap();
    assert_eq!(results[0]["output"], "one\n");
    assert_eq!(results[1]["output"], "two\n");
    assert_eq!(results[1]["exit_code"], 1);
    assert!(results[2]["error"].as_str().unwrap().contains("no command"));
    let too_many: Vec<_> = (0..65).map(|_| json!({"command": ["true"]})).collect();
    app.error(
        "POST",
        "/batch/run",
        Some(json!({"commands": too_many})),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_envelopes() {
    let app = app();
    app.error("GET", "/nope", None, StatusCode::NOT_FOUND).await;
    app.error("PATCH", "/sandboxes", None, StatusCode::METHOD_NOT_ALLOWED)
        .await;
}

#[tokio::test]
async fn faults_are_hidden_from_the_client() {
    // A registry that cannot be opened is a fault of the host, not of the request.
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let service = std::sync::Arc::new(ak_service::Service::new(
        vec![std::sync::Arc::new(crate::local::LocalBackend::default())],
        blocker.path().join("registry.db"),
    ));
    let app = App {
        router: ak_server::router(ak_server::AppState::new(
            service.clone(),
            ApiConfig::default(),
        )),
        service,
        state_dir: tempfile::tempdir().unwrap(),
    };
    let message = app
        .error("GET", "/sandboxes", None, StatusCode::INTERNAL_SERVER_ERROR)
        .await;
    assert!(
        !message.contains(blocker.path().to_str().unwrap()),
        "{message}"
    );
    assert!(message.contains("internal error"), "{message}");
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let app = app();
    let response = app
        .router
        .clone()
        .oneshot(request("GET", "/openapi.json", None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected = vec![
        "GET /health",
        "GET /backends",
        "POST /run",
        "POST /run/stream",
        "POST /batch/run",
        "GET /sandboxes",
        "POST /sandboxes",
        "GET /sandboxes/{name}",
        "DELETE /sandboxes/{name}",
        "GET /sandboxes/by-uuid/{uuid}",
        "POST /sandboxes/{name}/extend",
        "PUT /sandboxes/{name}/network",
        "POST /sandboxes/{name}/pause",
        "POST /sandboxes/{name}/resume",
        "GET /sandboxes/{name}/logs",
        "POST /sandboxes/{name}/exec",
        "POST /sandboxes/{name}/exec/detach",
        "GET /sandboxes/{name}/exec/detached",
        "GET /sandboxes/{name}/exec/detached/{id}",
        "DELETE /sandboxes/{name}/exec/detached/{id}",
        "GET /sandboxes/{name}/exec/detached/{id}/logs",
        "GET /sandboxes/{name}/files/{path}",
        "PUT /sandboxes/{name}/files/{path}",
        "DELETE /sandboxes/{name}/files/{path}",
        "POST /sandboxes/{name}/files",
        "GET /snapshots",
        "POST /snapshots",
        "GET /snapshots/{name}",
        "DELETE /snapshots/{name}",
        "POST /snapshots/{name}/restore",
    ];
    expected.sort();
    assert_eq!(documented, expected);
    // Every documented operation is served by the router (no 404 "no such endpoint", no 405).
    for operation in &documented {
        let (method, path) = operation.split_once(' ').unwrap();
        let uri = path
            .replace("{name}", "nobody")
            .replace("{uuid}", "abc")
            .replace("{id}", "x")
            .replace("{path}", "f.txt");
        let (status, value) = app.call(method, &uri, Some(json!({}))).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{operation}");
        assert_ne!(value["error"], "no such endpoint", "{operation}");
    }
}

#[tokio::test]
async fn openapi_document_describes_what_is_sent() {
    let app = app();
    let doc = ak_server::openapi_document().unwrap();
    // Unique operation ids, and each operation's error statuses, with the error envelope.
    let mut ids = Vec::new();
    for (method, path, id, errors) in ak_server::OPERATIONS {
        let operation = &doc["paths"][path][method];
        assert_eq!(operation["operationId"], *id, "{method} {path}");
        ids.push(*id);
        for status in errors.iter().flat_map(|group| group.iter()) {
            let schema = &operation["responses"][status.to_string()]["content"]["application/json"]
                ["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/ErrorBody",
                "{method} {path} {status}"
            );
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        ak_server::OPERATIONS.len(),
        "operation ids are unique"
    );
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["properties"]["success"]["enum"], json!([false]));

    // Successful answers are described inside the envelope that is sent.
    let created = &doc["paths"]["/sandboxes"]["post"]["responses"]["201"]["content"]["application/json"]
        ["schema"];
    assert_eq!(created["properties"]["success"]["enum"], json!([true]));
    assert_eq!(
        created["properties"]["data"]["$ref"],
        "#/components/schemas/SandboxInfo"
    );
    assert_eq!(created["required"], json!(["success", "data"]));
    let (status, sent) = app
        .call("POST", "/sandboxes", Some(json!({"name": "doc"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(sent["success"], true);
    assert!(sent["data"]["uuid"].is_string(), "{sent}");
    app.data("DELETE", "/sandboxes/doc", None).await;
    // A plain string answer ("ok") is JSON in the envelope too, and documented so.
    let health = &doc["paths"]["/health"]["get"]["responses"]["200"]["content"];
    assert!(health.get("text/plain").is_none(), "{health}");
    assert_eq!(
        health["application/json"]["schema"]["properties"]["data"]["type"],
        "string"
    );

    // The constraints the server enforces.
    let schemas = &doc["components"]["schemas"];
    let create = &schemas["CreateRequest"]["properties"];
    assert_eq!(create["name"]["pattern"], ak_core::spec::NAME_PATTERN);
    assert_eq!(
        create["profile"]["enum"],
        json!(["permissive", "moderate", "restrictive", null])
    );
    assert_eq!(create["backend"]["enum"][0], "native");
    assert_eq!(create["vcpus"]["minimum"], 1);
    assert_eq!(create["memory_mb"]["minimum"], 8);
    assert_eq!(create["secrets"]["type"], json!(["array", "null"]));
    for request in ["RunRequest", "ExecRequest", "BatchCommand"] {
        assert_eq!(
            schemas[request]["properties"]["command"]["minItems"], 1,
            "{request}"
        );
    }
    assert_eq!(
        schemas["BatchRequest"]["properties"]["commands"]["maxItems"],
        64
    );
    let name = &doc["paths"]["/sandboxes/{name}"]["get"]["parameters"][0];
    assert_eq!(
        name["schema"]["pattern"],
        ak_core::spec::NAME_PATTERN,
        "{name}"
    );
}

#[tokio::test]
async fn snapshot_routes_refuse_clearly() {
    let app = app();
    assert_eq!(app.data("GET", "/snapshots", None).await, json!([]));
    // Bad names are 400, unknown snapshots and sandboxes 404, unknown fields 400.
    for (method, uri, body, status, needle) in [
        (
            "GET",
            "/snapshots/a..b%2Fc",
            None,
            StatusCode::BAD_REQUEST,
            "snapshot name",
        ),
        (
            "GET",
            "/snapshots/nope",
            None,
            StatusCode::NOT_FOUND,
            "no snapshot named 'nope'",
        ),
        (
            "DELETE",
            "/snapshots/nope",
            None,
            StatusCode::NOT_FOUND,
            "no snapshot named 'nope'",
        ),
        (
            "POST",
            "/snapshots/nope/restore",
            None,
            StatusCode::NOT_FOUND,
            "no snapshot named 'nope'",
        ),
        (
            "POST",
            "/snapshots/nope/restore",
            Some(json!({"name": "x", "extra": 1})),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "POST",
            "/snapshots",
            Some(json!({"sandbox": "nobody"})),
            StatusCode::NOT_FOUND,
            "no sandbox named 'nobody'",
        ),
        (
            "POST",
            "/snapshots",
            Some(json!({"sandbox": "nobody", "name": "../x"})),
            StatusCode::BAD_REQUEST,
            "snapshot name",
        ),
        (
            "POST",
            "/snapshots",
            Some(json!({})),
            StatusCode::BAD_REQUEST,
            "sandbox",
        ),
    ] {
        let message = app.error(method, uri, body, status).await;
        assert!(message.contains(needle), "{method} {uri}: {message}");
    }
    // This test's in-process backend keeps no root on disk: it says it cannot snapshot.
    app.data("POST", "/sandboxes", Some(json!({"name": "box"})))
        .await;
    let message = app
        .error(
            "POST",
            "/snapshots",
            Some(json!({"sandbox": "box"})),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    assert!(message.contains("cannot snapshot"), "{message}");
    app.data("DELETE", "/sandboxes/box", None).await;
}
