//! Per-name locks of named sandboxes: an `flock` on `<state>/locks/NAME.lock`, held across
//! processes (several CLIs, the daemon, `serve`) while one operation on that name runs.
//! The directory holds one file per sandbox rather than one per name ever used: a name
//! with no sandbox gets no file, and whoever finds its name without a sandbox while holding
//! the lock (a removal, a failed creation, a caller that waited for a removal) removes it.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use ak_core::spec::validate_name;
use rustix::fs::{FlockOperation, flock};

use crate::Service;
use crate::error::ServiceError;
use crate::registry::SandboxRecord;

/// Exclusive hold on one sandbox name, across processes, while an operation runs.
#[derive(Debug)]
pub(crate) struct NameLock {
    file: File,
    path: PathBuf,
}

impl NameLock {
    /// Removes the lock's file, once the name's sandbox is gone. Anyone waiting for this
    /// lock then finds, once it has it, that its file no longer names the sandbox, and
    /// locks the name's new file instead (see [`Service::lock_new_name`]).
    pub(crate) fn remove_file(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "removing a lock file: {e}");
        }
    }

    /// Whether the locked file is still the one at the name's path (not removed meanwhile
    /// by the holder before us).
    fn still_named(&self) -> Result<bool, ServiceError> {
        let held = self
            .file
            .metadata()
            .map_err(|e| ServiceError::State(format!("stat {}: {e}", self.path.display())))?;
        Ok(std::fs::metadata(&self.path)
            .is_ok_and(|named| named.dev() == held.dev() && named.ino() == held.ino()))
    }
}

impl Service {
    /// Holds sandbox `name`'s lock for an operation on it, with its record as read under
    /// the lock: a name that no sandbox has is not found, and leaves no lock file behind
    /// (a request per missing name made one).
    pub(crate) async fn lock_name(
        &self,
        name: &str,
    ) -> Result<(NameLock, SandboxRecord), ServiceError> {
        self.record(name)?;
        let lock = self.lock_new_name(name).await?;
        // None: removed by the caller we waited for.
        match self.record_or_remove_lock_file(&lock, name)? {
            Some(record) => Ok((lock, record)),
            None => Err(ServiceError::NotFound(name.to_string())),
        }
    }

    /// [`Service::lock_name`], then [`Service::check_alive`]: the record as it stands once
    /// a sandbox whose processes died is marked failed (read again only then).
    pub(crate) async fn lock_name_checked(
        &self,
        name: &str,
    ) -> Result<(NameLock, SandboxRecord), ServiceError> {
        let (lock, record) = self.lock_name(name).await?;
        if self.check_alive(&record).await? {
            return Ok((lock, record));
        }
        let record = self.record(name)?;
        Ok((lock, record))
    }

    /// `name`'s record, read with its lock held; when no sandbox has `name` (removed while
    /// we waited, or never created: a creation failed), removes `lock`'s file instead, so
    /// that the directory holds one file per sandbox.
    pub(crate) fn record_or_remove_lock_file(
        &self,
        lock: &NameLock,
        name: &str,
    ) -> Result<Option<SandboxRecord>, ServiceError> {
        let record = self.registry()?.get(name)?;
        if record.is_none() {
            lock.remove_file();
        }
        Ok(record)
    }

    /// Holds the lock of `name`, which need not be a sandbox's yet (one being created).
    pub(crate) async fn lock_new_name(&self, name: &str) -> Result<NameLock, ServiceError> {
        // The name becomes a file name: one that no sandbox could have (a NUL, a `/`, `..`)
        // is the caller's mistake, said as such, and never a path outside the directory.
        validate_name(name)?;
        let dir = self.state_dir()?.join("locks");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ServiceError::State(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{name}.lock"));
        loop {
            let lock = lock_file(&path).await?;
            if lock.still_named()? {
                return Ok(lock);
            }
        }
    }
}

/// Opens (creating it if need be) and locks the file at `path`. Waits without holding up
/// the async runtime: a contended lock is waited for on a blocking thread (the holder may
/// need this runtime to finish).
async fn lock_file(path: &Path) -> Result<NameLock, ServiceError> {
    let file = File::create(path)
        .map_err(|e| ServiceError::State(format!("open {}: {e}", path.display())))?;
    let lock_error =
        |e: rustix::io::Errno| ServiceError::State(format!("lock {}: {e}", path.display()));
    let file = match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => file,
        Err(rustix::io::Errno::WOULDBLOCK) => tokio::task::spawn_blocking(move || {
            flock(&file, FlockOperation::LockExclusive).map(|()| file)
        })
        .await
        .map_err(|e| ServiceError::State(format!("lock {}: {e}", path.display())))?
        .map_err(lock_error)?,
        Err(e) => return Err(lock_error(e)),
    };
    Ok(NameLock {
        file,
        path: path.to_path_buf(),
    })
}
