//! Unpacking one layer safely into its own directory.
//!
//! Entries are written by hand with `*at` system calls relative to directory descriptors
//! opened one component at a time with `O_NOFOLLOW`: nothing is ever resolved through a
//! symlink, so no entry can land outside the layer root, whatever the archive holds.
//! Symlinks are stored as data. `..` and absolute names are refused, as are hard links to
//! anything not already unpacked in this layer. Device nodes and fifos are skipped (an
//! image has no business shipping them; a sandbox's `/dev` is its own).
//!
//! Whiteouts become what overlayfs reads: `.wh.NAME` a 0/0 character device `NAME`,
//! `.wh..wh..opq` the opaque xattr on its directory (`trusted.overlay.opaque` for a
//! mount by real root, `user.overlay.opaque` for a mount in a user namespace with
//! `userxattr`).

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, chmodat, chownat,
    fchmod, fchown, fsetxattr, futimens, linkat, makedev, mkdirat, mknodat, openat, statat,
    symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;
use tar::EntryType;

use crate::IdShift;
use crate::error::ImageError;

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub(crate) fn for_media_type(media_type: &str) -> Result<Compression, ImageError> {
        let unsupported = || ImageError::UnsupportedMediaType {
            what: "layer",
            media_type: media_type.to_string(),
        };
        // OCI (`…layer.v1.tar+gzip`, also the non-distributable variants) and Docker
        // (`…rootfs.diff.tar.gzip`).
        let (base, suffix) = match media_type.split_once('+') {
            Some((base, suffix)) => (base, Some(suffix)),
            None => (media_type, None),
        };
        let docker_gzip = base == "application/vnd.docker.image.rootfs.diff.tar.gzip";
        let tar_base = base == "application/vnd.oci.image.layer.v1.tar"
            || base == "application/vnd.oci.image.layer.nondistributable.v1.tar"
            || base == "application/vnd.docker.image.rootfs.diff.tar"
            || base == "application/vnd.docker.image.rootfs.foreign.diff.tar";
        match (tar_base, docker_gzip, suffix) {
            (_, true, None) => Ok(Compression::Gzip),
            (true, _, None) => Ok(Compression::None),
            (true, _, Some("gzip")) => Ok(Compression::Gzip),
            (true, _, Some("zstd")) => Ok(Compression::Zstd),
            _ => Err(unsupported()),
        }
    }
}

/// What an unpacked layer holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Unpacked {
    /// Bytes of regular file data.
    pub(crate) size: u64,
}

/// Unpacks the layer read from `blob` into the empty directory `root`.
pub(crate) fn unpack(
    blob: impl Read,
    compression: Compression,
    root: &std::path::Path,
    ids: IdShift,
    digest: &str,
) -> Result<Unpacked, ImageError> {
    let root_fd = openat(
        rustix::fs::CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io(root, e.into()))?;
    let owner0 = ids.map(0).ok_or_else(|| ImageError::HostileLayer {
        digest: digest.to_string(),
        entry: "/".into(),
        why: "id 0 is outside the store's id range".into(),
    })?;
    // Without root every file is the unpacking user's already (the single-id mapping of an
    // unprivileged user collapses all owners to it), and chown to another group would fail.
    let chown = rustix::process::geteuid().is_root();
    if chown {
        fchown(&root_fd, Some(uid(owner0)), Some(gid(owner0)))
            .map_err(|e| ImageError::io(root, e.into()))?;
    }
    let mut layer = Layer {
        root: root_fd,
        ids,
        owner0,
        digest,
        chown,
        last_parent: std::cell::RefCell::new(None),
        dir_times: Vec::new(),
        unpacked: Unpacked::default(),
    };
    match compression {
        Compression::None => layer.entries(blob)?,
        Compression::Gzip => layer.entries(flate2::read::MultiGzDecoder::new(blob))?,
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(blob).map_err(|e| ImageError::NotATar {
                    digest: digest.to_string(),
                    why: e.to_string(),
                })?;
            layer.entries(decoder)?
        }
    }
    // Directory modes and times last: a read-only directory could not take its entries
    // (without root), and every entry written into a directory changed its mtime.
    for (components, mode, time) in std::mem::take(&mut layer.dir_times).into_iter().rev() {
        let (parent, name) = layer.parent_of(&components, false)?;
        let name = name.unwrap_or(OsStr::new("."));
        // The entry was made a directory by this layer (nothing else writes here), so
        // following a link cannot happen; fchmodat has no working no-follow flag.
        chmodat(&parent, name, mode, AtFlags::empty()).map_err(|e| layer.io(&components, e))?;
        utimensat(&parent, name, &time, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| layer.io(&components, e))?;
    }
    Ok(layer.unpacked)
}

struct Layer<'a> {
    root: OwnedFd,
    ids: IdShift,
    owner0: u32,
    /// Whether owners are set (only root can).
    chown: bool,
    /// The parent directory components and descriptor [`Layer::parent_of`] found last.
    last_parent: std::cell::RefCell<Option<(Vec<Vec<u8>>, OwnedFd)>>,
    digest: &'a str,
    dir_times: Vec<(Vec<Vec<u8>>, Mode, Timestamps)>,
    unpacked: Unpacked,
}

fn uid(id: u32) -> Uid {
    Uid::from_raw(id)
}

fn gid(id: u32) -> Gid {
    Gid::from_raw(id)
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

impl Layer<'_> {
    fn hostile(&self, entry: &[u8], why: impl Into<String>) -> ImageError {
        ImageError::HostileLayer {
            digest: self.digest.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            why: why.into(),
        }
    }

    fn not_a_tar(&self, e: std::io::Error) -> ImageError {
        ImageError::NotATar {
            digest: self.digest.to_string(),
            why: e.to_string(),
        }
    }

    fn io(&self, components: &[Vec<u8>], e: Errno) -> ImageError {
        let path = components.join(&b'/');
        ImageError::io(
            format!(
                "layer {} entry {}",
                self.digest,
                String::from_utf8_lossy(&path)
            ),
            e.into(),
        )
    }

    fn entries(&mut self, reader: impl Read) -> Result<(), ImageError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| self.not_a_tar(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.not_a_tar(e))?;
            self.entry(&mut entry)?;
        }
        Ok(())
    }

    /// `a/./b/` → `["a", "b"]`; `..` and absolute names are refused.
    fn components(&self, raw: &[u8]) -> Result<Vec<Vec<u8>>, ImageError> {
        if raw.first() == Some(&b'/') {
            return Err(self.hostile(raw, "is an absolute path"));
        }
        if raw.contains(&0) {
            return Err(self.hostile(raw, "has a NUL byte"));
        }
        let mut out = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(self.hostile(raw, "has a '..' component")),
                part => out.push(part.to_vec()),
            }
        }
        Ok(out)
    }

    /// The directory holding `components`' last element (made, owned by image root,
    /// when `create`), and that element (`None` for the root itself). Each step is opened
    /// with `O_NOFOLLOW | O_DIRECTORY`: a symlink or a file on the way is refused.
    fn parent_of<'c>(
        &self,
        components: &'c [Vec<u8>],
        create: bool,
    ) -> Result<(OwnedFd, Option<&'c OsStr>), ImageError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut dir = rustix::io::dup(&self.root).map_err(|e| self.io(components, e))?;
        let Some((last, parents)) = components.split_last() else {
            return Ok((dir, None));
        };
        // Entries come directory by directory: the last parent's descriptor serves the
        // next entry in it. It stays right: a directory this layer made or walked is
        // never removed or replaced while it unpacks (`make_room` refuses that).
        if let Some((cached, fd)) = self.last_parent.borrow().as_ref()
            && cached.as_slice() == parents
        {
            let fd = rustix::io::dup(fd).map_err(|e| self.io(components, e))?;
            return Ok((fd, Some(OsStr::from_bytes(last))));
        }
        for part in parents {
            let name = OsStr::from_bytes(part);
            let next = match openat(&dir, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    mkdirat(&dir, name, Mode::from_raw_mode(0o755))
                        .map_err(|e| self.io(components, e))?;
                    self.chown_at(&dir, name, uid(self.owner0), gid(self.owner0), components)?;
                    openat(&dir, name, flags, Mode::empty()).map_err(|e| self.io(components, e))?
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(self.hostile(
                        &components.join(&b'/'),
                        "goes through a symlink or a non-directory",
                    ));
                }
                Err(Errno::NOENT) => {
                    return Err(
                        self.hostile(&components.join(&b'/'), "names a path not unpacked yet")
                    );
                }
                Err(e) => return Err(self.io(components, e)),
            };
            dir = next;
        }
        let keep = rustix::io::dup(&dir).map_err(|e| self.io(components, e))?;
        *self.last_parent.borrow_mut() = Some((parents.to_vec(), keep));
        Ok((dir, Some(OsStr::from_bytes(last))))
    }

    /// Clears `name` in `dir` for a new entry, unless it is a directory and `keep_dir`.
    /// Returns whether a directory was kept.
    fn make_room(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        keep_dir: bool,
        components: &[Vec<u8>],
    ) -> Result<bool, ImageError> {
        match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.io(components, e)),
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                if keep_dir {
                    return Ok(true);
                }
                Err(self.hostile(
                    &components.join(&b'/'),
                    "replaces a directory of the same layer",
                ))
            }
            Ok(_) => {
                unlinkat(dir, name, AtFlags::empty()).map_err(|e| self.io(components, e))?;
                Ok(false)
            }
        }
    }

    fn owner(&self, raw: &[u8], header: &tar::Header) -> Result<(Uid, Gid), ImageError> {
        let id = |v: std::io::Result<u64>| v.map_err(|e| self.not_a_tar(e));
        let image_uid = id(header.uid())?;
        let image_gid = id(header.gid())?;
        let host_uid = self
            .ids
            .map(image_uid)
            .ok_or_else(|| self.hostile(raw, format!("uid {image_uid} is outside the id range")))?;
        let host_gid = self
            .ids
            .map(image_gid)
            .ok_or_else(|| self.hostile(raw, format!("gid {image_gid} is outside the id range")))?;
        Ok((uid(host_uid), gid(host_gid)))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let components = self.components(&raw)?;
        let name_bytes = components.last().cloned().unwrap_or_default();

        // Whiteouts.
        if name_bytes == OPAQUE {
            let (dir, _) = self.parent_of(&components, true)?;
            self.set_opaque(&dir, &components)?;
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(self.hostile(&raw, "is a whiteout of nothing"));
            }
            let mut target = components.clone();
            if let Some(last) = target.last_mut() {
                *last = hidden.to_vec();
            }
            let (dir, name) = self.parent_of(&target, true)?;
            let name = name.ok_or_else(|| self.hostile(&raw, "whites out the root"))?;
            self.make_room(&dir, name, false, &target)?;
            mknodat(
                &dir,
                name,
                FileType::CharacterDevice,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(|e| self.io(&target, e))?;
            return Ok(());
        }

        let header = entry.header().clone();
        let (owner, group) = self.owner(&raw, &header)?;
        let mode = Mode::from_raw_mode(header.mode().map_err(|e| self.not_a_tar(e))? & 0o7777);
        let mtime = header.mtime().map_err(|e| self.not_a_tar(e))?;
        let time = Timespec {
            tv_sec: i64::try_from(mtime)
                .map_err(|_| self.hostile(&raw, "has an mtime out of range"))?,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: time,
            last_modification: time,
        };

        match kind {
            EntryType::Directory => {
                let (dir, name) = self.parent_of(&components, true)?;
                let target = match name {
                    Some(name) => {
                        if !self.make_room(&dir, name, true, &components)? {
                            mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                                .map_err(|e| self.io(&components, e))?;
                        }
                        name
                    }
                    None => OsStr::new("."),
                };
                self.chown_at(&dir, target, owner, group, &components)?;
                self.dir_times.push((components, mode, times));
            }
            EntryType::Regular | EntryType::Continuous => {
                let (dir, name) = self.parent_of(&components, true)?;
                let name = name.ok_or_else(|| self.hostile(&raw, "is a file at the root"))?;
                self.make_room(&dir, name, false, &components)?;
                let fd = openat(
                    &dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io(&components, e))?;
                let mut file = std::fs::File::from(fd);
                let written = std::io::copy(entry, &mut file).map_err(|e| self.not_a_tar(e))?;
                self.unpacked.size += written;
                // chown before chmod: chown clears setuid and setgid bits.
                if self.chown {
                    fchown(&file, Some(owner), Some(group)).map_err(|e| self.io(&components, e))?;
                }
                fchmod(&file, mode).map_err(|e| self.io(&components, e))?;
                futimens(&file, &times).map_err(|e| self.io(&components, e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&raw, "is a symlink without a target"))?
                    .into_owned();
                let (dir, name) = self.parent_of(&components, true)?;
                let name = name.ok_or_else(|| self.hostile(&raw, "is a symlink at the root"))?;
                self.make_room(&dir, name, false, &components)?;
                symlinkat(OsStr::from_bytes(&target), &dir, name)
                    .map_err(|e| self.io(&components, e))?;
                self.chown_at(&dir, name, owner, group, &components)?;
                utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io(&components, e))?;
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&raw, "is a hard link without a target"))?
                    .into_owned();
                let target = self
                    .components(&target_raw)
                    .map_err(|_| self.hostile(&raw, "is a hard link out of the layer"))?;
                let (target_dir, target_name) =
                    self.parent_of(&target, false).map_err(|e| match e {
                        ImageError::HostileLayer { .. } => self.hostile(
                            &raw,
                            "is a hard link to a path not unpacked yet or through a symlink",
                        ),
                        other => other,
                    })?;
                let target_name =
                    target_name.ok_or_else(|| self.hostile(&raw, "is a hard link to the root"))?;
                match statat(&target_dir, target_name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                        return Err(self.hostile(&raw, "is a hard link to a directory"));
                    }
                    Ok(_) => {}
                    Err(Errno::NOENT) => {
                        return Err(self.hostile(&raw, "is a hard link to a path not unpacked yet"));
                    }
                    Err(e) => return Err(self.io(&target, e)),
                }
                let (dir, name) = self.parent_of(&components, true)?;
                let name = name.ok_or_else(|| self.hostile(&raw, "is a hard link at the root"))?;
                if target == components {
                    return Ok(());
                }
                self.make_room(&dir, name, false, &components)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                linkat(&target_dir, target_name, &dir, name, AtFlags::empty())
                    .map_err(|e| self.io(&components, e))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                tracing::warn!(
                    layer = self.digest,
                    entry = %String::from_utf8_lossy(&raw),
                    "skipped a device node or fifo in an image layer"
                );
            }
            other => {
                return Err(self.hostile(&raw, format!("has an unsupported entry type {other:?}")));
            }
        }
        Ok(())
    }

    /// Sets an entry's owner (never through a symlink), when owners are set at all.
    fn chown_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        owner: Uid,
        group: Gid,
        components: &[Vec<u8>],
    ) -> Result<(), ImageError> {
        if !self.chown {
            return Ok(());
        }
        chownat(
            dir,
            name,
            Some(owner),
            Some(group),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io(components, e))
    }

    fn set_opaque(&self, dir: &OwnedFd, components: &[Vec<u8>]) -> Result<(), ImageError> {
        fsetxattr(dir, "user.overlay.opaque", b"y", XattrFlags::empty())
            .map_err(|e| self.io(components, e))?;
        // Only real root may write trusted.* xattrs; a store written unprivileged is
        // only ever mounted in a user namespace, where overlayfs reads user.* ones.
        match fsetxattr(dir, "trusted.overlay.opaque", b"y", XattrFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::PERM) if !rustix::process::geteuid().is_root() => Ok(()),
            Err(e) => Err(self.io(components, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_follows_the_media_type() {
        for (media, want) in [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
        ] {
            assert_eq!(Compression::for_media_type(media).unwrap(), want, "{media}");
        }
        for bad in [
            "application/json",
            "application/vnd.oci.image.layer.v1.tar+lz4",
            "",
        ] {
            assert!(Compression::for_media_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn id_shift_maps_or_refuses() {
        let shift = IdShift {
            base: 1000,
            range: 65536,
        };
        assert_eq!(shift.map(0), Some(1000));
        assert_eq!(shift.map(65535), Some(66535));
        assert_eq!(shift.map(65536), None);
        let single = IdShift {
            base: 1000,
            range: 1,
        };
        assert_eq!(single.map(0), Some(1000));
        assert_eq!(single.map(4242), Some(1000));
    }
}
