//! An image from the local image store as one tree, for packing into a VM's base disk:
//! its layers (overlayfs lower directories, lowest first) applied in order with overlayfs'
//! own rules, so the VM sees exactly what a native sandbox of the same image sees.
//!
//! - a character device 0/0 is a whiteout: the name is deleted from what lies below;
//! - a directory with `trusted.overlay.opaque` or `user.overlay.opaque` = `y` hides what
//!   lies below it;
//! - anything else replaces what lies below (a directory merges into a directory).
//!
//! Owners are stored shifted (image id N as `id_base + N`, see `ak_image::IdShift`); the
//! tree gets the image's own ids back, since a VM has no user namespace in between. Why
//! not overlayfs itself (mount the layers, pack the mount): the shift still has to be
//! undone file by file, and this works without a mount.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::MicrovmError;

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Applies `layers` (lowest first) onto the empty directory `into`, giving every entry
/// its owner less `id_base` (`None`: owners are left to whoever makes the tree).
pub fn merge(
    layers: &[impl AsRef<Path>],
    into: &Path,
    id_base: Option<u32>,
) -> Result<(), MicrovmError> {
    for layer in layers {
        apply(layer.as_ref(), into, id_base)?;
    }
    Ok(())
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> MicrovmError {
    MicrovmError::io(format!("{what} {}", path.display()))
}

/// Applies one layer directory `layer` onto `merged`.
fn apply(layer: &Path, merged: &Path, id_base: Option<u32>) -> Result<(), MicrovmError> {
    let entries = std::fs::read_dir(layer).map_err(io("read", layer))?;
    for entry in entries {
        let entry = entry.map_err(io("read", layer))?;
        let source = entry.path();
        let target = merged.join(entry.file_name());
        // Never follows a link: an image's symlinks are data here.
        let meta = source.symlink_metadata().map_err(io("stat", &source))?;
        let kind = meta.file_type();
        if kind.is_char_device() && meta.rdev() == 0 {
            remove_any(&target)?;
            continue;
        }
        if kind.is_dir() {
            let existing = target.symlink_metadata().ok();
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                remove_any(&target)?;
            }
            if existing.as_ref().is_some_and(|m| m.is_dir()) && is_opaque(&source) {
                remove_any(&target)?;
            }
            if target.symlink_metadata().is_err() {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&target)
                    .map_err(io("create", &target))?;
            }
            apply(&source, &target, id_base)?;
            // After its content: the mode may take away our own write permission.
            finish(&target, &meta, id_base)?;
            continue;
        }
        remove_any(&target)?;
        if kind.is_symlink() {
            let link = std::fs::read_link(&source).map_err(io("read link", &source))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io("create", &target))?;
            chown(&target, &meta, id_base)?;
        } else if kind.is_file() {
            copy_file(&source, &target)?;
            finish(&target, &meta, id_base)?;
        } else {
            // Devices, fifos and sockets: the store keeps none; a VM's /dev is its own.
            tracing::debug!(
                "skipping {} (not a file, directory or link)",
                source.display()
            );
        }
    }
    Ok(())
}

/// Whether `dir` hides what lies below it.
fn is_opaque(dir: &Path) -> bool {
    OPAQUE_XATTRS.iter().any(|name| {
        let mut value = [0u8; 4];
        matches!(rustix::fs::lgetxattr(dir, *name, &mut value), Ok(1) if value[0] == b'y')
    })
}

fn remove_any(path: &Path) -> Result<(), MicrovmError> {
    match path.symlink_metadata() {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(io("remove", path)),
        Ok(_) => std::fs::remove_file(path).map_err(io("remove", path)),
    }
}

fn copy_file(source: &Path, target: &Path) -> Result<(), MicrovmError> {
    let mut from = File::open(source).map_err(io("open", source))?;
    let mut to = File::create(target).map_err(io("create", target))?;
    std::io::copy(&mut from, &mut to).map_err(io("copy to", target))?;
    Ok(())
}

/// Gives `path` the owner, mode (setuid bits included: inside the VM they are the
/// guest's business) and modification time of the layer's entry.
fn finish(path: &Path, meta: &std::fs::Metadata, id_base: Option<u32>) -> Result<(), MicrovmError> {
    chown(path, meta, id_base)?;
    // After the owner: a chown clears the setuid and setgid bits.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io("chmod", path))?;
    let mtime = rustix::fs::Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec() as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: mtime,
            last_modification: mtime,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| MicrovmError::io(format!("set the time of {}", path.display()))(e.into()))
}

fn chown(path: &Path, meta: &std::fs::Metadata, id_base: Option<u32>) -> Result<(), MicrovmError> {
    let Some(base) = id_base else {
        return Ok(());
    };
    let unshift = |id: u32| id.checked_sub(base).unwrap_or(id);
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(unshift(meta.uid()))),
        Some(rustix::fs::Gid::from_raw(unshift(meta.gid()))),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| MicrovmError::io(format!("chown {}", path.display()))(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whiteout(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .expect("mknod (the test needs root)");
    }

    #[test]
    fn layers_apply_as_overlayfs_applies_them() {
        let root = tempfile::tempdir().unwrap();
        let (lower, upper, merged) = (
            root.path().join("lower"),
            root.path().join("upper"),
            root.path().join("merged"),
        );
        for dir in [&lower, &upper, &merged] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::create_dir_all(lower.join("etc/old")).unwrap();
        std::fs::write(lower.join("etc/old/x"), "x").unwrap();
        std::fs::write(lower.join("etc/keep"), "keep").unwrap();
        std::fs::write(lower.join("gone"), "gone").unwrap();
        std::fs::create_dir_all(lower.join("opaque/below")).unwrap();
        std::fs::write(lower.join("replaced"), "file").unwrap();
        std::os::unix::fs::symlink("/etc/keep", lower.join("link")).unwrap();
        std::fs::write(lower.join("suid"), "#!/bin/sh\n").unwrap();

        whiteout(&upper.join("gone"));
        std::fs::create_dir(upper.join("etc")).unwrap();
        whiteout(&upper.join("etc/old"));
        std::fs::create_dir(upper.join("opaque")).unwrap();
        rustix::fs::setxattr(
            upper.join("opaque").as_path(),
            "user.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        std::fs::write(upper.join("opaque/new"), "new").unwrap();
        std::fs::create_dir(upper.join("replaced")).unwrap();
        std::fs::write(upper.join("suid"), "#!/bin/sh\necho\n").unwrap();
        // Owner first: a chown clears the setuid bit.
        std::os::unix::fs::chown(upper.join("suid"), Some(1_000_000_000), Some(1_000_000_005))
            .unwrap();
        std::fs::set_permissions(upper.join("suid"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();

        merge(&[&lower, &upper], &merged, Some(1_000_000_000)).unwrap();
        assert!(!merged.join("gone").exists());
        assert!(!merged.join("etc/old").exists());
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/keep")).unwrap(),
            "keep"
        );
        assert!(!merged.join("opaque/below").exists());
        assert!(merged.join("opaque/new").is_file());
        assert!(merged.join("replaced").is_dir());
        assert_eq!(
            std::fs::read_link(merged.join("link")).unwrap(),
            Path::new("/etc/keep")
        );
        let suid = merged.join("suid").symlink_metadata().unwrap();
        assert_eq!(suid.mode() & 0o7777, 0o4755);
        assert_eq!((suid.uid(), suid.gid()), (0, 5));
    }
}
