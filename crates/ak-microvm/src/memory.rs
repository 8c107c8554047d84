//! Named QEMU VMs saved with their memory and restored from it: QEMU migrates the whole
//! VM (memory, devices, vCPUs) to a file (`migrate` to `exec:cat > FILE`, with its vCPUs
//! stopped) and a new QEMU with the same devices loads it (`-incoming`), its guest going
//! on where it was. The agent's channel is virtio-serial (vhost-user vsock cannot
//! migrate); what else cannot migrate, or cannot be recreated the same on the host, is
//! refused up front: a network (the tap, its lease and NAT rules, or the egress helper
//! and its connection) and 9p shares (QEMU refuses to migrate a mounted one).
//!
//! A state saved for forks is then made shareable ([`MicrovmBackend::share_state`]):
//! its memory becomes an in-memory file and the state the devices' and vCPUs' alone,
//! and each fork maps the file copy-on-write instead of loading its own copy of the
//! memory, so the forks share every page none of them wrote.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ak_core::backend::{Lifetime, SandboxHandle};
use ak_core::{BackendError, NetworkMode, Sandbox, SandboxSpec};

use crate::error::MicrovmError;
use crate::vm::VmRecord;
use crate::{DriverKind, GuestMemory, MicrovmBackend, qmp};
use rustix::fs::MemfdFlags;

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
        let shared = self.shared_memory.path_of(state);
        let memory = match &shared {
            Some(path) => GuestMemory::MappedFrom(path),
            None => GuestMemory::Anonymous,
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
    /// only once both are whole; on failure `state` is as it was.
    ///
    /// The file is an unlinked in-memory file (`memfd`) that only this process holds
    /// (QEMU opens it as `/proc/PID/fd/N`), kept until [`SharedMemory::discard`]: nothing
    /// is left behind if this process dies, and the forks' mappings keep what they use.
    /// In memory, not on disk: that VM's load reads every page the state marks zero, and
    /// through a shared mapping of a file on ext4 each such read allocated a page-cache
    /// page (3 s for a 1 GiB guest); the zero pages are punched out afterwards.
    pub(crate) async fn share_state(
        &self,
        spec: &SandboxSpec,
        state: &Path,
    ) -> Result<(), MicrovmError> {
        self.check_savable(spec)?;
        let state_partial = partial_file(state);
        let memory = rustix::fs::memfd_create("agentkernel-fork-memory", MemfdFlags::CLOEXEC)
            .map_err(|e| MicrovmError::io("create the forks' memory file")(e.into()))?;
        let path = fd_path(memory.as_fd());
        let mut shape = spec.clone();
        shape.id = ak_core::spec::new_sandbox_id();
        let vm = self
            .boot(
                &shape,
                Lifetime::Persistent,
                Some(state),
                GuestMemory::WrittenTo(&path),
            )
            .await?
            .forget();
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
        let finished = match saved.and(ended) {
            Ok(()) => tokio::task::spawn_blocking(move || {
                punch_zero_pages(memory.as_fd()).map(|()| memory)
            })
            .await
            .map_err(|e| MicrovmError::State(format!("trimming the forks' memory: {e}")))
            .and_then(|punched| punched.map_err(MicrovmError::io("trim the forks' memory file"))),
            Err(e) => Err(e),
        };
        let renamed = finished.and_then(|memory| {
            std::fs::rename(&state_partial, state).map_err(MicrovmError::io(format!(
                "rename {}",
                state_partial.display()
            )))?;
            self.shared_memory.keep(state, memory);
            Ok(())
        });
        if renamed.is_err() {
            let _ = std::fs::remove_file(&state_partial);
        }
        renamed
    }
}

/// The in-memory files of states made shareable, by state file (see
/// [`MicrovmBackend::share_state`]).
#[derive(Debug, Default)]
pub(crate) struct SharedMemory(Mutex<HashMap<PathBuf, OwnedFd>>);

impl SharedMemory {
    fn keep(&self, state: &Path, memory: OwnedFd) {
        self.lock().insert(state.to_path_buf(), memory);
    }

    /// The path QEMU opens the memory of `state` by, if it was made shareable.
    fn path_of(&self, state: &Path) -> Option<PathBuf> {
        self.lock().get(state).map(|fd| fd_path(fd.as_fd()))
    }

    /// Removes a saved state, and drops its memory file if it was made shareable (the
    /// VMs that map it keep what they use).
    pub(crate) fn discard(&self, state: &Path) -> std::io::Result<()> {
        self.lock().remove(state);
        ak_core::backend::remove_state_file(state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, OwnedFd>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How another process (QEMU) opens this process's descriptor `fd`.
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    ))
}

/// Gives back the pages of `file` that hold only zeros (QEMU's load allocated every page
/// it checked), so that the file holds the guest's used memory alone.
fn punch_zero_pages(file: BorrowedFd<'_>) -> std::io::Result<()> {
    const PAGE: usize = 4096;
    const CHUNK: usize = 1 << 20;
    static ZEROS: [u8; PAGE] = [0; PAGE];
    let punch = |from: u64, to: u64| {
        rustix::fs::fallocate(
            file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            from,
            to - from,
        )
    };
    let length = rustix::fs::fstat(file)?.st_size as u64;
    let mut buffer = vec![0u8; CHUNK];
    let (mut offset, mut zeros_from) = (0u64, None);
    while offset < length {
        let read = rustix::io::pread(file, &mut buffer, offset)?;
        if read == 0 {
            break;
        }
        for (index, page) in buffer[..read].chunks(PAGE).enumerate() {
            let at = offset + (index * PAGE) as u64;
            // A comparison (memcmp), not a loop over bytes: about a second per GiB.
            let zero = page == &ZEROS[..page.len()];
            match (zero, zeros_from) {
                (true, None) => zeros_from = Some(at),
                (false, Some(from)) => {
                    punch(from, at)?;
                    zeros_from = None;
                }
                _ => {}
            }
        }
        offset += read as u64;
    }
    if let Some(from) = zeros_from {
        punch(from, offset)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_punched_out_and_data_stays() {
        let file = rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC).unwrap();
        // Pages (a guest's memory is whole pages): data, zero, zero, data (a byte at its
        // end), then a run of zeros to the end.
        let mut content = vec![0u8; 6 * 4096];
        content[10] = 1;
        content[4 * 4096 - 1] = 2;
        rustix::io::pwrite(&file, &content, 0).unwrap();
        let allocated = |file: &OwnedFd| rustix::fs::fstat(file).unwrap().st_blocks * 512;
        assert_eq!(allocated(&file), content.len() as i64);
        punch_zero_pages(file.as_fd()).unwrap();
        assert_eq!(allocated(&file), 2 * 4096, "only the two data pages stay");
        let mut back = vec![0xffu8; content.len()];
        assert_eq!(
            rustix::io::pread(&file, &mut back, 0).unwrap(),
            content.len()
        );
        assert_eq!(back, content);
    }
}
