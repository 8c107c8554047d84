//! What the service decides for every front end, seen through the API: the caller policy,
//! bounds on times to live and batches, one-shot sandboxes released after their command,
//! and set-ups that never stall the async workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ak_service::Service;
use ak_service::pool::PoolConfig;
use axum::http::StatusCode;
use serde_json::json;

use crate::local::LocalBackend;
use crate::{App, app, app_over, request};

#[tokio::test]
async fn api_callers_get_only_what_the_policy_allows() {
    let app = app();
    // A host directory as the image would skip the hidden-path masks.
    let message = app
        .error(
            "POST",
            "/run",
            Some(json!({"command": ["true"], "image": "/usr"})),
            StatusCode::FORBIDDEN,
        )
        .await;
    assert!(message.contains("host directory"), "{message}");
    let message = app
        .error(
            "POST",
            "/sandboxes",
            Some(json!({"name": "loose", "profile": "permissive"})),
            StatusCode::FORBIDDEN,
        )
        .await;
    assert!(message.contains("max_profile under [api]"), "{message}");
    // More memory than the host has: refused, not clamped.
    let message = app
        .error(
            "POST",
            "/sandboxes",
            Some(json!({"name": "huge", "memory_mb": 1u64 << 24})),
            StatusCode::FORBIDDEN,
        )
        .await;
    assert!(message.contains("max_memory"), "{message}");
    app.error("GET", "/sandboxes/loose", None, StatusCode::NOT_FOUND)
        .await;
    // Every refusal names its caller in the audit log.
    let entries = app.service.audit_log().unwrap().read(None).unwrap();
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| e.outcome == ak_service::Outcome::Refused && e.source == "api")
        .collect();
    assert!(refused.len() >= 3, "{entries:?}");
}

#[tokio::test]
async fn times_to_live_are_bounded_and_never_break_listing() {
    let app = app();
    let message = app
        .error(
            "POST",
            "/sandboxes",
            Some(json!({"name": "ancient", "ttl": "99999999999999h"})),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(!message.is_empty());
    app.error("GET", "/sandboxes/ancient", None, StatusCode::NOT_FOUND)
        .await;
    app.sandbox("leased").await;
    app.error(
        "POST",
        "/sandboxes/leased/extend",
        Some(json!({"by": "31days"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Extensions add up, and the sum is bounded too.
    app.data(
        "POST",
        "/sandboxes/leased/extend",
        Some(json!({"by": "20days"})),
    )
    .await;
    app.error(
        "POST",
        "/sandboxes/leased/extend",
        Some(json!({"by": "20days"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let list = app.data("GET", "/sandboxes", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn a_json_null_means_not_given() {
    let app = app();
    // What the published async SDK sends for a plain create.
    let body = json!({
        "name": "nulls", "backend": null, "image": null, "vcpus": null, "memory_mb": null,
        "profile": null, "source_url": null, "source_ref": null, "volumes": null,
    });
    let (status, value) = app.call("POST", "/sandboxes", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    // A secret from the host's store is refused to a remote caller by default.
    let message = app
        .error(
            "POST",
            "/sandboxes",
            Some(json!({"name": "secret", "secrets": ["KEY:api.example.com"]})),
            StatusCode::FORBIDDEN,
        )
        .await;
    assert!(message.contains("secrets_from_store"), "{message}");
}

#[tokio::test]
async fn remote_sources_and_volumes_stay_within_the_policy() {
    let app = app();
    // file:// would read this host's repositories: not for API callers by default.
    let message = app
        .error(
            "POST",
            "/sandboxes",
            Some(json!({"name": "cloned", "source_url": "file:///etc"})),
            StatusCode::FORBIDDEN,
        )
        .await;
    assert!(message.contains("source_protocols"), "{message}");
    // A ref without a URL, and URLs git could read as options or commands.
    for body in [
        json!({"name": "c", "source_ref": "main"}),
        json!({"name": "c", "source_url": "--upload-pack=touch /tmp/x"}),
        json!({"name": "c", "source_url": "ext::sh"}),
        json!({"name": "c", "source_url": "https://h/r", "source_ref": "-b"}),
        json!({"name": "c", "volumes": ["../x:/data"]}),
    ] {
        app.error("POST", "/sandboxes", Some(body), StatusCode::BAD_REQUEST)
            .await;
    }
    // Volumes are the host user's to create: naming a missing one is an error, and
    // leaves no directory behind.
    let message = app
        .error(
            "POST",
            "/sandboxes",
            Some(json!({"name": "vol", "volumes": ["made-up:/data"]})),
            StatusCode::NOT_FOUND,
        )
        .await;
    assert!(
        message.contains("agentkernel volume create made-up"),
        "{message}"
    );
    let list = app.data("GET", "/sandboxes", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn a_missing_working_directory_is_an_error_not_output() {
    let app = app();
    app.sandbox("wd").await;
    let message = app
        .error(
            "POST",
            "/sandboxes/wd/exec",
            Some(json!({"command": ["true"], "workdir": "/no/such/dir"})),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(message.contains("does not exist"), "{message}");
    // A missing program is still the command's answer, as a shell gives it.
    let data = app
        .data(
            "POST",
            "/sandboxes/wd/exec",
            Some(json!({"command": ["no-such-program-xyz"]})),
        )
        .await;
    assert_eq!(data["exit_code"], 127, "{data}");
}

#[tokio::test]
async fn an_empty_batch_is_refused() {
    let app = app();
    app.error(
        "POST",
        "/batch/run",
        Some(json!({"commands": []})),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn a_batch_holds_no_more_output_than_one_request_may() {
    let app = app();
    // Eight commands of 6 MiB each: 48 MiB of output, against a 16 MiB budget per request.
    let commands: Vec<_> = (0..8)
        .map(|_| json!({"command": ["head", "-c", "6291456", "/dev/zero"]}))
        .collect();
    let data = app
        .data("POST", "/batch/run", Some(json!({ "commands": commands })))
        .await;
    let results = data["results"].as_array().unwrap();
    let held: usize = results
        .iter()
        .map(|r| r["output"].as_str().unwrap().len())
        .sum();
    assert!(
        held <= ak_service::output::REQUEST_OUTPUT_BUDGET,
        "{held} bytes held"
    );
    assert!(results.iter().any(|r| r["truncated"] == true), "{held}");
    assert!(results.iter().all(|r| r["exit_code"] == 0));
}

/// A router over a service with warm pools and blocking set-ups, and the backend under it.
fn serving_app(blocking_create: Option<Duration>, setups: usize) -> (App, Arc<LocalBackend>) {
    let backend = Arc::new(LocalBackend::blocking(blocking_create));
    let state_dir = tempfile::tempdir().unwrap();
    let service = Service::new(
        vec![backend.clone() as Arc<dyn ak_core::Backend>],
        state_dir.path().join("registry.db"),
    )
    .serving(PoolConfig {
        min_warm: 0,
        max_warm: 0,
        max_total: 4,
    })
    .with_setup_limit(setups);
    let mut app = app_over(service);
    app.state_dir = state_dir;
    (app, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_show_the_pools_and_why_one_backs_off() {
    let (app, _backend) = serving_app(None, 2);
    app.data("POST", "/run", Some(json!({"command": ["true"]})))
        .await;
    let data = app.data("GET", "/backends", None).await;
    let pools = data["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{data}");
    assert!(
        pools[0]["pool"].as_str().unwrap().starts_with("native/"),
        "{data}"
    );
    assert!(pools[0]["last_error"].is_null(), "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_sandboxes_go_when_their_command_ends() {
    let (app, backend) = serving_app(None, 2);
    for fast in [true, false] {
        for _ in 0..10 {
            let data = app
                .data(
                    "POST",
                    "/run",
                    Some(json!({"command": ["sh", "-c", "(sleep 70 &); echo ran"], "fast": fast})),
                )
                .await;
            assert_eq!(data["output"], "ran\n", "{data}");
        }
    }
    // A batch's sandboxes go too.
    let commands: Vec<_> = (0..6).map(|_| json!({"command": ["true"]})).collect();
    app.data("POST", "/batch/run", Some(json!({ "commands": commands })))
        .await;
    // Released as the answer is sent; released ones give their pool room back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.running() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        backend.running(),
        0,
        "one-shot sandboxes outlived their runs"
    );
    let pools = app.service.pools().unwrap().status();
    assert!(pools.iter().all(|p| p.in_use == 0), "{pools:?}");
}

/// A run of `sleep 60` through the router, on a task of its own: aborting the task is
/// what the server does to a request's handler when its client goes away.
fn start_a_long_run(
    app: &App,
) -> tokio::task::JoinHandle<Result<axum::response::Response, std::convert::Infallible>> {
    use tower::ServiceExt;
    let router = app.router.clone();
    tokio::spawn(async move {
        router
            .oneshot(request(
                "POST",
                "/run",
                Some(json!({"command": ["sleep", "60"]})),
            ))
            .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_ends_its_run() {
    let (app, backend) = serving_app(None, 2);
    let call = start_a_long_run(&app);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.running() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backend.running(), 1, "the run started");
    // The server drops a request's handler when its client disconnects.
    call.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.running() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        backend.running(),
        0,
        "the abandoned run's sandbox was released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_during_the_set_up_leaves_no_sandbox() {
    // The set-up blocks its thread for 300 ms and goes on after the handler is dropped.
    let (app, backend) = serving_app(Some(Duration::from_millis(300)), 2);
    let call = start_a_long_run(&app);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.create_threads().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(backend.create_threads().len(), 1, "the set-up started");
    assert_eq!(backend.running(), 0, "the set-up has not finished yet");
    call.abort();
    // The set-up finishes with nobody to take its sandbox, which it then releases.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (backend.created() == 0 || backend.running() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        backend.created(),
        1,
        "the set-up went on after its caller went away"
    );
    assert_eq!(
        backend.running(),
        0,
        "the sandbox built for a caller that went away was released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_on_the_server_ends_its_run() {
    // Served as `serve` serves it (hyper over TCP), not only the router.
    let backend = Arc::new(LocalBackend::blocking(None));
    let state_dir = tempfile::tempdir().unwrap();
    let service = Service::new(
        vec![backend.clone() as Arc<dyn ak_core::Backend>],
        state_dir.path().join("registry.db"),
    )
    .serving(PoolConfig {
        min_warm: 0,
        max_warm: 0,
        max_total: 4,
    });
    let state = ak_server::AppState::new(
        Arc::new(service),
        ak_server::ApiConfig {
            token: Some(crate::TOKEN.into()),
            ..ak_server::ApiConfig::default()
        },
    );
    let bound = ak_server::Bound::bind(
        &ak_server::Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        Some(crate::TOKEN),
    )
    .await
    .unwrap();
    let address: std::net::SocketAddr = bound
        .address()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    tokio::spawn(bound.serve(state, std::future::pending()));
    for path in ["/run", "/run/stream"] {
        let body = r#"{"command":["sleep","60"]}"#;
        let call = tokio::spawn(http(address, "POST", path, Some(body)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend.running() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(backend.running(), 1, "{path}: the run started");
        // The client goes away: its connection closes.
        call.abort();
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend.running() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            backend.running(),
            0,
            "{path}: the abandoned run's sandbox was released"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn set_ups_run_off_the_async_workers() {
    // Set-ups block their thread (200 ms each here), as a real backend's system calls do;
    // run on the one async worker, they would hold up every other request meanwhile.
    let (app, backend) = serving_app(Some(Duration::from_millis(200)), 2);
    let worker = tokio::spawn(async { std::thread::current().id() })
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app.router).await });
    let run = r#"{"command":["true"]}"#;
    let burst: Vec<_> = (0..4)
        .map(|_| tokio::spawn(http(address, "POST", "/run", Some(run))))
        .collect();
    for call in burst {
        let answer = call.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let threads = backend.create_threads();
    assert_eq!(threads.len(), 4);
    assert!(
        threads.iter().all(|thread| *thread != worker),
        "a set-up ran on the async worker"
    );
    let health = http(address, "GET", "/health", None).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

/// One HTTP/1.1 request over a new connection; the whole answer as text.
async fn http(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        crate::TOKEN,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}
