//! Errors of the gVisor backend.

use ak_core::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum GvisorError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// runsc is missing, too old, or this process may not use it.
    #[error("{0}")]
    Unavailable(String),
    /// The spec asks for something this backend cannot provide.
    #[error("{0}")]
    Unsupported(String),
    /// A runsc command failed; what it printed.
    #[error("runsc {command} failed: {message}")]
    Runsc { command: String, message: String },
    #[error("the agent {0}")]
    Agent(String),
    #[error("cannot write the OCI bundle: {0}")]
    Bundle(String),
    #[error("network set-up failed: {0}")]
    Network(String),
}

impl GvisorError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GvisorError {
        let what = what.into();
        move |source| GvisorError::Io { what, source }
    }
}

impl From<GvisorError> for BackendError {
    fn from(error: GvisorError) -> Self {
        match error {
            GvisorError::Unavailable(reason) => BackendError::Unavailable {
                backend: "gvisor".into(),
                reason,
            },
            GvisorError::Unsupported(reason) => BackendError::Unsupported {
                backend: "gvisor".into(),
                reason,
            },
            other => BackendError::Setup(other.to_string()),
        }
    }
}
