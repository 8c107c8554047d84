//! Turns system errors into the protocol's stable [`AgentError`] kinds, with messages that
//! name the operation and the path.

use std::borrow::Cow;

use ak_protocol::{AgentError, ErrorKind};
use rustix::io::Errno;

/// The protocol kind of a failed file system call.
pub(crate) fn kind_of(errno: Errno) -> ErrorKind {
    match errno {
        Errno::NOENT => ErrorKind::NotFound,
        // A mount point of the sandbox (its /proc, an image directory) cannot be removed
        // or renamed: not the caller's to change, like a read-only file.
        Errno::ACCESS | Errno::PERM | Errno::ROFS | Errno::BUSY => ErrorKind::PermissionDenied,
        Errno::EXIST => ErrorKind::AlreadyExists,
        Errno::NOTDIR => ErrorKind::NotADirectory,
        Errno::ISDIR => ErrorKind::IsADirectory,
        Errno::NOTEMPTY => ErrorKind::DirectoryNotEmpty,
        // The sandbox's own space (its root is sized by its memory) is used up: what was
        // asked for is too large for it, not a fault of agentkernel.
        Errno::FBIG | Errno::NOSPC | Errno::DQUOT => ErrorKind::TooLarge,
        // openat2 refuses magic links and escapes from the root with these.
        Errno::XDEV | Errno::LOOP | Errno::NAMETOOLONG => ErrorKind::InvalidPath,
        _ => ErrorKind::Io,
    }
}

/// `cannot <op> <path>: <reason>`.
pub(crate) fn fs_error(op: &str, path: &str, errno: Errno) -> AgentError {
    let reason: Cow<'static, str> = match errno {
        Errno::NOENT => "no such file or directory".into(),
        Errno::ACCESS | Errno::PERM => "permission denied".into(),
        Errno::ROFS => "read-only file system".into(),
        Errno::BUSY => "a mount point of the sandbox, which cannot be changed".into(),
        Errno::NOSPC => "no space left in the sandbox".into(),
        Errno::EXIST => "already exists".into(),
        Errno::NOTDIR => "not a directory".into(),
        Errno::ISDIR => "is a directory".into(),
        Errno::NOTEMPTY => "directory not empty".into(),
        Errno::LOOP => "too many levels of symbolic links, or a /proc magic link".into(),
        Errno::XDEV => "the path leaves the sandbox root".into(),
        other => std::io::Error::from(other).to_string().into(),
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
        let busy = fs_error("remove", "/proc", Errno::BUSY);
        assert_eq!(busy.kind, ErrorKind::PermissionDenied);
        assert!(busy.message.contains("mount point"), "{busy}");
        assert_eq!(
            fs_error("write", "/x", Errno::NOSPC).kind,
            ErrorKind::TooLarge
        );
        let other = fs_error("write", "/x", Errno::IO);
        assert_eq!(other.kind, ErrorKind::Io);
        assert!(other.message.starts_with("cannot write /x: "), "{other}");
    }
}
