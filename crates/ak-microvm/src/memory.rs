//! Named QEMU VMs saved with their memory and restored from it: QEMU migrates the whole
//! VM (memory, devices, vCPUs) to a file (`migrate` to `exec:cat > FILE`, with its vCPUs
//! stopped) and a new QEMU with the same devices loads it (`-incoming`), its guest going
//! on where it was. The agent's channel is virtio-serial (vhost-user vsock cannot
//! migrate); what else cannot migrate, or cannot be recreated the same on the host, is
//! refused up front: a network (the tap, its lease and NAT rules, or the egress helper
//! and its connection) and 9p shares (QEMU refuses to migrate a mounted one).
//!
//! A state saved for forks is then made shareable ([`MicrovmBackend::share_state`]):
//! its memory becomes a file (`STATE.memory`) and the state the devices' and vCPUs'
//! alone, and each fork maps the file copy-on-write instead of loading its own copy of
//! the memory, so the forks share every page none of them wrote.

use std::path::{Path, PathBuf};

use ak_core::backend::{Lifetime, SandboxHandle};
use ak_core::{BackendError, NetworkMode, Sandbox, SandboxSpec};

use crate::error::MicrovmError;
use crate::vm::VmRecord;
use crate::{DriverKind, GuestMemory, MicrovmBackend, qmp};

impl MicrovmBackend {
    /// Why a VM of `spec` cannot be saved with its memory, if it cannot.
    pub(crate) fn check_savable(&self, spec: &SandboxSpec) -> Result<(), MicrovmError> {
        self.check_carried_over(spec)?;
        if spec.root_dir.is_none() {
            return Err(MicrovmError::Unsupported(
                "a VM is saved with its memory (pause --save, fork of a running VM) only when it is a named sandbox (its root's layer disk goes with it)".into(),
            ));
        }
        Ok(())
    }

    /// Why a VM of `spec` cannot be carried across a save and a restore, if it cannot
    /// (also what a one-shot VM restored from a template must meet, `template.rs`).
    pub(crate) fn check_carried_over(&self, spec: &SandboxSpec) -> Result<(), MicrovmError> {
        let refuse = |why: &str| {
            Err(MicrovmError::Unsupported(format!(
                "a VM is saved with its memory (pause --save, fork of a running VM) only {why}"
            )))
        };
        if self.driver != DriverKind::Qemu {
            return refuse("with the QEMU driver (Firecracker's snapshots are not supported)");
        }
        if spec.policy.network != NetworkMode::None {
            return refuse("without network (its tap or egress connection cannot be carried over)");
        }
        if !spec.mounts.is_empty() || ak_egress::provision::has_secrets(spec) {
            return refuse(
                "without host directories or secrets shared into it (QEMU cannot migrate a mounted 9p share)",
            );
        }
        Ok(())
    }

    pub(crate) async fn save(
        &self,
        handle: &SandboxHandle,
        spec: &SandboxSpec,
        state: &Path,
        end: bool,
    ) -> Result<(), MicrovmError> {
        self.check_savable(spec)?;
        let record: VmRecord = serde_json::from_str(&handle.data)
            .map_err(|e| MicrovmError::State(format!("bad handle of {}: {e}", handle.id)))?;
        if record.serial_ports == 0 {
            return Err(MicrovmError::Unsupported(
                "this VM was started with a vsock channel, which cannot be saved: stop and start it again".into(),
            ));
        }
        if !record.hypervisor_alive() {
            return Err(MicrovmError::State(format!(
                "VM {} is not running",
                handle.id
            )));
        }
        // Written beside, renamed into place once complete: a saved VM's file is whole.
        let partial = state.with_extension("partial");
        let socket = record.layout.qmp_socket();
        let was_running = qmp::is_running(&socket).await?;
        if was_running {
            qmp::set_paused(&socket, true).await?;
        }
        if let Err(e) = qmp::save_state(&socket, &partial, false).await {
            let _ = std::fs::remove_file(&partial);
            // A failed save leaves the VM as it was.
            if was_running && let Err(again) = qmp::set_paused(&socket, false).await {
                tracing::warn!("resuming a VM whose save failed: {again}");
            }
            return Err(e);
        }
        std::fs::rename(&partial, state)
            .map_err(MicrovmError::io(format!("rename {}", partial.display())))?;
        if end {
            if let Err(e) = qmp::quit(&socket).await {
                tracing::debug!("QEMU's quit: {e}");
            }
            tokio::task::spawn_blocking(move || record.end())
                .await
                .map_err(|e| MicrovmError::State(format!("ending the VM: {e}")))??;
        } else if was_running {
            qmp::set_paused(&socket, false).await?;
        }
        Ok(())
    }

    pub(crate) async fn restore(
        &self,
        spec: &SandboxSpec,
        state: &Path,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        self.check_savable(spec)?;
        if !state.is_file() {
            return Err(MicrovmError::State(format!("{} does not exist", state.display())).into());
        }
        let memory = memory_file_of(state);
        let memory = if memory.is_file() {
            GuestMemory::MappedFrom(&memory)
        } else {
            GuestMemory::Anonymous
        };
        Ok(Box::new(
            self.boot(spec, Lifetime::Persistent, Some(state), memory)
                .await?,
        ))
    }

    /// Makes `state` (a whole VM's, saved for forks) one whose memory is a file that
    /// each VM restored from it maps copy-on-write. A VM of `spec`'s shape, whose root
    /// is the copy the forks' roots are copied from, is restored from `state` with its
    /// memory mapped shared into the new file; right after its agent's sync (the guest
    /// has run for that long, as a first fork would, and its root copy with it) it is
    /// paused and saved without the memory, and ends. The new state replaces the old
    /// only once both files are whole; on failure `state` is as it was.
    pub(crate) async fn share_state(
        &self,
        spec: &SandboxSpec,
        state: &Path,
    ) -> Result<(), MicrovmError> {
        self.check_savable(spec)?;
        let memory = memory_file_of(state);
        let (state_partial, memory_partial) = (partial_file(state), partial_file(&memory));
        restricted_empty_file(&memory_partial)?;
        let mut shape = spec.clone();
        shape.id = ak_core::spec::new_sandbox_id();
        let vm = match self
            .boot(
                &shape,
                Lifetime::Persistent,
                Some(state),
                GuestMemory::WrittenTo(&memory_partial),
            )
            .await
        {
            Ok(vm) => vm.forget(),
            Err(e) => {
                let _ = std::fs::remove_file(&memory_partial);
                return Err(e);
            }
        };
        let socket = vm.layout.qmp_socket();
        let saved = async {
            qmp::set_paused(&socket, true).await?;
            restricted_empty_file(&state_partial)?;
            qmp::save_state(&socket, &state_partial, true).await?;
            if let Err(e) = qmp::quit(&socket).await {
                tracing::debug!("QEMU's quit: {e}");
            }
            Ok::<_, MicrovmError>(())
        }
        .await;
        let ended = tokio::task::spawn_blocking(move || vm.end())
            .await
            .map_err(|e| MicrovmError::State(format!("ending the VM: {e}")))
            .and_then(|ended| ended);
        let renamed = saved.and(ended).and_then(|()| {
            // The memory first: a state without it is never taken for a shared one.
            for (from, to) in [(&memory_partial, memory.as_path()), (&state_partial, state)] {
                std::fs::rename(from, to)
                    .map_err(MicrovmError::io(format!("rename {}", from.display())))?;
            }
            Ok(())
        });
        if renamed.is_err() {
            let _ = std::fs::remove_file(&state_partial);
            let _ = std::fs::remove_file(&memory_partial);
            let _ = std::fs::remove_file(&memory);
        }
        renamed
    }
}

/// The memory file of a shared state (`STATE.memory`); a state without one carries its
/// memory in itself.
pub(crate) fn memory_file_of(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".memory");
    PathBuf::from(name)
}

/// Removes a saved state and its memory file, if any.
pub(crate) fn discard_state(state: &Path) -> std::io::Result<()> {
    for path in [state.to_path_buf(), memory_file_of(state)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where `path` is written before it is renamed into place (`PATH.partial`).
pub(crate) fn partial_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Creates `path` empty with mode 0600 (emptying and restricting one that exists): a
/// guest's memory and state are the owner's alone. Created before QEMU writes it, so
/// that QEMU finds it with that mode.
pub(crate) fn restricted_empty_file(path: &Path) -> Result<(), MicrovmError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(MicrovmError::io(format!("create {}", path.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(MicrovmError::io(format!("restrict {}", path.display())))
}
