//! `agentkernel mcp` driven by the MCP client library (`pip install mcp`) over stdio:
//! initialize, tools/list, and each tool with good and bad input.

use crate::python::python;
use crate::server::{assert_root, shared_host};

#[test]
fn mcp_client_drives_every_tool() {
    assert_root();
    let _host = shared_host();
    let state = tempfile::tempdir().unwrap();
    let registry = state.path().join("registry.db");
    let output = python(
        "mcp_test.py",
        &["mcp", "anyio"],
        &[
            ("AK_BIN", env!("CARGO_BIN_EXE_agentkernel")),
            ("AK_ENV_AGENTKERNEL_AGENT", env!("CARGO_BIN_EXE_ak-agent")),
            ("AK_ENV_AGENTKERNEL_CONFIG", "/dev/null"),
            ("AK_ENV_AGENTKERNEL_REGISTRY", registry.to_str().unwrap()),
            ("AK_ENV_PATH", "/usr/local/bin:/usr/bin:/bin"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("ALL MCP CHECKS PASSED"),
        "the MCP script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The tools went through the service: the audit log names MCP as the caller.
    let log = std::fs::read_to_string(state.path().join("audit.log")).unwrap();
    assert!(log.contains("\"source\":\"mcp\""), "{log}");
    assert!(log.contains("\"action\":\"file_write\""), "{log}");
    // Input refused before any service call is recorded too.
    assert!(log.contains("mcp sandbox_run: invalid image"), "{log}");
}
