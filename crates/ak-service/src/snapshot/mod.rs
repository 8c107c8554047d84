//! The snapshot store, under `<state>/snapshots/`:
//!
//! - `meta/<name>.json`: what a snapshot is (its [`SnapshotInfo`] and the spec a restore
//!   starts from), small, read by `list`;
//! - `trees/<name>.json`: the captured trees (the root's writable layer, the workdir),
//!   every entry with its mode, owner, times and the blob holding its data;
//! - `blobs/`: file contents by SHA-256 ([`blobs::BlobStore`]), shared by every snapshot.
//!
//! Metadata are JSON files written whole and renamed into place (then the directory is
//! synced): a snapshot is immutable, so there is nothing to update in place, and a file per
//! snapshot survives a crash at any point: the tree is written first and the metadata last,
//! so a snapshot is listed only once everything it needs is on disk. Two `flock`s keep
//! writers apart: `lock`, shared by every capture from its first blob to its metadata and
//! exclusive for the collection that follows a removal (so a collection never takes a blob
//! that a capture still in progress counts on), and `names.lock`, exclusive while a
//! snapshot's name is checked and its files written (two captures under one name: the
//! second is refused, not mixed with the first).

mod blobs;
pub(crate) mod tree;

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use ak_core::{BackendKind, SandboxSpec};
use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

pub(crate) use self::blobs::BlobStore;
use self::tree::Entry;

/// A failure of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The sandbox's files cannot be captured as they are.
    #[error("cannot snapshot: {0}")]
    Refused(String),
    /// The store's own files are not what this version wrote.
    #[error("the snapshot store is damaged: {0}")]
    Corrupt(String),
}

impl SnapshotError {
    pub(crate) fn io<E: Into<std::io::Error>>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> SnapshotError {
        let what = what.into();
        move |source| SnapshotError::Io {
            what,
            source: source.into(),
        }
    }
}

/// What a snapshot is, as every front end shows it (the field names up to `created_at` are
/// the agentkernel SDKs' `SnapshotMeta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// The sandbox it was taken of (which may be gone since).
    pub sandbox: String,
    /// The image a restore starts from; the snapshot's files go on top of it.
    pub image_tag: String,
    pub backend: BackendKind,
    pub base_image: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u64>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The sandbox's state: `running` (frozen for the copy), `paused` or `stopped`.
    pub taken_while: String,
    /// How long the snapshot kept the sandbox's processes frozen, in milliseconds (0 when
    /// stopped or paused already).
    pub frozen_ms: u64,
    /// Regular files, and their logical size.
    pub files: u64,
    pub bytes: u64,
    /// File data this snapshot added to the store (the rest was there already).
    pub stored_bytes: u64,
    /// Sockets and device nodes, which snapshots leave out.
    pub skipped: u64,
    /// The root's writable layer as the backend saved it, for backends that keep it
    /// themselves (docker, podman: the committed image's id); `None` when the root is in
    /// the trees (native) or the sandbox's root was its image alone (a stopped container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_layer: Option<String>,
}

/// A snapshot's metadata file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub info: SnapshotInfo,
    /// The sandbox's spec without its per-sandbox parts (id, workdir mount, root
    /// directory), which a restore makes anew.
    pub spec: SandboxSpec,
}

/// The captured trees of a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Trees {
    pub root: Vec<Entry>,
    pub workspace: Vec<Entry>,
}

/// The store under one state directory.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    pub blobs: BlobStore,
}

/// The store's lock, held while writing or collecting.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

impl Store {
    pub(crate) fn open(state_dir: &Path) -> Result<Store, SnapshotError> {
        let dir = state_dir.join("snapshots");
        for sub in [dir.clone(), dir.join("meta"), dir.join("trees")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&sub)
                .map_err(SnapshotError::io(format!("create {}", sub.display())))?;
        }
        let blobs = BlobStore::open(dir.join("blobs"))?;
        Ok(Store { dir, blobs })
    }

    /// Waits for the store's lock, exclusive: what a removal and its collection hold (a
    /// blocking call, as the others: run them off the async workers).
    pub(crate) fn lock(&self) -> Result<StoreLock, SnapshotError> {
        self.flock_file("lock", FlockOperation::LockExclusive)
    }

    /// Waits for the store's lock, shared: what a capture holds until it is saved.
    pub(crate) fn lock_shared(&self) -> Result<StoreLock, SnapshotError> {
        self.flock_file("lock", FlockOperation::LockShared)
    }

    fn flock_file(&self, name: &str, how: FlockOperation) -> Result<StoreLock, SnapshotError> {
        let path = self.dir.join(name);
        let file =
            File::create(&path).map_err(SnapshotError::io(format!("open {}", path.display())))?;
        flock(&file, how).map_err(SnapshotError::io(format!("lock {}", path.display())))?;
        Ok(StoreLock { _file: file })
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join("meta").join(format!("{name}.json"))
    }

    fn tree_path(&self, name: &str) -> PathBuf {
        self.dir.join("trees").join(format!("{name}.json"))
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        self.meta_path(name).exists()
    }

    /// Records a snapshot whose blobs are stored (under `capture`, the shared lock): the
    /// trees, then the metadata. `false`: a snapshot of that name exists, nothing written.
    pub(crate) fn save(
        &self,
        _capture: &StoreLock,
        record: &SnapshotRecord,
        trees: &Trees,
    ) -> Result<bool, SnapshotError> {
        let _names = self.flock_file("names.lock", FlockOperation::LockExclusive)?;
        let name = &record.info.name;
        if self.exists(name) {
            return Ok(false);
        }
        write_atomically(&self.tree_path(name), trees)?;
        write_atomically(&self.meta_path(name), record)?;
        Ok(true)
    }

    pub(crate) fn get(&self, name: &str) -> Result<Option<SnapshotRecord>, SnapshotError> {
        read_json(&self.meta_path(name))
    }

    pub(crate) fn trees(&self, name: &str) -> Result<Trees, SnapshotError> {
        read_json(&self.tree_path(name))?
            .ok_or_else(|| SnapshotError::Corrupt(format!("snapshot {name} has no trees")))
    }

    /// Every snapshot, by name.
    pub(crate) fn list(&self) -> Result<Vec<SnapshotRecord>, SnapshotError> {
        let dir = self.dir.join("meta");
        let mut records = Vec::new();
        for entry in
            std::fs::read_dir(&dir).map_err(SnapshotError::io(format!("list {}", dir.display())))?
        {
            let entry = entry.map_err(SnapshotError::io(format!("list {}", dir.display())))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Some(record) = self.get(name)? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        Ok(records)
    }

    /// Removes a snapshot (its metadata first: from then on it is gone), then every blob no
    /// remaining snapshot needs. Returns the bytes freed.
    pub(crate) fn remove(&self, lock: &StoreLock, name: &str) -> Result<u64, SnapshotError> {
        let meta = self.meta_path(name);
        std::fs::remove_file(&meta)
            .map_err(SnapshotError::io(format!("remove {}", meta.display())))?;
        let tree = self.tree_path(name);
        if let Err(e) = std::fs::remove_file(&tree)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(SnapshotError::io(format!("remove {}", tree.display()))(e));
        }
        self.collect(lock)
    }

    /// Removes blobs that no snapshot names, and trees without metadata (a capture that
    /// was interrupted between the two writes).
    fn collect(&self, _lock: &StoreLock) -> Result<u64, SnapshotError> {
        let mut keep = HashSet::new();
        let trees_dir = self.dir.join("trees");
        for entry in std::fs::read_dir(&trees_dir)
            .map_err(SnapshotError::io(format!("list {}", trees_dir.display())))?
        {
            let entry = entry.map_err(SnapshotError::io("list the trees"))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !self.exists(name) {
                std::fs::remove_file(entry.path()).map_err(SnapshotError::io(format!(
                    "remove {}",
                    entry.path().display()
                )))?;
                continue;
            }
            let trees = self.trees(name)?;
            for entry in trees.root.iter().chain(&trees.workspace) {
                if let tree::Kind::File { blob, .. } = &entry.kind {
                    keep.insert(blob.clone());
                }
            }
        }
        self.blobs.collect(&keep)
    }
}

fn write_atomically(path: &Path, value: &impl Serialize) -> Result<(), SnapshotError> {
    let dir = path.parent().expect("store files have a parent");
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(SnapshotError::io(format!(
        "create a file in {}",
        dir.display()
    )))?;
    let text = serde_json::to_vec(value)
        .map_err(|e| SnapshotError::Corrupt(format!("encode {}: {e}", path.display())))?;
    temp.write_all(&text)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(SnapshotError::io(format!("write {}", path.display())))?;
    temp.persist(path)
        .map_err(|e| SnapshotError::io(format!("write {}", path.display()))(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SnapshotError::io(format!("sync {}", dir.display())))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, SnapshotError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SnapshotError::io(format!("read {}", path.display()))(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| SnapshotError::Corrupt(format!("{}: {e}", path.display())))
}
