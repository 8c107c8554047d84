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
    /// Whether the backend enforces an egress allowlist (`ak-egress` in front of its
    /// network); the others refuse the `allowlist` network mode.
    pub fn enforces_allowlist(self) -> bool {
        matches!(
            self,
            BackendKind::Native
                | BackendKind::Gvisor
                | BackendKind::Microvm
                | BackendKind::Docker
                | BackendKind::Podman
        )
    }

    /// Whether this backend's images are OCI images (no `host` image).
    pub fn runs_oci_images(self) -> bool {
        matches!(
            self,
            BackendKind::Docker | BackendKind::Podman | BackendKind::Microvm
        )
    }

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

/// What a backend can do beyond running commands, as the HTTP API reports it (the field
/// names are those of the agentkernel SDKs). Everything is `false` unless a backend says
/// otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The current directory can be mounted into a sandbox.
    pub mount_cwd: bool,
    pub mount_home: bool,
    /// An interactive shell can be attached to a running sandbox.
    pub attach: bool,
    pub host_volumes: bool,
    pub ssh: bool,
    pub proxy_secret_bindings: bool,
    pub secret_files: bool,
    /// Named sandboxes' writable state (root and workdir) can be snapshotted, frozen while
    /// running, and new sandboxes made from a snapshot; the service then gives each named
    /// sandbox an on-disk root directory ([`crate::SandboxSpec::root_dir`]).
    pub snapshots: bool,
    pub resume: bool,
    pub full_state_pause_resume: bool,
    pub full_state_fork: bool,
    pub endpoints: bool,
    /// Runs OCI images as the image store unpacks them ([`crate::ImageRef::Stored`]):
    /// the service resolves a named image into the store for this backend.
    pub image_layers: bool,
}

/// Where a backend that snapshots ([`Capabilities::snapshots`]) keeps a named sandbox's
/// root's writable layer, which decides how the service copies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootLayer {
    /// In a host directory the service gives the sandbox ([`crate::SandboxSpec::root_dir`]),
    /// copied file by file into the snapshot store.
    HostDir,
    /// In a disk image inside the host directory the service gives the sandbox
    /// ([`crate::SandboxSpec::root_dir`]), whose file system the guest's kernel caches (a
    /// microVM's writable disk): copied like [`RootLayer::HostDir`], once the guest has
    /// flushed its file systems (the service runs the agent's `--sync-filesystems` in
    /// it) and is frozen.
    GuestDisk,
    /// Inside the backend, which saves it whole as an immutable layer of its own (a
    /// container engine's committed image) through [`Backend::save_root_layer`].
    Backend,
}

/// A byte stream to a sandbox's agent.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug {
    /// The connection as a blocking file descriptor, for another process to take over (the
    /// daemon hands agent connections to CLIs, so a command's data never passes through
    /// it). A blocking descriptor is the neutral one: the receiver sets its own mode.
    fn into_fd(self: Box<Self>) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl Transport for tokio::net::UnixStream {
    fn into_fd(self: Box<Self>) -> std::io::Result<std::os::fd::OwnedFd> {
        let stream = (*self).into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream.into())
    }
}

/// How long a sandbox lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifetime {
    /// Dies with the caller: its transport closing ends it.
    Ephemeral,
    /// Keeps running until stopped; reachable again through its [`SandboxHandle`].
    Persistent,
}

/// What is needed to find a persistent sandbox again (stored by the service's registry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxHandle {
    pub backend: BackendKind,
    pub id: String,
    /// Backend-specific, JSON text.
    pub data: String,
}

/// One way of running sandboxes.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// Checks, without side effects, whether this backend can run sandboxes here.
    fn probe(&self) -> BackendProbe;

    /// Provisions a sandbox whose first process is the agent, and starts it.
    async fn create(
        &self,
        spec: &SandboxSpec,
        lifetime: Lifetime,
    ) -> Result<Box<dyn Sandbox>, BackendError>;

    /// Says that this process is about to create one ephemeral sandbox for `spec`: a
    /// backend may start, on other CPUs, the part of that creation which depends on
    /// nothing else, while the caller finishes its own preparation. A hint only: nothing
    /// needs to follow it, and the default does nothing.
    fn expect_ephemeral(&self, spec: &SandboxSpec) {
        let _ = spec;
    }

    /// Re-attaches to a running persistent sandbox; [`BackendError::Gone`] if it no longer
    /// runs.
    async fn attach(&self, handle: &SandboxHandle) -> Result<Box<dyn Sandbox>, BackendError>;

    /// Ends a sandbox (if still alive) and releases every host resource it holds, from its
    /// handle alone (after a crash the owning process is gone). Idempotent.
    async fn release(&self, handle: &SandboxHandle) -> Result<(), BackendError>;

    /// The host uid and gid that are root inside this backend's sandboxes, when a host
    /// directory mounted writable must be owned by them for the sandbox's root to write to
    /// it; `None` when ownership does not matter to this backend.
    fn sandbox_root_owner(&self) -> Option<(u32, u32)> {
        None
    }

    /// [`Backend::sandbox_root_owner`] for the sandbox `spec` describes, for a backend
    /// whose sandboxes map their ids differently by image (gVisor maps root to the image
    /// store's ids only in sandboxes of a stored image).
    fn root_owner_of(&self, spec: &SandboxSpec) -> Option<(u32, u32)> {
        let _ = spec;
        self.sandbox_root_owner()
    }

    /// What this backend can do besides running commands.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Where this backend keeps a named sandbox's root's writable layer (meaningful when
    /// [`Capabilities::snapshots`] is set).
    fn root_layer(&self) -> RootLayer {
        RootLayer::HostDir
    }

    /// [`RootLayer::Backend`] only: saves the root's writable layer of a running
    /// persistent sandbox (frozen by the caller) as an immutable layer, and returns what
    /// names it for [`crate::SandboxSpec::root_layer`]. The layer outlives the sandbox
    /// and this process until [`Backend::remove_root_layer`].
    async fn save_root_layer(&self, handle: &SandboxHandle) -> Result<String, BackendError> {
        let _ = handle;
        Err(BackendError::Unsupported {
            backend: self.kind().to_string(),
            reason: "it does not keep sandboxes' root layers itself".into(),
        })
    }

    /// [`RootLayer::Backend`] only: lets go of a layer [`Backend::save_root_layer`] made,
    /// once neither a snapshot nor a sandbox names it. A layer still in use by the
    /// backend (a container made from it, a layer saved on top of it) stays until that
    /// use ends. Idempotent: a layer already gone is fine.
    async fn remove_root_layer(&self, layer: &str) -> Result<(), BackendError> {
        let _ = layer;
        Err(BackendError::Unsupported {
            backend: self.kind().to_string(),
            reason: "it does not keep sandboxes' root layers itself".into(),
        })
    }

    /// Whether a named sandbox's service-owned workdir is a directory in its root's
    /// writable layer instead of a host directory shared into it: a microVM that may be
    /// saved with its memory can have no 9p share mounted (QEMU refuses to migrate one).
    /// A host directory the user names as the workdir, or a source cloned on the host,
    /// is shared all the same.
    fn workdir_in_root_layer(&self) -> bool {
        false
    }

    /// Whether a sandbox's clock stands still while it is frozen (a VM's guest clock
    /// follows its vCPUs): the service sets it to the host's after a resume.
    fn clock_stops_when_frozen(&self) -> bool {
        false
    }

    /// Stops (`true`) or lets go on (`false`) every process of a running persistent
    /// sandbox, for a consistent copy of its writable state: a frozen process holds its
    /// place and its memory but runs no instruction until thawed. Backends that snapshot
    /// ([`Capabilities::snapshots`]) implement it.
    async fn set_frozen(&self, handle: &SandboxHandle, frozen: bool) -> Result<(), BackendError> {
        let _ = (handle, frozen);
        Err(BackendError::Unsupported {
            backend: self.kind().to_string(),
            reason: "it cannot freeze a sandbox's processes".into(),
        })
    }

    /// Writes the whole state of a running or paused persistent sandbox (memory, devices,
    /// processes: a VM's) to the file `state`, consistent with its writable root layer
    /// at that moment. `end`: its processes end afterwards (a sandbox saved to disk, to be
    /// resumed by [`Backend::restore_memory`]); otherwise it goes on as it was (a copy
    /// for a fork). Backends with [`Capabilities::full_state_pause_resume`] implement it.
    async fn save_memory(
        &self,
        handle: &SandboxHandle,
        spec: &SandboxSpec,
        state: &std::path::Path,
        end: bool,
    ) -> Result<(), BackendError> {
        let _ = (handle, spec, state, end);
        Err(BackendError::Unsupported {
            backend: self.kind().to_string(),
            reason: "it cannot save a sandbox with its memory (only QEMU microVMs can)".into(),
        })
    }

    /// Starts the persistent sandbox `spec` describes from the state file
    /// [`Backend::save_memory`] wrote (of it, or of the sandbox it is a fork of, whose
    /// root layer `spec`'s is a copy of): its processes go on where they were, and
    /// before it returns its clock is the host's and its random number generator is
    /// reseeded from the host (every copy of one state would otherwise draw the same
    /// numbers).
    async fn restore_memory(
        &self,
        spec: &SandboxSpec,
        state: &std::path::Path,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        let _ = (spec, state);
        Err(BackendError::Unsupported {
            backend: self.kind().to_string(),
            reason: "it cannot resume a sandbox from its memory (only QEMU microVMs can)".into(),
        })
    }

    /// Readies a state [`Backend::save_memory`] wrote for forks (`end` false) to start
    /// several sandboxes that share its memory copy-on-write, where the backend can:
    /// each fork then maps the pages none of them wrote instead of loading its own copy.
    /// `spec` is a sandbox of the saved one's shape whose root is the copy of its
    /// writable layer that the forks' roots are copied from (a backend may let that
    /// copy go on from the state for a moment, as a first fork would). Afterwards
    /// `state` is still what [`Backend::restore_memory`] takes, in this process (the
    /// shared memory may be held by it: the microvm backend's is an unlinked in-memory
    /// file), and [`Backend::discard_memory_state`] removes it with whatever the backend
    /// keeps for it. By default the state stays as it is (each fork loads its own copy).
    async fn share_memory_state(
        &self,
        spec: &SandboxSpec,
        state: &std::path::Path,
    ) -> Result<(), BackendError> {
        let _ = (spec, state);
        Ok(())
    }

    /// Removes a state [`Backend::save_memory`] wrote to `state`, with whatever the
    /// backend keeps for it; a state that is not there is no error.
    fn discard_memory_state(&self, state: &std::path::Path) -> std::io::Result<()> {
        remove_state_file(state)
    }

    /// Replaces the allowlist a running persistent sandbox's egress enforcement holds:
    /// connections and lookups from then on are judged by `allowlist`. Backends whose
    /// [`BackendKind::enforces_allowlist`] is true implement it.
    async fn set_allowlist(
        &self,
        handle: &SandboxHandle,
        allowlist: &crate::egress::Allowlist,
    ) -> Result<(), BackendError> {
        let _ = (handle, allowlist);
        Err(BackendError::Unsupported {
            backend: self.kind().to_string(),
            reason: "it does not enforce allowlists".into(),
        })
    }
}

/// How many consecutive host uids (and gids), from [`Backend::sandbox_root_owner`]'s,
/// a sandbox's ids map to: a file owned by any other id was not made by the sandbox.
pub const SANDBOX_ID_COUNT: u32 = 65536;

/// A running sandbox owned by a backend.
#[async_trait::async_trait]
pub trait Sandbox: Send + Sync + fmt::Debug {
    fn id(&self) -> &str;

    /// What finds this sandbox again (meaningful for persistent sandboxes).
    fn handle(&self) -> SandboxHandle;

    /// Opens a byte stream to the agent (the caller does the protocol handshake).
    /// Ephemeral: the one transport (a second call errors). Persistent: a new connection
    /// each call.
    async fn connect(&mut self) -> Result<Box<dyn Transport>, BackendError>;

    /// Ends every process and releases every host resource. Safe to call again.
    async fn destroy(&mut self) -> Result<SandboxUsage, BackendError>;

    /// Ephemeral only: the one transport as a file descriptor, to hand to another process
    /// (the daemon's warm pool passes it to the CLI). The sandbox ends once every copy of
    /// it is closed; [`Sandbox::is_running`] tells when.
    fn take_transport_fd(&mut self) -> Result<std::os::fd::OwnedFd, BackendError>;

    /// Whether the sandbox's first process still runs.
    fn is_running(&self) -> bool;

    /// Where [`Backend::create`]'s time went, phase by phase in order, for backends that
    /// can tell (the microvm backend: its host processes' start and the guest's boot);
    /// what `agentkernel bench` breaks `boot` into.
    fn boot_phases(&self) -> Vec<(&'static str, std::time::Duration)> {
        Vec::new()
    }

    /// Persistent only: forgets the sandbox without ending it (dropping a persistent
    /// sandbox does not end it either). An ephemeral sandbox ends, as when dropped.
    fn detach(self: Box<Self>);
}

/// A one-shot sandbox's one connection, for [`Sandbox::connect`]: taken out of the sandbox
/// the first time, an error after.
pub fn take_one_shot_transport(
    transport: &mut Option<tokio::net::UnixStream>,
) -> Result<Box<dyn Transport>, BackendError> {
    transport
        .take()
        .map(|t| Box::new(t) as Box<dyn Transport>)
        .ok_or_else(|| BackendError::Connect("the one-shot sandbox's connection is taken".into()))
}

/// A one-shot sandbox's connection (`transport`, taken out of the sandbox) as a blocking
/// file descriptor, for [`Sandbox::take_transport_fd`]: the receiving process sets its own
/// mode, and a blocking descriptor is the neutral one.
pub fn hand_out_transport(
    transport: Option<tokio::net::UnixStream>,
) -> Result<std::os::fd::OwnedFd, BackendError> {
    let stream = transport.ok_or_else(|| {
        BackendError::Connect("only a one-shot sandbox hands out its connection, once".into())
    })?;
    Box::new(stream).into_fd().map_err(BackendError::Io)
}

/// What a sandbox consumed, as far as the backend can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxUsage {
    pub peak_memory_bytes: Option<u64>,
    /// The kernel killed a process of the sandbox for exceeding its memory limit.
    pub oom_killed: bool,
}

/// Removes a saved memory state's file; one that is not there is no error (what
/// [`Backend::discard_memory_state`] does by default, and backends do beside their own).
pub fn remove_state_file(state: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
