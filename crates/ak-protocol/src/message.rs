//! Messages carried in frames after the handshake.
//!
//! Requests flow host -> agent, events flow agent -> host. Every request carries a
//! client-chosen `id`; every event names the id it belongs to, which is how several
//! execs and file transfers share one connection. Output is carried as raw bytes
//! (`serde_bytes`), never re-encoded.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Identifies one request (and, for `Exec`, the running command) on a connection.
pub type RequestId = u32;

/// Size of a terminal, for PTY execs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// What the command's standard input is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StdinMode {
    /// `/dev/null`: the command sees end-of-file at once.
    #[default]
    Null,
    /// A pipe fed by `Request::Stdin` and closed by `Request::CloseStdin`.
    Pipe,
}

/// One command to run inside the sandbox. `argv` is never joined into a shell string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// Variables added to (or replacing those of) the agent's base environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox; the agent's default workdir when `None`.
    pub cwd: Option<String>,
    /// User name or numeric `uid[:gid]` inside the sandbox; the agent's own user when `None`.
    pub user: Option<String>,
    pub stdin: StdinMode,
    /// Wall-clock limit; on expiry the agent kills the command's whole process group.
    pub timeout_ms: Option<u64>,
    /// Run on a pseudo-terminal of this size (stdout and stderr are then merged).
    pub pty: Option<PtySize>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// Requests from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Exec {
        id: RequestId,
        spec: ExecSpec,
    },
    Stdin {
        id: RequestId,
        data: ByteBuf,
    },
    CloseStdin {
        id: RequestId,
    },
    /// Deliver a signal to the command's process group.
    Signal {
        id: RequestId,
        signal: i32,
    },
    Resize {
        id: RequestId,
        size: PtySize,
    },
    /// Read a whole file: answered by `FileData` chunks, then `Done(Reply::FileEnd)`.
    ReadFile {
        id: RequestId,
        path: String,
        max_bytes: u64,
    },
    /// Start writing a file: followed by `WriteChunk`s and `WriteCommit`. The file appears
    /// atomically (temporary file + rename) at commit, never half-written.
    WriteBegin {
        id: RequestId,
        path: String,
        mode: u32,
    },
    WriteChunk {
        id: RequestId,
        data: ByteBuf,
    },
    WriteCommit {
        id: RequestId,
    },
    ListDir {
        id: RequestId,
        path: String,
    },
    Stat {
        id: RequestId,
        path: String,
    },
    Remove {
        id: RequestId,
        path: String,
        recursive: bool,
    },
    Mkdir {
        id: RequestId,
        path: String,
        parents: bool,
        mode: u32,
    },
    Ping {
        id: RequestId,
    },
    /// Kill every command and exit the agent (and so end the sandbox).
    Shutdown {
        id: RequestId,
    },
    /// Move `from` to `to` in one step; `to` must not exist. Since protocol version 2.
    Rename {
        id: RequestId,
        from: String,
        to: String,
    },
}

impl Request {
    pub fn id(&self) -> RequestId {
        match self {
            Request::Exec { id, .. }
            | Request::Stdin { id, .. }
            | Request::CloseStdin { id }
            | Request::Signal { id, .. }
            | Request::Resize { id, .. }
            | Request::ReadFile { id, .. }
            | Request::WriteBegin { id, .. }
            | Request::WriteChunk { id, .. }
            | Request::WriteCommit { id }
            | Request::ListDir { id, .. }
            | Request::Stat { id, .. }
            | Request::Remove { id, .. }
            | Request::Rename { id, .. }
            | Request::Mkdir { id, .. }
            | Request::Ping { id }
            | Request::Shutdown { id } => *id,
        }
    }
}

/// Kinds of failure the agent reports; stable across versions so hosts can match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request was malformed or does not fit the agent's state (e.g. an unknown id).
    BadRequest,
    /// The path is absolute-relative confusion, contains `..`, or leaves the sandbox root.
    InvalidPath,
    NotFound,
    PermissionDenied,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    /// A file is larger than the limit the request gave.
    TooLarge,
    /// The command could not be started (not found, not executable, bad user, ...).
    SpawnFailed,
    Io,
}

/// A failure reported by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
        }
    }
}

/// Type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

/// Metadata of one file, as `Stat` and `ListDir` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub name: String,
    pub file_type: FileType,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// The successful completion of a non-exec request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Ok,
    FileEnd { size: u64 },
    Entries(Vec<FileStat>),
    Stat(FileStat),
    Pong { agent_version: String },
}

/// Events from the agent to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Started {
        id: RequestId,
        pid: u32,
    },
    Stdout {
        id: RequestId,
        data: ByteBuf,
    },
    Stderr {
        id: RequestId,
        data: ByteBuf,
    },
    /// The command ended; sent after all of its output.
    Exited {
        id: RequestId,
        status: ExitStatus,
        timed_out: bool,
    },
    /// A chunk of a file being read.
    FileData {
        id: RequestId,
        data: ByteBuf,
    },
    /// A request finished (for `Exec`: it could not start, or a later control request failed).
    Done {
        id: RequestId,
        result: Result<Reply, AgentError>,
    },
}

impl Event {
    pub fn id(&self) -> RequestId {
        match self {
            Event::Started { id, .. }
            | Event::Stdout { id, .. }
            | Event::Stderr { id, .. }
            | Event::Exited { id, .. }
            | Event::FileData { id, .. }
            | Event::Done { id, .. } => *id,
        }
    }
}
