//! Lock files that coalesce concurrent pulls, in this process and across processes: the
//! second puller of an image or layer waits for the first, then finds it in the store.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

use crate::error::ImageError;

/// A `flock` on a file, held until dropped (the kernel releases it with the file, also
/// when the process dies).
#[derive(Debug)]
pub(crate) struct LockFile {
    _file: File,
}

impl LockFile {
    /// Waits for the lock (exclusive, or shared) on a blocking thread, so that the
    /// runtime keeps running.
    pub(crate) async fn acquire(path: &Path, exclusive: bool) -> Result<LockFile, ImageError> {
        let path = path.to_path_buf();
        let operation = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        tokio::task::spawn_blocking(move || {
            // Each call opens its own file description: flock on two descriptions of one
            // file excludes each other also within one process.
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| ImageError::io(&path, e))?;
            flock(&file, operation).map_err(|e| ImageError::io(&path, e.into()))?;
            Ok(LockFile { _file: file })
        })
        .await
        .map_err(|e| ImageError::io(Path::new("lock"), std::io::Error::other(e)))?
    }
}
