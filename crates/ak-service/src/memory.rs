//! Named sandboxes saved with their memory (`pause --save`), resumed from it, and forked
//! from it: the backend writes the sandbox's whole state (a VM's memory, devices and
//! vCPUs) to a file in the sandbox's directory, beside its root's writable layer, and
//! later starts a sandbox from that file, whose processes go on where they were. The
//! registry records the `saved` state, so a saved sandbox is found again after the daemon
//! or the host restarted. Backends without [`ak_core::Capabilities::full_state_pause_resume`]
//! refuse (the API's 503).
//!
//! A restored guest's clock is the one it was saved with and its random number generator
//! the one every copy of that state has: the backend sets both afresh as part of each
//! restore, before it reports the sandbox started (the microvm backend's sync line).

use std::path::{Path, PathBuf};

use ak_core::spec::{new_sandbox_id, validate_name};
use ak_core::{BackendError, SandboxState};

use crate::error::ServiceError;
use crate::registry::SandboxRecord;
use crate::sandboxes::{parse_handle, require};
use crate::{Caller, Service};

/// A saved sandbox's memory state, in its directory.
const MEMORY_STATE: &str = "memory.state";

impl Service {
    fn memory_state_of(&self, record: &SandboxRecord) -> Result<PathBuf, ServiceError> {
        Ok(self.host_dir_of(&record.uuid)?.join(MEMORY_STATE))
    }

    /// Fails unless `record`'s backend saves sandboxes with their memory.
    fn require_full_state(&self, record: &SandboxRecord, what: &str) -> Result<(), ServiceError> {
        let backend = self.backend(record.backend)?;
        if backend.capabilities().full_state_pause_resume {
            return Ok(());
        }
        Err(BackendError::Unsupported {
            backend: record.backend.to_string(),
            reason: format!(
                "it cannot {what} a sandbox with its memory (QEMU microVMs can); pause without saving keeps it in memory"
            ),
        }
        .into())
    }

    /// [`Service::save_named`] without its audit entry.
    async fn save_unaudited(&self, name: &str) -> Result<SandboxRecord, ServiceError> {
        let (_lock, record) = self.lock_name_checked(name).await?;
        require(
            &record,
            &[SandboxState::Running, SandboxState::Paused],
            "pause",
        )?;
        self.require_full_state(&record, "save")?;
        let handle = parse_handle(&record)?;
        let state = self.memory_state_of(&record)?;
        self.backend(record.backend)?
            .save_memory(&handle, &record.spec, &state, true)
            .await?;
        Ok(self
            .registry()?
            .transition(name, record.state, SandboxState::Saved, None, None)?)
    }

    /// Saves a running or paused sandbox to disk with its memory and ends its processes
    /// (state `saved`); [`Service::resume_named`] starts it again where it was.
    pub(crate) async fn save_named(
        &self,
        caller: Caller,
        name: &str,
    ) -> Result<SandboxRecord, ServiceError> {
        let result = self.save_unaudited(name).await;
        self.audited(caller, "pause", Some(name), Some("saved".into()), result)
    }

    /// Starts a saved sandbox from its memory state (the file goes once it runs; a failed
    /// restore leaves it saved, its state file there to try again).
    pub(crate) async fn resume_saved(&self, name: &str) -> Result<SandboxRecord, ServiceError> {
        let (_lock, record) = self.lock_name(name).await?;
        require(&record, &[SandboxState::Saved], "resume")?;
        let state = self.memory_state_of(&record)?;
        let started = self.start_from_memory(&record, &state).await?;
        if let Err(e) = self.backend(record.backend)?.discard_memory_state(&state) {
            tracing::warn!(name, "removing the memory state of a resumed sandbox: {e}");
        }
        Ok(started)
    }

    /// Starts sandbox `record` (saved, or a fork's new record, stopped) from `state` and
    /// records it running.
    async fn start_from_memory(
        &self,
        record: &SandboxRecord,
        state: &Path,
    ) -> Result<SandboxRecord, ServiceError> {
        let backend = self.backend(record.backend)?.clone();
        let sandbox = backend.restore_memory(&record.spec, state).await?;
        let handle = sandbox.handle();
        sandbox.detach();
        self.record_running(&record.name, record.state, &backend, &handle)
            .await
    }

    /// Drops a saved sandbox's memory state (a `stop` or forced removal of it).
    pub(crate) fn discard_memory_state(&self, record: &SandboxRecord) -> Result<(), ServiceError> {
        self.backend(record.backend)?
            .discard_memory_state(&self.memory_state_of(record)?)
            .map_err(|e| {
                ServiceError::State(format!("removing the memory state of {}: {e}", record.name))
            })
    }

    /// Forks running or paused `sandbox` from its memory: its state is saved once (the
    /// sandbox stopped for that moment, then going on as it was) with a copy of its
    /// root's writable layer of the same instant, and each of `new` starts from them, its
    /// processes where the original's were. `Ok(None)` when the backend cannot save this
    /// sandbox's memory (the caller forks its files instead).
    pub(crate) async fn fork_from_memory(
        &self,
        caller: Caller,
        sandbox: &str,
        new: &[String],
    ) -> Result<Option<Vec<SandboxRecord>>, ServiceError> {
        let source = self.record(sandbox)?;
        let backend = self.backend(source.backend)?.clone();
        if !source.state.is_up() || !backend.capabilities().full_state_fork {
            return Ok(None);
        }
        for name in new {
            validate_name(name)?;
        }
        let state = self
            .host_dir_of(&source.uuid)?
            .join(format!("fork-{}.state", &new_sandbox_id()[..16]));
        let root_copy = {
            let (_lock, source) = self.lock_name_checked(sandbox).await?;
            require(
                &source,
                &[SandboxState::Running, SandboxState::Paused],
                "fork",
            )?;
            let handle = parse_handle(&source)?;
            let was_running = source.state == SandboxState::Running;
            // Frozen here, not by the backend's save: the root's layer is copied at the
            // same instant as the memory, before the sandbox goes on.
            if was_running {
                backend.set_frozen(&handle, true).await?;
            }
            let saved = match backend
                .save_memory(&handle, &source.spec, &state, false)
                .await
            {
                Ok(()) => self.copy_root_aside(&source).await,
                Err(e) => Err(e.into()),
            };
            if was_running && let Err(e) = backend.set_frozen(&handle, false).await {
                tracing::warn!(sandbox, "resuming a forked sandbox: {e}");
            }
            match saved {
                Ok(copy) => copy,
                Err(ServiceError::Backend(BackendError::Unsupported { reason, .. })) => {
                    tracing::info!(sandbox, "forking its files only: {reason}");
                    let _ = std::fs::remove_file(&state);
                    return Ok(None);
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&state);
                    return Err(e);
                }
            }
        };
        // Several forks share what they can of the state (the source goes on
        // meanwhile). Not one: making the state shareable costs about a restore (QEMU:
        // docs/benchmarks.md), and a single fork has nothing to share it with.
        let mut shape = source.spec.clone();
        shape.root_dir = Some(root_copy.clone());
        let shared = if new.len() > 1 {
            backend.share_memory_state(&shape, &state).await
        } else {
            Ok(())
        };
        if let Err(e) = shared {
            let _ = backend.discard_memory_state(&state);
            if let Err(e) = std::fs::remove_dir_all(&root_copy) {
                tracing::warn!("removing {}: {e}", root_copy.display());
            }
            return Err(e.into());
        }
        let mut made = Vec::new();
        let mut failure = None;
        for name in new {
            match self
                .fork_one_from_memory(caller, &source, name, &root_copy, &state)
                .await
            {
                Ok(record) => made.push(record),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        // Each fork maps what it shares of the state: the files can go.
        if let Err(e) = backend.discard_memory_state(&state) {
            tracing::warn!("removing {}: {e}", state.display());
        }
        if let Err(e) = std::fs::remove_dir_all(&root_copy) {
            tracing::warn!("removing {}: {e}", root_copy.display());
        }
        self.all_forks_or_none(caller, made, failure)
            .await
            .map(Some)
    }

    /// Copies `record`'s root directory (its writable layer: a VM's disk) beside it.
    async fn copy_root_aside(&self, record: &SandboxRecord) -> Result<PathBuf, ServiceError> {
        let root = record
            .spec
            .root_dir
            .clone()
            .ok_or_else(|| ServiceError::State(format!("{} has no root layer", record.name)))?;
        let copy = self
            .host_dir_of(&record.uuid)?
            .join(format!("fork-{}.root", &new_sandbox_id()[..16]));
        let target = copy.clone();
        self.offload(async move { copy_tree(&root, &target) })
            .await??;
        Ok(copy)
    }

    async fn fork_one_from_memory(
        &self,
        caller: Caller,
        source: &SandboxRecord,
        name: &str,
        root_copy: &Path,
        state: &Path,
    ) -> Result<SandboxRecord, ServiceError> {
        let mut spec = source.spec.clone();
        let source_id = std::mem::replace(&mut spec.id, new_sandbox_id());
        spec.hostname = format!("ak-{}", &spec.id[..12]);
        spec.source = None;
        self.policy.admit(caller, &spec)?;
        self.admit_volumes(caller, &spec)?;
        self.inherit_secret_values(caller, &source_id, &mut spec)?;
        let record = self.create_unaudited(name, spec, None).await?;
        let started = async {
            let root =
                record.spec.root_dir.clone().ok_or_else(|| {
                    ServiceError::State(format!("the fork {name} has no root layer"))
                })?;
            let from = root_copy.to_path_buf();
            self.offload(async move { copy_tree(&from, &root) })
                .await??;
            let _lock = self.lock_name(name).await?;
            self.start_from_memory(&record, state).await
        }
        .await;
        let result = match started {
            Ok(record) => Ok(record),
            Err(error) => {
                if let Err(cleanup) = self.remove_named(caller, name, true).await {
                    tracing::warn!(name, "removing a fork that failed to start: {cleanup}");
                }
                Err(error)
            }
        };
        self.audited(
            caller,
            "create",
            Some(name),
            Some(format!("forked from the memory of {}", source.name)),
            result,
        )
    }
}

/// Copies the files of directory `from` into `to` (made when missing), keeping holes
/// (a VM's layer disk is a sparse file of gigabytes) and sharing blocks where the file
/// system can (`cp --reflink=auto`).
fn copy_tree(from: &Path, to: &Path) -> Result<(), ServiceError> {
    std::fs::create_dir_all(to)
        .map_err(|e| ServiceError::State(format!("create {}: {e}", to.display())))?;
    let mut source = from.as_os_str().to_owned();
    source.push("/.");
    let output = std::process::Command::new("cp")
        .args(["-a", "--sparse=always", "--reflink=auto"])
        .arg(&source)
        .arg(to)
        .output()
        .map_err(|e| ServiceError::State(format!("run cp: {e}")))?;
    if !output.status.success() {
        return Err(ServiceError::State(format!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}
