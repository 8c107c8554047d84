//! Per-sandbox runtime directories on the host, and the sweep that releases what a killed
//! caller left behind. Each directory is held by an exclusive `flock` for as long as its
//! sandbox lives (by its creator for an ephemeral sandbox, by the sandbox's own agent for a
//! persistent one); a directory whose lock can be taken belongs to nobody any more.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::error::NativeError;

const LOCK_FILE: &str = "lock";

/// The base directory for runtime state of this user's native sandboxes.
pub fn runtime_base() -> PathBuf {
    ak_core::runtime::backend_runtime_base(ak_core::BackendKind::Native)
}

/// Directories are 0711: the sandbox's first process, already running as the mapped
/// (unprivileged) uid, must traverse them to reach its mount point, but nobody may list them.
const DIR_MODE: u32 = 0o711;

/// A live sandbox's runtime directory (locked while this value exists, if it was created
/// here; one found again from a handle is locked by its sandbox).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    lock: Option<File>,
}

impl RunDir {
    pub fn create(base: &Path, id: &str) -> Result<RunDir, NativeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(base)
            .map_err(NativeError::io(format!("create {}", base.display())))?;
        check_owned(base)?;
        // Built under a hidden name and renamed once locked, so the sweep never sees a
        // directory that exists but is not locked yet.
        let building = base.join(format!(".{id}"));
        let path = base.join(id);
        std::fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(&building)
            .map_err(NativeError::io(format!("create {}", building.display())))?;
        let locked = File::create(building.join(LOCK_FILE))
            .map_err(NativeError::io(format!(
                "create lock in {}",
                building.display()
            )))
            .and_then(|lock| {
                flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
                    NativeError::io(format!("lock {}", building.display()))(e.into())
                })?;
                std::fs::rename(&building, &path)
                    .map_err(NativeError::io(format!("rename {}", building.display())))?;
                Ok(lock)
            });
        match locked {
            Ok(lock) => Ok(RunDir {
                path,
                lock: Some(lock),
            }),
            Err(error) => {
                // The sweep skips hidden names: nothing else would ever remove it.
                let _ = std::fs::remove_dir_all(&building);
                Err(error)
            }
        }
    }

    /// The runtime directory of a sandbox created elsewhere (not locked by this value).
    pub fn adopt(path: PathBuf) -> RunDir {
        RunDir { path, lock: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor that holds the lock, to hand to a sandbox that keeps it held.
    pub(crate) fn lock_fd(&self) -> Option<RawFd> {
        self.lock.as_ref().map(File::as_raw_fd)
    }

    /// Removes the directory (its mount point is only ever mounted inside the sandbox).
    /// The known entries go one by one, which is a fraction of a generic recursive walk;
    /// anything unexpected falls back to the walk.
    pub fn remove(&self) -> Result<(), NativeError> {
        // A persistent sandbox's socket and logs are left to the walk: listing them here
        // would cost every ephemeral run three failed unlinks.
        for file in [LOCK_FILE, "resolv.conf"] {
            let _ = std::fs::remove_file(self.path.join(file));
        }
        let _ = std::fs::remove_dir(self.path.join("root"));
        if std::fs::remove_dir(&self.path).is_ok() {
            return Ok(());
        }
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NativeError::io(format!("remove {}", self.path.display()))(
                e,
            )),
        }
    }
}

/// Refuses a runtime base that another user could have prepared (in a shared /tmp):
/// it must be a real directory of ours that nobody else can write.
fn check_owned(base: &Path) -> Result<(), NativeError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(base)
        .map_err(NativeError::io(format!("inspect {}", base.display())))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(NativeError::Unavailable(format!(
            "the runtime directory {} is not a directory owned by uid {me} and writable only by it; remove it or set XDG_RUNTIME_DIR",
            base.display()
        )));
    }
    Ok(())
}

/// Ids of runtime directories under `base` whose owner is gone (their lock is free).
/// Taking the lock also reserves them for the caller's clean-up.
pub fn stale_entries(base: &Path) -> Vec<(String, File)> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') {
            continue;
        }
        let Ok(lock) = File::open(entry.path().join(LOCK_FILE)) else {
            continue;
        };
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
            stale.push((id, lock));
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_dirs_are_not_stale_and_dead_ones_are() {
        let base = tempfile::tempdir().unwrap();
        let live = RunDir::create(base.path(), "live").unwrap();
        {
            let _dead = RunDir::create(base.path(), "dead").unwrap();
        }
        let stale: Vec<String> = stale_entries(base.path())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(stale, vec!["dead".to_string()]);
        live.remove().unwrap();
        assert!(!live.path().exists());
        live.remove().unwrap();
    }
}
