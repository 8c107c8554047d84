//! Copying a directory tree that a sandbox wrote into the snapshot store, and back into a
//! new sandbox's directory. The source is untrusted: it is walked by directory file
//! descriptor, one component at a time with `O_NOFOLLOW`, so a symlink is read as data and
//! never followed, and nothing outside the tree can be reached; sockets and device nodes
//! are left out (a sandbox cannot make device nodes; a socket is no file content).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::SnapshotError;
use super::blobs::BlobStore;

/// Deeper trees are refused: each level holds a directory descriptor open while walking.
const MAX_DEPTH: usize = 256;
/// The one extended attribute namespace kept: `security.*` and `trusted.*` attributes
/// carry privileges (file capabilities, SELinux labels) that a sandbox must not hand to a
/// copy, and `system.*` are ACLs the sandbox's own root cannot rely on elsewhere.
const KEPT_XATTR_PREFIX: &[u8] = b"user.";

/// One thing in a captured tree, in depth-first order (a directory before its contents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// `/`-separated, relative to the tree's top; empty for the top itself.
    pub path: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// Permission bits, with set-id bits only for files the sandbox's ids own.
    pub mode: u32,
    /// Ids as the sandbox sees them (0 is its root), not the host's.
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Kind {
    Dir,
    File { blob: String, size: u64 },
    Symlink { target: String },
    Fifo,
}

/// The host ids a sandbox's ids map to: `base.0 + n` is the sandbox's uid `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdMap {
    pub base: (u32, u32),
    pub count: u32,
}

impl IdMap {
    fn inside(self, host: u32, base: u32) -> Option<u32> {
        host.checked_sub(base).filter(|n| *n < self.count)
    }
}

/// What a capture took.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CaptureStats {
    pub files: u64,
    /// Logical size of every regular file.
    pub bytes: u64,
    /// Bytes of file data written into the store (data not already there).
    pub stored_bytes: u64,
    /// Sockets and device nodes left out.
    pub skipped: u64,
}

/// Captures the tree at `top` (a directory) into `blobs`; the entries describe it.
pub(crate) fn capture(
    top: &Path,
    blobs: &BlobStore,
    ids: IdMap,
) -> Result<(Vec<Entry>, CaptureStats), SnapshotError> {
    let dir = rustix::fs::open(
        top,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(SnapshotError::io(format!("open {}", top.display())))?;
    let mut walk = Capture {
        blobs,
        ids,
        entries: Vec::new(),
        stats: CaptureStats::default(),
    };
    let stat = rustix::fs::fstat(&dir).map_err(SnapshotError::io("stat the tree's top"))?;
    walk.push(String::new(), Kind::Dir, &stat, Some(dir.as_fd()))?;
    walk.dir(&dir, "", 0)?;
    Ok((walk.entries, walk.stats))
}

struct Capture<'a> {
    blobs: &'a BlobStore,
    ids: IdMap,
    entries: Vec<Entry>,
    stats: CaptureStats,
}

impl Capture<'_> {
    fn dir(&mut self, dir: &OwnedFd, path: &str, depth: usize) -> Result<(), SnapshotError> {
        if depth >= MAX_DEPTH {
            return Err(SnapshotError::Refused(format!(
                "{path}: directories nest deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut names = Vec::new();
        let listing =
            rustix::fs::Dir::read_from(dir).map_err(SnapshotError::io(format!("list {path:?}")))?;
        for entry in listing {
            let entry = entry.map_err(SnapshotError::io(format!("list {path:?}")))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        // A stable order, so that two captures of one tree are the same manifest.
        names.sort();
        for name in names {
            let child = join(path, &name)?;
            let stat = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(SnapshotError::io(format!("stat {child:?}")))?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    let sub = open_child(dir, &name, OFlags::DIRECTORY, &child)?;
                    self.push(child.clone(), Kind::Dir, &stat, Some(sub.as_fd()))?;
                    self.dir(&sub, &child, depth + 1)?;
                }
                FileType::RegularFile => {
                    let file = open_child(dir, &name, OFlags::empty(), &child)?;
                    // Opened, then checked again: the type seen by `statat` could have
                    // changed in between in a sandbox that is not frozen.
                    let stat = rustix::fs::fstat(&file)
                        .map_err(SnapshotError::io(format!("stat {child:?}")))?;
                    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                        return Err(SnapshotError::Refused(format!(
                            "{child:?} changed while it was copied"
                        )));
                    }
                    let (blob, stored) = self.blobs.store(&file, &child)?;
                    let size = u64::try_from(stat.st_size).unwrap_or(0);
                    self.stats.files += 1;
                    self.stats.bytes += size;
                    self.stats.stored_bytes += stored;
                    self.push(child, Kind::File { blob, size }, &stat, Some(file.as_fd()))?;
                }
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(dir, &name, Vec::new())
                        .map_err(SnapshotError::io(format!("read link {child:?}")))?;
                    let target = utf8(target.to_bytes(), &child)?;
                    self.push(child, Kind::Symlink { target }, &stat, None)?;
                }
                FileType::Fifo => self.push(child, Kind::Fifo, &stat, None)?,
                _ => self.stats.skipped += 1,
            }
        }
        Ok(())
    }

    fn push(
        &mut self,
        path: String,
        kind: Kind,
        stat: &rustix::fs::Stat,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), SnapshotError> {
        let mut mode = stat.st_mode & 0o7777;
        // A file owned by an id outside the sandbox's range was not made by the sandbox
        // (a mount point the host made, say): it is kept as the sandbox root's, and never
        // with a set-id bit, so a snapshot cannot carry a privilege the sandbox lacked.
        let uid = self.ids.inside(stat.st_uid, self.ids.base.0);
        let gid = self.ids.inside(stat.st_gid, self.ids.base.1);
        if uid.is_none() {
            mode &= !0o4000;
        }
        if gid.is_none() {
            mode &= !0o2000;
        }
        let xattrs = match fd {
            Some(fd) => read_xattrs(fd, &path)?,
            None => Vec::new(),
        };
        self.entries.push(Entry {
            path,
            kind,
            mode,
            uid: uid.unwrap_or(0),
            gid: gid.unwrap_or(0),
            mtime: stat.st_mtime,
            mtime_nsec: u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
            xattrs,
        });
        Ok(())
    }
}

fn open_child(
    dir: &OwnedFd,
    name: &CStr,
    extra: OFlags,
    path: &str,
) -> Result<OwnedFd, SnapshotError> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | extra,
        Mode::empty(),
    )
    .map_err(SnapshotError::io(format!("open {path:?}")))
}

fn join(parent: &str, name: &CStr) -> Result<String, SnapshotError> {
    let name = utf8(name.to_bytes(), parent)?;
    Ok(if parent.is_empty() {
        name
    } else {
        format!("{parent}/{name}")
    })
}

fn utf8(bytes: &[u8], context: &str) -> Result<String, SnapshotError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        SnapshotError::Refused(format!(
            "a name or link target in {context:?} is not UTF-8 ({}), which snapshots cannot keep yet",
            String::from_utf8_lossy(bytes)
        ))
    })
}

fn read_xattrs(fd: BorrowedFd<'_>, path: &str) -> Result<Vec<(String, Vec<u8>)>, SnapshotError> {
    let io = |what: &str| SnapshotError::io(format!("{what} extended attributes of {path:?}"));
    // The kernel's limits for a list of names and for one value (XATTR_LIST_MAX,
    // XATTR_SIZE_MAX): buffers this large always suffice.
    const XATTR_MAX: usize = 65536;
    let mut names = vec![0u8; XATTR_MAX];
    let len = match rustix::fs::flistxattr(fd, &mut names[..]) {
        Ok(len) => len,
        Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(io("list")(e)),
    };
    let mut kept = Vec::new();
    let mut value = vec![0u8; XATTR_MAX];
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(KEPT_XATTR_PREFIX) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(name) else {
            continue;
        };
        let got = rustix::fs::fgetxattr(fd, text, &mut value[..]).map_err(io("read"))?;
        kept.push((text.to_string(), value[..got].to_vec()));
    }
    Ok(kept)
}

/// Recreates `entries` (as [`capture`] made them) in `top`, an empty directory, with the
/// sandbox ids mapped by `ids`. Files are copies of the store's blobs (a reflink where the
/// file system has them): never hard links, through which the sandbox could change them.
pub(crate) fn restore(
    entries: &[Entry],
    top: &Path,
    blobs: &BlobStore,
    ids: IdMap,
) -> Result<(), SnapshotError> {
    let corrupt = |why: String| SnapshotError::Corrupt(why);
    let Some((first, rest)) = entries.split_first() else {
        return Err(corrupt("an empty tree".into()));
    };
    if !first.path.is_empty() || first.kind != Kind::Dir {
        return Err(corrupt(
            "the tree does not start with its top directory".into(),
        ));
    }
    let top_fd = rustix::fs::open(
        top,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(SnapshotError::io(format!("open {}", top.display())))?;
    // The open directories from the top down to the current entry's parent, with the
    // entry that describes each (its mode and times are applied once its contents are in).
    let mut stack: Vec<(OwnedFd, &Entry)> = vec![(top_fd, first)];
    for entry in rest {
        let (parent, name) = match entry.path.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => ("", entry.path.as_str()),
        };
        if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
            return Err(corrupt(format!("bad name in {:?}", entry.path)));
        }
        while stack.last().is_some_and(|(_, e)| e.path != parent) {
            let (fd, done) = stack.pop().expect("checked non-empty");
            finish(&fd, None, done, ids)?;
        }
        let Some((dir, _)) = stack.last() else {
            return Err(corrupt(format!(
                "{:?} comes before its directory",
                entry.path
            )));
        };
        let cname = CString::new(name).map_err(|_| corrupt(entry.path.clone()))?;
        let io = |what: &str| SnapshotError::io(format!("{what} {:?}", entry.path));
        match &entry.kind {
            Kind::Dir => {
                rustix::fs::mkdirat(dir, &cname, Mode::from_raw_mode(0o700))
                    .map_err(io("create directory"))?;
                let sub = rustix::fs::openat(
                    dir,
                    &cname,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io("open"))?;
                stack.push((sub, entry));
            }
            Kind::File { blob, size } => {
                let file = rustix::fs::openat(
                    dir,
                    &cname,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io("create"))?;
                blobs.copy_out(blob, *size, &file, &entry.path)?;
                finish(&file, None, entry, ids)?;
            }
            Kind::Symlink { target } => {
                rustix::fs::symlinkat(target.as_str(), dir, &cname).map_err(io("create link"))?;
                finish(dir, Some(&cname), entry, ids)?;
            }
            Kind::Fifo => {
                rustix::fs::mknodat(dir, &cname, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(io("create fifo"))?;
                finish(dir, Some(&cname), entry, ids)?;
            }
        }
    }
    while let Some((fd, done)) = stack.pop() {
        finish(&fd, None, done, ids)?;
    }
    Ok(())
}

/// Applies an entry's owner, mode, extended attributes and modification time: to `fd`
/// itself, or to `name` in the directory `fd` without following it (links, fifos).
fn finish(
    fd: &OwnedFd,
    name: Option<&CStr>,
    entry: &Entry,
    ids: IdMap,
) -> Result<(), SnapshotError> {
    let io = |what: &str| SnapshotError::io(format!("{what} {:?}", entry.path));
    let uid = rustix::fs::Uid::from_raw(ids.base.0 + entry.uid.min(ids.count - 1));
    let gid = rustix::fs::Gid::from_raw(ids.base.1 + entry.gid.min(ids.count - 1));
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: entry.mtime,
            tv_nsec: entry.mtime_nsec.into(),
        },
        last_modification: Timespec {
            tv_sec: entry.mtime,
            tv_nsec: entry.mtime_nsec.into(),
        },
    };
    match name {
        Some(name) => {
            rustix::fs::chownat(fd, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io("chown"))?;
            if !matches!(entry.kind, Kind::Symlink { .. }) {
                rustix::fs::chmodat(fd, name, Mode::from_raw_mode(entry.mode), AtFlags::empty())
                    .map_err(io("chmod"))?;
            }
            rustix::fs::utimensat(fd, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io("set times of"))?;
        }
        None => {
            rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(io("chown"))?;
            for (key, value) in &entry.xattrs {
                if !key.as_bytes().starts_with(KEPT_XATTR_PREFIX) {
                    continue;
                }
                rustix::fs::fsetxattr(fd, key.as_str(), value, XattrFlags::empty())
                    .map_err(io("set extended attributes of"))?;
            }
            // After the chown, which clears set-id bits.
            rustix::fs::fchmod(fd, Mode::from_raw_mode(entry.mode)).map_err(io("chmod"))?;
            rustix::fs::futimens(fd, &times).map_err(io("set times of"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    fn own_ids() -> IdMap {
        IdMap {
            base: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            count: 1,
        }
    }

    #[test]
    fn a_tree_round_trips_with_holes_links_modes_and_user_xattrs() {
        let scratch = tempfile::tempdir().unwrap();
        let source = scratch.path().join("source");
        let target = scratch.path().join("target");
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::create_dir(&target).unwrap();
        std::fs::write(source.join("sub/a"), "same").unwrap();
        std::fs::write(source.join("b"), "same").unwrap();
        std::fs::set_permissions(source.join("b"), PermissionsExt::from_mode(0o751)).unwrap();
        symlink("/etc/passwd", source.join("outside")).unwrap();
        symlink("sub/a", source.join("inside")).unwrap();
        let sparse = std::fs::File::create(source.join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        rustix::io::pwrite(&sparse, b"data", 1 << 29).unwrap();
        rustix::fs::fsetxattr(&sparse, "user.note", b"kept", XattrFlags::empty())
            .expect("user.* extended attributes on the temporary directory's file system");

        let blobs = BlobStore::open(scratch.path().join("blobs")).unwrap();
        let (entries, stats) = capture(&source, &blobs, own_ids()).unwrap();
        assert_eq!(stats.files, 3);
        // "same" twice is stored once; the sparse gigabyte costs its data's block (the
        // file system reports data by the block), not a gigabyte.
        assert!(stats.stored_bytes <= 4 + 65536, "{stats:?}");
        restore(&entries, &target, &blobs, own_ids()).unwrap();

        assert_eq!(
            std::fs::read_to_string(target.join("sub/a")).unwrap(),
            "same"
        );
        let b = std::fs::metadata(target.join("b")).unwrap();
        assert_eq!(b.mode() & 0o7777, 0o751);
        assert_eq!(
            std::fs::read_link(target.join("outside")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::read_link(target.join("inside")).unwrap(),
            Path::new("sub/a")
        );
        let restored = std::fs::metadata(target.join("sparse")).unwrap();
        assert_eq!(restored.len(), 1 << 30);
        assert!(restored.blocks() < 1024, "{} blocks", restored.blocks());
        let file = std::fs::File::open(target.join("sparse")).unwrap();
        let mut buf = [0u8; 4];
        rustix::io::pread(&file, &mut buf, 1 << 29).unwrap();
        assert_eq!(&buf, b"data");
        let mut value = [0u8; 16];
        let n = rustix::fs::fgetxattr(&file, "user.note", &mut value).unwrap();
        assert_eq!(&value[..n], b"kept");
        let source_time = std::fs::metadata(source.join("sub")).unwrap().mtime();
        assert_eq!(
            std::fs::metadata(target.join("sub")).unwrap().mtime(),
            source_time
        );
        // A second capture of the restored tree is the same manifest.
        let (again, _) = capture(&target, &blobs, own_ids()).unwrap();
        assert_eq!(again, entries);
    }

    #[test]
    fn set_id_bits_of_foreign_owners_are_dropped() {
        let scratch = tempfile::tempdir().unwrap();
        let source = scratch.path().join("source");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("tool"), "x").unwrap();
        std::fs::set_permissions(source.join("tool"), PermissionsExt::from_mode(0o6755)).unwrap();
        let blobs = BlobStore::open(scratch.path().join("blobs")).unwrap();
        // The file's owner (this process) is outside the range the sandbox maps.
        let foreign = IdMap {
            base: (
                own_ids().base.0.wrapping_add(10),
                own_ids().base.1.wrapping_add(10),
            ),
            count: 1,
        };
        let (entries, _) = capture(&source, &blobs, foreign).unwrap();
        let tool = entries.iter().find(|e| e.path == "tool").unwrap();
        assert_eq!(tool.mode, 0o755);
        assert_eq!((tool.uid, tool.gid), (0, 0));
        let (entries, _) = capture(&source, &blobs, own_ids()).unwrap();
        let tool = entries.iter().find(|e| e.path == "tool").unwrap();
        assert_eq!(tool.mode, 0o6755);
    }

    #[test]
    fn damaged_manifests_are_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(scratch.path().join("blobs")).unwrap();
        let entry = |path: &str, kind: Kind| Entry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        };
        for (n, bad) in [
            vec![],
            vec![entry("x", Kind::Dir)],
            vec![entry("", Kind::Dir), entry("../up", Kind::Dir)],
            vec![entry("", Kind::Dir), entry("missing/child", Kind::Fifo)],
            vec![
                entry("", Kind::Dir),
                entry(
                    "f",
                    Kind::File {
                        blob: "../../etc/passwd".into(),
                        size: 1,
                    },
                ),
            ],
        ]
        .into_iter()
        .enumerate()
        {
            let target = scratch.path().join(format!("t{n}"));
            std::fs::create_dir(&target).unwrap();
            assert!(
                restore(&bad, &target, &blobs, own_ids()).is_err(),
                "{bad:?}"
            );
            assert!(!target.join("..").join("up").exists());
        }
    }
}
