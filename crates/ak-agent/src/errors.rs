//! Turns system errors into the protocol's stable [`AgentError`] kinds, with messages that
//! name the operation and the path.

use ak_protocol::{AgentError, ErrorKind};
use rustix::io::Errno;

/// The protocol kind of a failed file system call.
pub(crate) fn kind_of(errno: Errno) -> ErrorKind {
    match errno {
        Errno::NOENT => ErrorKind::NotFound,
        Errno::ACCESS | Errno::PERM | Errno::ROFS => ErrorKind::PermissionDenied,
        Errno::EXIST => ErrorKind::AlreadyExists,
        Errno::NOTDIR => ErrorKind::NotADirectory,
        Errno::ISDIR => ErrorKind::IsADirectory,
        Errno::NOTEMPTY => ErrorKind::DirectoryNotEmpty,
        Errno::FBIG => ErrorKind::TooLarge,
        // openat2 refuses magic links and escapes from the root with these.
        Errno::XDEV | Errno::LOOP => ErrorKind::InvalidPath,
        _ => ErrorKind::Io,
    }
}

/// `cannot <op> <path>: <reason>`.
pub(crate) fn fs_error(op: &str, path: &str, errno: Errno) -> AgentError {
    let reason = match errno {
        Errno::NOENT => "no such file or directory".to_string(),
        Errno::ACCESS | Errno::PERM => "permission denied".to_string(),
        Errno::ROFS => "read-only file system".to_string(),
        Errno::EXIST => "already exists".to_string(),
        Errno::NOTDIR => "not a directory".to_string(),
        Errno::ISDIR => "is a directory".to_string(),
        Errno::NOTEMPTY => "directory not empty".to_string(),
        Errno::LOOP => "too many levels of symbolic links, or a /proc magic link".to_string(),
        Errno::XDEV => "the path leaves the sandbox root".to_string(),
        other => std::io::Error::from(other).to_string(),
    };
    AgentError::new(kind_of(errno), format!("cannot {op} {path}: {reason}"))
}

/// The errno of an I/O error from std, for [`fs_error`].
pub(crate) fn errno_of(error: &std::io::Error) -> Errno {
    error
        .raw_os_error()
        .map_or(Errno::IO, Errno::from_raw_os_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let err = fs_error("read", "/a/b", Errno::NOENT);
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert_eq!(err.message, "cannot read /a/b: no such file or directory");
        assert_eq!(
            fs_error("remove", "/d", Errno::NOTEMPTY).kind,
            ErrorKind::DirectoryNotEmpty
        );
        let other = fs_error("write", "/x", Errno::NOSPC);
        assert_eq!(other.kind, ErrorKind::Io);
        assert!(other.message.starts_with("cannot write /x: "), "{other}");
    }
}
