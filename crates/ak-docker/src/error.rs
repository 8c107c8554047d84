//! Errors of the container backend.

use std::path::PathBuf;

use ak_core::{BackendError, BackendKind};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no {kind} socket found (looked at {})", display_paths(candidates))]
    NoSocket {
        kind: BackendKind,
        candidates: Vec<PathBuf>,
    },
    #[error("the {kind} engine at {} does not answer: {reason}", socket.display())]
    Unreachable {
        kind: BackendKind,
        socket: PathBuf,
        reason: String,
    },
    #[error("{what}: {source}")]
    Engine {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "image {image} is not on this machine and pulling it failed: {reason} (is a registry reachable? `docker pull`/`docker load` it, or pass a local --image)"
    )]
    Pull { image: String, reason: String },
    #[error("the {0} backend runs OCI images, not {1} (pass --image, e.g. --image alpine:3.20)")]
    Image(BackendKind, String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the container's agent {0}")]
    Agent(String),
    #[error("the allowlist network: {0}")]
    Egress(#[from] ak_egress::EgressError),
    /// The egress helper is missing or could not stay up: the allowlist network cannot be
    /// had here.
    #[error("{0}")]
    EgressUnavailable(String),
    /// A saved root layer (a snapshot's committed image) that cannot be used.
    #[error("{0}")]
    Layer(String),
    /// What this engine cannot give a sandbox (secrets under user-namespace remapping).
    #[error("{0}")]
    Unsupported(String),
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl DockerError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DockerError {
        let what = what.into();
        move |source| DockerError::Io { what, source }
    }

    pub(crate) fn engine(
        what: impl Into<String>,
    ) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let what = what.into();
        move |source| DockerError::Engine { what, source }
    }
}

/// Whether the engine could not be reached at all (no connection, no answer in time), as
/// opposed to an answer that says what went wrong.
fn engine_unreachable(error: &bollard::errors::Error) -> bool {
    use bollard::errors::Error;
    matches!(
        error,
        Error::HyperLegacyError { .. }
            | Error::IOError { .. }
            | Error::RequestTimeoutError
            | Error::SocketNotFoundError(_)
    )
}

/// Whether the engine answered 404 (no such container or image).
pub(crate) fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl From<DockerError> for BackendError {
    fn from(error: DockerError) -> Self {
        error.into_backend(None)
    }
}

impl DockerError {
    /// As a backend error; `kind` names the engine in the message where the error itself
    /// does not.
    pub(crate) fn into_backend(self, kind: Option<BackendKind>) -> BackendError {
        let engine = kind.map_or_else(|| "container engine".to_string(), |k| k.to_string());
        let reason = self.to_string();
        match self {
            DockerError::NoSocket { kind, .. } | DockerError::Unreachable { kind, .. } => {
                BackendError::Unavailable {
                    backend: kind.to_string(),
                    reason,
                }
            }
            DockerError::Image(kind, _) => BackendError::Unsupported {
                backend: kind.to_string(),
                reason,
            },
            // The engine stopped answering, or an image could not be had here (no
            // registry reachable, no such image there): not possible here or now, like
            // an engine that was never found; not a fault of agentkernel.
            DockerError::Engine { source, .. } if engine_unreachable(&source) => {
                BackendError::Unavailable {
                    backend: engine,
                    reason,
                }
            }
            DockerError::Pull { .. } => BackendError::Unavailable {
                backend: engine,
                reason,
            },
            DockerError::Agent(_) => BackendError::Connect(reason),
            DockerError::Unsupported(_) => BackendError::Unsupported {
                backend: engine,
                reason,
            },
            DockerError::EgressUnavailable(_) => BackendError::Unavailable {
                backend: engine,
                reason,
            },
            _ => BackendError::Setup(reason),
        }
    }
}
