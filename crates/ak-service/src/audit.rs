//! The audit log: one JSON line per operation on a sandbox (create, start, stop, remove,
//! exec, file read and write) and per refused request, appended to `audit.log` in the state
//! directory. Every agentkernel process of the user appends to the same file; each entry is
//! one `write` to a file opened with `O_APPEND`, so concurrent entries never interleave.
//!
//! The log is bounded: an append that would take `audit.log` past its size limit first
//! renames it to `audit.log.1` (`.1` to `.2`, and so on; the oldest generation kept is
//! overwritten). Renames keep every byte of the renamed file, also what a writer that had
//! it open appends afterwards; rotations take an exclusive `flock` on `audit.log.lock`,
//! readers a shared one, so that a reader sees each generation once.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

/// The file name of the audit log inside the state directory.
pub const AUDIT_FILE: &str = "audit.log";

/// The `source` of the egress helper's entries (one per connection or DNS verdict).
pub const EGRESS_SOURCE: &str = "egress";

/// Size at which `audit.log` is rotated.
pub const ROTATE_BYTES: u64 = 16 << 20;
/// Rotated generations kept (`audit.log.1` is the newest): with [`ROTATE_BYTES`], the log
/// takes at most 64 MiB.
pub const KEEP_GENERATIONS: u32 = 3;

/// Longest detail an entry keeps, so that a huge command line cannot bloat the log.
const MAX_DETAIL: usize = 1024;

/// How an audited operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// The operation was attempted and failed.
    Error,
    /// The request was refused before anything was attempted (bad input, no token).
    Refused,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339, UTC, seconds.
    pub time: String,
    /// `create`, `start`, `stop`, `remove`, `exec`, `run`, `file_read`, `file_write`,
    /// `file_remove`, `request`, …
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    pub outcome: Outcome,
    /// What was done (a command line, a path) or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Who asked: `cli`, `api`, `mcp`.
    pub source: String,
    /// The agentkernel process that wrote the entry.
    pub pid: u32,
}

impl AuditEntry {
    /// An entry stamped now, by this process.
    pub fn new(
        source: &str,
        action: &str,
        sandbox: Option<&str>,
        outcome: Outcome,
        detail: Option<String>,
    ) -> AuditEntry {
        AuditEntry {
            time: rfc3339(SystemTime::now()),
            action: action.to_string(),
            sandbox: sandbox.map(str::to_string),
            outcome,
            detail: detail.map(|d| truncate(&d)),
            source: source.to_string(),
            pid: std::process::id(),
        }
    }
}

/// What went wrong with the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}, line {line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The audit log file of one state directory, with its rotated generations.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    /// `audit.log` is rotated before an append would take it past this size.
    rotate_bytes: u64,
    /// Rotated files kept: `audit.log.1` to `audit.log.<generations>`.
    generations: u32,
}

impl AuditLog {
    /// The log in `state_dir`, rotated at [`ROTATE_BYTES`], keeping [`KEEP_GENERATIONS`].
    pub fn in_dir(state_dir: &Path) -> AuditLog {
        AuditLog::with_rotation(state_dir, ROTATE_BYTES, KEEP_GENERATIONS)
    }

    /// The log in `state_dir`, rotated at `rotate_bytes`, keeping `generations` rotated
    /// files (at least one: rotating into nothing would lose the entries).
    pub fn with_rotation(state_dir: &Path, rotate_bytes: u64, generations: u32) -> AuditLog {
        AuditLog {
            path: state_dir.join(AUDIT_FILE),
            rotate_bytes,
            generations: generations.max(1),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rotated generation `n` (1 is the newest).
    fn generation(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    fn io_error(&self, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `entry` (creating the file, mode 0600: commands and paths are private),
    /// rotating the log first when the entry would take it past its size limit.
    pub fn append(&self, entry: &AuditEntry) -> Result<(), AuditError> {
        let io = |source| self.io_error(source);
        let mut line = serde_json::to_vec(entry).map_err(|e| io(e.into()))?;
        line.push(b'\n');
        let mut file = self.open_for_append()?;
        let size = file.metadata().map_err(io)?.len();
        if size > 0 && size + line.len() as u64 > self.rotate_bytes {
            self.rotate(&file)?;
            file = self.open_for_append()?;
        }
        // One write: O_APPEND places it whole at the end, whoever else is appending.
        file.write_all(&line).map_err(io)
    }

    fn open_for_append(&self) -> Result<File, AuditError> {
        let io = |source| self.io_error(source);
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
        };
        match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The first entry of a new state directory; private, like the registry's.
                if let Some(dir) = self.path.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(io)?;
                }
                open().map_err(io)
            }
            other => other.map_err(io),
        }
    }

    /// The lock that orders rotations and reads (created 0600 when missing).
    fn lock(&self, operation: FlockOperation) -> Result<File, AuditError> {
        let path = self.lock_path();
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        flock(&file, operation).map_err(|e| io(e.into()))?;
        Ok(file)
    }

    /// Shifts the generations up by one and makes `current` (the open `audit.log`)
    /// generation 1, unless another process rotated it meanwhile.
    fn rotate(&self, current: &File) -> Result<(), AuditError> {
        let _lock = self.lock(FlockOperation::LockExclusive)?;
        let io = |source| self.io_error(source);
        let ours = current.metadata().map_err(io)?;
        // Decided again under the lock: whoever took it first rotated the file, and the
        // name now holds a new one (or none yet) that is not ours to move.
        match std::fs::metadata(&self.path) {
            Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        }
        for n in (1..self.generations).rev() {
            match std::fs::rename(self.generation(n), self.generation(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(AuditError::Io {
                        path: self.generation(n),
                        source,
                    });
                }
            }
        }
        std::fs::rename(&self.path, self.generation(1)).map_err(io)
    }

    /// How many connections and lookups the egress helper refused to sandbox `id` (the
    /// helper names sandboxes by id).
    pub fn egress_denied(&self, id: &str) -> Result<usize, AuditError> {
        Ok(self
            .read(Some(id))?
            .iter()
            .filter(|e| e.source == EGRESS_SOURCE && e.outcome == Outcome::Refused)
            .count())
    }

    /// Every entry, oldest first (the oldest rotated file first, `audit.log` last); only
    /// those of `sandbox` when given. A missing log is empty.
    pub fn read(&self, sandbox: Option<&str>) -> Result<Vec<AuditEntry>, AuditError> {
        // Shared: no rotation can move a file between two of the reads below. No lock
        // file (and no directory) means no log has been written yet.
        let _lock = match self.lock(FlockOperation::LockShared) {
            Ok(lock) => Some(lock),
            Err(AuditError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        let files = (1..=self.generations)
            .rev()
            .map(|n| self.generation(n))
            .chain(std::iter::once(self.path.clone()));
        for path in files {
            read_file(&path, sandbox, &mut entries)?;
        }
        Ok(entries)
    }
}

/// Appends the entries of one log file (none when it does not exist) to `entries`.
fn read_file(
    path: &Path,
    sandbox: Option<&str>,
    entries: &mut Vec<AuditEntry>,
) -> Result<(), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io(source)),
    };
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: AuditEntry = serde_json::from_str(&line).map_err(|e| AuditError::Corrupt {
            path: path.to_path_buf(),
            line: index + 1,
            message: e.to_string(),
        })?;
        if sandbox.is_none_or(|name| entry.sandbox.as_deref() == Some(name)) {
            entries.push(entry);
        }
    }
    Ok(())
}

/// `time` as RFC 3339 in UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_WRITABLE_SECOND: u64 = 253_402_300_799;

/// Unix seconds as RFC 3339 in UTC (times before 1970 show as the epoch, times after the
/// year 9999 as its last second: a stored time must never make listing panic).
pub fn rfc3339_unix(seconds: i64) -> String {
    let seconds = u64::try_from(seconds)
        .unwrap_or(0)
        .min(LAST_WRITABLE_SECOND);
    rfc3339(UNIX_EPOCH + Duration::from_secs(seconds))
}

fn truncate(detail: &str) -> String {
    if detail.len() <= MAX_DETAIL {
        return detail.to_string();
    }
    let mut end = MAX_DETAIL;
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &detail[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_reads_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::in_dir(dir.path());
        assert!(log.read(None).unwrap().is_empty());
        log.append(&AuditEntry::new(
            "cli",
            "create",
            Some("a"),
            Outcome::Ok,
            None,
        ))
        .unwrap();
        log.append(&AuditEntry::new(
            "api",
            "request",
            None,
            Outcome::Refused,
            Some("missing token".into()),
        ))
        .unwrap();
        log.append(&AuditEntry::new(
            "api",
            "exec",
            Some("b"),
            Outcome::Error,
            Some("x".repeat(5000)),
        ))
        .unwrap();
        let all = log.read(None).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].outcome, Outcome::Refused);
        assert!(all[2].detail.as_ref().unwrap().len() < 1100);
        let only_a = log.read(Some("a")).unwrap();
        assert_eq!(only_a.len(), 1);
        assert_eq!(only_a[0].action, "create");
        let mode = std::fs::metadata(log.path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn damaged_lines_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::in_dir(dir.path());
        std::fs::write(log.path(), "{not json\n").unwrap();
        assert!(matches!(
            log.read(None),
            Err(AuditError::Corrupt { line: 1, .. })
        ));
    }

    fn numbered(n: usize) -> AuditEntry {
        AuditEntry::new(
            "cli",
            "exec",
            Some("box"),
            Outcome::Ok,
            Some(format!("{n:06}")),
        )
    }

    fn details(entries: &[AuditEntry]) -> Vec<usize> {
        entries
            .iter()
            .map(|e| e.detail.as_deref().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn rotates_at_the_limit_and_reads_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::to_vec(&numbered(0)).unwrap().len() as u64 + 1;
        // Room for four entries per file.
        let log = AuditLog::with_rotation(dir.path(), 4 * line, 3);
        for n in 0..10 {
            log.append(&numbered(n)).unwrap();
        }
        for file in [
            log.path().to_path_buf(),
            log.generation(1),
            log.generation(2),
        ] {
            let size = std::fs::metadata(&file).unwrap().len();
            assert!(size <= 4 * line, "{}: {size}", file.display());
        }
        assert!(!log.generation(3).exists());
        assert_eq!(
            details(&log.read(None).unwrap()),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(log.read(Some("other")).unwrap().len(), 0);
        // Rotated files stay private.
        let mode = std::fs::metadata(log.generation(1)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn the_oldest_generation_beyond_the_kept_ones_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::to_vec(&numbered(0)).unwrap().len() as u64 + 1;
        let log = AuditLog::with_rotation(dir.path(), 2 * line, 2);
        for n in 0..11 {
            log.append(&numbered(n)).unwrap();
        }
        // Files of two entries: [..][..][6,7][8,9][10]; two rotated ones are kept.
        assert_eq!(details(&log.read(None).unwrap()), vec![6, 7, 8, 9, 10]);
        assert!(!log.generation(3).exists());
    }

    #[test]
    fn a_damaged_rotated_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::with_rotation(dir.path(), 1, 2);
        log.append(&numbered(1)).unwrap();
        std::fs::write(log.generation(2), "{not json\n").unwrap();
        match log.read(None) {
            Err(AuditError::Corrupt { path, line: 1, .. }) => {
                assert_eq!(path, log.generation(2))
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_writers_lose_nothing_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let (writers, each) = (8, 150);
        // Small files, and more generations than can fill up: every entry must survive.
        let writers_threads: Vec<_> = (0..writers)
            .map(|w| {
                // Each writer has its own AuditLog and opens the file for every entry, as
                // separate processes do.
                let log = AuditLog::with_rotation(dir.path(), 2048, 1000);
                std::thread::spawn(move || {
                    for i in 0..each {
                        log.append(&numbered(w * each + i)).unwrap();
                    }
                })
            })
            .collect();
        let reader = AuditLog::with_rotation(dir.path(), 2048, 1000);
        // Reads meanwhile never fail and never see an entry twice.
        for _ in 0..20 {
            let mut seen = details(&reader.read(None).unwrap());
            let count = seen.len();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), count, "an entry was read twice");
        }
        for thread in writers_threads {
            thread.join().unwrap();
        }
        let mut all = details(&reader.read(None).unwrap());
        assert_eq!(all.len(), writers * each);
        all.sort_unstable();
        assert_eq!(all, (0..writers * each).collect::<Vec<_>>());
        assert!(reader.generation(2).exists(), "the log never rotated");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_unix(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
