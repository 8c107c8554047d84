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

/// The agent's one argument that flushes every file system's cached data to its device
/// and exits (`ak-agent --sync-filesystems`): what the host runs inside a microVM's guest,
/// as `/proc/1/exe` (the agent is the guest's init, whatever its image holds), before it
/// stops the VM to copy its writable disk. Here because host and agent both name it.
pub const SYNC_FILESYSTEMS_ARG: &str = "--sync-filesystems";

/// The agent's argument that sets the system clock and exits (`ak-agent --set-clock
/// SECONDS.NANOSECONDS`, Unix time): what the host runs inside a microVM's guest after
/// resuming it, since the guest's clock stood still while its vCPUs were stopped.
pub const SET_CLOCK_ARG: &str = "--set-clock";

/// The agent's argument that mixes fresh host randomness into the guest's entropy pool
/// and reseeds its random number generator (`ak-agent --reseed HEX`): what the host runs
/// inside a microVM restored from a memory snapshot, whose generator state is otherwise
/// the same in every copy restored from that snapshot.
pub const RESEED_ARG: &str = "--reseed";

/// The names of a microVM's virtio-serial ports (`/sys/class/virtio-ports/*/name` in the
/// guest, `name=` of QEMU's `virtserialport`): the agent's channel for VMs that can be
/// saved with their memory (vsock through vhost-user cannot migrate). Here because host
/// and agent both name them.
pub mod serial {
    /// The host writes [`SYNC`] on this port after it started or restored the VM; the
    /// agent answers [`READY`] once it serves the data ports afresh.
    pub const CONTROL_PORT: &str = "ak.control";
    /// The host's line on the control port: every data port's earlier connection is
    /// over (none is open at a boot or a restore), whatever the guest saw of its end.
    pub const SYNC: &[u8] = b"sync\n";
    /// The agent's answer to [`SYNC`]: it serves the data ports, none holding an earlier
    /// connection or its bytes.
    pub const READY: &[u8] = b"ready\n";
    /// The most data ports a VM has (each carries one host connection at a time).
    pub const MAX_DATA_PORTS: u32 = 16;

    /// The name of data port `index`.
    pub fn data_port(index: u32) -> String {
        format!("ak.{index}")
    }
}

pub use client::{AgentClient, ExecControl, ExecEvent, ExecHandle};
pub use error::ProtocolError;
pub use frame::{FrameReader, FrameWriter, MAX_CHUNK_LEN, MAX_FRAME_LEN};
pub use handshake::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use message::{
    AgentError, ErrorKind, Event, ExecSpec, ExitStatus, FileStat, FileType, PtySize, Reply,
    Request, RequestId, StdinMode,
};
