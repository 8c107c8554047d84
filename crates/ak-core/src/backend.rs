//! The contract between the service and a backend: provision the boundary with the agent
//! as init, hand back a connected transport, release every host resource taken.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{BackendError, ConfigError};
use crate::spec::SandboxSpec;

/// The backends agentkernel knows, weakest isolation first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Native,
    Gvisor,
    Docker,
    Podman,
    Microvm,
    Apple,
}

impl BackendKind {
    pub const ALL: [BackendKind; 6] = [
        BackendKind::Native,
        BackendKind::Gvisor,
        BackendKind::Docker,
        BackendKind::Podman,
        BackendKind::Microvm,
        BackendKind::Apple,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Gvisor => "gvisor",
            BackendKind::Docker => "docker",
            BackendKind::Podman => "podman",
            BackendKind::Microvm => "microvm",
            BackendKind::Apple => "apple",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ConfigError::UnknownBackend(s.to_string()))
    }
}

/// What a backend's availability probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendProbe {
    pub backend: BackendKind,
    pub usable: bool,
    /// Why it is not usable (and what to install), or a short note when it is.
    pub reason: String,
    /// Facts found on the way, as `(name, value)` pairs for `status`.
    pub details: Vec<(String, String)>,
}

/// A byte stream to a sandbox's agent.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug> Transport for T {}

/// One way of running sandboxes.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// Checks, without side effects, whether this backend can run sandboxes here.
    fn probe(&self) -> BackendProbe;

    /// Provisions a sandbox whose first process is the agent, and starts it.
    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, BackendError>;
}

/// A running sandbox owned by a backend.
#[async_trait::async_trait]
pub trait Sandbox: Send + Sync + fmt::Debug {
    fn id(&self) -> &str;

    /// Opens a byte stream to the agent (the caller does the protocol handshake).
    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError>;

    /// Ends every process and releases every host resource. Safe to call again.
    async fn destroy(&mut self) -> Result<SandboxUsage, BackendError>;
}

/// What a sandbox consumed, as far as the backend can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxUsage {
    pub peak_memory_bytes: Option<u64>,
    /// The kernel killed a process of the sandbox for exceeding its memory limit.
    pub oom_killed: bool,
}
