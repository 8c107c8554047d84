//! Errors of the microVM backend.

use std::path::PathBuf;

use ak_core::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    /// A program the backend needs is not installed.
    #[error("{program} not found ({hint})")]
    MissingTool { program: String, hint: String },
    /// The guest kernel or base image is not built yet, or a given one is unusable.
    #[error("{0}")]
    Artifact(String),
    #[error("{what} failed: {detail}")]
    Build { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The VM did not come up; `log` is the end of what it printed.
    #[error("the VM did not start: {reason}{}", show_log(log))]
    Boot { reason: String, log: String },
    #[error("the microvm backend cannot run this sandbox: {0}")]
    Unsupported(String),
    #[error("the vsock connection to the agent failed: {0}")]
    Vsock(String),
    #[error("the serial connection to the agent failed: {0}")]
    Serial(String),
    /// Saving or restoring a VM's memory state failed.
    #[error("the VM's memory state: {0}")]
    State(String),
    #[error("Firecracker's API refused {request}: {status} {body}")]
    FirecrackerApi {
        request: String,
        status: u16,
        body: String,
    },
    /// The VM's network could not be set up on the host.
    #[error("the VM's network: {0}")]
    Network(String),
    /// QEMU's machine protocol failed or answered what it should not.
    #[error("QEMU's machine protocol (QMP): {0}")]
    Qmp(String),
    #[error("Firecracker's API at {}: {reason}", socket.display())]
    FirecrackerUnreachable { socket: PathBuf, reason: String },
}

fn show_log(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- the VM's last output ---\n{}", log.trim_end())
    }
}

impl MicrovmError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MicrovmError {
        let what = what.into();
        move |source| MicrovmError::Io { what, source }
    }
}

impl From<MicrovmError> for BackendError {
    fn from(error: MicrovmError) -> Self {
        match error {
            MicrovmError::MissingTool { .. } | MicrovmError::Artifact(_) => {
                BackendError::Unavailable {
                    backend: "microvm".into(),
                    reason: error.to_string(),
                }
            }
            MicrovmError::Unsupported(reason) => BackendError::Unsupported {
                backend: "microvm".into(),
                reason,
            },
            MicrovmError::Vsock(reason) | MicrovmError::Serial(reason) => {
                BackendError::Connect(reason)
            }
            other => BackendError::Setup(other.to_string()),
        }
    }
}
