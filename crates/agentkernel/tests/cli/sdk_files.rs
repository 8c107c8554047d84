//! The SDKs' README file examples (`tests/api/files_roundtrip.py`, published Python SDK)
//! against `agentkernel serve` on a backend the CLI tests cover: absolute paths, parent
//! directories made where the sandbox may write, commands seeing the same files.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use crate::common::{Mode, agentkernel};

#[path = "../support/python.rs"]
mod support;

const TOKEN: &str = "sdk-files-token";

/// A `serve` on a free loopback port, killed when dropped.
struct Serve {
    child: Child,
    address: String,
}

impl Serve {
    fn start() -> Serve {
        let mut child = agentkernel(Mode::Root, &["serve", "--port", "0"])
            .env("AGENTKERNEL_API_KEY", TOKEN)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .strip_prefix("agentkernel API listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
            .to_string();
        Serve { child, address }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// Runs the file examples on `backend` (with `image`, when given) and fails with the
/// script's output unless every check passed.
pub(crate) fn sdk_file_examples_round_trip(backend: &str, image: Option<&str>) {
    let serve = Serve::start();
    let mut env = vec![
        ("AGENTKERNEL_BASE_URL", serve.address.as_str()),
        ("AGENTKERNEL_API_KEY", TOKEN),
        ("AK_BACKEND", backend),
    ];
    if let Some(image) = image {
        env.push(("AK_IMAGE", image));
    }
    let output = support::python("files_roundtrip.py", &["agentkernel"], &env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("FILES ROUND TRIP PASSED"),
        "the file examples failed on {backend}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
