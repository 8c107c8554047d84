//! Errors of service operations.

use ak_core::{BackendError, BackendKind, ConfigError};
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
}

impl From<ProtocolError> for ServiceError {
    fn from(error: ProtocolError) -> Self {
        match error {
            ProtocolError::Agent(agent) => ServiceError::Command(agent),
            other => ServiceError::Protocol(other),
        }
    }
}
