//! Snapshots of named sandboxes' writable state (the root's writable layer and the
//! workdir) and new sandboxes made from them: take, list, inspect, remove, restore, fork.
//! A running sandbox is frozen (every process stopped by its backend) for the copy, so the
//! snapshot is one instant of it; a stopped one is copied as it lies. The store is in
//! [`crate::snapshot`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use ak_core::SandboxState;
use ak_core::backend::{RootLayer, SANDBOX_ID_COUNT, SandboxHandle};
use ak_core::spec::{new_sandbox_id, validate_name};

use crate::error::ServiceError;
use crate::registry::SandboxRecord;
use crate::snapshot::tree::{self, IdMap};
use crate::snapshot::{SnapshotInfo, SnapshotRecord, Store, Trees};
use crate::{Caller, Service};

/// Where a named sandbox's root directory lives, beside its workspace.
pub(crate) const ROOT_DIR: &str = "root";
pub(crate) const WORKSPACE_DIR: &str = "workspace";

impl Service {
    fn snapshot_store(&self) -> Result<Store, ServiceError> {
        Ok(Store::open(self.state_dir()?)?)
    }

    /// The host ids of a backend's sandboxes, for mapping a snapshot's owners.
    fn id_map(&self, backend: ak_core::BackendKind) -> Result<IdMap, ServiceError> {
        let base = self.backend(backend)?.sandbox_root_owner().unwrap_or((
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ));
        // A sandbox that maps one id (an unprivileged host user) has one id to give.
        let count = if rustix::process::geteuid().is_root() {
            SANDBOX_ID_COUNT
        } else {
            1
        };
        Ok(IdMap { base, count })
    }

    /// Where a named sandbox's writable state is, or why it has none to copy.
    fn writable_state(&self, record: &SandboxRecord) -> Result<WritableState, ServiceError> {
        let backend = self.backend(record.backend)?;
        if !backend.capabilities().snapshots {
            return Err(ServiceError::Unavailable(format!(
                "the {} backend cannot snapshot sandboxes yet",
                record.backend
            )));
        }
        let dir = self.host_dir_of(&record.uuid)?;
        let workspace = dir.join(WORKSPACE_DIR);
        // The workdir is the service's directory, or (a VM's) in the root's layer.
        let foreign_workdir = record
            .spec
            .mounts
            .iter()
            .any(|m| m.target == record.spec.workdir && m.host != workspace);
        if foreign_workdir {
            return Err(ServiceError::InvalidInput(format!(
                "sandbox '{}' has a host directory as its workdir: snapshots copy only \
                 what the sandbox owns",
                record.name
            )));
        }
        let root = match backend.root_layer() {
            RootLayer::Backend => Root::Backend,
            RootLayer::HostDir | RootLayer::GuestDisk => {
                let root = record.spec.root_dir.clone().ok_or_else(|| {
                    ServiceError::InvalidInput(format!(
                        "sandbox '{}' keeps its root in memory (it was made before \
                         snapshots): it cannot be snapshotted",
                        record.name
                    ))
                })?;
                if root != dir.join(ROOT_DIR) {
                    return Err(ServiceError::State(format!(
                        "sandbox '{}' has its root at {}, not in the directory the service made",
                        record.name,
                        root.display()
                    )));
                }
                Root::HostDir(root)
            }
        };
        Ok(WritableState { root, workspace })
    }

    /// [`Service::snapshot_create`] without its audit entry.
    async fn snapshot_unaudited(
        &self,
        sandbox: &str,
        name: Option<&str>,
    ) -> Result<SnapshotInfo, ServiceError> {
        let name = match name {
            Some(name) => name.to_string(),
            None => default_snapshot_name(sandbox),
        };
        validate_name(&name)
            .map_err(|e| ServiceError::InvalidInput(format!("snapshot name: {e}")))?;
        // A sandbox whose processes died is found failed here, not frozen.
        let (_lock, record) = self.lock_name_checked(sandbox).await?;
        crate::sandboxes::require(
            &record,
            &[
                SandboxState::Running,
                SandboxState::Paused,
                SandboxState::Stopped,
            ],
            "snapshot",
        )?;
        let state = self.writable_state(&record)?;
        let store = self.snapshot_store()?;
        if store.exists(&name) {
            return Err(ServiceError::SnapshotExists(name));
        }
        // A paused guest cannot flush: its disk holds what it had written when paused,
        // as after a power cut (its journal recovers it on the restored VM's first mount).
        // The flush's connection stays open, idle, until the VM runs again: closing it
        // just before the freeze left vsock packets in flight across QEMU's `stop` and
        // `cont`, after which vhost-device-vsock 0.3.0 answered no new connection (seen
        // after 2 or 3 snapshots in a row; never with the connection held).
        let _flushed = if record.state == SandboxState::Running
            && self.backend(record.backend)?.root_layer() == RootLayer::GuestDisk
        {
            match self.flush_guest(sandbox).await {
                Ok(client) => Some(client),
                // A VM that died since it was looked at is failed, and says so.
                Err(error) if !self.check_alive(&record).await? => {
                    crate::sandboxes::require(&self.record(sandbox)?, &[], "snapshot")?;
                    return Err(error);
                }
                Err(error) => return Err(error),
            }
        } else {
            None
        };
        let ids = self.id_map(record.backend)?;
        // A paused sandbox is frozen already, and stays so.
        let freeze = record.state == SandboxState::Running;
        let handle = if record.state.is_up() {
            Some(crate::sandboxes::parse_handle(&record)?)
        } else {
            None
        };
        let backend = self.backend(record.backend)?.clone();
        let mut spec = record.spec.clone();
        spec.mounts.retain(|m| m.host != state.workspace);
        spec.root_dir = None;
        let info_base = SnapshotInfo {
            name: name.clone(),
            sandbox: sandbox.to_string(),
            image_tag: spec.image.to_string(),
            backend: record.backend,
            base_image: Some(spec.image.to_string()),
            vcpus: spec.resources.cpus.map(|cpus| cpus.ceil() as u32),
            memory_mb: Some(spec.resources.memory_bytes >> 20),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            taken_while: record.state.to_string(),
            frozen_ms: 0,
            files: 0,
            bytes: 0,
            stored_bytes: 0,
            skipped: 0,
            root_layer: None,
        };
        let kind = record.backend;
        let outcome = self
            .offload(async move {
                let capture = store.lock_shared()?;
                let (trees, layer, stats, frozen_ms) =
                    capture_frozen(&*backend, handle.as_ref(), freeze, &store, &state, ids).await?;
                let saved = layer.clone();
                // A stopped sandbox's root is the layer it was made from (if any): the
                // snapshot names that one too.
                spec.root_layer = layer.or(spec.root_layer);
                let info = SnapshotInfo {
                    frozen_ms,
                    files: stats.files,
                    bytes: stats.bytes,
                    stored_bytes: stats.stored_bytes,
                    skipped: stats.skipped,
                    root_layer: spec.root_layer.clone(),
                    ..info_base
                };
                let record = SnapshotRecord {
                    info: info.clone(),
                    spec,
                };
                Ok::<_, ServiceError>(match store.save(&capture, &record, &trees) {
                    Ok(true) => Ok(info),
                    Ok(false) => Err((ServiceError::SnapshotExists(info.name), saved)),
                    Err(error) => Err((error.into(), saved)),
                })
            })
            .await??;
        match outcome {
            Ok(info) => Ok(info),
            Err((error, saved)) => {
                // Nothing names the layer just saved: give it back.
                if let Some(layer) = saved
                    && let Err(e) = self.release_layer_if_unused(kind, &layer).await
                {
                    tracing::warn!(layer, "removing a layer saved for a failed snapshot: {e}");
                }
                Err(error)
            }
        }
    }

    /// Has the backend let go of saved root layer `layer` unless a snapshot or a named
    /// sandbox still names it. The store's lock is held exclusive meanwhile: a capture or
    /// a restore in progress (which hold it shared) finishes first.
    pub(crate) async fn release_layer_if_unused(
        &self,
        backend: ak_core::BackendKind,
        layer: &str,
    ) -> Result<(), ServiceError> {
        let store = self.snapshot_store()?;
        let (lock, snapshots) = self
            .offload(async move {
                let lock = store.lock()?;
                let snapshots = store.list()?;
                Ok::<_, ServiceError>((lock, snapshots))
            })
            .await??;
        let named = |spec: &ak_core::SandboxSpec| spec.root_layer.as_deref() == Some(layer);
        let in_use = snapshots.iter().any(|s| named(&s.spec))
            || self.registry()?.list()?.iter().any(|r| named(&r.spec));
        if !in_use {
            self.backend(backend)?.remove_root_layer(layer).await?;
        }
        drop(lock);
        Ok(())
    }

    /// Every snapshot.
    pub fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>, ServiceError> {
        Ok(self
            .snapshot_store()?
            .list()?
            .into_iter()
            .map(|record| record.info)
            .collect())
    }

    fn snapshot_record(&self, name: &str) -> Result<SnapshotRecord, ServiceError> {
        validate_name(name)
            .map_err(|e| ServiceError::InvalidInput(format!("snapshot name: {e}")))?;
        self.snapshot_store()?
            .get(name)?
            .ok_or_else(|| ServiceError::NoSuch(format!("snapshot named '{name}'")))
    }

    /// One snapshot.
    pub fn snapshot_inspect(&self, name: &str) -> Result<SnapshotInfo, ServiceError> {
        Ok(self.snapshot_record(name)?.info)
    }

    /// [`Service::create_from_snapshot`] without its audit entry: the new sandbox is
    /// recorded stopped, with the snapshot's files in its root and workdir.
    async fn restore_unaudited(
        &self,
        caller: Caller,
        name: &str,
        snapshot: &str,
    ) -> Result<SandboxRecord, ServiceError> {
        let store = self.snapshot_store()?;
        // Held until the new sandbox is registered: the snapshot's root layer cannot be
        // let go (by a removal of the snapshot) while nothing else names it yet.
        let held = self
            .offload({
                let store = self.snapshot_store()?;
                async move { store.lock_shared() }
            })
            .await??;
        let source = self.snapshot_record(snapshot)?;
        let mut spec = source.spec;
        let source_id = std::mem::replace(&mut spec.id, new_sandbox_id());
        spec.hostname = format!("ak-{}", &spec.id[..12]);
        // The workdir comes from the snapshot, not from cloning the source again.
        spec.source = None;
        self.policy.admit(caller, &spec)?;
        self.admit_volumes(caller, &spec)?;
        self.inherit_secret_values(caller, &source_id, &mut spec)?;
        let id = spec.id.clone();
        let record = self.create_unaudited(name, spec, None).await;
        drop(held);
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                self.forget_secret_values(&id);
                return Err(error);
            }
        };
        let restored = async {
            let state = self.writable_state(&record)?;
            let ids = self.id_map(record.backend)?;
            let trees = store.trees(snapshot)?;
            self.offload(async move {
                if let Root::HostDir(root) = &state.root {
                    clear_dir(root)?;
                    tree::restore(&trees.root, root, &store.blobs, ids)?;
                }
                clear_dir(&state.workspace)?;
                tree::restore(&trees.workspace, &state.workspace, &store.blobs, ids)?;
                Ok::<_, ServiceError>(())
            })
            .await?
        }
        .await;
        if let Err(error) = restored {
            if let Err(cleanup) = self.remove_named(caller, name, true).await {
                tracing::warn!(name, "removing a sandbox whose restore failed: {cleanup}");
            }
            return Err(error);
        }
        Ok(record)
    }
}

/// Where a named sandbox's writable state is.
#[derive(Debug)]
struct WritableState {
    root: Root,
    workspace: PathBuf,
}

/// Where a named sandbox's root's writable layer is ([`RootLayer`]).
#[derive(Debug)]
enum Root {
    /// Copied file by file into the store.
    HostDir(PathBuf),
    /// Saved whole by the backend.
    Backend,
}

/// Captures a sandbox's trees (and has the backend save its root layer, when the backend
/// keeps it): `handle` names a live sandbox, which is frozen for it when `freeze` (a
/// running one) and thawed whatever happened. Returns the trees, the layer saved, what
/// the trees hold and how long the sandbox was frozen for it.
async fn capture_frozen(
    backend: &dyn ak_core::Backend,
    handle: Option<&SandboxHandle>,
    freeze: bool,
    store: &Store,
    state: &WritableState,
    ids: IdMap,
) -> Result<(Trees, Option<String>, tree::CaptureStats, u64), ServiceError> {
    let started = Instant::now();
    let frozen_by_us = handle.filter(|_| freeze);
    if let Some(handle) = frozen_by_us
        && let Err(error) = backend.set_frozen(handle, true).await
    {
        // Freezing may have begun (a process stuck in an uninterruptible wait): let go.
        if let Err(thaw) = backend.set_frozen(handle, false).await {
            tracing::warn!(sandbox = %handle.id, "thawing after a failed freeze: {thaw}");
        }
        return Err(error.into());
    }
    let captured = async {
        let (root_entries, root_stats) = match &state.root {
            Root::HostDir(root) => tree::capture(root, &store.blobs, ids)?,
            Root::Backend => (Vec::new(), tree::CaptureStats::default()),
        };
        let (work_entries, work_stats) = tree::capture(&state.workspace, &store.blobs, ids)?;
        let stats = tree::CaptureStats {
            files: root_stats.files + work_stats.files,
            bytes: root_stats.bytes + work_stats.bytes,
            stored_bytes: root_stats.stored_bytes + work_stats.stored_bytes,
            skipped: root_stats.skipped + work_stats.skipped,
        };
        // Last, so that a failed copy leaves no layer behind.
        let layer = match (&state.root, handle) {
            (Root::Backend, Some(handle)) => Some(backend.save_root_layer(handle).await?),
            _ => None,
        };
        Ok::<_, ServiceError>((
            Trees {
                root: root_entries,
                workspace: work_entries,
            },
            layer,
            stats,
        ))
    }
    .await;
    let frozen_ms = match frozen_by_us {
        Some(handle) => {
            let elapsed = started.elapsed().as_millis() as u64;
            if let Err(error) = backend.set_frozen(handle, false).await {
                if let Ok((_, Some(layer), _)) = &captured {
                    // The caller never sees this layer: give it back.
                    if let Err(e) = backend.remove_root_layer(layer).await {
                        tracing::warn!(layer, "removing a layer saved for a failed snapshot: {e}");
                    }
                }
                return Err(error.into());
            }
            elapsed
        }
        None => 0,
    };
    let (trees, layer, stats) = captured?;
    Ok((trees, layer, stats, frozen_ms))
}

/// Empties a new sandbox's directory (the service made it, so nothing in it is the
/// sandbox's yet) before a restore fills it; the directory itself stays.
fn clear_dir(dir: &Path) -> Result<(), ServiceError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ServiceError::State(format!("list {}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(|e| ServiceError::State(format!("list {}: {e}", dir.display())))?
            .path();
        let removed = if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| ServiceError::State(format!("remove {}: {e}", path.display())))?;
    }
    Ok(())
}

/// `<sandbox>-<unix seconds>`, shortened to fit a name.
fn default_snapshot_name(sandbox: &str) -> String {
    let stamp = crate::registry::now_unix().to_string();
    let keep = ak_core::spec::MAX_NAME_LEN - stamp.len() - 1;
    let prefix: String = sandbox.chars().take(keep).collect();
    format!("{prefix}-{stamp}")
}

/// The public operations: each records its outcome in the audit log.
impl Service {
    /// Snapshots a named sandbox's writable state under `name` (by default
    /// `<sandbox>-<unix seconds>`): frozen while it runs, as it lies when stopped.
    pub async fn snapshot_create(
        &self,
        caller: Caller,
        sandbox: &str,
        name: Option<&str>,
    ) -> Result<SnapshotInfo, ServiceError> {
        let result = self.snapshot_unaudited(sandbox, name).await;
        let detail = result
            .as_ref()
            .ok()
            .map(|info| format!("snapshot {}", info.name));
        self.audited(caller, "snapshot", Some(sandbox), detail, result)
    }

    /// Removes a snapshot and the file contents no other snapshot shares. Sandboxes made
    /// from it are copies and stay as they are.
    pub async fn snapshot_remove(&self, caller: Caller, name: &str) -> Result<(), ServiceError> {
        let result = async {
            self.snapshot_record(name)?;
            let store = self.snapshot_store()?;
            let name = name.to_string();
            let removed = self
                .offload(async move {
                    let lock = store.lock()?;
                    let Some(record) = store.get(&name)? else {
                        return Err(ServiceError::NoSuch(format!("snapshot named '{name}'")));
                    };
                    store.remove(&lock, &name)?;
                    Ok(record)
                })
                .await??;
            if let Some(layer) = &removed.spec.root_layer {
                self.release_layer_if_unused(removed.info.backend, layer)
                    .await?;
            }
            Ok(())
        }
        .await;
        self.audited(
            caller,
            "snapshot-remove",
            None,
            Some(format!("snapshot {name}")),
            result,
        )
    }

    /// A new named sandbox `name` from a snapshot, stopped (`start`: running). The
    /// snapshot's spec goes through the caller's policy as a new create would.
    pub async fn create_from_snapshot(
        &self,
        caller: Caller,
        name: &str,
        snapshot: &str,
        start: bool,
    ) -> Result<SandboxRecord, ServiceError> {
        let result = self.restore_unaudited(caller, name, snapshot).await;
        let result = self.audited(
            caller,
            "create",
            Some(name),
            Some(format!("from snapshot {snapshot}")),
            result,
        );
        match result {
            Ok(_) if start => {
                let started = self.start_named(caller, name).await;
                if started.is_err()
                    && let Err(cleanup) = self.remove_named(caller, name, true).await
                {
                    tracing::warn!(
                        name,
                        "removing a restored sandbox that failed to start: {cleanup}"
                    );
                }
                started
            }
            other => other,
        }
    }

    /// Snapshots `sandbox` and makes each of `new` from that one instant (running if it
    /// ran); the snapshot is removed afterwards (each new sandbox has its own copy).
    pub async fn fork(
        &self,
        caller: Caller,
        sandbox: &str,
        new: &[String],
    ) -> Result<Vec<SandboxRecord>, ServiceError> {
        if new.is_empty() {
            return Err(ServiceError::InvalidInput(
                "fork needs a name for the new sandbox".into(),
            ));
        }
        for name in new {
            validate_name(name)?;
            if self.registry()?.get(name)?.is_some() {
                return Err(ServiceError::Duplicate(name.clone()));
            }
        }
        // A VM that can be saved with its memory is forked from it: its processes too.
        if let Some(forks) = self.fork_from_memory(caller, sandbox, new).await? {
            return Ok(forks);
        }
        // The forks of a paused sandbox run: pausing is of processes, not of files.
        let running = self.record(sandbox)?.state.is_up();
        let snapshot = format!("fork-{}", &new_sandbox_id()[..16]);
        let info = self
            .snapshot_create(caller, sandbox, Some(&snapshot))
            .await?;
        let mut made = Vec::new();
        let mut failure = None;
        for name in new {
            match self
                .create_from_snapshot(caller, name, &info.name, running)
                .await
            {
                Ok(record) => made.push(record),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if let Err(e) = self.snapshot_remove(caller, &info.name).await {
            tracing::warn!(snapshot = %info.name, "removing a fork's snapshot: {e}");
        }
        self.all_forks_or_none(caller, made, failure).await
    }

    /// A fork is all or nothing: after a `failure`, the forks `made` before it go again.
    pub(crate) async fn all_forks_or_none(
        &self,
        caller: Caller,
        made: Vec<SandboxRecord>,
        failure: Option<ServiceError>,
    ) -> Result<Vec<SandboxRecord>, ServiceError> {
        let Some(error) = failure else {
            return Ok(made);
        };
        for record in made {
            if let Err(e) = self.remove_named(caller, &record.name, true).await {
                tracing::warn!(name = %record.name, "removing a partial fork: {e}");
            }
        }
        Err(error)
    }
}
