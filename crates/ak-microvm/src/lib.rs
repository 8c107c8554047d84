//! ak-microvm: the microVM backend. Each sandbox is a VM with its own kernel (ours, built
//! from Debian's source), our agent as init from a tiny initramfs, and the image as a
//! read-only disk under a memory-backed writable layer; the host reaches the agent over
//! vsock. Two drivers share everything but the hypervisor: QEMU's `microvm` machine and
//! Firecracker.

mod boot;
mod error;
pub mod firecracker;
pub mod guest;
mod memory;
mod net;
mod qemu;
mod qmp;
mod sandbox;
mod serial;
mod start;
mod template;
pub mod tools;
mod vm;
pub mod vsock;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ak_core::backend::{Capabilities, Lifetime, RootLayer, SandboxHandle};
use ak_core::config::MicrovmOptions;
use ak_core::{
    Backend, BackendError, BackendKind, BackendProbe, NetworkMode, Sandbox, SandboxSpec,
};

pub use crate::error::MicrovmError;
use crate::guest::image::BaseSource;
use crate::guest::kernel;
use crate::sandbox::MicrovmSandbox;
use crate::vm::{Layout, VmRecord};
use ak_core::kvm::KvmSupport;

/// Opens (creating it) the lock file at `path` and takes an exclusive `flock` on it,
/// waiting for it; the lock lasts as long as the returned file.
pub(crate) fn lock_exclusive(path: &Path) -> Result<std::fs::File, MicrovmError> {
    use std::os::fd::AsFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        // Read too: the serial ports' lock file holds the next port to try.
        .read(true)
        .write(true)
        .open(path)
        .map_err(MicrovmError::io(format!("open {}", path.display())))?;
    rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| MicrovmError::io(format!("lock {}", path.display()))(e.into()))?;
    Ok(file)
}

/// How long a VM gets from launch to its agent listening (emulated boots on a loaded
/// host take seconds); past it the watchdog kills the VM.
const BOOT_LIMIT: Duration = Duration::from_secs(60);
/// The kernel command line every driver shares: serial console, quiet boot, no probing
/// of legacy devices, and an immediate exit on panic.
const KERNEL_ARGS: &str =
    "console=ttyS0 quiet loglevel=4 i8042.nokbd i8042.noaux i8042.nopnp 8250.nr_uarts=1 panic=-1";
/// The least memory a guest boots with.
const MIN_MEMORY_MIB: u64 = 128;

/// Which hypervisor runs the VMs (`[microvm] driver` in the user's config file).
pub use ak_core::config::MicrovmDriver as DriverKind;

/// What a driver boots.
#[derive(Debug, Clone)]
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    /// The read-only base image (the guest's `/dev/vda`).
    pub base: &'a Path,
    /// A named sandbox's writable layer disk (the guest's `/dev/vdb`, ext4), kept in the
    /// directory the service gives it; `None`: the layer is in the guest's memory.
    pub layer: Option<&'a Path>,
    /// The kernel's parameters (the driver adds its own and its devices').
    pub kernel_args: String,
    /// The agent's arguments (after `--`).
    pub init_args: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Host directories shared into the VM (the agent mounts them).
    pub shares: Vec<Share>,
    /// The network device, when the policy allows network.
    pub nic: Option<Nic>,
    /// The agent's channel: vsock when 0, else virtio-serial with this many data ports
    /// (QEMU only; a VM that may be saved with its memory, which vsock cannot be).
    pub serial_ports: u32,
    /// A memory state to start from instead of booting (QEMU's `-incoming`).
    pub incoming: Option<&'a Path>,
    /// Where the guest's memory lives (QEMU only).
    pub memory: GuestMemory<'a>,
    /// Firecracker only: KVM logs the pages the guest writes, so that diff snapshots
    /// ([`firecracker::SnapshotKind::Diff`]) can be taken. Off unless one is wanted: the
    /// logging costs the guest on every first write to a page.
    pub track_dirty_pages: bool,
}

/// Where a QEMU VM's memory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMemory<'a> {
    /// The QEMU process's own: private memory for a VM on virtio-serial, a shared memfd
    /// for one on vhost-user vsock (whose daemon maps it too). Its save carries it whole.
    Anonymous,
    /// A file the VM's memory is (mapped shared): a template being made. Its save
    /// carries only the devices' and vCPUs' state (QEMU's `x-ignore-shared`); the file
    /// is the memory.
    WrittenTo(&'a Path),
    /// A template's memory file mapped copy-on-write: every VM restored from it shares
    /// the pages it has not written, in the host's page cache, and nothing is copied at
    /// the restore. Its state is one saved from [`GuestMemory::WrittenTo`].
    MappedFrom(&'a Path),
}

impl GuestMemory<'_> {
    /// Whether the state this VM loads (`incoming`) was saved without the memory, which
    /// is a file the VM maps.
    pub fn loads_without_memory(&self) -> bool {
        matches!(self, GuestMemory::MappedFrom(_))
    }
}

/// What a VM holds on the host for its network: the tap, lease and NAT rules of the open
/// network, or the egress helper (its identity) of an allowlist.
#[derive(Debug, Default)]
struct HostNetwork {
    nat: Option<net::Attachment>,
    egress_helper: Option<String>,
}

/// An allowlist VM's egress helper: its policy file, the socket QEMU's NIC connects to,
/// its log, in the VM's directory; and the NIC's MAC (the link is the VM's alone).
const EGRESS_POLICY: &str = "egress.json";
const EGRESS_SOCKET: &str = "egress.sock";
const EGRESS_LOG: &str = "egress.log";
const EGRESS_GUEST_MAC: &str = "52:54:00:0a:00:64";

/// A VM's network device: the host's tap it is connected to, and its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
    /// Instead of the tap, a Unix socket whose far end is the egress helper (an allowlist
    /// VM's NIC, through QEMU's `stream` network backend).
    pub stream: Option<PathBuf>,
}

/// A host directory shared into a VM over 9p, mounted at `guest` by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub host: PathBuf,
    pub guest: PathBuf,
    pub writable: bool,
}

impl Boot<'_> {
    /// The full command line with the driver's `extra` kernel parameters.
    pub fn cmdline(&self, extra: &str) -> String {
        format!("{} {extra} -- {}", self.kernel_args, self.init_args)
    }
}

/// The host processes a driver started.
#[derive(Debug)]
pub struct Launched {
    pub hypervisor: tokio::process::Child,
    pub hypervisor_id: String,
    /// The vsock daemon (QEMU).
    pub helper: Option<(tokio::process::Child, String)>,
    /// How long each of the driver's steps took, in order.
    pub phases: Vec<(&'static str, Duration)>,
}

/// Where container images come from: a container engine that can name an image's
/// content and write out its root file system (the binary wires the docker backend in).
#[async_trait::async_trait]
pub trait ImageExporter: Send + Sync + std::fmt::Debug {
    /// `image`'s content id (the cache key of its disk), fetching the image if needed.
    async fn image_id(&self, image: &str) -> Result<String, String>;
    /// Writes `image`'s root file system into the empty directory `into`.
    async fn export(&self, image: &str, into: &Path) -> Result<(), String>;
}

/// The microvm backend.
#[derive(Debug)]
pub struct MicrovmBackend {
    agent: PathBuf,
    driver: DriverKind,
    kernel: Option<PathBuf>,
    firecracker: Option<PathBuf>,
    cache: PathBuf,
    swept: std::sync::Once,
    exporter: Option<Arc<dyn ImageExporter>>,
    /// The egress helper and its settings, for allowlist VMs.
    egress: ak_egress::Egress,
    /// One-shot VMs without network start from a template's memory state (see
    /// `template.rs`); `[microvm] restore_one_shot = false` boots each.
    restore_one_shot: bool,
    /// The memory of each state made shareable for forks (`memory.rs`), by state file:
    /// an unlinked in-memory file only this process holds, until the state is discarded.
    shared_memory: memory::SharedMemory,
}

impl MicrovmBackend {
    pub fn new(agent: PathBuf, options: &MicrovmOptions) -> Result<Self, MicrovmError> {
        let driver = options.driver.unwrap_or_default();
        Ok(MicrovmBackend {
            egress: ak_egress::Egress::beside(&agent),
            agent,
            driver,
            kernel: options.kernel.clone(),
            firecracker: options.firecracker.clone(),
            cache: tools::cache_dir(),
            swept: std::sync::Once::new(),
            shared_memory: memory::SharedMemory::default(),
            exporter: None,
            restore_one_shot: options.restore_one_shot.unwrap_or(true),
        })
    }

    /// The egress helper that is the far end of allowlist VMs' NICs, and its settings.
    pub fn with_egress(mut self, egress: ak_egress::Egress) -> Self {
        self.egress = egress;
        self
    }

    /// Boots container images exported through `exporter`.
    pub fn with_image_exporter(mut self, exporter: Arc<dyn ImageExporter>) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// The disk of container image `name`: cached by the image's id, else exported and
    /// packed now.
    pub async fn container_disk(&self, name: &str) -> Result<PathBuf, MicrovmError> {
        let exporter = self.exporter.as_ref().ok_or_else(|| {
            MicrovmError::Unsupported(format!(
                "image {name}: container images are exported through Docker or Podman, and neither is usable here"
            ))
        })?;
        let failed = |what: &str, e: String| MicrovmError::Build {
            what: format!("{what} of image {name}"),
            detail: e,
        };
        let id = exporter
            .image_id(name)
            .await
            .map_err(|e| failed("the id", e))?;
        let disk = guest::image::container_path(&self.cache, &id);
        if disk.is_file() {
            return Ok(disk);
        }
        let staging = guest::image::export_staging(&self.cache)?;
        let packed = match exporter.export(name, &staging).await {
            Ok(()) => {
                let (tree, out) = (staging.clone(), disk.clone());
                tokio::task::spawn_blocking(move || guest::image::pack(&tree, &out))
                    .await
                    .map_err(|e| failed("packing", e.to_string()))
                    .and_then(|packed| packed)
            }
            Err(e) => Err(failed("the export", e)),
        };
        if let Err(e) = std::fs::remove_dir_all(&staging) {
            tracing::warn!("cannot remove {}: {e}", staging.display());
        }
        packed.map(|()| disk)
    }

    /// Uses `cache` for built artifacts instead of the default.
    pub fn with_cache(mut self, cache: PathBuf) -> Self {
        self.cache = cache;
        self
    }

    pub fn cache(&self) -> &Path {
        &self.cache
    }

    pub fn driver(&self) -> DriverKind {
        self.driver
    }

    /// The kernel to boot: the configured one, else the one `setup` built.
    pub fn kernel(&self) -> Result<PathBuf, MicrovmError> {
        let path = match &self.kernel {
            Some(path) => path.clone(),
            None => kernel::find_built(&self.cache).ok_or_else(|| {
                MicrovmError::Artifact(
                    "no guest kernel is built: run `agentkernel setup` (about 2-3 minutes)".into(),
                )
            })?,
        };
        kernel::check_vmlinux(&path)?;
        Ok(path)
    }

    fn hypervisor(&self) -> Result<PathBuf, MicrovmError> {
        match self.driver {
            DriverKind::Qemu => tools::require_program(tools::QEMU, tools::QEMU_HINT),
            DriverKind::Firecracker => match &self.firecracker {
                Some(path) if path.is_file() => Ok(path.clone()),
                Some(path) => Err(MicrovmError::MissingTool {
                    program: path.display().to_string(),
                    hint: tools::FIRECRACKER_HINT.into(),
                }),
                None => tools::require_program(tools::FIRECRACKER, tools::FIRECRACKER_HINT),
            },
        }
    }

    fn run_base(&self) -> PathBuf {
        ak_core::runtime::backend_runtime_base(BackendKind::Microvm)
    }

    /// Checks what the spec asks for against what a VM here can give.
    fn check_spec(&self, spec: &SandboxSpec) -> Result<(), MicrovmError> {
        // Never the VM's NAT in its place: that would be the open network.
        if spec.policy.network == NetworkMode::Allowlist && self.driver != DriverKind::Qemu {
            return Err(MicrovmError::Unsupported(format!(
                "the allowlist network of a microVM needs the QEMU driver (its NIC's far end \
                 is the egress helper, through QEMU's stream network backend; {} has none)",
                self.driver
            )));
        }
        if spec.policy.network == NetworkMode::Outbound
            && let Some(why) = net::unavailable()
        {
            return Err(MicrovmError::Unsupported(format!(
                "{why}; run without network (--no-network)"
            )));
        }
        // Guest paths travel on the kernel command line (words split at spaces; `:`
        // separates the parts of a share).
        let on_cmdline = |what: &str, path: &Path| {
            let text = path.to_string_lossy();
            if !path.is_absolute()
                || text.contains(|c: char| c.is_whitespace() || c == '"' || c == ':')
            {
                return Err(MicrovmError::Unsupported(format!(
                    "the {what} {text:?} must be an absolute path without spaces, quotes or ':' (it is passed on the kernel command line)"
                )));
            }
            Ok(())
        };
        on_cmdline("workdir", &spec.workdir)?;
        for mount in &spec.mounts {
            on_cmdline("mount point", &mount.target)?;
        }
        let secrets = ak_egress::provision::has_secrets(spec);
        if secrets && self.driver != DriverKind::Qemu {
            return Err(MicrovmError::Unsupported(format!(
                "the secrets of a microVM need the QEMU driver (their files come through a \
                 9p share and their substitution through the egress helper; {} has neither)",
                self.driver
            )));
        }
        let max_shares = qemu::max_shares(
            spec.policy.network != NetworkMode::None,
            spec.root_dir.is_some(),
        )
        .saturating_sub(usize::from(secrets));
        if spec.mounts.len() > max_shares {
            return Err(MicrovmError::Unsupported(format!(
                "at most {max_shares} host directories can be shared with a VM"
            )));
        }
        Ok(())
    }

    /// A VM with secrets: the secret part of its egress policy, and the files of
    /// `/run/agentkernel` in `secrets/` of its directory, shared read-only over 9p. They
    /// are this process's, as QEMU is, which reads them for the guest (9p without id
    /// mapping: the guest sees the host's owners, root's when we are root). The bundle there holds the CA alone until the guest's agent adds the
    /// image's roots (`--trust-bundle`). A leak under `on_leak = "kill"` stops QEMU: the
    /// helper takes it as the process that connected the VM's NIC.
    fn secrets(
        &self,
        spec: &SandboxSpec,
        layout: &Layout,
    ) -> Result<
        (
            Option<ak_egress::secrets::SecretPolicy>,
            Option<ak_egress::provision::SecretFiles>,
        ),
        MicrovmError,
    > {
        if !ak_egress::provision::has_secrets(spec) {
            return Ok((None, None));
        }
        let failed = |e: ak_egress::EgressError| match e {
            ak_egress::EgressError::Secrets(reason) => MicrovmError::Unsupported(reason),
            other => MicrovmError::Network(other.to_string()),
        };
        let policy = ak_egress::provision::secret_policy(&self.egress, spec).map_err(failed)?;
        let files = ak_egress::provision::write_files(
            &layout.dir.join("secrets"),
            spec,
            policy.as_ref(),
            None,
            ak_egress::provision::this_process_ids(),
        )
        .map_err(failed)?;
        Ok((policy, files))
    }

    /// Starts the egress helper for an allowlist VM: it listens on a socket in the VM's
    /// directory that QEMU's NIC connects to, and enforces the spec's allowlist on all that
    /// comes through (as for native sandboxes). Returns the socket and the helper's
    /// identity; the helper ends when the VM's connection does, or at the VM's release.
    async fn start_egress(
        &self,
        spec: &SandboxSpec,
        layout: &Layout,
        secrets: Option<ak_egress::secrets::SecretPolicy>,
    ) -> Result<(PathBuf, String), MicrovmError> {
        let failed = |e: String| MicrovmError::Network(format!("the egress helper: {e}"));
        let policy = layout.dir.join(EGRESS_POLICY);
        self.egress
            .write_policy(&policy, &spec.policy.allowlist, secrets)
            .map_err(|e| failed(e.to_string()))?;
        if !ak_core::process::is_executable(&self.egress.helper) {
            return Err(MicrovmError::Unsupported(format!(
                "the allowlist network needs the egress helper {} (built beside agentkernel)",
                self.egress.helper.display()
            )));
        }
        let socket = layout.dir.join(EGRESS_SOCKET);
        let (program, socket_path) = (self.egress.helper.clone(), socket.clone());
        let (audit_dir, log, sandbox) = (
            self.egress.audit_dir.clone(),
            layout.dir.join(EGRESS_LOG),
            spec.id.clone(),
        );
        // Its end is the VM's connection's end (or the VM's release): not waited for by
        // this process, which a one-shot VM's helper may outlive by a moment.
        let pid = tokio::task::spawn_blocking(move || {
            ak_egress::launch::start_detached(
                &ak_egress::launch::Detached {
                    program: &program,
                    netns: None,
                    stream: Some(socket_path),
                    userns: None,
                    policy: &policy,
                    sandbox: &sandbox,
                    audit_dir: audit_dir.as_deref(),
                    log: &log,
                    sandbox_pid: None,
                },
                None,
            )
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(format!("it did not start: {e}")))?;
        let identity =
            ak_core::process::identity(pid).ok_or_else(|| failed("it ended at once".into()))?;
        ak_egress::launch::reap_when_done(pid);
        Ok((socket, identity))
    }

    fn decode(handle: &SandboxHandle) -> Result<VmRecord, BackendError> {
        serde_json::from_str(&handle.data)
            .map_err(|e| BackendError::Setup(format!("bad handle of {}: {e}", handle.id)))
    }
}

/// The spec's host directories as 9p shares, tagged in order; then a sandbox's secrets
/// directory, read-only at `/run/agentkernel`.
fn shares(spec: &SandboxSpec, secrets: Option<&Path>) -> Vec<Share> {
    spec.mounts
        .iter()
        .enumerate()
        .map(|(i, mount)| Share {
            tag: format!("share{i}"),
            host: mount.host.clone(),
            guest: mount.target.clone(),
            writable: mount.writable,
        })
        .chain(secrets.map(|dir| Share {
            tag: "secrets".into(),
            host: dir.to_path_buf(),
            guest: PathBuf::from(ak_core::secrets::RUN_DIR),
            writable: false,
        }))
        .collect()
}

#[async_trait::async_trait]
impl Backend for MicrovmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Microvm
    }

    fn probe(&self) -> BackendProbe {
        let mut details = vec![("driver".to_string(), self.driver.to_string())];
        let mut problems = Vec::new();
        // Both hypervisors are reported, whichever is configured; only the configured
        // driver's needs decide usability.
        let qemu = tools::find_program(tools::QEMU);
        details.push((
            "qemu".into(),
            match &qemu {
                Some(path) => format!(
                    "{} {}",
                    path.display(),
                    qemu::version(path).unwrap_or_default()
                ),
                None => format!("not found ({})", tools::QEMU_HINT),
            },
        ));
        let firecracker = match &self.firecracker {
            Some(path) => Some(path.clone()).filter(|p| p.is_file()),
            None => tools::find_program(tools::FIRECRACKER),
        };
        details.push((
            "firecracker".into(),
            match &firecracker {
                Some(path) => format!(
                    "{} (unverified on real hardware: its driver is tested against Firecracker's documented API only)",
                    path.display()
                ),
                None => "not found (not a Debian package: put its release binary on PATH or set [microvm] firecracker)".into(),
            },
        ));
        if let Err(e) = self.hypervisor() {
            problems.push(e.to_string());
        }
        if self.driver == DriverKind::Qemu {
            match tools::find_program(tools::VSOCK_DAEMON) {
                Some(path) => details.push(("vsock".into(), path.display().to_string())),
                None => problems.push(format!(
                    "{} not found ({})",
                    tools::VSOCK_DAEMON,
                    tools::VSOCK_DAEMON_HINT
                )),
            }
        }
        let kvm = KvmSupport::detect();
        let fallback = if kvm == KvmSupport::Full {
            ""
        } else {
            ": QEMU emulates (TCG)"
        };
        details.push(("kvm".into(), format!("{}{fallback}", kvm.describe())));
        // Not a problem when missing: only sandboxes that ask for network need it.
        details.push(("network".into(), net::describe(&self.run_base())));
        if self.driver == DriverKind::Firecracker && kvm != KvmSupport::Full {
            problems.push("Firecracker needs KVM that runs ordinary guests".into());
        }
        match self.kernel() {
            Ok(path) => details.push(("kernel".into(), path.display().to_string())),
            Err(e) => problems.push(e.to_string()),
        }
        let base = BaseSource::Debian
            .cached_path(&self.cache)
            .ok()
            .filter(|p| p.is_file());
        details.push((
            "image".into(),
            match &base {
                Some(path) => format!(
                    "{} ({})",
                    ak_core::image::MICROVM_BASE_IMAGE,
                    path.display()
                ),
                None => format!(
                    "{} not built (`agentkernel setup`)",
                    ak_core::image::MICROVM_BASE_IMAGE
                ),
            },
        ));
        if !self.agent.is_file() {
            problems.push(format!("the agent {} is missing", self.agent.display()));
        }
        let accel = if kvm == KvmSupport::Full {
            "KVM"
        } else {
            "emulation (TCG)"
        };
        BackendProbe {
            backend: BackendKind::Microvm,
            usable: problems.is_empty(),
            reason: if problems.is_empty() {
                format!("{} microVMs with {accel}", self.driver)
            } else {
                problems.join("; ")
            },
            details,
        }
    }

    async fn create(
        &self,
        spec: &SandboxSpec,
        lifetime: Lifetime,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        Ok(Box::new(
            self.boot(spec, lifetime, None, GuestMemory::Anonymous)
                .await?,
        ))
    }

    fn capabilities(&self) -> Capabilities {
        // `attach` is the agent's PTY, as everywhere. Named sandboxes (and with them
        // snapshots of their layer disk) need the workdir shared: QEMU only.
        Capabilities {
            attach: true,
            mount_cwd: self.driver == DriverKind::Qemu,
            snapshots: self.driver == DriverKind::Qemu,
            // Through the egress helper and a 9p share: QEMU only.
            proxy_secret_bindings: self.driver == DriverKind::Qemu,
            secret_files: self.driver == DriverKind::Qemu,
            // Named VMs saved with their memory and resumed, or forked from it (see
            // `memory.rs`): QEMU only.
            full_state_pause_resume: self.driver == DriverKind::Qemu,
            full_state_fork: self.driver == DriverKind::Qemu,
            ..Capabilities::default()
        }
    }

    fn root_layer(&self) -> RootLayer {
        RootLayer::GuestDisk
    }

    fn clock_stops_when_frozen(&self) -> bool {
        true
    }

    fn workdir_in_root_layer(&self) -> bool {
        // Its named VMs may be saved with their memory (see `memory.rs`).
        self.driver == DriverKind::Qemu
    }

    async fn set_frozen(&self, handle: &SandboxHandle, frozen: bool) -> Result<(), BackendError> {
        let record = Self::decode(handle)?;
        if !record.hypervisor_alive() {
            return Err(BackendError::Gone(handle.id.clone()));
        }
        // The vCPUs stop where they are; the guest's memory, devices and the host's side
        // of its connections stay.
        match record.driver {
            DriverKind::Qemu => qmp::set_paused(&record.layout.qmp_socket(), frozen).await?,
            DriverKind::Firecracker => {
                firecracker::configure(
                    &record.layout.api_socket(),
                    &[firecracker::pause_request(frozen)],
                )
                .await?
            }
        }
        Ok(())
    }

    async fn attach(&self, handle: &SandboxHandle) -> Result<Box<dyn Sandbox>, BackendError> {
        let record = Self::decode(handle)?;
        if !record.hypervisor_alive() {
            return Err(BackendError::Gone(handle.id.clone()));
        }
        Ok(Box::new(MicrovmSandbox {
            id: handle.id.clone(),
            record,
            transport: None,
            running: Arc::new(AtomicBool::new(true)),
            watcher: None,
            destroyed: false,
            boot_phases: Vec::new(),
        }))
    }

    async fn save_memory(
        &self,
        handle: &SandboxHandle,
        spec: &SandboxSpec,
        state: &Path,
        end: bool,
    ) -> Result<(), BackendError> {
        Ok(self.save(handle, spec, state, end).await?)
    }

    async fn restore_memory(
        &self,
        spec: &SandboxSpec,
        state: &Path,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        self.restore(spec, state).await
    }

    async fn share_memory_state(
        &self,
        spec: &SandboxSpec,
        state: &Path,
    ) -> Result<(), BackendError> {
        Ok(self.share_state(spec, state).await?)
    }

    fn discard_memory_state(&self, state: &Path) -> std::io::Result<()> {
        self.shared_memory.discard(state)
    }

    async fn set_allowlist(
        &self,
        handle: &SandboxHandle,
        allowlist: &ak_core::egress::Allowlist,
    ) -> Result<(), BackendError> {
        let record = Self::decode(handle)?;
        if !record.hypervisor_alive() {
            return Err(BackendError::Gone(handle.id.clone()));
        }
        // The helper watches this one file, which exists exactly when it was started.
        let policy = record.layout.dir.join(EGRESS_POLICY);
        if record.egress.is_none() || !policy.is_file() {
            return Err(MicrovmError::Network(format!(
                "VM {} has no egress helper to give an allowlist to",
                handle.id
            ))
            .into());
        }
        ak_egress::PolicyFile::replace_allowlist(&policy, allowlist)
            .map_err(|e| MicrovmError::Network(e.to_string()).into())
    }

    async fn release(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        let record = Self::decode(handle)?;
        // A network's release runs iptables and waits on netlink: off the runtime's threads.
        tokio::task::spawn_blocking(move || record.end())
            .await
            .map_err(|e| BackendError::Setup(format!("ending the VM: {e}")))??;
        Ok(())
    }
}
