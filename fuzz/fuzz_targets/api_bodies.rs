//! Arbitrary request bodies (and paths) never panic the HTTP API, and every answer is the
//! JSON envelope. The first byte picks an endpoint, the rest is the body; the backend behind
//! the service refuses to make sandboxes, so input that passes validation ends there.
#![no_main]

use std::sync::{Arc, OnceLock};

use ak_core::backend::{Lifetime, SandboxHandle};
use ak_core::{Backend, BackendError, BackendKind, BackendProbe, Sandbox, SandboxSpec};
use ak_server::{ApiConfig, AppState, router};
use ak_service::Service;
use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/run"),
    ("POST", "/run/stream"),
    ("POST", "/batch/run"),
    ("POST", "/sandboxes"),
    ("POST", "/sandboxes/box/exec"),
    ("POST", "/sandboxes/box/exec/detach"),
    ("POST", "/sandboxes/box/extend"),
    ("POST", "/sandboxes/box/files"),
    ("PUT", "/sandboxes/box/files/a.txt"),
];

#[derive(Debug)]
struct Refusing;

#[async_trait::async_trait]
impl Backend for Refusing {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }
    fn probe(&self) -> BackendProbe {
        BackendProbe {
            backend: BackendKind::Native,
            usable: false,
            reason: "fuzzing".into(),
            details: Vec::new(),
        }
    }
    async fn create(&self, _: &SandboxSpec, _: Lifetime) -> Result<Box<dyn Sandbox>, BackendError> {
        Err(BackendError::Setup("fuzzing makes no sandboxes".into()))
    }
    async fn attach(&self, handle: &SandboxHandle) -> Result<Box<dyn Sandbox>, BackendError> {
        Err(BackendError::Gone(handle.id.clone()))
    }
    async fn release(&self, _: &SandboxHandle) -> Result<(), BackendError> {
        Ok(())
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    _state: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let state = tempfile::tempdir().expect("a temporary state directory");
        let service = Service::new(vec![Arc::new(Refusing)], state.path().join("registry.db"));
        let app = router(AppState::new(Arc::new(service), None, ApiConfig::default()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Harness {
            runtime,
            app,
            _state: state,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (method, path) = ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
    let harness = harness();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    harness.runtime.block_on(async {
        let response = harness
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("an answer");
        let streamed = response.headers().get(header::CONTENT_TYPE)
            == Some(&header::HeaderValue::from_static("text/event-stream"));
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        if !streamed {
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).expect("every answer is JSON");
            assert!(value["success"].is_boolean(), "not an envelope: {value}");
        }
    });
});
