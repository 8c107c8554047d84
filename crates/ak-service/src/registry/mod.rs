//! The registry of named sandboxes: their state kept in SQLite so that it survives crashes
//! and is shared by every agentkernel process on the host (CLI runs, the daemon).

use std::fmt;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ak_core::{BackendKind, ConfigError, SandboxSpec, SandboxState};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

/// The schema version this build writes and understands (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// How long a write waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The registry file of the root user (shared system state).
const ROOT_PATH: &str = "/var/lib/agentkernel/registry.db";

/// Version 1. `STRICT` makes SQLite refuse values of the wrong type instead of storing
/// them, so a bad write fails loudly rather than surfacing later as a damaged row.
const SCHEMA_V1: &str = "
CREATE TABLE sandboxes (
    name       TEXT PRIMARY KEY NOT NULL,
    uuid       TEXT NOT NULL UNIQUE,
    backend    TEXT NOT NULL,
    state      TEXT NOT NULL,
    spec       TEXT NOT NULL,
    handle     TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    error      TEXT
) STRICT;
";

/// Version 2: an optional expiry (Unix seconds) after which the service removes the sandbox.
const SCHEMA_V2: &str = "ALTER TABLE sandboxes ADD COLUMN expires_at INTEGER;";

const COLUMNS: &str =
    "name, uuid, backend, state, spec, handle, created_at, updated_at, error, expires_at";

/// One named sandbox as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub name: String,
    /// `ak_core::spec::new_sandbox_id()`; also the id the backend knows the sandbox by.
    pub uuid: String,
    pub backend: BackendKind,
    pub state: SandboxState,
    /// Stored as JSON text.
    pub spec: SandboxSpec,
    /// The backend's handle (JSON text, opaque here) while the sandbox runs.
    pub handle: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Why it failed, when `state` is `Failed`.
    pub error: Option<String>,
    /// Unix seconds after which the service removes it; `None`: it lives until removed.
    pub expires_at: Option<i64>,
}

/// What went wrong reading or writing the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot open the sandbox registry {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the sandbox registry {} is empty (0 bytes): it is not a database, and taking it for \
         a new one would forget every sandbox it held; move it away to start a new registry",
        .0.display()
    )]
    Empty(PathBuf),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the sandbox registry holds a damaged entry: {0}")]
    Corrupt(String),
    #[error("a sandbox named '{0}' already exists")]
    Duplicate(String),
    #[error("no sandbox named '{0}'")]
    NotFound(String),
    #[error("sandbox '{name}' is {actual}, not {expected} (it was changed meanwhile)")]
    StateChanged {
        name: String,
        expected: SandboxState,
        actual: SandboxState,
    },
    #[error("sandbox '{name}' cannot go from {from} to {to}")]
    InvalidTransition {
        name: String,
        from: SandboxState,
        to: SandboxState,
    },
    #[error(
        "the sandbox registry has schema version {found}, newer than this agentkernel \
         supports ({supported}); use a newer agentkernel"
    )]
    NewerSchema { found: i64, supported: i64 },
    /// A record whose name `ak_core::spec::validate_name` refuses is never stored.
    #[error(transparent)]
    InvalidName(ConfigError),
}

/// The registry: one SQLite connection, shared by the threads of this process.
pub struct Registry {
    path: PathBuf,
    // rusqlite's Connection is Send but not Sync; the mutex makes the registry Sync and
    // serializes this process's statements (other processes are serialized by SQLite).
    conn: Mutex<Connection>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens (creating it and its parent directories when missing) the registry at `path`.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| RegistryError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Specs hold environment variables, which often hold secrets: keep them private.
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| open_error(e.into()))?;
        }
        // A new registry is built under a temporary name and linked into place whole, so
        // `path` never exists empty: an empty file there is a damaged registry (truncated,
        // or emptied by hand), never one being created, and is refused rather than taken
        // for a new, empty database.
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() == 0 => return Err(RegistryError::Empty(path.to_path_buf())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_new(path)?,
            Err(e) => return Err(open_error(e.into())),
        }
        // Without SQLITE_OPEN_CREATE: a registry removed meanwhile is an error, not a
        // silently new database.
        let flags = OpenFlags::default().difference(OpenFlags::SQLITE_OPEN_CREATE);
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(e.into()))?;
        configure(&conn).map_err(open_error)?;
        let mut registry = Registry {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        };
        registry.migrate()?;
        Ok(registry)
    }

    /// Where the registry lives: `/var/lib/agentkernel/registry.db` for root, else
    /// `$XDG_STATE_HOME/agentkernel/registry.db` (by default
    /// `~/.local/state/agentkernel/registry.db`).
    pub fn default_path() -> PathBuf {
        if rustix::process::geteuid().is_root() {
            return PathBuf::from(ROOT_PATH);
        }
        match dirs::state_dir() {
            Some(state) => state.join("agentkernel").join("registry.db"),
            // No home directory at all: the system path, which fails to open with a
            // permission error that names it, rather than some surprising place.
            None => PathBuf::from(ROOT_PATH),
        }
    }

    /// The file this registry reads and writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores a new sandbox. Its name must be valid and not taken.
    pub fn insert(&self, record: &SandboxRecord) -> Result<(), RegistryError> {
        ak_core::spec::validate_name(&record.name).map_err(RegistryError::InvalidName)?;
        let spec = serde_json::to_string(&record.spec)
            .map_err(|e| RegistryError::Corrupt(format!("cannot encode the spec: {e}")))?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Checked inside the transaction so that the answer holds until the insert.
        let taken = tx
            .query_row(
                "SELECT 1 FROM sandboxes WHERE name = ?1",
                [&record.name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if taken {
            return Err(RegistryError::Duplicate(record.name.clone()));
        }
        tx.execute(
            &format!(
                "INSERT INTO sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                record.name,
                record.uuid,
                record.backend.as_str(),
                record.state.as_str(),
                spec,
                record.handle,
                record.created_at,
                record.updated_at,
                record.error,
                record.expires_at,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The sandbox called `name`, if any.
    pub fn get(&self, name: &str) -> Result<Option<SandboxRecord>, RegistryError> {
        query_one(&self.conn(), "name", name)
    }

    /// The sandbox whose uuid is `uuid`, if any.
    pub fn get_by_uuid(&self, uuid: &str) -> Result<Option<SandboxRecord>, RegistryError> {
        query_one(&self.conn(), "uuid", uuid)
    }

    /// Every sandbox, oldest first (then by name).
    pub fn list(&self) -> Result<Vec<SandboxRecord>, RegistryError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM sandboxes ORDER BY created_at, name"
        ))?;
        let rows = statement.query_map([], RawRecord::from_row)?;
        let mut records = Vec::new();
        for row in rows {
            records.push(row.map_err(column_error)?.into_record()?);
        }
        Ok(records)
    }

    /// Moves `name` from `from` to `to` atomically (compare-and-set: fails with
    /// [`RegistryError::StateChanged`] if the stored state is not `from`), and sets
    /// handle and error as given. Refuses what `from.can_become(to)` forbids.
    pub fn transition(
        &self,
        name: &str,
        from: SandboxState,
        to: SandboxState,
        handle: Option<String>,
        error: Option<String>,
    ) -> Result<SandboxRecord, RegistryError> {
        if !from.can_become(to) {
            return Err(RegistryError::InvalidTransition {
                name: name.to_string(),
                from,
                to,
            });
        }
        let mut conn = self.conn();
        // IMMEDIATE takes the write lock before the read, so no other process can change
        // the state between the check and the update.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT state FROM sandboxes WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()
            .map_err(column_error)?;
        let Some(stored) = stored else {
            return Err(RegistryError::NotFound(name.to_string()));
        };
        let actual = parse_state(&stored, name)?;
        if actual != from {
            return Err(RegistryError::StateChanged {
                name: name.to_string(),
                expected: from,
                actual,
            });
        }
        tx.execute(
            "UPDATE sandboxes SET state = ?1, handle = ?2, error = ?3, updated_at = ?4
             WHERE name = ?5 AND state = ?6",
            params![to.as_str(), handle, error, now_unix(), name, from.as_str()],
        )?;
        let record = query_one(&tx, "name", name)?
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        tx.commit()?;
        Ok(record)
    }

    /// Sets (or clears) when `name` expires; returns the updated record.
    pub fn set_expiry(
        &self,
        name: &str,
        expires_at: Option<i64>,
    ) -> Result<SandboxRecord, RegistryError> {
        self.update_named(name, "expires_at", &expires_at)
    }

    /// Replaces the spec of `name` (a change that outlives a restart, such as a new
    /// allowlist); returns the updated record.
    pub fn set_spec(&self, name: &str, spec: &SandboxSpec) -> Result<SandboxRecord, RegistryError> {
        let spec = serde_json::to_string(spec)
            .map_err(|e| RegistryError::Corrupt(format!("cannot encode the spec: {e}")))?;
        self.update_named(name, "spec", &spec)
    }

    /// Sets column `column` (one of ours, never input) of `name` to `value`, and its
    /// update time; returns the updated record.
    fn update_named(
        &self,
        name: &str,
        column: &'static str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<SandboxRecord, RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            &format!("UPDATE sandboxes SET {column} = ?1, updated_at = ?2 WHERE name = ?3"),
            params![value, now_unix(), name],
        )?;
        if changed == 0 {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        let record = query_one(&tx, "name", name)?
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        tx.commit()?;
        Ok(record)
    }

    /// The names of sandboxes whose expiry is at or before `now` (Unix seconds).
    pub fn expired(&self, now: i64) -> Result<Vec<String>, RegistryError> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT name FROM sandboxes WHERE expires_at IS NOT NULL AND expires_at <= ?1
             ORDER BY expires_at, name",
        )?;
        let names = statement.query_map([now], |row| row.get::<_, String>(0))?;
        names.collect::<Result<Vec<_>, _>>().map_err(column_error)
    }

    /// Deletes the entry of `name`; whether there was one.
    pub fn remove(&self, name: &str) -> Result<bool, RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = tx.execute("DELETE FROM sandboxes WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(deleted > 0)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held cannot leave a half-done write behind: an
        // unfinished rusqlite transaction rolls back when dropped. So the poison is moot.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings a new file to the current schema; refuses a file from a newer agentkernel.
    fn migrate(&mut self) -> Result<(), RegistryError> {
        let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        // IMMEDIATE so that two processes opening a new file at once do not both create
        // the schema: the second waits, then sees the version the first wrote.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        match found {
            0 => {
                tx.execute_batch(SCHEMA_V1)?;
                tx.execute_batch(SCHEMA_V2)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            1 => {
                tx.execute_batch(SCHEMA_V2)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            SCHEMA_VERSION => {}
            found if found > SCHEMA_VERSION => {
                return Err(RegistryError::NewerSchema {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            found => {
                return Err(RegistryError::Corrupt(format!(
                    "unknown schema version {found}"
                )));
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Creates the registry at `path` with the current schema, unless another process does so
/// first. Built beside it under a unique name (0600 whatever the umask; SQLite gives its
/// -wal and -shm files the same mode) and hard-linked into place, which never replaces a
/// file that is there.
fn create_new(path: &Path) -> Result<(), RegistryError> {
    let name = path.file_name().map_or_else(
        || "registry.db".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let staging = path.with_file_name(format!(".{name}.new-{}", ak_core::spec::new_sandbox_id()));
    let open_error = |source: Box<dyn std::error::Error + Send + Sync>| RegistryError::Open {
        path: staging.clone(),
        source,
    };
    let built = (|| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)
            .map_err(|e| open_error(e.into()))?;
        // The default rollback journal: each commit is in the file itself when the
        // connection closes, so the linked file is complete (the first real open switches
        // it to WAL).
        let conn = Connection::open(&staging).map_err(|e| open_error(e.into()))?;
        let mut registry = Registry {
            path: staging.clone(),
            conn: Mutex::new(conn),
        };
        registry.migrate()?;
        drop(registry);
        match std::fs::hard_link(&staging, path) {
            Ok(()) => Ok(()),
            // Another process created it first: theirs is as good as ours.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(RegistryError::Open {
                path: path.to_path_buf(),
                source: e.into(),
            }),
        }
    })();
    let _ = std::fs::remove_file(&staging);
    built
}

/// Per-connection settings; the journal mode is stored in the file, the rest is not.
fn configure(conn: &Connection) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // First, so that the statements below wait for other processes instead of failing.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers never block the writer, and a killed writer leaves only uncommitted
    // frames behind, which the next opener discards. Switching needs an exclusive lock
    // that SQLite does not wait for, so it is only asked when needed (once per file) and
    // retried briefly while other processes open the same new database.
    let current: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    let mut mode = current;
    for _ in 0..100 {
        if mode.eq_ignore_ascii_case("wal") {
            break;
        }
        match conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get::<_, String>(0))
        {
            Ok(now) => mode = now,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode stayed '{mode}' instead of becoming 'wal'").into());
    }
    // FULL: the WAL is synced at every commit, so an acknowledged write survives a crash
    // of the machine, not only of the process (NORMAL could lose the last commits).
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// The one row whose `column` (`name` or `uuid`, both unique) equals `value`.
fn query_one(
    conn: &Connection,
    column: &'static str,
    value: &str,
) -> Result<Option<SandboxRecord>, RegistryError> {
    let raw = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM sandboxes WHERE {column} = ?1"),
            [value],
            RawRecord::from_row,
        )
        .optional()
        .map_err(column_error)?;
    raw.map(RawRecord::into_record).transpose()
}

/// A row as stored, before its text is decoded.
struct RawRecord {
    name: String,
    uuid: String,
    backend: String,
    state: String,
    spec: String,
    handle: Option<String>,
    created_at: i64,
    updated_at: i64,
    error: Option<String>,
    expires_at: Option<i64>,
}

impl RawRecord {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawRecord> {
        Ok(RawRecord {
            name: row.get(0)?,
            uuid: row.get(1)?,
            backend: row.get(2)?,
            state: row.get(3)?,
            spec: row.get(4)?,
            handle: row.get(5)?,
            created_at: row.get(6)?,
            updated_at: row.get(7)?,
            error: row.get(8)?,
            expires_at: row.get(9)?,
        })
    }

    fn into_record(self) -> Result<SandboxRecord, RegistryError> {
        let name = self.name;
        let backend = self.backend.parse::<BackendKind>().map_err(|_| {
            RegistryError::Corrupt(format!(
                "sandbox '{name}' has unknown backend '{}'",
                self.backend
            ))
        })?;
        let state = parse_state(&self.state, &name)?;
        let spec = serde_json::from_str(&self.spec).map_err(|e| {
            RegistryError::Corrupt(format!("sandbox '{name}' has an unreadable spec: {e}"))
        })?;
        Ok(SandboxRecord {
            name,
            uuid: self.uuid,
            backend,
            state,
            spec,
            handle: self.handle,
            created_at: self.created_at,
            updated_at: self.updated_at,
            error: self.error,
            expires_at: self.expires_at,
        })
    }
}

/// A value of the wrong type in a column is a damaged row, not a database failure.
fn column_error(error: rusqlite::Error) -> RegistryError {
    match error {
        rusqlite::Error::InvalidColumnType(index, column, kind) => RegistryError::Corrupt(format!(
            "column {index} ({column}) holds a value of type {kind}"
        )),
        rusqlite::Error::FromSqlConversionFailure(index, kind, source) => RegistryError::Corrupt(
            format!("column {index} holds an unreadable {kind} value: {source}"),
        ),
        other => RegistryError::Sqlite(other),
    }
}

/// Decoded here rather than through a `FromStr` on `SandboxState`, which ak-core does not
/// have: the stored text is `SandboxState::as_str`.
fn parse_state(text: &str, name: &str) -> Result<SandboxState, RegistryError> {
    Ok(match text {
        "creating" => SandboxState::Creating,
        "running" => SandboxState::Running,
        "paused" => SandboxState::Paused,
        "saved" => SandboxState::Saved,
        "stopped" => SandboxState::Stopped,
        "removed" => SandboxState::Removed,
        "failed" => SandboxState::Failed,
        other => {
            return Err(RegistryError::Corrupt(format!(
                "sandbox '{name}' has unknown state '{other}'"
            )));
        }
    })
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
