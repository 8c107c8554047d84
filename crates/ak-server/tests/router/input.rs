//! Bad input: malformed JSON, wrong types, unknown fields, a missing content type, bodies
//! over the limit, traversal in names and paths. Each gets its status, and nothing changes.

use ak_server::ApiConfig;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::json;

use crate::{App, TOKEN, app, app_with};

fn raw(method: &str, uri: &str, content_type: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(Body::from(body)).unwrap()
}

async fn nothing_changed(app: &App) {
    assert!(app.service.registry().unwrap().list().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let app = app();
    let json = Some("application/json");
    let cases: Vec<(&str, &str, Option<&str>, &[u8])> = vec![
        ("POST", "/run", json, b"{not json"),
        ("POST", "/run", json, b""),
        ("POST", "/run", json, b"\xff\xfe"),
        ("POST", "/run", json, br#"{"command": "echo hi"}"#),
        ("POST", "/run", json, br#"{"command": [1, 2]}"#),
        (
            "POST",
            "/run",
            json,
            br#"{"command": ["true"], "fast": "yes"}"#,
        ),
        (
            "POST",
            "/run",
            json,
            br#"{"command": ["true"], "privileged": true}"#,
        ),
        ("POST", "/run", None, br#"{"command": ["true"]}"#),
        (
            "POST",
            "/run",
            Some("text/plain"),
            br#"{"command": ["true"]}"#,
        ),
        ("POST", "/sandboxes", json, br#"{"name": 5}"#),
        ("POST", "/sandboxes", json, br#"{"name": "a", "vcpus": -1}"#),
        (
            "POST",
            "/sandboxes",
            json,
            br#"{"name": "a", "memory_mb": "lots"}"#,
        ),
        (
            "POST",
            "/sandboxes",
            json,
            br#"{"name": "a", "secrets": ["K=v:"]}"#,
        ),
        (
            "POST",
            "/sandboxes",
            json,
            br#"{"name": "a", "volumes": ["../data:/data"]}"#,
        ),
        ("POST", "/sandboxes", json, br#"["a"]"#),
        (
            "POST",
            "/sandboxes/a/exec",
            json,
            br#"{"command": ["true"], "env": "A=1"}"#,
        ),
        (
            "POST",
            "/sandboxes/a/exec",
            json,
            br#"{"command": ["true"], "user": "root"}"#,
        ),
        (
            "PUT",
            "/sandboxes/a/files/x",
            json,
            br#"{"content": "x", "encoding": "hex"}"#,
        ),
        (
            "POST",
            "/sandboxes/a/files",
            json,
            br#"{"files": {"x": 1}}"#,
        ),
        ("POST", "/batch/run", json, br#"{"commands": [["true"]]}"#),
        (
            "POST",
            "/run",
            json,
            br#"{"command": ["true"], "network": "everywhere"}"#,
        ),
        (
            "POST",
            "/run",
            json,
            br#"{"command": ["true"], "network": 1}"#,
        ),
        (
            "POST",
            "/sandboxes",
            json,
            br#"{"name": "a", "allow_ports": [70000]}"#,
        ),
        (
            "POST",
            "/sandboxes",
            json,
            br#"{"name": "a", "allow_hosts": ["http://x.test"]}"#,
        ),
        (
            "POST",
            "/sandboxes",
            json,
            br#"{"name": "a", "network": "open", "allow_hosts": ["x.test"]}"#,
        ),
        (
            "PUT",
            "/sandboxes/a/network",
            json,
            br#"{"allow_hosts": "x.test"}"#,
        ),
        (
            "PUT",
            "/sandboxes/a/network",
            json,
            br#"{"allow_hosts": ["x.test"], "mode": "replace"}"#,
        ),
    ];
    for (method, uri, content_type, body) in cases {
        let (status, value) = app
            .send(raw(method, uri, content_type, body.to_vec()))
            .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {uri} {}: {value}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(value["success"], false);
        assert!(!value["error"].as_str().unwrap().is_empty());
    }
    nothing_changed(&app).await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = app_with(ApiConfig {
        token: Some(TOKEN.into()),
        max_body: 64 * 1024,
        ..ApiConfig::default()
    });
    let huge = format!(
        r#"{{"name": "big", "image": "{}"}}"#,
        "a".repeat(100 * 1024)
    );
    let (status, value) = app
        .send(raw(
            "POST",
            "/sandboxes",
            Some("application/json"),
            huge.into_bytes(),
        ))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    assert_eq!(value["success"], false);
    // Without a length header too (a chunked upload is cut off at the limit).
    let stream =
        futures_util::stream::iter((0..200).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let request = Request::post("/run")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    let (status, _) = app.send(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    nothing_changed(&app).await;
}

#[tokio::test]
async fn traversal_in_names_is_refused() {
    let app = app();
    for name in ["../x", "a b", "-rf", ".hidden", "a;id", "$(id)"] {
        app.error(
            "POST",
            "/sandboxes",
            Some(json!({"name": name})),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    for uri in [
        "/sandboxes/..%2Fx",
        "/sandboxes/%2E%2E",
        "/sandboxes/a%20b/exec",
        "/sandboxes/-x/files/etc/passwd",
        "/sandboxes/..%2F..%2Fetc/logs",
    ] {
        let (method, body) = if uri.ends_with("/exec") {
            ("POST", Some(json!({"command": ["true"]})))
        } else {
            ("GET", None)
        };
        app.error(method, uri, body, StatusCode::BAD_REQUEST).await;
    }
    app.error(
        "GET",
        "/sandboxes/by-uuid/..%2F..%2Fetc",
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    nothing_changed(&app).await;
}

#[tokio::test]
async fn traversal_in_file_paths_is_refused() {
    let app = app();
    app.sandbox("files-box").await;
    for path in [
        "a/../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E/etc/passwd",
        "/workspace/../etc/passwd",
        "x%00y",
    ] {
        let uri = format!("/sandboxes/files-box/files/{path}");
        app.error("GET", &uri, None, StatusCode::BAD_REQUEST).await;
        app.error(
            "PUT",
            &uri,
            Some(json!({"content": "owned"})),
            StatusCode::BAD_REQUEST,
        )
        .await;
        app.error("DELETE", &uri, None, StatusCode::BAD_REQUEST)
            .await;
    }
    app.error(
        "POST",
        "/sandboxes/files-box/files",
        Some(json!({"files": {"tmp/ok.txt": "fine", "tmp/../escape.txt": "no"}})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // The good file of the refused batch was not written either.
    app.error(
        "GET",
        "/sandboxes/files-box/files/tmp/ok.txt",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    // A symlink out of the sandbox is followed inside it, never to the host.
    let data = app
        .data(
            "POST",
            "/sandboxes/files-box/exec",
            Some(json!({"command": ["ln", "-s", "/", "up"]})),
        )
        .await;
    assert_eq!(data["exit_code"], 0, "{data}");
    app.error(
        "GET",
        "/sandboxes/files-box/files/workspace/up/etc/hostname",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    app.data("DELETE", "/sandboxes/files-box", None).await;
}
