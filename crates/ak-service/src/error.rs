//! Errors of service operations.

use ak_core::{BackendError, BackendKind, ConfigError, SandboxState};
use ak_protocol::{AgentError, ProtocolError};

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
    #[error("no command given")]
    EmptyCommand,
    #[error("{0}")]
    InvalidInput(String),
    #[error("no sandbox named '{0}' (see `agentkernel list`)")]
    NotFound(String),
    #[error("a sandbox named '{0}' already exists")]
    Duplicate(String),
    #[error("sandbox '{name}' is {state}: {hint}")]
    WrongState {
        name: String,
        state: SandboxState,
        hint: String,
    },
    #[error("sandbox registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The service's own state (directories, locks, handles) could not be used.
    #[error("{0}")]
    State(String),
}

impl From<ProtocolError> for ServiceError {
    fn from(error: ProtocolError) -> Self {
        match error {
            ProtocolError::Agent(agent) => ServiceError::Command(agent),
            other => ServiceError::Protocol(other),
        }
    }
}

impl ServiceError {
    /// Whether the request was refused before anything was attempted: bad input, an unknown
    /// or duplicate name, a state that does not allow it.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ServiceError::Config(_)
                | ServiceError::BackendNotBuilt(_)
                | ServiceError::EmptyCommand
                | ServiceError::InvalidInput(_)
                | ServiceError::NotFound(_)
                | ServiceError::Duplicate(_)
                | ServiceError::WrongState { .. }
        )
    }
}
