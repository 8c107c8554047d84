//! Errors of the protocol layer.

use crate::message::AgentError;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error on the agent connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("connection ended in the middle of a frame")]
    Truncated,
    #[error("the agent connection is closed")]
    Closed,
    #[error("not an agentkernel agent (bad handshake magic)")]
    BadMagic,
    #[error(
        "no common protocol version: this side speaks {ours_min}..={ours_max}, the peer {theirs_min}..={theirs_max}"
    )]
    VersionMismatch {
        ours_min: u16,
        ours_max: u16,
        theirs_min: u16,
        theirs_max: u16,
    },
    #[error("handshake refused by the peer: {0}")]
    Refused(String),
    #[error("unexpected message from the agent: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}
