//! ak-protocol: the versioned, length-prefixed wire protocol between the host and the
//! in-sandbox agent, and the host-side [`AgentClient`].
//!
//! One connection carries a [`handshake`], then [`message::Request`]s (host -> agent) and
//! [`message::Event`]s (agent -> host), each in one [`frame`]. Requests carry ids, so many
//! execs run at once on one connection.

pub mod client;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod message;

pub use client::{AgentClient, ExecControl, ExecEvent, ExecHandle};
pub use error::ProtocolError;
pub use frame::{FrameReader, FrameWriter, MAX_CHUNK_LEN, MAX_FRAME_LEN};
pub use handshake::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use message::{
    AgentError, ErrorKind, Event, ExecSpec, ExitStatus, FileStat, FileType, PtySize, Reply,
    Request, RequestId, StdinMode,
};
