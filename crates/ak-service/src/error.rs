//! Errors of service operations, and the one classification every front end renders them
//! by (an exit code, an HTTP status, an MCP error): each front end maps a class in one
//! place, so they cannot disagree about what a failure means.

use ak_core::{BackendError, BackendKind, ConfigError, SandboxState};
use ak_protocol::{AgentError, ErrorKind, ProtocolError};

/// What kind of failure an error is, independent of the front end that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request itself is wrong: bad input, an empty command, an unknown profile.
    Invalid,
    /// The caller may not ask for this (the caller policy, a permission inside the sandbox).
    Forbidden,
    /// No such sandbox, file or command.
    NotFound,
    /// The request does not fit the current state: a duplicate name, a stopped sandbox.
    Conflict,
    /// A body, file or output over its limit.
    TooLarge,
    /// Not possible here or now: a backend not built or not usable, capacity exhausted.
    Unavailable,
    /// A fault of agentkernel or the host; its details belong in a log.
    Fault,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the {0} backend is not implemented in this version of agentkernel")]
    BackendNotBuilt(BackendKind),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("talking to the sandbox agent: {0}")]
    Protocol(ProtocolError),
    /// The agent could not start the command (not found, not executable, bad user).
    #[error("{0}")]
    Command(AgentError),
    #[error("no command given, and no image Entrypoint or Cmd to run instead")]
    EmptyCommand,
    #[error("{0}")]
    InvalidInput(String),
    #[error("no sandbox named '{0}'")]
    NotFound(String),
    /// Something other than a sandbox that does not exist (`no {0}`).
    #[error("no {0}")]
    NoSuch(String),
    #[error("a sandbox named '{0}' already exists")]
    Duplicate(String),
    /// Something is in use and cannot be changed or shared as asked (`{0}` says by whom).
    #[error("{0}")]
    InUse(String),
    /// A source repository could not be cloned (a bad URL or ref, a refusing remote).
    #[error("cloning the source: {0}")]
    Source(String),
    #[error("a snapshot named '{0}' already exists")]
    SnapshotExists(String),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("sandbox '{name}' is {state}: {hint}")]
    WrongState {
        name: String,
        state: SandboxState,
        hint: String,
    },
    /// The caller policy does not allow what was asked; the message names the setting
    /// that would.
    #[error("{0}")]
    Forbidden(String),
    /// Capacity exhausted for now (pools full, set-up queue closed); trying later may work.
    #[error("{0}")]
    Unavailable(String),
    #[error("sandbox registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The service's own state (directories, locks, handles) could not be used.
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Image(#[from] ak_image::ImageError),
}

impl From<ProtocolError> for ServiceError {
    fn from(error: ProtocolError) -> Self {
        match error {
            ProtocolError::Agent(agent) => ServiceError::Command(agent),
            other => ServiceError::Protocol(other),
        }
    }
}

/// An image store failure's class: the user's input or the image is wrong (invalid), the
/// registry has no such image or the store no such reference (not found), the registry
/// refused the login (forbidden), cannot be reached (unavailable), the image is in use
/// (conflict); the store itself failing is a fault.
fn image_class(error: &ak_image::ImageError) -> ErrorClass {
    use ak_image::ImageError as E;
    match error {
        E::InvalidReference { .. }
        | E::DigestMismatch { .. }
        | E::UnsupportedDigest { .. }
        | E::NoPlatform { .. }
        | E::UnsupportedMediaType { .. }
        | E::Malformed { .. }
        | E::NotATar { .. }
        | E::HostileLayer { .. }
        | E::Credentials { .. }
        | E::CaFile { .. } => ErrorClass::Invalid,
        E::TooLarge { .. } => ErrorClass::TooLarge,
        E::NotFound(_) | E::UnknownImage { .. } | E::LayerMissing { .. } => ErrorClass::NotFound,
        E::Unauthorized { .. } => ErrorClass::Forbidden,
        E::Unreachable { .. } | E::Registry { .. } => ErrorClass::Unavailable,
        E::InUse { .. } => ErrorClass::Conflict,
        E::IdShiftMismatch { .. } | E::Io { .. } => ErrorClass::Fault,
    }
}

impl ServiceError {
    /// The error's class: the one rule front ends render.
    pub fn class(&self) -> ErrorClass {
        match self {
            ServiceError::Config(_)
            | ServiceError::EmptyCommand
            | ServiceError::InvalidInput(_)
            | ServiceError::Source(_) => ErrorClass::Invalid,
            ServiceError::Forbidden(_) => ErrorClass::Forbidden,
            ServiceError::NotFound(_) | ServiceError::NoSuch(_) => ErrorClass::NotFound,
            ServiceError::Duplicate(_)
            | ServiceError::InUse(_)
            | ServiceError::SnapshotExists(_)
            | ServiceError::WrongState { .. } => ErrorClass::Conflict,
            ServiceError::Snapshot(crate::snapshot::SnapshotError::Refused(_)) => {
                ErrorClass::Invalid
            }
            ServiceError::BackendNotBuilt(_) | ServiceError::Unavailable(_) => {
                ErrorClass::Unavailable
            }
            // "Not here": the host or this user lacks what the sandbox needs.
            ServiceError::Backend(
                BackendError::Unavailable { .. } | BackendError::Unsupported { .. },
            ) => ErrorClass::Unavailable,
            ServiceError::Backend(BackendError::Misconfigured(_)) => ErrorClass::Invalid,
            ServiceError::Command(agent) => match agent.kind {
                ErrorKind::NotFound => ErrorClass::NotFound,
                ErrorKind::BadRequest
                | ErrorKind::InvalidPath
                | ErrorKind::NotADirectory
                | ErrorKind::IsADirectory
                | ErrorKind::SpawnFailed => ErrorClass::Invalid,
                ErrorKind::PermissionDenied => ErrorClass::Forbidden,
                ErrorKind::AlreadyExists | ErrorKind::DirectoryNotEmpty => ErrorClass::Conflict,
                ErrorKind::TooLarge => ErrorClass::TooLarge,
                ErrorKind::Io => ErrorClass::Fault,
            },
            ServiceError::Image(image) => image_class(image),
            ServiceError::Backend(_)
            | ServiceError::Protocol(_)
            | ServiceError::Registry(_)
            | ServiceError::Snapshot(_)
            | ServiceError::State(_) => ErrorClass::Fault,
        }
    }

    /// Whether the request was refused before anything was attempted (bad input, policy,
    /// an unknown or duplicate name, a state that does not allow it), as the audit log
    /// records it.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, ServiceError::Command(_))
            && matches!(
                self.class(),
                ErrorClass::Invalid
                    | ErrorClass::Forbidden
                    | ErrorClass::NotFound
                    | ErrorClass::Conflict
                    | ErrorClass::TooLarge
            )
    }

    /// The command could not be started in the sandbox (not found, not executable): what
    /// a shell reports with exit code 127 or 126.
    pub fn spawn_failure_code(&self) -> Option<i32> {
        match self {
            ServiceError::Command(agent) => match agent.kind {
                ErrorKind::NotFound => Some(127),
                ErrorKind::SpawnFailed | ErrorKind::PermissionDenied => Some(126),
                _ => None,
            },
            _ => None,
        }
    }
}
