//! `agentkernel serve` over real sockets on the native backend.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::http::{exchange, tcp};
use crate::server::{Server, TOKEN, agentkernel, assert_root};

#[test]
fn sandboxes_over_http() {
    let server = Server::start(Some(TOKEN), &[]);
    let port = server.port();
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let answer = tcp(port, method, path, Some(TOKEN), body.as_ref());
        let value = answer.json();
        (answer.status, value)
    };

    let (status, value) = call("GET", "/health", None);
    assert_eq!((status, &value["data"]), (200, &json!("ok")));
    let (status, value) = call(
        "POST",
        "/run",
        Some(
            json!({"command": ["sh", "-c", "echo hi; hostname; exit 7"], "profile": "restrictive"}),
        ),
    );
    assert_eq!(status, 200, "{value}");
    assert!(
        value["data"]["output"]
            .as_str()
            .unwrap()
            .starts_with("hi\nak-"),
        "{value}"
    );
    assert_eq!(value["data"]["exit_code"], 7);

    let (status, value) = call(
        "POST",
        "/sandboxes",
        Some(json!({"name": "e2e-box", "profile": "restrictive", "memory_mb": 256})),
    );
    assert_eq!(status, 201, "{value}");
    assert_eq!(value["data"]["status"], "running");
    let (status, value) = call(
        "POST",
        "/sandboxes/e2e-box/exec",
        Some(
            json!({"command": ["sh", "-c", "id -u; echo $X; pwd"], "env": ["X=from-env"], "sudo": true}),
        ),
    );
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["data"]["output"], "0\nfrom-env\n/workspace\n");
    let (status, _) = call(
        "PUT",
        "/sandboxes/e2e-box/files/workspace/data/in.txt",
        Some(json!({"content": "payload"})),
    );
    assert_eq!(status, 200);
    let (_, value) = call(
        "POST",
        "/sandboxes/e2e-box/exec",
        Some(json!({"command": ["cat", "/workspace/data/in.txt"]})),
    );
    assert_eq!(value["data"]["output"], "payload");
    let (status, value) = call("GET", "/sandboxes/e2e-box/files/../../etc/shadow", None);
    assert_eq!(status, 400, "{value}");
    // The host's secrets are hidden inside the sandbox: nothing to read.
    let (status, value) = call("GET", "/sandboxes/e2e-box/files//etc/shadow", None);
    assert!(status == 400 || status == 404, "{status} {value}");
    assert!(!value.to_string().contains("root:"), "{value}");

    // The CLI sees the same sandbox (one registry).
    let listed = server.cli(&["list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("e2e-box"));

    let (status, _) = call("DELETE", "/sandboxes/e2e-box", None);
    assert_eq!(status, 200);
    let (status, _) = call("GET", "/sandboxes/e2e-box", None);
    assert_eq!(status, 404);

    // No token, wrong token: refused, and written to the audit log.
    assert_eq!(tcp(port, "GET", "/sandboxes", None, None).status, 401);
    assert_eq!(
        tcp(port, "GET", "/sandboxes", Some("nope"), None).status,
        401
    );
    let log = std::fs::read_to_string(server.state.path().join("audit.log")).unwrap();
    assert!(log.contains("\"refused\""), "{log}");
    for action in [
        "\"create\"",
        "\"start\"",
        "\"exec\"",
        "\"file_write\"",
        "\"remove\"",
    ] {
        assert!(log.contains(action), "{action} missing from {log}");
    }
}

#[test]
fn expired_sandboxes_are_removed_by_the_server() {
    let server = Server::start(Some(TOKEN), &[]);
    let port = server.port();
    let body = json!({"name": "short-lived", "ttl": "1s", "profile": "restrictive"});
    let created = tcp(port, "POST", "/sandboxes", Some(TOKEN), Some(&body));
    assert_eq!(created.status, 201, "{:?}", created.json());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = tcp(port, "GET", "/sandboxes/short-lived", Some(TOKEN), None);
        if answer.status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the expired sandbox is still there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(server.state.path().join("audit.log")).unwrap();
    assert!(log.contains("\"expire\""), "{log}");
}

#[test]
fn huge_bodies_are_refused() {
    let server = Server::start(Some(TOKEN), &[]);
    let huge = vec![b'x'; 32 << 20];
    let stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let answer = exchange(stream, "POST", "/run", Some(TOKEN), Some(&huge));
    assert_eq!(answer.status, 413);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.json()["success"], false);
}

#[test]
fn stream_arrives_while_the_command_runs() {
    let server = Server::start(Some(TOKEN), &[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let body = json!({"command": ["sh", "-c", "echo first; sleep 30; echo never"]}).to_string();
    write!(
        stream,
        "POST /run/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let begun = Instant::now();
    let mut reader = BufReader::new(stream);
    let mut seen = String::new();
    while !seen.contains("event: output") || !seen.contains("first") {
        let mut line = String::new();
        let read = reader
            .read_line(&mut line)
            .expect("an event before the timeout");
        assert!(read > 0, "the stream ended early: {seen}");
        seen.push_str(&line);
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: started"), "{seen}");
    assert!(
        begun.elapsed() < Duration::from_secs(20),
        "the output came only at the end"
    );
}

#[test]
fn unix_socket_listener() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let server = Server::start(None, &["--socket", socket.to_str().unwrap()]);
    assert_eq!(server.socket(), socket);
    let mode = std::fs::metadata(&socket).unwrap().permissions();
    assert_eq!(mode.mode() & 0o777, 0o600);
    // Bound in a private directory beside it, which is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let answer = exchange(
        stream,
        "POST",
        "/run",
        None,
        Some(
            json!({"command": ["echo", "over a socket"]})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["data"]["output"], "over a socket\n");
}

#[test]
fn every_tcp_listener_needs_a_token() {
    // None configured: one is generated into the state directory, readable only by the
    // user, and only where it is goes to the terminal.
    let server = Server::start_logged(None, &[]);
    let file = server.state.path().join("api-token");
    let meta = std::fs::symlink_metadata(&file).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(token.len() >= 32, "{token}");
    let stderr = server.stderr();
    assert!(stderr.contains(file.to_str().unwrap()), "{stderr}");
    assert!(
        !stderr.contains(&token),
        "the token itself was printed: {stderr}"
    );

    let port = server.port();
    assert_eq!(tcp(port, "GET", "/sandboxes", None, None).status, 401);
    assert_eq!(
        tcp(port, "GET", "/sandboxes", Some("nope"), None).status,
        401
    );
    assert_eq!(
        tcp(port, "GET", "/sandboxes", Some(&token), None).status,
        200
    );
    // GET /health stays open (for load balancers' probes).
    assert_eq!(tcp(port, "GET", "/health", None, None).status, 200);
}

#[test]
fn a_generated_token_is_reused_by_the_next_server() {
    let server = Server::start_logged(None, &[]);
    let file = server.state.path().join("api-token");
    let first = std::fs::read_to_string(&file).unwrap();
    drop(server);
    // The same state directory, as a restarted server has.
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("api-token"), &first).unwrap();
    std::fs::set_permissions(
        state.path().join("api-token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut child = agentkernel(state.path(), &["serve", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let answer = tcp(port, "GET", "/sandboxes", Some(first.trim()), None);
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(answer.status, 200);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("using the API token"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(state.path().join("api-token")).unwrap(),
        first
    );
}

#[test]
fn beyond_loopback_a_token_is_required_and_never_waived() {
    assert_root();
    let state = tempfile::tempdir().unwrap();
    let output = agentkernel(
        state.path(),
        &[
            "serve",
            "--insecure-no-auth",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
    assert!(!state.path().join("api-token").exists());
    // An empty token is not a token.
    let output = agentkernel(state.path(), &["serve", "--port", "0"])
        .env("AGENTKERNEL_API_KEY", "")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("empty"));
    // A configured token and a request for none contradict each other.
    let output = agentkernel(
        state.path(),
        &["serve", "--insecure-no-auth", "--port", "0"],
    )
    .env("AGENTKERNEL_API_KEY", TOKEN)
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    // With a token it listens on every address.
    let server = Server::start(Some(TOKEN), &["--host", "0.0.0.0"]);
    assert_eq!(tcp(server.port(), "GET", "/health", None, None).status, 200);
    assert_eq!(
        tcp(server.port(), "GET", "/sandboxes", None, None).status,
        401
    );
    // Without one it gets a generated one there too.
    let server = Server::start_logged(None, &["--host", "0.0.0.0"]);
    assert!(server.state.path().join("api-token").exists());
    assert_eq!(
        tcp(server.port(), "GET", "/sandboxes", None, None).status,
        401
    );
}

#[test]
fn insecure_no_auth_serves_loopback_without_a_token() {
    let server = Server::start_logged(None, &["--insecure-no-auth"]);
    assert_eq!(
        tcp(server.port(), "GET", "/sandboxes", None, None).status,
        200
    );
    assert!(!server.state.path().join("api-token").exists());
}

/// Operations that lock a sandbox by name refuse a name no sandbox can have before it
/// becomes a file name (found by schemathesis: a NUL in a snapshot's sandbox was a 500).
#[test]
fn names_that_no_sandbox_can_have_are_refused_before_any_lock() {
    let server = Server::start(Some(TOKEN), &[]);
    for sandbox in ["a\u{0}b", "../../escaped", "\u{10}\u{a4}"] {
        let answer = tcp(
            server.port(),
            "POST",
            "/snapshots",
            Some(TOKEN),
            Some(&json!({"sandbox": sandbox, "name": "0"})),
        );
        assert_eq!(answer.status, 400, "{sandbox:?}: {}", answer.json());
        assert_eq!(answer.json()["success"], false);
    }
    // A valid name that no sandbox has is not found, and leaves no lock file per request.
    for i in 0..20 {
        let answer = tcp(
            server.port(),
            "POST",
            "/snapshots",
            Some(TOKEN),
            Some(&json!({"sandbox": format!("missing-{i}"), "name": "0"})),
        );
        assert_eq!(answer.status, 404, "{}", answer.json());
    }
    // Nor does a creation that fails once it holds the name (here: its source cannot be
    // cloned, nothing listens on that port).
    for i in 0..10 {
        let answer = tcp(
            server.port(),
            "POST",
            "/sandboxes",
            Some(TOKEN),
            Some(&json!({
                "name": format!("unclonable-{i}"),
                "network": "none",
                "source_url": "https://127.0.0.1:1/nothing.git",
            })),
        );
        assert!(answer.status >= 400, "{}", answer.json());
    }
    let locks = std::fs::read_dir(server.state.path().join("locks"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(locks, 0, "lock files left for sandboxes that do not exist");
}
