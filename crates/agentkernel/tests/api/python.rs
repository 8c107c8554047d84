//! The published Python SDK (`pip install agentkernel-sdk`) against `agentkernel serve`:
//! its own requests and parsing, not ours. A missing python3 or SDK fails the test and
//! says what to install.

#[path = "../support/python.rs"]
mod support;

pub use support::python;

use crate::server::{Server, TOKEN};

/// The SDKs' README file examples on the native backend (`files_roundtrip.py`; the docker
/// and microvm tests run the same script on theirs).
#[test]
fn sdk_file_examples_round_trip_on_native() {
    let server = Server::start(Some(TOKEN), &[]);
    let output = python(
        "files_roundtrip.py",
        &["agentkernel"],
        &[
            ("AGENTKERNEL_BASE_URL", server.address.as_str()),
            ("AGENTKERNEL_API_KEY", TOKEN),
            ("AK_BACKEND", "native"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("FILES ROUND TRIP PASSED"),
        "the file examples failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
