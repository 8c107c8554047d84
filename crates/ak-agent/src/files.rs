//! File requests other than writes: stat, list, mkdir, remove and streamed reads.
//!
//! Every path goes through [`Root`], so it is confined to the sandbox root. Operations on
//! the last component (`stat`, `remove`, `mkdir`) use `*at` calls on its parent directory
//! and never follow a symlink there.

use std::io::Read;
use std::os::fd::OwnedFd;

use ak_protocol::{
    AgentError, ErrorKind, Event, FileStat, FileType, MAX_CHUNK_LEN, Reply, RequestId,
};
use rustix::fs::{AtFlags, Dir, FileType as SysFileType, Mode, OFlags};
use rustix::io::Errno;
use serde_bytes::ByteBuf;

use crate::errors::fs_error;
use crate::outbox::Outbox;
use crate::paths::{Root, SandboxPath};

/// Metadata of `path` itself (a symlink is reported as a symlink).
pub(crate) fn stat(root: &Root, request: &str) -> Result<FileStat, AgentError> {
    let path = root.resolve(request)?;
    let fail = |errno| fs_error("stat", &path.display(), errno);
    let Some(name) = path.name() else {
        let dir = root
            .open_at(&path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .map_err(fail)?;
        return Ok(to_file_stat("/", &rustix::fs::fstat(&dir).map_err(fail)?));
    };
    let parent = root.open_parent(&path).map_err(fail)?;
    let stat = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).map_err(fail)?;
    Ok(to_file_stat(name, &stat))
}

/// The entries of a directory (without `.` and `..`), sorted by name.
pub(crate) fn list_dir(root: &Root, request: &str) -> Result<Vec<FileStat>, AgentError> {
    let path = root.resolve(request)?;
    let fail = |errno| fs_error("list", &path.display(), errno);
    let dir = root
        .open_at(&path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(fail)?;
    let mut entries = Vec::new();
    for entry in Dir::read_from(&dir).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => entries.push(to_file_stat(&name.to_string_lossy(), &stat)),
            // Removed between readdir and stat: it is simply not there any more.
            Err(Errno::NOENT) => {}
            Err(errno) => return Err(fail(errno)),
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Creates a directory; with `parents`, also its missing ancestors, and an existing
/// directory is then not an error (`mkdir -p`).
pub(crate) fn mkdir(
    root: &Root,
    request: &str,
    parents: bool,
    mode: u32,
) -> Result<(), AgentError> {
    let path = root.resolve(request)?;
    let mode = Mode::from_bits_truncate(mode);
    if !parents {
        return mkdir_one(root, &path, mode);
    }
    for prefix in path.prefixes() {
        match mkdir_one(root, &prefix, mode) {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                // Fine if it is a directory (or a symlink to one inside the root).
                root.open_at(&prefix, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
                    .map_err(|errno| fs_error("create directory", &prefix.display(), errno))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn mkdir_one(root: &Root, path: &SandboxPath, mode: Mode) -> Result<(), AgentError> {
    let fail = |errno| fs_error("create directory", &path.display(), errno);
    let Some(name) = path.name() else {
        return Err(fail(Errno::EXIST));
    };
    let parent = root.open_parent(path).map_err(fail)?;
    rustix::fs::mkdirat(&parent, name, mode).map_err(fail)
}

/// Removes a file, a symlink (never its target) or a directory; a non-empty directory
/// only with `recursive`.
pub(crate) fn remove(root: &Root, request: &str, recursive: bool) -> Result<(), AgentError> {
    let path = root.resolve(request)?;
    let display = path.display();
    let fail = |errno| fs_error("remove", &display, errno);
    let Some(name) = path.name() else {
        return Err(AgentError::new(
            ErrorKind::InvalidPath,
            "refusing to remove the sandbox root",
        ));
    };
    let parent = root.open_parent(&path).map_err(fail)?;
    let stat = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).map_err(fail)?;
    if SysFileType::from_raw_mode(stat.st_mode) != SysFileType::Directory {
        return rustix::fs::unlinkat(&parent, name, AtFlags::empty()).map_err(fail);
    }
    if recursive {
        remove_contents(&parent, name).map_err(fail)?;
    }
    rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR).map_err(fail)
}

/// Moves `from` to `to` in one step, both resolved inside the sandbox root. `to` must not
/// exist: a copy put in place this way never replaces what is there.
pub(crate) fn rename(root: &Root, from: &str, to: &str) -> Result<(), AgentError> {
    let source = root.resolve(from)?;
    let target = root.resolve(to)?;
    let display = source.display();
    let fail = |errno| fs_error("rename", &display, errno);
    let (Some(from_name), Some(to_name)) = (source.name(), target.name()) else {
        return Err(AgentError::new(
            ErrorKind::InvalidPath,
            "refusing to rename the sandbox root",
        ));
    };
    let from_parent = root.open_parent(&source).map_err(fail)?;
    let to_parent = root.open_parent(&target).map_err(fail)?;
    let renamed = rustix::fs::renameat_with(
        &from_parent,
        from_name,
        &to_parent,
        to_name,
        rustix::fs::RenameFlags::NOREPLACE,
    );
    let renamed = match renamed {
        // File systems without RENAME_NOREPLACE (9p: a VM's shared host directory) say
        // EINVAL. There the check and the rename are two steps; only the sandbox's own
        // processes could race them, and the worst they get is their own file replaced.
        Err(Errno::INVAL) => {
            match rustix::fs::statat(&to_parent, to_name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => Err(Errno::EXIST),
                Err(Errno::NOENT) => {
                    rustix::fs::renameat(&from_parent, from_name, &to_parent, to_name)
                }
                Err(other) => Err(other),
            }
        }
        other => other,
    };
    renamed.map_err(|errno| fs_error("rename", &target.display(), errno))
}

/// Empties the directory `name` in `parent`. Each level is opened with `NOFOLLOW`
/// relative to the level above, so a symlink is unlinked, never descended into, and the
/// walk cannot leave the tree it started in even if a command swaps entries meanwhile.
fn remove_contents<P: rustix::path::Arg>(parent: &OwnedFd, name: P) -> Result<(), Errno> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Names are collected first: unlinking while reading the directory can skip entries.
    let mut children = Vec::new();
    for entry in Dir::read_from(&dir)? {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes != b"." && bytes != b".." {
            children.push((entry.file_name().to_owned(), entry.file_type()));
        }
    }
    for (child, file_type) in children {
        let is_dir = match file_type {
            SysFileType::Directory => true,
            // Some file systems do not fill in d_type.
            SysFileType::Unknown => {
                let stat = rustix::fs::statat(&dir, &*child, AtFlags::SYMLINK_NOFOLLOW)?;
                SysFileType::from_raw_mode(stat.st_mode) == SysFileType::Directory
            }
            _ => false,
        };
        if is_dir {
            remove_contents(&dir, &*child)?;
            rustix::fs::unlinkat(&dir, &*child, AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(&dir, &*child, AtFlags::empty())?;
        }
    }
    Ok(())
}

/// Opens a regular file for [`send_file`], refusing directories and files over the limit.
pub(crate) fn open_for_read(
    root: &Root,
    request: &str,
    max_bytes: u64,
) -> Result<(std::fs::File, String), AgentError> {
    let path = root.resolve(request)?;
    let display = path.display();
    let fail = |errno| fs_error("read", &display, errno);
    // NONBLOCK so that opening a FIFO cannot hang the agent; it is refused below anyway.
    let fd = root
        .open_at(
            &path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(fail)?;
    let stat = rustix::fs::fstat(&fd).map_err(fail)?;
    match SysFileType::from_raw_mode(stat.st_mode) {
        SysFileType::RegularFile => {}
        SysFileType::Directory => return Err(fail(Errno::ISDIR)),
        _ => {
            return Err(AgentError::new(
                ErrorKind::BadRequest,
                format!("cannot read {display}: not a regular file"),
            ));
        }
    }
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    if size > max_bytes {
        return Err(too_large(&display, max_bytes));
    }
    Ok((std::fs::File::from(fd), display))
}

fn too_large(path: &str, max_bytes: u64) -> AgentError {
    AgentError::new(
        ErrorKind::TooLarge,
        format!("cannot read {path}: larger than the limit of {max_bytes} bytes"),
    )
}

/// Streams an opened file as `FileData` chunks and finishes with `Done(FileEnd)`. The file
/// may grow while it is read, so the limit is checked again on what is actually read.
pub(crate) async fn send_file(
    outbox: Outbox,
    id: RequestId,
    mut file: std::fs::File,
    path: String,
    max_bytes: u64,
) {
    let mut buf = vec![0u8; MAX_CHUNK_LEN];
    let mut size: u64 = 0;
    let result = loop {
        // A read of one chunk from a regular file is short enough to do on this thread.
        let n = match file.read(&mut buf) {
            Ok(0) => break Ok(Reply::FileEnd { size }),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(fs_error("read", &path, crate::errors::errno_of(&e))),
        };
        size += n as u64;
        if size > max_bytes {
            break Err(too_large(&path, max_bytes));
        }
        let data = Event::FileData {
            id,
            data: ByteBuf::from(buf[..n].to_vec()),
        };
        if outbox.send_data(data).await.is_err() {
            return;
        }
    };
    // Through the data path too, so that `Done` cannot overtake the last chunk.
    let _ = outbox.send_data(Event::Done { id, result }).await;
}

fn to_file_stat(name: &str, stat: &rustix::fs::Stat) -> FileStat {
    let file_type = match SysFileType::from_raw_mode(stat.st_mode) {
        SysFileType::RegularFile => FileType::File,
        SysFileType::Directory => FileType::Dir,
        SysFileType::Symlink => FileType::Symlink,
        _ => FileType::Other,
    };
    FileStat {
        name: name.to_string(),
        file_type,
        size: u64::try_from(stat.st_size).unwrap_or(0),
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        mtime: stat.st_mtime,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn setup() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path(), Path::new("/work")).unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        (dir, root)
    }

    #[test]
    fn rename_moves_in_one_step_never_replaces_and_stays_inside() {
        let (dir, root) = setup();
        mkdir(&root, ".staged/sub", true, 0o755).unwrap();
        std::fs::write(dir.path().join("work/.staged/sub/f"), "x").unwrap();
        rename(&root, ".staged", "tree").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("work/tree/sub/f")).unwrap(),
            "x"
        );
        assert!(!dir.path().join("work/.staged").exists());
        // The destination exists: refused, both left as they were.
        mkdir(&root, "other", false, 0o755).unwrap();
        let error = rename(&root, "other", "tree").unwrap_err();
        assert!(error.message.contains("already exists"), "{error:?}");
        assert!(dir.path().join("work/other").is_dir());
        // `..` is refused; an absolute path is the sandbox's, inside its root.
        let error = rename(&root, "other", "../../../moved").unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidPath);
        rename(&root, "other", "/moved").unwrap();
        assert!(dir.path().join("moved").is_dir(), "stayed inside the root");
        assert!(rename(&root, "/", "x").is_err());
        assert!(rename(&root, "missing", "y").is_err());
    }

    #[test]
    fn relative_paths_are_in_the_workdir() {
        let (dir, root) = setup();
        mkdir(&root, "a/b", true, 0o755).unwrap();
        assert!(dir.path().join("work/a/b").is_dir());
        std::fs::write(dir.path().join("work/a/f"), "12345").unwrap();
        let stat = stat(&root, "a/f").unwrap();
        assert_eq!(
            (stat.name.as_str(), stat.size, stat.file_type),
            ("f", 5, FileType::File)
        );
        assert_eq!(stat, super::stat(&root, "/work/a/f").unwrap());
        let names: Vec<String> = list_dir(&root, "a")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["b", "f"]);
        assert_eq!(super::stat(&root, "/").unwrap().file_type, FileType::Dir);
    }

    #[test]
    fn mkdir_errors() {
        let (dir, root) = setup();
        std::fs::write(dir.path().join("work/file"), "").unwrap();
        let err = mkdir(&root, "file/sub", true, 0o755).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotADirectory);
        let err = mkdir(&root, "file", true, 0o755).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotADirectory);
        let err = mkdir(&root, "/", false, 0o755).unwrap_err();
        assert_eq!(err.kind, ErrorKind::AlreadyExists);
        mkdir(&root, "/", true, 0o755).unwrap();
    }

    #[test]
    fn remove_handles_links_as_links() {
        let (dir, root) = setup();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("d")).unwrap();
        std::fs::write(outside.path().join("d/keep"), "keep").unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("t/u")).unwrap();
        std::fs::write(work.join("t/u/file"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("d"), work.join("t/u/dirlink")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("d"), work.join("top")).unwrap();

        let err = remove(&root, "t", false).unwrap_err();
        assert_eq!(err.kind, ErrorKind::DirectoryNotEmpty);
        // A symlink to a directory is removed as a link, with or without `recursive`.
        remove(&root, "top", false).unwrap();
        remove(&root, "t", true).unwrap();
        assert!(!work.join("t").exists() && !work.join("top").exists());
        assert!(outside.path().join("d/keep").exists());
        let err = remove(&root, "t", true).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        let err = remove(&root, "/", true).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidPath);
    }

    #[test]
    fn read_refuses_what_it_cannot_stream() {
        let (dir, root) = setup();
        std::fs::write(dir.path().join("work/f"), "0123456789").unwrap();
        let (_, display) = open_for_read(&root, "f", 10).unwrap();
        assert_eq!(display, "/work/f");
        assert_eq!(
            open_for_read(&root, "f", 9).unwrap_err().kind,
            ErrorKind::TooLarge
        );
        assert_eq!(
            open_for_read(&root, ".", 9).unwrap_err().kind,
            ErrorKind::IsADirectory
        );
        let fifo = dir.path().join("work/fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            SysFileType::Fifo,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        // Opening a FIFO must neither hang nor be streamed.
        assert_eq!(
            open_for_read(&root, "fifo", 9).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }
}
