//! One VM on the host: its runtime directory, the processes it owns (hypervisor and, for
//! QEMU, the vsock daemon), how they are started, recognised again and ended.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use ak_core::backend::Lifetime;
use rustix::process::Signal;
use serde::{Deserialize, Serialize};

use crate::error::MicrovmError;

/// Directory mode of runtime directories: only their owner enters them (they hold the
/// vsock socket, which is the sandbox's whole control channel).
const DIR_MODE: u32 = 0o700;
/// The record of a VM's processes inside its runtime directory (read by the sweep).
const RECORD: &str = "vm.json";
/// How long a killed VM process gets to be gone before ending it goes on regardless.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The files of one VM's runtime directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// The vhost-user control socket between QEMU and the vsock daemon.
    pub fn vhost_socket(&self) -> PathBuf {
        self.dir.join("vhost.sock")
    }
    /// The host end of the guest's vsock (see [`crate::vsock`]).
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    /// Where QEMU listens for the host end of the virtio-serial port `name`.
    pub fn serial_socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }
    /// Held locked while a host process picks a free serial port (see [`crate::serial`]).
    pub fn ports_lock(&self) -> PathBuf {
        self.dir.join("ports.lock")
    }
    /// QEMU's machine protocol socket (pause, resume).
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// Firecracker's API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("firecracker.sock")
    }
    /// Everything the guest printed on its serial console.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The hypervisor's and the vsock daemon's own messages.
    pub fn host_log(&self) -> PathBuf {
        self.dir.join("host.log")
    }

    pub fn create(dir: PathBuf) -> Result<Layout, MicrovmError> {
        if let Some(base) = dir.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(base)
                .map_err(MicrovmError::io(format!("create {}", base.display())))?;
        }
        std::fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(MicrovmError::io(format!("create {}", dir.display())))?;
        Ok(Layout { dir })
    }

    /// The last lines the VM printed (console, then the host processes' messages).
    pub fn last_output(&self) -> String {
        let read = |path: PathBuf| {
            let text = std::fs::read(path).unwrap_or_default();
            crate::guest::tail(&text, b"")
        };
        [read(self.console()), read(self.host_log())]
            .into_iter()
            .filter(|text| !text.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn remove(&self) -> Result<(), MicrovmError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(MicrovmError::io(format!("remove {}", self.dir.display()))(
                e,
            )),
        }
    }
}

/// What finds a VM again: stored in the sandbox's handle and in its runtime directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub layout: Layout,
    pub driver: crate::DriverKind,
    pub lifetime: Lifetime,
    /// [`ak_core::process::identity`] of the hypervisor.
    pub hypervisor: String,
    /// Of the vsock daemon (QEMU only).
    pub vsock_daemon: Option<String>,
    /// Of the process that created a one-shot VM: when it is gone, so is every user.
    pub creator: String,
    /// Its network device's host side, when its policy allows network.
    #[serde(default)]
    pub net: Option<crate::net::Attachment>,
    /// Of the egress helper that is the NIC's far end, when its policy is an allowlist.
    #[serde(default)]
    pub egress: Option<String>,
    /// The agent's channel: vsock when 0, else this many virtio-serial data ports.
    #[serde(default)]
    pub serial_ports: u32,
}

impl VmRecord {
    pub fn save(&self) -> Result<(), MicrovmError> {
        let path = self.layout.dir.join(RECORD);
        let text = serde_json::to_string(self).map_err(|e| MicrovmError::Io {
            what: "encode the VM record".into(),
            source: e.into(),
        })?;
        std::fs::write(&path, text).map_err(MicrovmError::io(format!("write {}", path.display())))
    }

    pub fn load(dir: &Path) -> Option<VmRecord> {
        let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn hypervisor_alive(&self) -> bool {
        ak_core::process::alive(&self.hypervisor)
    }

    /// Kills the VM's processes (those still the recorded ones), releases its network
    /// and removes its directory (last: a network lease outliving its directory is what
    /// the sweep looks for). Idempotent.
    pub fn end(&self) -> Result<(), MicrovmError> {
        // Waited for, not only signalled: once this returns, the VM's processes are gone
        // (a `stop` that returned while QEMU was still exiting was seen by a test).
        if !ak_core::process::kill_recorded(&self.hypervisor, KILL_WAIT) {
            tracing::warn!("the hypervisor is still not gone {KILL_WAIT:?} after SIGKILL");
        }
        if let Some(daemon) = &self.vsock_daemon
            && !ak_core::process::kill_recorded(daemon, KILL_WAIT)
        {
            tracing::warn!("the vsock daemon is still not gone {KILL_WAIT:?} after SIGKILL");
        }
        if let Some(egress) = &self.egress
            && !ak_core::process::kill_recorded(egress, KILL_WAIT)
        {
            tracing::warn!("the egress helper is still not gone {KILL_WAIT:?} after SIGKILL");
        }
        let net = self.net.as_ref().map_or(Ok(()), |net| net.release());
        let removed = self.layout.remove();
        net.and(removed)
    }
}

/// Starts a host process of a VM. One-shot VMs die with their creator (parent-death
/// signal); persistent ones get a session of their own so that they outlive it and no
/// terminal signal reaches them.
pub fn spawn(
    program: &Path,
    args: &[String],
    log: &Path,
    lifetime: Lifetime,
) -> Result<(tokio::process::Child, String), MicrovmError> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(MicrovmError::io(format!("open {}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(MicrovmError::io(format!("open {}", log.display())))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (prctl, setsid).
    unsafe {
        command.pre_exec(move || {
            match lifetime {
                Lifetime::Ephemeral => {
                    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                }
                Lifetime::Persistent => {
                    rustix::process::setsid()?;
                }
            }
            Ok(())
        });
    }
    let child = match lifetime {
        Lifetime::Ephemeral => on_lasting_thread(move || command.spawn()),
        Lifetime::Persistent => command.spawn(),
    }
    .map_err(MicrovmError::io(format!("start {}", program.display())))?;
    let identity = child
        .id()
        .and_then(ak_core::process::identity)
        .ok_or_else(|| MicrovmError::Boot {
            reason: format!("{} exited at once", program.display()),
            log: String::new(),
        })?;
    Ok((child, identity))
}

/// Runs `spawn` (a process start, in the caller's tokio runtime) on a thread that lives
/// as long as the process. A one-shot VM's processes get SIGKILL when their parent goes
/// (`PR_SET_PDEATHSIG`), and the kernel ties that to the *thread* that forked them, not
/// the process: forked on one of tokio's blocking threads, which end after 10 s idle
/// (a daemon builds its pools' sandboxes there), every spare VM of an idle pool was
/// killed about 10 s after it was built.
fn on_lasting_thread(
    spawn: impl FnOnce() -> std::io::Result<tokio::process::Child> + Send + 'static,
) -> std::io::Result<tokio::process::Child> {
    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: std::sync::OnceLock<std::io::Result<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ak-vm-spawner".into())
            .spawn(move || queue.into_iter().for_each(|job| job()))
            .map(|_| jobs)
    });
    let spawner = match spawner {
        Ok(spawner) => spawner.clone(),
        Err(e) => return Err(std::io::Error::new(e.kind(), e.to_string())),
    };
    // The child is registered with the caller's runtime (its exit is watched there).
    let runtime = tokio::runtime::Handle::current();
    let (done, result) = std::sync::mpsc::sync_channel(1);
    spawner
        .send(Box::new(move || {
            let _entered = runtime.enter();
            let _ = done.send(spawn());
        }))
        .map_err(|_| std::io::Error::other("the VM spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| std::io::Error::other("the VM spawner thread is gone"))?
}

/// Ends the one-shot VMs in `base` whose creator is gone (it was killed before it could
/// clean up) and removes their directories, and directories with no record (a creation
/// cut short).
pub fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        // Dot-names are the backend's own (the network leases), not VMs.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let dir = entry.path();
        match VmRecord::load(&dir) {
            Some(record)
                if record.lifetime == Lifetime::Ephemeral
                    && !ak_core::process::alive(&record.creator) =>
            {
                tracing::info!(
                    "removing the one-shot VM {} whose creator is gone",
                    dir.display()
                );
                if let Err(e) = record.end() {
                    tracing::warn!("{e}");
                }
            }
            Some(_) => {}
            None => {
                // Being created right now by a live process, or left by a dead one: only
                // old ones go (a creation takes seconds, not minutes).
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(600));
                if old {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }
}
