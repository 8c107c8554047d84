//! The MCP server over its line transport, spoken to as raw JSON-RPC lines (what no client
//! library lets a test send): messages over the size limit get an error answer and the
//! session goes on; a cancelled command's one-shot sandbox is released; create starts the
//! sandbox as the HTTP API's does.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use ak_core::config::SandboxOptions;
use ak_server::mcp::McpServer;
use ak_service::Service;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::local::LocalBackend;

/// The limit the session is served with, small so that tests stay cheap.
const LIMIT: usize = 4096;

struct Session {
    send: UnixStream,
    answers: tokio::io::Lines<BufReader<tokio::net::UnixStream>>,
    backend: Arc<LocalBackend>,
    _state: tempfile::TempDir,
}

impl Session {
    async fn start() -> Session {
        let state = tempfile::tempdir().unwrap();
        let backend = Arc::new(LocalBackend::default());
        let service = Arc::new(Service::new(
            vec![backend.clone() as Arc<dyn ak_core::Backend>],
            state.path().join("registry.db"),
        ));
        let (send, read) = UnixStream::pair().unwrap();
        let (write, answers) = tokio::net::UnixStream::pair().unwrap();
        let server = McpServer::new(service, SandboxOptions::default(), "/".into());
        tokio::spawn(server.serve_lines(read, write, LIMIT));
        let mut session = Session {
            send,
            answers: BufReader::new(answers).lines(),
            backend,
            _state: state,
        };
        session.line(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"}}}),
        );
        let answer = session.answer().await;
        assert_eq!(answer["id"], 1, "{answer}");
        session.line(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        session
    }

    fn line(&mut self, message: &Value) {
        self.raw(message.to_string().as_bytes());
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).unwrap();
        self.send.write_all(b"\n").unwrap();
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.answers.next_line())
            .await
            .expect("an answer within 10 s")
            .unwrap()
            .expect("the session is still open");
        serde_json::from_str(&line).unwrap()
    }

    fn call(&mut self, id: u64, tool: &str, arguments: Value) {
        self.line(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_answered_and_the_session_goes_on() {
    let mut session = Session::start().await;
    let big = "x".repeat(LIMIT);
    // Not JSON: no id to answer to, so a parse error without one.
    session.raw(format!("garbage {big}").as_bytes());
    let answer = session.answer().await;
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    assert!(answer.get("id").is_none_or(Value::is_null), "{answer}");
    // A request, its id after its parameters (as the Python client writes them).
    session.line(&json!({"method": "tools/call",
        "params": {"name": "sandbox_list", "arguments": {"pad": big}},
        "jsonrpc": "2.0", "id": 5}));
    let answer = session.answer().await;
    assert_eq!(answer["id"], 5, "{answer}");
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("over this server's limit of 4096 bytes"),
        "{message}"
    );
    // A notification gets no answer; the next request does.
    session.line(
        &json!({"jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": big, "progress": 1}}),
    );
    session.call(6, "sandbox_list", json!({}));
    let answer = session.answer().await;
    assert_eq!(answer["id"], 6, "{answer}");
    assert_eq!(
        answer["result"]["structuredContent"],
        json!({"sandboxes": []})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_releases_its_sandbox() {
    let mut session = Session::start().await;
    session.call(7, "sandbox_run", json!({"command": ["sleep", "60"]}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while session.backend.running() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(session.backend.running(), 1, "the run started");
    session.line(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 7, "reason": "test"}}),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while session.backend.running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        session.backend.running(),
        0,
        "the cancelled run's sandbox was released"
    );
    // The cancelled call gets no answer; the next one does.
    session.call(8, "sandbox_list", json!({}));
    let answer = session.answer().await;
    assert_eq!(answer["id"], 8, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_starts_the_sandbox() {
    let mut session = Session::start().await;
    session.call(9, "sandbox_create", json!({"name": "made"}));
    let answer = session.answer().await;
    assert_eq!(
        answer["result"]["structuredContent"]["status"], "running",
        "{answer}"
    );
    assert_eq!(session.backend.running(), 1);
    session.call(
        10,
        "sandbox_exec",
        json!({"name": "made", "command": ["echo", "hi"]}),
    );
    let answer = session.answer().await;
    assert_eq!(
        answer["result"]["structuredContent"]["output"], "hi\n",
        "{answer}"
    );
}
