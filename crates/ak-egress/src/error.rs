use std::io;

/// Why the egress helper could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("bad helper arguments: {0}")]
    Usage(String),
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("in the sandbox's namespaces: {0}")]
    Child(String),
    #[error("the egress helper failed: {0}")]
    Helper(String),
    #[error("secret interception: {0}")]
    Tls(String),
    /// A sandbox's secrets cannot be given to it as asked.
    #[error("{0}")]
    Secrets(String),
    #[error("bad policy file {path}: {message}")]
    Policy { path: String, message: String },
}

impl EgressError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> EgressError {
        let what = what.into();
        move |source| EgressError::Io { what, source }
    }
}
