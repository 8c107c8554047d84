//! One-shot VMs restored from a template instead of booted. A template is a VM of the
//! same kernel, agent, image, size and agent arguments, booted once and saved with its
//! memory (QEMU's migration to a file) before it served anything; each later one-shot VM
//! of that shape starts from a copy of the state (`-incoming`), which under emulation
//! takes a fraction of a boot (docs/benchmarks.md). Warm pools of such VMs refill by
//! restoring, and so does a cold `run --backend microvm --no-network`.
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
use crate::vm::Layout;
use crate::{Boot, HostNetwork, MicrovmBackend, lock_exclusive, qmp};

/// Templates kept in the cache at most; the least recently used go first. Each is a
/// guest's used memory (tens of MiB), and a new agent or kernel makes new ones.
const KEPT_TEMPLATES: usize = 8;
/// The cache's directory of templates.
const TEMPLATES_DIR: &str = "templates";

impl MicrovmBackend {
    /// Whether a VM of `spec` and `lifetime` starts from a template (see the module's
    /// documentation).
    pub(crate) fn starts_from_template(&self, spec: &SandboxSpec, lifetime: Lifetime) -> bool {
        self.restore_one_shot
            && lifetime == Lifetime::Ephemeral
            && spec.root_dir.is_none()
            && self.check_carried_over(spec).is_ok()
    }

    /// The memory state of the template for `boot` (which starts nothing itself: it has
    /// no `incoming`), booting and saving the template first when there is none. Also
    /// how long making it took, when it was made now. Processes making the same
    /// template wait for the first.
    pub(crate) async fn template_state(
        &self,
        boot: &Boot<'_>,
        spec: &SandboxSpec,
        kvm: bool,
    ) -> Result<(PathBuf, Option<Duration>), MicrovmError> {
        let dir = self.cache.join(TEMPLATES_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(MicrovmError::io(format!("create {}", dir.display())))?;
        let key = template_key(boot, kvm, &self.hypervisor()?);
        let state = dir.join(format!("{key}.state"));
        let lock_path = dir.join(format!("{key}.lock"));
        let _lock = tokio::task::spawn_blocking(move || lock_exclusive(&lock_path))
            .await
            .map_err(|e| MicrovmError::State(format!("locking a template: {e}")))??;
        if state.is_file() {
            // Its modification time is its last use: the eviction's order.
            if let Err(e) = std::fs::File::options()
                .write(true)
                .open(&state)
                .and_then(|file| file.set_modified(SystemTime::now()))
            {
                tracing::debug!("marking {} used: {e}", state.display());
            }
            return Ok((state, None));
        }
        let started = std::time::Instant::now();
        self.make_template(boot, spec, kvm, &state).await?;
        evict(&dir, KEPT_TEMPLATES);
        Ok((state, Some(started.elapsed())))
    }

    /// Boots a VM for `boot` in a directory of its own, waits for its agent, saves it to
    /// `state` (written beside, renamed into place once whole) and ends it.
    async fn make_template(
        &self,
        boot: &Boot<'_>,
        spec: &SandboxSpec,
        kvm: bool,
        state: &Path,
    ) -> Result<(), MicrovmError> {
        let mut template_spec = spec.clone();
        template_spec.id = ak_core::spec::new_sandbox_id();
        let layout = Layout::create(self.run_base().join(&template_spec.id))?;
        let template = self
            .start(
                boot,
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
                return Err(e);
            }
        };
        let partial = state.with_extension("partial");
        let socket = layout.qmp_socket();
        let saved = async {
            qmp::set_paused(&socket, true).await?;
            qmp::save_state(&socket, &partial).await?;
            // The guest's memory: the owner's alone, as the rest of the cache's VM files.
            std::fs::set_permissions(
                &partial,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .map_err(MicrovmError::io(format!("restrict {}", partial.display())))?;
            std::fs::rename(&partial, state)
                .map_err(MicrovmError::io(format!("rename {}", partial.display())))
        }
        .await;
        if saved.is_err() {
            let _ = std::fs::remove_file(&partial);
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

/// Removes the least recently used templates in `dir` beyond `keep` (a restore reading
/// one keeps its open copy). Their lock files stay: removing one that another process
/// waits on would let a third make the same template beside it.
fn evict(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut states: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "state"))
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .collect();
    states.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, path) in states.into_iter().skip(keep) {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!("removing the template {}: {e}", path.display());
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
        assert_eq!(left, ["a.lock", "b.lock", "b.state", "c.lock", "c.state"]);
    }
}
