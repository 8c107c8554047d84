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

/// Whether the base may get a tmpfs of its own (see [`keep_in_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseMount {
    /// The system's base, as root: mount a tmpfs on it while it is on disk and empty.
    TmpfsWhenEmpty,
    /// A base given by the caller (tests, a user's own): used as it is.
    AsItIs,
}

impl BaseMount {
    /// For [`runtime_base`]: only root may mount, and only the system's base is ours to.
    pub fn for_runtime_base() -> BaseMount {
        if rustix::process::geteuid().is_root() {
            BaseMount::TmpfsWhenEmpty
        } else {
            BaseMount::AsItIs
        }
    }
}

impl RunDir {
    pub fn create(base: &Path, id: &str, mount: BaseMount) -> Result<RunDir, NativeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(base)
            .map_err(NativeError::io(format!("create {}", base.display())))?;
        check_owned(base)?;
        // Held until the directory is in place, when the base is still on disk.
        let _base_lock = match mount {
            BaseMount::TmpfsWhenEmpty => keep_in_memory(base)?,
            BaseMount::AsItIs => None,
        };
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

/// Whether `path` is on a tmpfs.
pub fn in_memory(path: &Path) -> std::io::Result<bool> {
    Ok(rustix::fs::statfs(path)?.f_type == libc::TMPFS_MAGIC)
}

/// Set once a tmpfs could not be mounted on the base, so that every later sandbox of this
/// process does not try again (and warn again).
static MOUNT_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runtime state belongs in memory: nothing in it outlives a reboot, and on a disk every
/// sandbox's two directories cost block allocations and, at their removal, a discard that
/// ext4 mounted with `discard` (as on this project's VMs, whose `/run` is no tmpfs) issues
/// synchronously: 0.2 ms a sandbox at the median, milliseconds in its tail
/// (docs/benchmarks.md). So root mounts a tmpfs on a base that is on disk, as systemd
/// does on `/run` itself, but only while the base is empty: a tmpfs over live sandboxes'
/// directories would hide them from their owners.
///
/// Returns the base's lock while it stays on disk: every creator on disk holds it until
/// its directory is in place, so no other process can find the base empty and mount over
/// a directory being made. The lock is the underlying directory's own; a waiter that gets
/// it after the mount sees the tmpfs when it looks again, and creates there.
fn keep_in_memory(base: &Path) -> Result<Option<File>, NativeError> {
    use std::sync::atomic::Ordering;
    // Unknown counts as in memory: creating there is what happened before this existed.
    if in_memory(base).unwrap_or(true) {
        return Ok(None);
    }
    let lock = File::open(base).map_err(NativeError::io(format!("open {}", base.display())))?;
    flock(&lock, FlockOperation::LockExclusive)
        .map_err(|e| NativeError::io(format!("lock {}", base.display()))(e.into()))?;
    if in_memory(base).unwrap_or(true) {
        // Mounted by another process while this one waited.
        return Ok(None);
    }
    if MOUNT_REFUSED.load(Ordering::Relaxed) {
        return Ok(Some(lock));
    }
    let empty = std::fs::read_dir(base)
        .map_err(NativeError::io(format!("list {}", base.display())))?
        .next()
        .is_none();
    if !empty {
        return Ok(Some(lock));
    }
    use rustix::mount::{MountFlags, mount};
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    match mount("agentkernel", base, "tmpfs", flags, c"mode=0711") {
        Ok(()) => {
            tracing::info!(base = %base.display(), "runtime state moved to a tmpfs of its own");
            Ok(None)
        }
        Err(e) => {
            MOUNT_REFUSED.store(true, Ordering::Relaxed);
            tracing::warn!(
                base = %base.display(),
                "runtime state stays on disk: mounting a tmpfs there failed: {e}"
            );
            Ok(Some(lock))
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
        let live = RunDir::create(base.path(), "live", BaseMount::AsItIs).unwrap();
        {
            let _dead = RunDir::create(base.path(), "dead", BaseMount::AsItIs).unwrap();
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

    /// A base on disk for the mount tests (the temporary directory, unless that is a
    /// tmpfs already: then this crate's own directory), unmounted when dropped. `None`,
    /// and the test skips, unless running as root, which mounting needs.
    struct BaseOnDisk(tempfile::TempDir);

    impl BaseOnDisk {
        fn new() -> Option<BaseOnDisk> {
            if !rustix::process::geteuid().is_root() {
                eprintln!("skipped: mounting a tmpfs needs root");
                return None;
            }
            let parent = [
                std::env::temp_dir(),
                PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            ]
            .into_iter()
            .find(|dir| !in_memory(dir).unwrap())
            .expect("no directory on disk to test in");
            let dir = tempfile::tempdir_in(parent).unwrap();
            let mode = std::os::unix::fs::PermissionsExt::from_mode(DIR_MODE);
            std::fs::set_permissions(dir.path(), mode).unwrap();
            Some(BaseOnDisk(dir))
        }

        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for BaseOnDisk {
        fn drop(&mut self) {
            while in_memory(self.path()).unwrap_or(false) {
                rustix::mount::unmount(self.path(), rustix::mount::UnmountFlags::DETACH).unwrap();
            }
        }
    }

    #[test]
    fn root_puts_an_empty_base_on_disk_in_memory_once() {
        let Some(base) = BaseOnDisk::new() else {
            return;
        };
        let first = RunDir::create(base.path(), "first", BaseMount::TmpfsWhenEmpty).unwrap();
        assert!(in_memory(base.path()).unwrap());
        assert!(in_memory(first.path()).unwrap());
        let second = RunDir::create(base.path(), "second", BaseMount::TmpfsWhenEmpty).unwrap();
        let mounted_here = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|line| line.split(' ').nth(4) == base.path().to_str())
            .count();
        assert_eq!(mounted_here, 1, "one tmpfs, not one per sandbox");
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(base.path()).unwrap().mode() & 0o7777;
        assert_eq!(mode, DIR_MODE, "{mode:o}");
        first.remove().unwrap();
        second.remove().unwrap();
    }

    #[test]
    fn a_base_with_live_directories_is_not_mounted_over() {
        let Some(base) = BaseOnDisk::new() else {
            return;
        };
        let live = RunDir::create(base.path(), "live", BaseMount::AsItIs).unwrap();
        let next = RunDir::create(base.path(), "next", BaseMount::TmpfsWhenEmpty).unwrap();
        assert!(
            !in_memory(base.path()).unwrap(),
            "mounted over a live sandbox"
        );
        assert!(live.path().join(LOCK_FILE).exists() && next.path().exists());
        live.remove().unwrap();
        next.remove().unwrap();
        // Empty again: the next sandbox moves the base into memory.
        let last = RunDir::create(base.path(), "last", BaseMount::TmpfsWhenEmpty).unwrap();
        assert!(in_memory(last.path()).unwrap());
        last.remove().unwrap();
    }
}
