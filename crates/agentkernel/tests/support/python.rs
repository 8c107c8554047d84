//! Runs a Python script of the tests (the published SDKs' and MCP client's drivers) and
//! fails loudly when the interpreter or a module it needs is missing. Shared by the `api`
//! and `cli` test crates (`#[path]`), so there is one place that says what to install.

use std::path::Path;
use std::process::Command;

/// Runs `tests/api/SCRIPT` with python3 and `env`, after checking that python3 and every
/// one of `modules` can be imported.
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
            "the Python module '{module}' is missing: pip install agentkernel-sdk mcp schemathesis\n{}",
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
