//! The published Python SDK (`pip install agentkernel-sdk`) against `agentkernel serve`:
//! its own requests and parsing, not ours. A missing python3 or SDK fails the test and
//! says what to install.

use std::path::Path;
use std::process::Command;

use crate::server::{Server, TOKEN};

/// Runs `script` (beside this file) with python3 and fails loudly when the interpreter or
/// one of `modules` is missing.
pub fn python(script: &str, modules: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let probe = Command::new("python3").arg("--version").output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "python3 is required for this test (apt-get install python3): {probe:?}"
    );
    for module in modules {
        let found = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "the Python module '{module}' is missing: pip install agentkernel-sdk mcp\n{}",
            String::from_utf8_lossy(&found.stderr)
        );
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/api")
        .join(script);
    let mut command = Command::new("python3");
    command.arg(path);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[test]
fn python_sdk_drives_the_server() {
    let server = Server::start(Some(TOKEN), &[]);
    let output = python(
        "sdk_test.py",
        &["agentkernel"],
        &[
            ("AGENTKERNEL_BASE_URL", server.address.as_str()),
            ("AGENTKERNEL_API_KEY", TOKEN),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ALL SDK CHECKS PASSED"), "{stdout}");
}
