//! Atomic file writes: `WriteBegin` / `WriteChunk` / `WriteCommit`.
//!
//! Data goes into a fresh temporary file in the target's directory, which is renamed over
//! the target at commit, so readers see the old file or the new one, never a part. A write
//! that fails or is abandoned (error, connection drop) removes its temporary file.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use ak_protocol::{AgentError, ErrorKind, RequestId};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::errors::{errno_of, fs_error};
use crate::paths::Root;

/// Largest file one write may produce.
pub(crate) const MAX_WRITE_LEN: u64 = 4 << 30;

/// Makes temporary names unique within this agent; the pid makes them unique across agents
/// sharing a directory, and `O_EXCL` catches anything left.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The writes in progress on one connection, by request id.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    pending: HashMap<RequestId, PendingWrite>,
}

/// What a write request leads to: nothing to send yet, or the request's final answer.
pub(crate) type Outcome = Option<Result<(), AgentError>>;

impl Writes {
    /// Starts a write. Only failures are answered here; success is answered at commit.
    pub(crate) fn begin(&mut self, root: &Root, id: RequestId, path: &str, mode: u32) -> Outcome {
        if self.pending.remove(&id).is_some() {
            return Some(Err(AgentError::new(
                ErrorKind::BadRequest,
                format!("request id {id} is already used by a write in progress; both are dropped"),
            )));
        }
        match PendingWrite::create(root, path, mode) {
            Ok(write) => {
                self.pending.insert(id, write);
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Appends to a write. Chunks for an unknown id (a write that already failed) are
    /// dropped: its failure was answered once already.
    pub(crate) fn chunk(&mut self, id: RequestId, data: &[u8]) -> Outcome {
        let Some(write) = self.pending.get_mut(&id) else {
            tracing::debug!(id, "write chunk for no write in progress; ignored");
            return None;
        };
        match write.append(data) {
            Ok(()) => None,
            Err(e) => {
                self.pending.remove(&id);
                Some(Err(e))
            }
        }
    }

    /// Moves the finished file into place.
    pub(crate) fn commit(&mut self, id: RequestId) -> Outcome {
        let Some(write) = self.pending.remove(&id) else {
            tracing::debug!(id, "write commit for no write in progress; ignored");
            return None;
        };
        Some(write.commit())
    }
}

#[derive(Debug)]
struct PendingWrite {
    /// The target as the host named it (absolute), for messages.
    display: String,
    dir: OwnedFd,
    target: String,
    temp: String,
    file: std::fs::File,
    written: u64,
    /// Set once the temporary file was renamed, so that drop leaves it alone.
    committed: bool,
}

impl PendingWrite {
    fn create(root: &Root, request: &str, mode: u32) -> Result<PendingWrite, AgentError> {
        let path = root.resolve(request)?;
        let display = path.display();
        let fail = |errno| fs_error("write", &display, errno);
        let Some(target) = path.name() else {
            return Err(fail(Errno::ISDIR));
        };
        let dir = root.open_parent(&path).map_err(fail)?;
        // Refused now rather than at commit, after all the data has been sent.
        let existing = rustix::fs::statat(&dir, target, AtFlags::SYMLINK_NOFOLLOW);
        if existing.is_ok_and(|stat| {
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory
        }) {
            return Err(fail(Errno::ISDIR));
        }
        let mode = Mode::from_bits_truncate(mode & 0o7777);
        let (temp, fd) = create_temp(&dir, mode).map_err(fail)?;
        let write = PendingWrite {
            display: display.clone(),
            dir,
            target: target.to_string(),
            temp,
            file: std::fs::File::from(fd),
            written: 0,
            committed: false,
        };
        // The umask applied at creation; the host asked for exactly `mode`.
        rustix::fs::fchmod(&write.file, mode).map_err(fail)?;
        Ok(write)
    }

    fn append(&mut self, data: &[u8]) -> Result<(), AgentError> {
        let total = self.written + data.len() as u64;
        if total > MAX_WRITE_LEN {
            return Err(AgentError::new(
                ErrorKind::TooLarge,
                format!(
                    "cannot write {}: larger than the limit of {MAX_WRITE_LEN} bytes",
                    self.display
                ),
            ));
        }
        // One chunk is at most MAX_CHUNK_LEN bytes: short enough to write on this thread.
        self.file
            .write_all(data)
            .map_err(|e| fs_error("write", &self.display, errno_of(&e)))?;
        self.written = total;
        Ok(())
    }

    fn commit(mut self) -> Result<(), AgentError> {
        // Renaming onto the last component replaces a symlink there rather than writing
        // through it, so a planted link cannot redirect the write.
        rustix::fs::renameat(
            &self.dir,
            self.temp.as_str(),
            &self.dir,
            self.target.as_str(),
        )
        .map_err(|errno| fs_error("write", &self.display, errno))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(errno) = rustix::fs::unlinkat(&self.dir, self.temp.as_str(), AtFlags::empty()) {
            tracing::warn!(
                "cannot remove the temporary file {} of the abandoned write to {}: {errno}",
                self.temp,
                self.display
            );
        }
    }
}

/// Creates a new temporary file in `dir`. The name does not derive from the target's so
/// that it stays short whatever the target's name length.
fn create_temp(dir: &OwnedFd, mode: Mode) -> Result<(String, OwnedFd), Errno> {
    let pid = std::process::id();
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(".ak-write-{pid}-{n}.tmp");
        match rustix::fs::openat(
            dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            mode,
        ) {
            Ok(fd) => return Ok((name, fd)),
            // Left over by an earlier agent with the same pid: take the next number.
            Err(Errno::EXIST) => {}
            Err(errno) => return Err(errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn setup() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path(), Path::new("/")).unwrap();
        (dir, root)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn target_changes_only_at_commit() {
        let (dir, root) = setup();
        let target = dir.path().join("f");
        std::fs::write(&target, "old").unwrap();
        let mut writes = Writes::default();
        assert_eq!(writes.begin(&root, 1, "f", 0o640), None);
        assert_eq!(writes.chunk(1, b"new "), None);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(writes.chunk(1, b"content"), None);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(writes.commit(1), Some(Ok(())));
        assert_eq!(std::fs::read(&target).unwrap(), b"new content");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&target).unwrap().permissions(),
        );
        assert_eq!(mode & 0o7777, 0o640);
        assert_eq!(names(dir.path()), ["f"], "temporary file left behind");
        // A later commit for the same id is ignored.
        assert_eq!(writes.commit(1), None);
    }

    #[test]
    fn aborted_writes_leave_nothing() {
        let (dir, root) = setup();
        let mut writes = Writes::default();
        assert_eq!(writes.begin(&root, 1, "a", 0o644), None);
        assert_eq!(writes.begin(&root, 2, "b", 0o644), None);
        assert_eq!(writes.chunk(1, b"data"), None);
        assert_eq!(
            names(dir.path()).len(),
            2,
            "temporary files exist meanwhile"
        );
        drop(writes);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn errors_are_reported_once() {
        let (dir, root) = setup();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let mut writes = Writes::default();
        let err = writes.begin(&root, 1, "d", 0o644).unwrap().unwrap_err();
        assert_eq!(err.kind, ErrorKind::IsADirectory);
        let err = writes
            .begin(&root, 2, "missing/f", 0o644)
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("/missing/f"), "{}", err.message);
        let err = writes.begin(&root, 3, "../f", 0o644).unwrap().unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidPath);
        // Nothing is pending for the failed ids: chunks and commits are ignored.
        assert_eq!(writes.chunk(2, b"x"), None);
        assert_eq!(writes.commit(2), None);
        assert_eq!(names(dir.path()), ["d"]);
    }

    #[test]
    fn a_symlink_target_is_replaced_not_followed() {
        let top = tempfile::tempdir().unwrap();
        let root_dir = top.path().join("root");
        std::fs::create_dir(&root_dir).unwrap();
        let outside = top.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("link")).unwrap();
        std::os::unix::fs::symlink("..", root_dir.join("up")).unwrap();
        let root = Root::open(&root_dir, Path::new("/")).unwrap();
        let mut writes = Writes::default();
        assert_eq!(writes.begin(&root, 1, "link", 0o644), None);
        assert_eq!(writes.chunk(1, b"new"), None);
        assert_eq!(writes.commit(1), Some(Ok(())));
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(std::fs::read(root_dir.join("link")).unwrap(), b"new");
        // A symlinked parent directory resolves inside the root: `up` is the root itself.
        assert_eq!(writes.begin(&root, 2, "up/outside", 0o644), None);
        assert_eq!(writes.commit(2), Some(Ok(())));
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(root_dir.join("outside").exists());
    }

    #[test]
    fn size_limit() {
        let (dir, root) = setup();
        let mut writes = Writes::default();
        assert_eq!(writes.begin(&root, 1, "big", 0o644), None);
        // Pretend most of the limit was written already.
        if let Some(write) = writes.pending.get_mut(&1) {
            write.written = MAX_WRITE_LEN - 1;
        }
        let err = writes.chunk(1, b"xy").unwrap().unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(names(dir.path()).is_empty());
    }
}
