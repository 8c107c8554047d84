//! The audit log: one JSON line per operation on a sandbox (create, start, stop, remove,
//! exec, file read and write) and per refused request, appended to `audit.log` in the state
//! directory. Every agentkernel process of the user appends to the same file; each entry is
//! one `write` to a file opened with `O_APPEND`, so concurrent entries never interleave.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file name of the audit log inside the state directory.
pub const AUDIT_FILE: &str = "audit.log";

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

/// The audit log file of one state directory.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> AuditLog {
        AuditLog {
            path: state_dir.join(AUDIT_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` (creating the file, mode 0600: commands and paths are private).
    pub fn append(&self, entry: &AuditEntry) -> Result<(), AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(entry).map_err(|e| io(e.into()))?;
        line.push(b'\n');
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
        };
        let mut file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The first entry of a new state directory; private, like the registry's.
                if let Some(dir) = self.path.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(io)?;
                }
                open().map_err(io)?
            }
            other => other.map_err(io)?,
        };
        // One write: O_APPEND places it whole at the end, whoever else is appending.
        file.write_all(&line).map_err(io)
    }

    /// Every entry, oldest first; only those of `sandbox` when given. A missing log is empty.
    pub fn read(&self, sandbox: Option<&str>) -> Result<Vec<AuditEntry>, AuditError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(AuditError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let mut entries = Vec::new();
        for (index, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let entry: AuditEntry =
                serde_json::from_str(&line).map_err(|e| AuditError::Corrupt {
                    path: self.path.clone(),
                    line: index + 1,
                    message: e.to_string(),
                })?;
            if sandbox.is_none_or(|name| entry.sandbox.as_deref() == Some(name)) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }
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

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_unix(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
