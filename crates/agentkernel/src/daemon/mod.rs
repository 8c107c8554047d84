//! The daemon: keeps warm pools and hands their sandboxes to CLIs over a Unix socket of
//! mode 0600 in the state directory, and performs the CLI's named-sandbox actions while it
//! runs. The socket carries the service's own [`Action`]s (the value the CLI would perform
//! itself without a daemon), not request types of its own. A handed-out sandbox, and a
//! connection to a named sandbox's agent, travel as file descriptors (SCM_RIGHTS): the
//! transport of a run's and an exec's data, which never passes through the daemon. Beside
//! that socket, the daemon serves the HTTP API (the one `agentkernel serve` serves, for
//! remote callers) on `api.sock`, also 0600.

pub mod client;
mod named;
pub mod server;

use std::path::PathBuf;

use ak_core::SandboxSpec;
use ak_service::{Action, Answer, PoolStatus};
use serde::{Deserialize, Serialize};

/// Largest request or response line.
pub const MAX_MESSAGE: usize = 1 << 20;

/// A request to the daemon, one JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// A never-used sandbox for this spec; answered with `Acquired` plus the connection.
    Acquire {
        spec: Box<SandboxSpec>,
    },
    Status,
    /// Graceful stop: waits for handed-out commands (up to a limit), then cleans up.
    Stop,
    /// A named-sandbox action, performed by the daemon's service for the local user.
    Perform(Action),
    /// A new connection to a running named sandbox's agent; answered with `Connected` plus
    /// the connection, over which the CLI runs its exec, attach or cp itself.
    Connect {
        name: String,
    },
}

/// The daemon's answer, one JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Acquired {
        sandbox_id: String,
        hit: bool,
    },
    Status(DaemonStatus),
    Stopping,
    Performed(Answer),
    Connected,
    /// The request failed; `code` is the exit code the CLI would have given had it done
    /// the work itself.
    Error {
        message: String,
        code: i32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub uptime_s: u64,
    pub pools: Vec<PoolStatus>,
}

/// The daemon's socket, beside the registry in the state directory.
pub fn socket_path() -> PathBuf {
    crate::wiring::state_dir().join("daemon.sock")
}

/// The daemon's HTTP API socket (the API of `agentkernel serve`), beside its own socket.
pub fn api_socket_path() -> PathBuf {
    crate::wiring::state_dir().join("api.sock")
}

/// The daemon's log file.
pub fn log_path() -> PathBuf {
    crate::wiring::state_dir().join("daemon.log")
}
