//! The router driven without a socket (tower `oneshot`), over the real service and an
//! in-process agent (see `local.rs`): every endpoint, its errors, auth and limits.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure by design"
)]

mod endpoints;
mod input;
mod local;
mod mcp;
mod policy;
mod sandboxes;

use std::sync::Arc;

use ak_server::{ApiConfig, AppState, router};
use ak_service::Service;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub const TOKEN: &str = "test-token-123";

/// A router over a private state directory.
#[derive(Debug)]
pub struct App {
    pub router: Router,
    pub service: Arc<Service>,
    pub state_dir: tempfile::TempDir,
}

pub fn app_with(config: ApiConfig) -> App {
    let state_dir = tempfile::tempdir().unwrap();
    let service = Arc::new(Service::new(
        vec![Arc::new(local::LocalBackend::default())],
        state_dir.path().join("registry.db"),
    ));
    let state = AppState::new(service.clone(), config);
    App {
        router: router(state),
        service,
        state_dir,
    }
}

/// A router over `service` (built by the test), with the default settings and [`TOKEN`].
pub fn app_over(service: Service) -> App {
    let service = Arc::new(service);
    let state = AppState::new(
        service.clone(),
        ApiConfig {
            token: Some(TOKEN.into()),
            ..ApiConfig::default()
        },
    );
    App {
        router: router(state),
        service,
        state_dir: tempfile::tempdir().unwrap(),
    }
}

/// A router that requires [`TOKEN`].
pub fn app() -> App {
    app_with(ApiConfig {
        token: Some(TOKEN.into()),
        ..ApiConfig::default()
    })
}

/// A request with the right token and, when given, a JSON body.
pub fn request(method: &str, uri: &str, body: Option<Value>) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

impl App {
    /// Sends `request` and returns the status and the parsed envelope.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(request(method, uri, body)).await
    }

    /// The data of a successful call; fails the test on any other answer.
    pub async fn data(&self, method: &str, uri: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, uri, body).await;
        assert!(status.is_success(), "{method} {uri}: {status} {value}");
        assert_eq!(value["success"], true, "{value}");
        value["data"].clone()
    }

    /// Asserts an error envelope with `status` and returns its message.
    pub async fn error(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> String {
        let (got, value) = self.call(method, uri, body).await;
        assert_eq!(got, status, "{method} {uri}: {value}");
        assert_eq!(value["success"], false, "{value}");
        let message = value["error"].as_str().unwrap().to_string();
        assert!(!message.is_empty());
        message
    }

    /// Creates and starts sandbox `name`.
    pub async fn sandbox(&self, name: &str) {
        let (status, value) = self
            .call(
                "POST",
                "/sandboxes",
                Some(serde_json::json!({"name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
    }
}
