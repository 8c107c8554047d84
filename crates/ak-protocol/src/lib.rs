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
pub mod serial;

/// The agent's one argument that flushes every file system's cached data to its device
/// and exits (`ak-agent --sync-filesystems`): what the host runs inside a microVM's guest,
/// as `/proc/1/exe` (the agent is the guest's init, whatever its image holds), before it
/// stops the VM to copy its writable disk. Here because host and agent both name it.
pub const SYNC_FILESYSTEMS_ARG: &str = "--sync-filesystems";

/// The agent's argument that sets the system clock and exits (`ak-agent --set-clock
/// SECONDS.NANOSECONDS`, Unix time, as [`serial::WallTime`] writes it): what the host
/// runs inside a microVM's guest after resuming it from a pause, since the guest's clock
/// stood still while its vCPUs were stopped.
pub const SET_CLOCK_ARG: &str = "--set-clock";

pub use client::{AgentClient, ExecControl, ExecEvent, ExecHandle};
pub use error::ProtocolError;
pub use frame::{FrameReader, FrameWriter, MAX_CHUNK_LEN, MAX_FRAME_LEN};
pub use handshake::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use message::{
    AgentError, ErrorKind, Event, ExecSpec, ExitStatus, FileStat, FileType, PtySize, Reply,
    Request, RequestId, StdinMode,
};
