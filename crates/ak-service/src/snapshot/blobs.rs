//! The snapshot store's file contents, one blob per distinct content, named by its SHA-256:
//! a file unchanged between snapshots (or shared by two sandboxes) is stored once. Blobs
//! keep holes: only the data segments (`SEEK_DATA`/`SEEK_HOLE`) are read, hashed and
//! written, so a 1 GiB sparse file costs its data, not a gigabyte. Blobs are root's, mode
//! 0400, never executable nor set-id whatever the sandbox's file was.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom;
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::SnapshotError;

const CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub(crate) fn open(dir: PathBuf) -> Result<BlobStore, SnapshotError> {
        for sub in [dir.clone(), dir.join("tmp")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&sub)
                .map_err(SnapshotError::io(format!("create {}", sub.display())))?;
        }
        Ok(BlobStore { dir })
    }

    fn path_of(&self, hash: &str) -> Result<PathBuf, SnapshotError> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SnapshotError::Corrupt(format!("bad blob name {hash:?}")));
        }
        Ok(self.dir.join(&hash[..2]).join(&hash[2..]))
    }

    /// Stores the contents of `file` (open for reading) and returns the blob's name and
    /// how many bytes were new to the store.
    pub(crate) fn store(
        &self,
        file: &impl AsFd,
        path: &str,
    ) -> Result<(String, u64), SnapshotError> {
        let io = |what: &str| SnapshotError::io(format!("{what} {path:?}"));
        let file = file.as_fd();
        let size = rustix::fs::fstat(file).map_err(io("stat"))?.st_size;
        let size = u64::try_from(size).unwrap_or(0);
        let temp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))
            .map_err(SnapshotError::io("create a blob"))?;
        let mut hasher = Sha256::new();
        hasher.update(size.to_le_bytes());
        let mut buffer = vec![0u8; CHUNK];
        let mut written = 0u64;
        for (start, end) in data_segments(file, size).map_err(io("find the data of"))? {
            hasher.update(start.to_le_bytes());
            hasher.update(end.to_le_bytes());
            let mut offset = start;
            while offset < end {
                let want = usize::try_from((end - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
                let got =
                    rustix::io::pread(file, &mut buffer[..want], offset).map_err(io("read"))?;
                if got == 0 {
                    // The file shrank under us: what is there is all there is.
                    break;
                }
                hasher.update(&buffer[..got]);
                write_all_at(temp.as_file().as_fd(), &buffer[..got], offset)
                    .map_err(SnapshotError::io("write a blob"))?;
                offset += got as u64;
                written += got as u64;
            }
        }
        temp.as_file()
            .set_len(size)
            .map_err(SnapshotError::io("size a blob"))?;
        let hash = hex(&hasher.finalize());
        let target = self.path_of(&hash)?;
        if target.exists() {
            return Ok((hash, 0));
        }
        let parent = target.parent().expect("a blob path has a parent");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(SnapshotError::io(format!("create {}", parent.display())))?;
        temp.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .map_err(SnapshotError::io("restrict a blob"))?;
        temp.as_file()
            .sync_all()
            .map_err(SnapshotError::io("sync a blob"))?;
        match temp.persist_noclobber(&target) {
            Ok(_) => Ok((hash, written)),
            // Stored by a concurrent capture in the meantime: the same content.
            Err(e) if e.error.kind() == ErrorKind::AlreadyExists => Ok((hash, 0)),
            Err(e) => Err(SnapshotError::io(format!("store {}", target.display()))(
                e.error,
            )),
        }
    }

    /// Writes blob `hash` (of `size` bytes) into `dst`, a new empty file: a reflink when the
    /// file system can, else its data segments, leaving the holes holes.
    pub(crate) fn copy_out(
        &self,
        hash: &str,
        size: u64,
        dst: &impl AsFd,
        path: &str,
    ) -> Result<(), SnapshotError> {
        let source = self.path_of(hash)?;
        let blob = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&source)
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => {
                    SnapshotError::Corrupt(format!("the content of {path:?} is missing ({hash})"))
                }
                _ => SnapshotError::io(format!("open {}", source.display()))(e),
            })?;
        let dst = dst.as_fd();
        let io = |what: &str| SnapshotError::io(format!("{what} {path:?}"));
        match rustix::fs::ioctl_ficlone(dst, &blob) {
            Ok(()) => return Ok(()),
            // No reflinks on this file system (or across two): copy.
            Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::PERM) => {}
            Err(e) => return Err(io("clone")(e)),
        }
        for (start, end) in data_segments(blob.as_fd(), size).map_err(io("find the data of"))? {
            let mut offset = start;
            while offset < end {
                let mut from = offset;
                let mut to = offset;
                let len = usize::try_from(end - offset).unwrap_or(usize::MAX);
                let copied =
                    rustix::fs::copy_file_range(&blob, Some(&mut from), dst, Some(&mut to), len)
                        .map_err(io("copy"))?;
                if copied == 0 {
                    return Err(SnapshotError::Corrupt(format!(
                        "the content of {path:?} is shorter than recorded ({hash})"
                    )));
                }
                offset += copied as u64;
            }
        }
        rustix::fs::ftruncate(dst, size).map_err(io("size"))?;
        Ok(())
    }

    /// Removes every blob not in `keep`, and temporary files left by an interrupted
    /// capture. Returns the bytes freed (their allocated size).
    pub(crate) fn collect(&self, keep: &HashSet<String>) -> Result<u64, SnapshotError> {
        let mut freed = 0;
        let list = |dir: &Path| {
            std::fs::read_dir(dir).map_err(SnapshotError::io(format!("list {}", dir.display())))
        };
        for shard in list(&self.dir)? {
            let shard = shard.map_err(SnapshotError::io("list the blob store"))?;
            let name = shard.file_name().to_string_lossy().into_owned();
            let is_tmp = name == "tmp";
            if !is_tmp && (name.len() != 2 || !shard.path().is_dir()) {
                continue;
            }
            for blob in list(&shard.path())? {
                let blob = blob.map_err(SnapshotError::io("list the blob store"))?;
                let hash = format!("{name}{}", blob.file_name().to_string_lossy());
                if !is_tmp && keep.contains(&hash) {
                    continue;
                }
                // An interrupted capture's file, or a blob no snapshot names; the store
                // lock is held, so no capture is writing one now.
                let allocated = blob
                    .metadata()
                    .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                    .unwrap_or(0);
                std::fs::remove_file(blob.path()).map_err(SnapshotError::io(format!(
                    "remove {}",
                    blob.path().display()
                )))?;
                freed += allocated;
            }
        }
        Ok(freed)
    }
}

/// The `[start, end)` ranges of `file` (of `size` bytes) that hold data.
fn data_segments(file: BorrowedFd<'_>, size: u64) -> Result<Vec<(u64, u64)>, Errno> {
    let mut segments = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(offset)) {
            Ok(start) => start,
            // No data after `offset`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(size);
        if end <= start {
            break;
        }
        segments.push((start, end));
        offset = end;
    }
    Ok(segments)
}

fn write_all_at(file: BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = rustix::io::pwrite(file, data, offset)?;
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
