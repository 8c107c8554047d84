//! Errors of the native backend.

use ak_core::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("the native backend is not usable here: {0}")]
    Unavailable(String),
    #[error("step '{step}' failed: {source}")]
    ChildStep {
        step: String,
        source: std::io::Error,
    },
    #[error("cannot build the seccomp filter: {0}")]
    Seccomp(String),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("network set-up failed: {0}")]
    Network(String),
}

impl NativeError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NativeError {
        let what = what.into();
        move |source| NativeError::Io { what, source }
    }
}

impl From<NativeError> for BackendError {
    fn from(error: NativeError) -> Self {
        match error {
            NativeError::Unavailable(reason) => BackendError::Unavailable {
                backend: "native".into(),
                reason,
            },
            NativeError::InvalidSpec(reason) => BackendError::Unsupported {
                backend: "native".into(),
                reason,
            },
            other => BackendError::Setup(other.to_string()),
        }
    }
}
