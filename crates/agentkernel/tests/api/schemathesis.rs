//! The OpenAPI document against the server it describes, with schemathesis (PyPI; `.ci/run`
//! installs it): a few generated requests per operation against `agentkernel serve` on
//! loopback with a token, checking that no answer is a server error, that every status and
//! content type is documented for its operation, that every answer matches its schema and
//! that no operation that needs the token answers without it. Every sandbox
//! the run made is removed afterwards. A missing schemathesis fails the test.

use std::path::Path;
use std::process::Command;

use crate::http::tcp;
use crate::server::{Server, TOKEN};

/// Generated cases per operation and phase: enough for every operation's shapes, small
/// enough for about ten seconds.
const EXAMPLES: &str = "5";

#[test]
fn openapi_document_matches_the_server() {
    let version = Command::new("schemathesis").arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "schemathesis is required for this test (pip install schemathesis): {version:?}"
    );
    let server = Server::start(Some(TOKEN), &[]);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/schemathesis.toml");
    // Its working directory gets hypothesis' example database: keep it out of the tree.
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new("schemathesis")
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(format!("{}/openapi.json", server.address))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", EXAMPLES, "--workers", "2"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,\
             content_type_conformance,ignored_auth",
        ])
        .current_dir(scratch.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);

    // Whatever the outcome, nothing the run made is left behind.
    let port = server.port();
    let listed = tcp(port, "GET", "/sandboxes", Some(TOKEN), None).json();
    for sandbox in listed["data"].as_array().unwrap() {
        let name = sandbox["name"].as_str().unwrap();
        let removed = tcp(
            port,
            "DELETE",
            &format!("/sandboxes/{name}"),
            Some(TOKEN),
            None,
        );
        assert_eq!(removed.status, 200, "removing {name}: {:?}", removed.json());
    }
    let left = tcp(port, "GET", "/sandboxes", Some(TOKEN), None).json();
    assert_eq!(left["data"], serde_json::json!([]), "{left}");

    assert!(
        output.status.success(),
        "schemathesis found failures\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It ran cases (a document it could not load, or no operation, is not a pass).
    assert!(
        stdout.contains(" passed") && !stdout.contains("Errored:"),
        "{stdout}"
    );
}
