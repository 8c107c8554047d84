//! Named sandboxes over HTTP: lifecycle, exec, files, detached commands, audit entries.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app;

#[tokio::test]
async fn lifecycle() {
    let app = app();
    let (status, value) = app
        .call(
            "POST",
            "/sandboxes",
            Some(json!({"name": "life", "vcpus": 2, "memory_mb": 256, "profile": "restrictive"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    let created = &value["data"];
    assert_eq!(created["name"], "life");
    assert_eq!(created["status"], "running");
    assert_eq!(created["backend"], "native");
    assert_eq!(created["vcpus"], 2);
    assert_eq!(created["memory_mb"], 256);
    let created_at = created["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.contains('T'),
        "{created_at}"
    );
    let uuid = created["uuid"].as_str().unwrap().to_string();

    app.error(
        "POST",
        "/sandboxes",
        Some(json!({"name": "life"})),
        StatusCode::CONFLICT,
    )
    .await;

    let one = app.data("GET", "/sandboxes/life", None).await;
    assert_eq!(one["uuid"], uuid.as_str());
    let by_uuid = app
        .data("GET", &format!("/sandboxes/by-uuid/{uuid}"), None)
        .await;
    assert_eq!(by_uuid["name"], "life");
    let list = app.data("GET", "/sandboxes", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "life");

    // Exec in a stopped sandbox is a state conflict.
    app.service
        .stop_named(ak_service::Caller::Local, "life")
        .await
        .unwrap();
    assert_eq!(
        app.data("GET", "/sandboxes/life", None).await["status"],
        "stopped"
    );
    app.error(
        "POST",
        "/sandboxes/life/exec",
        Some(json!({"command": ["true"]})),
        StatusCode::CONFLICT,
    )
    .await;

    // Every step is in the audit log, which the API serves per sandbox while it exists.
    let logs = app.data("GET", "/sandboxes/life/logs", None).await;
    let actions: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["create", "start", "stop"] {
        assert!(actions.contains(&action), "{action} missing: {actions:?}");
    }
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .all(|e| e["sandbox"] == "life")
    );

    assert_eq!(app.data("DELETE", "/sandboxes/life", None).await, "removed");
    app.error("GET", "/sandboxes/life", None, StatusCode::NOT_FOUND)
        .await;
    app.error("DELETE", "/sandboxes/life", None, StatusCode::NOT_FOUND)
        .await;
    app.error(
        "GET",
        &format!("/sandboxes/by-uuid/{uuid}"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    app.error(
        "POST",
        "/sandboxes/nobody/exec",
        Some(json!({"command": ["true"]})),
        StatusCode::NOT_FOUND,
    )
    .await;
    // A sandbox that is gone has no logs, and no detached commands: 404 as the SDKs expect.
    app.error("GET", "/sandboxes/life/logs", None, StatusCode::NOT_FOUND)
        .await;
    app.error(
        "GET",
        "/sandboxes/life/exec/detached",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn exec_with_env_and_workdir() {
    let app = app();
    app.sandbox("runner").await;
    let data = app
        .data(
            "POST",
            "/sandboxes/runner/exec",
            Some(json!({
                "command": ["sh", "-c", "echo $GREETING; pwd; echo oops >&2; exit 5"],
                "env": ["GREETING=hello there"],
            })),
        )
        .await;
    assert_eq!(data["exit_code"], 5);
    assert!(
        data["output"]
            .as_str()
            .unwrap()
            .starts_with("hello there\n"),
        "{data}"
    );
    assert!(
        data["output"].as_str().unwrap().ends_with("oops\n"),
        "{data}"
    );

    app.data(
        "POST",
        "/sandboxes/runner/exec",
        Some(json!({"command": ["mkdir", "sub"]})),
    )
    .await;
    let data = app
        .data(
            "POST",
            "/sandboxes/runner/exec",
            Some(json!({"command": ["sh", "-c", "basename $(pwd)"], "workdir": "/workspace/sub"})),
        )
        .await;
    assert_eq!(data["output"], "sub\n", "{data}");

    for body in [
        json!({"command": ["true"], "env": ["NOEQUALS"]}),
        json!({"command": ["true"], "workdir": "relative"}),
        json!({"command": ["true"], "workdir": "/workspace/../etc"}),
        json!({"command": []}),
        json!({"command": ["true"], "timeout_ms": 0}),
    ] {
        app.error(
            "POST",
            "/sandboxes/runner/exec",
            Some(body),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let data = app
        .data(
            "POST",
            "/sandboxes/runner/exec",
            Some(json!({"command": ["sleep", "30"], "timeout_ms": 300})),
        )
        .await;
    assert_eq!(data["timed_out"], true, "{data}");
    assert_eq!(data["exit_code"], 124);
    app.data("DELETE", "/sandboxes/runner", None).await;
}

#[tokio::test]
async fn files_round_trip() {
    let app = app();
    app.sandbox("filer").await;
    assert_eq!(
        app.data(
            "PUT",
            "/sandboxes/filer/files/app/notes/hello.txt",
            Some(json!({"content": "héllo\n", "encoding": "utf8"})),
        )
        .await,
        "written"
    );
    let file = app
        .data("GET", "/sandboxes/filer/files/app/notes/hello.txt", None)
        .await;
    assert_eq!(
        file,
        json!({"content": "héllo\n", "encoding": "utf8", "size": 7})
    );
    // Paths are absolute, with or without their leading slash (`//app/…` is `/app/…`),
    // never taken from the workdir.
    let file = app
        .data("GET", "/sandboxes/filer/files//app/notes/hello.txt", None)
        .await;
    assert_eq!(file["content"], "héllo\n");
    app.error(
        "GET",
        "/sandboxes/filer/files/workspace/app/notes/hello.txt",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    // The SDKs' README example: a batch with leading slashes, read back without.
    let written = app
        .data(
            "POST",
            "/sandboxes/filer/files",
            Some(json!({"files": {
                "/app/index.js": "console.log('hi')",
                "/app/package.json": "{\"name\":\"app\"}",
            }})),
        )
        .await;
    assert_eq!(written, json!({"written": 2}));
    let file = app
        .data("GET", "/sandboxes/filer/files/app/index.js", None)
        .await;
    assert_eq!(file["content"], "console.log('hi')");

    // Binary content travels as base64 both ways.
    app.data(
        "PUT",
        "/sandboxes/filer/files/tmp/bin.dat",
        Some(json!({"content": "AP8Q", "encoding": "base64"})),
    )
    .await;
    let file = app
        .data("GET", "/sandboxes/filer/files/tmp/bin.dat", None)
        .await;
    assert_eq!(
        file,
        json!({"content": "AP8Q", "encoding": "base64", "size": 3})
    );
    app.error(
        "PUT",
        "/sandboxes/filer/files/bad.dat",
        Some(json!({"content": "!!!", "encoding": "base64"})),
        StatusCode::BAD_REQUEST,
    )
    .await;

    let written = app
        .data(
            "POST",
            "/sandboxes/filer/files",
            Some(json!({"files": {"/workspace/a.txt": "A", "workspace/dir/b.txt": "B"}})),
        )
        .await;
    assert_eq!(written, json!({"written": 2}));
    let data = app
        .data(
            "POST",
            "/sandboxes/filer/exec",
            Some(json!({"command": ["cat", "a.txt", "dir/b.txt"]})),
        )
        .await;
    assert_eq!(data["output"], "AB");

    assert_eq!(
        app.data("DELETE", "/sandboxes/filer/files/workspace/a.txt", None)
            .await,
        "deleted"
    );
    app.error(
        "GET",
        "/sandboxes/filer/files/workspace/a.txt",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    app.error(
        "DELETE",
        "/sandboxes/filer/files/workspace/a.txt",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    app.error(
        "GET",
        "/sandboxes/filer/files/workspace/dir",
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    app.error(
        "GET",
        "/sandboxes/ghost/files/a.txt",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;

    let logs = app.data("GET", "/sandboxes/filer/logs", None).await;
    let actions: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["file_write", "file_read", "file_remove", "exec"] {
        assert!(actions.contains(&action), "{action} missing: {actions:?}");
    }
    app.data("DELETE", "/sandboxes/filer", None).await;
}

async fn wait_for(app: &crate::App, uri: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let data = app.data("GET", uri, None).await;
        if done(&data) {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what} at {uri}");
}

#[tokio::test]
async fn detached_commands() {
    let app = app();
    app.sandbox("bg").await;
    let started = app
        .data(
            "POST",
            "/sandboxes/bg/exec/detach",
            Some(json!({"command": ["sh", "-c", "echo out; echo err >&2; sleep 30"]})),
        )
        .await;
    assert_eq!(started["status"], "running");
    assert_eq!(started["sandbox"], "bg");
    assert!(started["pid"].as_u64().unwrap() > 0);
    assert!(started["exit_code"].is_null());
    let id = started["id"].as_str().unwrap().to_string();
    let base = format!("/sandboxes/bg/exec/detached/{id}");

    let list = app.data("GET", "/sandboxes/bg/exec/detached", None).await;
    assert_eq!(list[0]["id"], id.as_str());
    let logs = wait_for(&app, &format!("{base}/logs"), "output", |d| {
        d["stdout"] == "out\n" && d["stderr"] == "err\n"
    })
    .await;
    assert_eq!(logs["stdout"], "out\n");
    let only_err = app
        .data("GET", &format!("{base}/logs?stream=stderr"), None)
        .await;
    assert_eq!(only_err, json!({"stdout": null, "stderr": "err\n"}));
    app.error(
        "GET",
        &format!("{base}/logs?stream=both"),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;

    assert_eq!(app.data("DELETE", &base, None).await, "killed");
    let ended = wait_for(&app, &base, "the kill", |d| d["status"] != "running").await;
    assert_eq!(ended["status"], "failed");
    assert_eq!(ended["exit_code"], 137);

    let quick = app
        .data(
            "POST",
            "/sandboxes/bg/exec/detach",
            Some(json!({"command": ["true"]})),
        )
        .await;
    let uri = format!(
        "/sandboxes/bg/exec/detached/{}",
        quick["id"].as_str().unwrap()
    );
    let done = wait_for(&app, &uri, "completion", |d| d["status"] != "running").await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["exit_code"], 0);

    app.error(
        "GET",
        "/sandboxes/bg/exec/detached/nope",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    app.error(
        "GET",
        &format!("/sandboxes/other/exec/detached/{id}"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    app.data("DELETE", "/sandboxes/bg", None).await;
    app.error("GET", &base, None, StatusCode::NOT_FOUND).await;
}

fn unix_of(rfc3339: &Value) -> i64 {
    let text = rfc3339.as_str().unwrap();
    humantime::parse_rfc3339(text)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn time_to_live_and_extend() {
    let app = app();
    app.sandbox("forever").await;
    assert!(app.data("GET", "/sandboxes/forever", None).await["expires_at"].is_null());

    let (status, value) = app
        .call(
            "POST",
            "/sandboxes",
            Some(json!({"name": "leased", "ttl": "1h"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    let first = unix_of(&value["data"]["expires_at"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((first - now - 3600).abs() <= 5, "{value}");
    let extended = app
        .data(
            "POST",
            "/sandboxes/leased/extend",
            Some(json!({"by": "30m"})),
        )
        .await;
    assert_eq!(unix_of(&extended["expires_at"]), first + 1800);

    for body in [json!({"by": "soon"}), json!({"by": "0s"}), json!({})] {
        app.error(
            "POST",
            "/sandboxes/leased/extend",
            Some(body),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    app.error(
        "POST",
        "/sandboxes/ghost/extend",
        Some(json!({"by": "1m"})),
        StatusCode::NOT_FOUND,
    )
    .await;
    app.error(
        "POST",
        "/sandboxes",
        Some(json!({"name": "bad-ttl", "ttl": "forever"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    app.error("GET", "/sandboxes/bad-ttl", None, StatusCode::NOT_FOUND)
        .await;

    // Past its expiry, the reaper removes it and nothing else.
    let (status, _) = app
        .call(
            "POST",
            "/sandboxes",
            Some(json!({"name": "short", "ttl": "1s"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(app.service.reap_expired().await, vec!["short".to_string()]);
    app.error("GET", "/sandboxes/short", None, StatusCode::NOT_FOUND)
        .await;
    app.data("GET", "/sandboxes/leased", None).await;
    app.data("GET", "/sandboxes/forever", None).await;
    // The expiry is in the audit log (the sandbox's own logs went with it).
    let entries = app
        .service
        .audit_log()
        .unwrap()
        .read(Some("short"))
        .unwrap();
    assert!(entries.iter().any(|e| e.action == "expire"), "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_name() {
    let app = std::sync::Arc::new(app());
    // More contenders than worker threads: waiting for the name's lock must not hold a
    // worker, or the holder could never finish.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                app.call("POST", "/sandboxes", Some(json!({"name": "contended"})))
                    .await
                    .0
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, conflicts), (1, 7), "{statuses:?}");
    let removals: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.call("DELETE", "/sandboxes/contended", None).await.0 })
        })
        .collect();
    let mut removed = Vec::new();
    for task in removals {
        removed.push(task.await.unwrap());
    }
    assert_eq!(
        removed.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{removed:?}"
    );
    assert!(
        removed
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::NOT_FOUND)
    );
}

#[tokio::test]
async fn a_sandbox_that_dies_during_a_request_answers_with_its_state() {
    let backend = std::sync::Arc::new(crate::local::LocalBackend::default());
    let state_dir = tempfile::tempdir().unwrap();
    let service = ak_service::Service::new(
        vec![backend.clone() as std::sync::Arc<dyn ak_core::Backend>],
        state_dir.path().join("registry.db"),
    );
    let mut app = crate::app_over(service);
    app.state_dir = state_dir;
    for (method, uri, body) in [
        ("GET", "/sandboxes/doomed/files/tmp/x", None),
        (
            "PUT",
            "/sandboxes/doomed/files/tmp/x",
            Some(json!({"content": "x"})),
        ),
        (
            "POST",
            "/sandboxes/doomed/exec",
            Some(json!({"command": ["true"]})),
        ),
    ] {
        app.sandbox("doomed").await;
        let uuid = app.data("GET", "/sandboxes/doomed", None).await["uuid"]
            .as_str()
            .unwrap()
            .to_string();
        backend.dies_on_next_connect(&uuid);
        // Not a fault (500): the sandbox's state, found when the connection broke.
        let message = app.error(method, uri, body, StatusCode::CONFLICT).await;
        assert!(message.contains("failed"), "{method} {uri}: {message}");
        let info = app.data("GET", "/sandboxes/doomed", None).await;
        assert_eq!(info["state"], "failed", "{info}");
        app.data("DELETE", "/sandboxes/doomed", None).await;
    }
}

#[tokio::test]
async fn saving_memory_is_refused_where_the_backend_cannot() {
    let app = crate::app();
    app.sandbox("kept").await;
    // This backend (as native, docker and Firecracker VMs) cannot save a sandbox with its
    // memory: unavailable here (503), said plainly, the sandbox left as it was.
    let message = app
        .error(
            "POST",
            "/sandboxes/kept/pause?save=true",
            None,
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    assert!(message.contains("with its memory"), "{message}");
    let info = app.data("GET", "/sandboxes/kept", None).await;
    assert_eq!(info["state"], "running", "{info}");
    let message = app
        .error(
            "POST",
            "/sandboxes/kept/pause?save=maybe",
            None,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(message.contains("save"), "{message}");
    app.data("DELETE", "/sandboxes/kept", None).await;
}
