//! One-shot VMs restored from a template instead of booted. A template is a VM of the
//! same kernel, agent, image, size and agent arguments, booted once with its memory in a
//! file (mapped shared) and saved before it served anything: the file is its memory,
//! the state (QEMU's migration, `x-ignore-shared`) its devices and vCPUs. Each later
//! one-shot VM of that shape maps the memory file copy-on-write and loads the state
//! (`-incoming`): nothing of the memory is copied at the restore, and every VM restored
//! from one template shares the pages it has not written (the host's page cache holds
//! them once). Under emulation that takes a fraction of a boot (docs/benchmarks.md).
//! Warm pools of such VMs refill by restoring, and so does a cold
//! `run --backend microvm --no-network`.
//!
//! What every copy shares, and why that is safe:
//! - Nothing of a sandbox: the template's agent never served a connection; it serves
//!   exactly one after each restore (`--serial-once`), the copy's command, and the VM
//!   ends with it.
//! - The guest kernel's random state: each restore's sync line carries the host's time
//!   and a fresh seed, credited to the guest's entropy pool before the agent answers
//!   (see [`crate::serial::wait_ready`]), so no two copies draw the same `getrandom`
//!   bytes. The address-space layout of the guest kernel and of the agent is the same in
//!   every copy, as in every snapshot-restoring VM (Firecracker's documentation says the
//!   same of its snapshots); commands start afresh in each copy and get their own.
//!
//! Only QEMU VMs without network, host directories or secrets are made so: a network
//! (tap, lease, egress connection) and 9p shares cannot be carried across a restore
//! (see `memory.rs`), and secrets are each sandbox's own.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ak_core::SandboxSpec;
use ak_core::backend::Lifetime;
use sha2::{Digest, Sha256};

use crate::error::MicrovmError;
use crate::memory::{partial_file, restricted_empty_file};
use crate::vm::Layout;
use crate::{Boot, GuestMemory, HostNetwork, MicrovmBackend, lock_exclusive, qmp};

/// Templates kept in the cache at most; the least recently used go first. Each is a
/// guest's used memory (tens of MiB), and a new agent or kernel makes new ones.
const KEPT_TEMPLATES: usize = 8;
/// The cache's directory of templates.
const TEMPLATES_DIR: &str = "templates";
/// A template's devices' and vCPUs' state, and its memory (`KEY.state`, `KEY.memory`).
const STATE: &str = "state";
const MEMORY: &str = "memory";

/// A template's two files.
pub(crate) struct TemplateFiles {
    /// Its devices' and vCPUs' state (QEMU's migration stream without the memory).
    pub state: PathBuf,
    /// Its memory, mapped copy-on-write by each VM restored from it.
    pub memory: PathBuf,
}

impl MicrovmBackend {
    /// Whether a VM of `spec` and `lifetime` starts from a template (see the module's
    /// documentation).
    pub(crate) fn starts_from_template(&self, spec: &SandboxSpec, lifetime: Lifetime) -> bool {
        self.restore_one_shot
            && lifetime == Lifetime::Ephemeral
            && spec.root_dir.is_none()
            && self.check_carried_over(spec).is_ok()
    }

    /// The template for `boot` (which starts nothing itself: it has no `incoming`),
    /// booting and saving the template first when there is none. Also how long making
    /// it took, when it was made now. Processes making the same template wait for the
    /// first.
    pub(crate) async fn template_state(
        &self,
        boot: &Boot<'_>,
        spec: &SandboxSpec,
        kvm: bool,
    ) -> Result<(TemplateFiles, Option<Duration>), MicrovmError> {
        let dir = self.cache.join(TEMPLATES_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(MicrovmError::io(format!("create {}", dir.display())))?;
        let key = template_key(boot, kvm, &self.hypervisor()?);
        let files = TemplateFiles {
            state: dir.join(format!("{key}.{STATE}")),
            memory: dir.join(format!("{key}.{MEMORY}")),
        };
        let lock_path = dir.join(format!("{key}.lock"));
        let _lock = tokio::task::spawn_blocking(move || lock_exclusive(&lock_path))
            .await
            .map_err(|e| MicrovmError::State(format!("locking a template: {e}")))??;
        // The state is renamed into place last: with it, the memory is whole too.
        if files.state.is_file() && files.memory.is_file() {
            // Its modification time is its last use: the eviction's order.
            if let Err(e) = std::fs::File::options()
                .write(true)
                .open(&files.state)
                .and_then(|file| file.set_modified(SystemTime::now()))
            {
                tracing::debug!("marking {} used: {e}", files.state.display());
            }
            return Ok((files, None));
        }
        let started = std::time::Instant::now();
        self.make_template(boot, spec, kvm, &files).await?;
        evict(&dir, KEPT_TEMPLATES);
        Ok((files, Some(started.elapsed())))
    }

    /// Boots a VM for `boot` in a directory of its own with its memory in a file, waits
    /// for its agent, saves its state and ends it. Both files are written beside and
    /// renamed into place once whole, the state last.
    async fn make_template(
        &self,
        boot: &Boot<'_>,
        spec: &SandboxSpec,
        kvm: bool,
        files: &TemplateFiles,
    ) -> Result<(), MicrovmError> {
        let (state_partial, memory_partial) =
            (partial_file(&files.state), partial_file(&files.memory));
        // Emptied, should an earlier attempt have left one.
        restricted_empty_file(&memory_partial)?;
        let boot = Boot {
            memory: GuestMemory::WrittenTo(&memory_partial),
            ..boot.clone()
        };
        let mut template_spec = spec.clone();
        template_spec.id = ak_core::spec::new_sandbox_id();
        let layout = match Layout::create(self.run_base().join(&template_spec.id)) {
            Ok(layout) => layout,
            Err(e) => {
                let _ = std::fs::remove_file(&memory_partial);
                return Err(e);
            }
        };
        let template = self
            .start(
                &boot,
                &layout,
                Lifetime::Ephemeral,
                &template_spec,
                kvm,
                HostNetwork::default(),
            )
            .await;
        let template = match template {
            Ok(template) => template,
            Err(e) => {
                let _ = layout.remove();
                let _ = std::fs::remove_file(&memory_partial);
                return Err(e);
            }
        };
        let socket = layout.qmp_socket();
        let saved = async {
            qmp::set_paused(&socket, true).await?;
            restricted_empty_file(&state_partial)?;
            qmp::save_state(&socket, &state_partial, true).await?;
            // The guest's pages are in the file (the page cache) as it wrote them;
            // nothing more is needed for the copies' mappings to see them.
            std::fs::rename(&memory_partial, &files.memory).map_err(MicrovmError::io(format!(
                "rename {}",
                memory_partial.display()
            )))?;
            std::fs::rename(&state_partial, &files.state).map_err(MicrovmError::io(format!(
                "rename {}",
                state_partial.display()
            )))
        }
        .await;
        if saved.is_err() {
            let _ = std::fs::remove_file(&state_partial);
            let _ = std::fs::remove_file(&memory_partial);
        }
        // Ended either way: it served its purpose, or failed to.
        let record = template.forget();
        let ended = tokio::task::spawn_blocking(move || record.end())
            .await
            .map_err(|e| MicrovmError::State(format!("ending a template's VM: {e}")))?;
        saved.and(ended)
    }
}

/// What makes a template's state fit a VM: the hypervisor, kernel, initramfs (the agent)
/// and base image, each with its size and modification time (a rebuilt file at the same
/// path makes a new template), and every argument of the boot.
fn template_key(boot: &Boot<'_>, kvm: bool, hypervisor: &Path) -> String {
    let mut hash = Sha256::new();
    // The templates' format: a state without the memory, and the memory's file.
    hash.update(b"memory-file\0");
    for file in [hypervisor, boot.kernel, boot.initramfs, boot.base] {
        hash.update(file.as_os_str().as_encoded_bytes());
        hash.update([0]);
        if let Ok(meta) = std::fs::metadata(file) {
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .unwrap_or_default();
            hash.update(format!("{}:{}", meta.len(), modified.as_nanos()));
        }
        hash.update([0]);
    }
    hash.update(format!(
        "{}\0{}\0{}\0{}\0{}\0{}",
        boot.kernel_args, boot.init_args, boot.vcpus, boot.memory_mib, boot.serial_ports, kvm
    ));
    hash.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Removes the least recently used templates in `dir` beyond `keep`, state and memory (a
/// VM restored from one keeps its open copy and mapping). Their lock files stay:
/// removing one that another process waits on would let a third make the same template
/// beside it.
fn evict(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut states: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == STATE))
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .collect();
    states.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, state) in states.into_iter().skip(keep) {
        // The state first: without it the memory is never used.
        for path in [state.clone(), state.with_extension(MEMORY)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("removing the template {}: {e}", path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_keeps_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let path = dir.path().join(format!("{name}.state"));
            std::fs::write(&path, name).unwrap();
            std::fs::write(path.with_extension("memory"), name).unwrap();
            std::fs::write(path.with_extension("lock"), "").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(now - Duration::from_secs(100 * (3 - i as u64)))
                .unwrap();
        }
        evict(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "a.lock", "b.lock", "b.memory", "b.state", "c.lock", "c.memory", "c.state"
            ]
        );
    }
}
