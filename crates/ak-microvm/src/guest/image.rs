//! Base images: the sandbox's image as a read-only squashfs disk, cached by a hash of its
//! content. The default is a Debian minimal root built with `debootstrap`; a directory
//! works too (its tree is hashed, so an edited directory is rebuilt).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ak_core::ImageRef;
use ak_core::image::MICROVM_BASE_IMAGE;

use super::{Progress, ProgressSink, publish, run_build, short_hash};
use crate::error::MicrovmError;
use crate::tools;

/// The Debian release the default image is built from, and where from.
const DEBIAN_SUITE: &str = "bookworm";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// Where a base image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSource {
    /// Debian's minimal root (`debootstrap --variant=minbase`), built by `setup`.
    Debian,
    /// A root file system tree on the host.
    Directory(PathBuf),
}

impl BaseSource {
    pub fn from_image(image: &ImageRef) -> Result<BaseSource, MicrovmError> {
        match image {
            ImageRef::Oci(name) if name == MICROVM_BASE_IMAGE => Ok(BaseSource::Debian),
            ImageRef::Directory(path) => Ok(BaseSource::Directory(path.clone())),
            ImageRef::Oci(name) => Err(MicrovmError::Unsupported(format!(
                "image {name}: the microvm backend runs {MICROVM_BASE_IMAGE} (built by `agentkernel setup`) or a root file system directory (--image /path/to/root); container images are not converted yet"
            ))),
            ImageRef::Host | ImageRef::Auto => Err(MicrovmError::Unsupported(format!(
                "image {image}: a VM cannot boot the host's root; use {MICROVM_BASE_IMAGE} or a root file system directory"
            ))),
        }
    }

    /// The cache file this source's image lives in (whether built or not).
    pub fn cached_path(&self, cache: &Path) -> Result<PathBuf, MicrovmError> {
        let name = match self {
            BaseSource::Debian => format!(
                "{MICROVM_BASE_IMAGE}-{}.sqfs",
                short_hash([
                    b"debootstrap --variant=minbase".as_slice(),
                    DEBIAN_SUITE.as_bytes()
                ])
            ),
            BaseSource::Directory(dir) => format!("dir-{}.sqfs", tree_hash(dir)?),
        };
        Ok(images(cache).join(name))
    }
}

fn images(cache: &Path) -> PathBuf {
    cache.join("images")
}

/// The base image for `source`: the cached one, or (for a directory) one built now. The
/// Debian image is built only by [`build`] (it takes a minute and needs the network).
pub fn ensure(cache: &Path, source: &BaseSource) -> Result<PathBuf, MicrovmError> {
    let path = source.cached_path(cache)?;
    if path.is_file() {
        return Ok(path);
    }
    match source {
        BaseSource::Debian => Err(MicrovmError::Artifact(format!(
            "the {MICROVM_BASE_IMAGE} image is not built: run `agentkernel setup`"
        ))),
        BaseSource::Directory(dir) => {
            squash(dir, &path)?;
            Ok(path)
        }
    }
}

/// Builds the image for `source` unless cached; returns its path.
pub fn build(
    cache: &Path,
    source: &BaseSource,
    progress: ProgressSink,
) -> Result<PathBuf, MicrovmError> {
    let path = source.cached_path(cache)?;
    if path.is_file() {
        return Ok(path);
    }
    match source {
        BaseSource::Directory(dir) => {
            progress(&Progress {
                message: format!("packing {}", dir.display()),
                position: 0,
                length: None,
            });
            squash(dir, &path)?;
        }
        BaseSource::Debian => {
            let debootstrap =
                tools::require_program("debootstrap", "install Debian's debootstrap package")?;
            if !rustix::process::geteuid().is_root() {
                return Err(MicrovmError::Build {
                    what: format!("building {MICROVM_BASE_IMAGE}"),
                    detail: "debootstrap needs root".into(),
                });
            }
            let staging = images(cache).join(format!(".debootstrap-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&staging);
            progress(&Progress {
                message: format!(
                    "debootstrap --variant=minbase {DEBIAN_SUITE} (downloads about 40 MB)"
                ),
                position: 0,
                length: None,
            });
            let built = run_build(
                "debootstrap",
                Command::new(debootstrap)
                    .args(["--variant=minbase", DEBIAN_SUITE])
                    .arg(&staging)
                    .arg(DEBIAN_MIRROR),
            )
            .and_then(|()| {
                progress(&Progress {
                    message: format!("packing {MICROVM_BASE_IMAGE} into squashfs"),
                    position: 0,
                    length: None,
                });
                squash(&staging, &path)
            });
            if let Err(e) = std::fs::remove_dir_all(&staging) {
                tracing::warn!("cannot remove {}: {e}", staging.display());
            }
            built?;
        }
    }
    Ok(path)
}

/// Packs `dir` into the squashfs file `out` (through a staged name).
fn squash(dir: &Path, out: &Path) -> Result<(), MicrovmError> {
    let mksquashfs =
        tools::require_program("mksquashfs", "install Debian's squashfs-tools package")?;
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(MicrovmError::io(format!("create {}", parent.display())))?;
    let staged = parent.join(format!(".staged-{}.sqfs", std::process::id()));
    let mut command = Command::new(mksquashfs);
    command
        .arg(dir)
        .arg(&staged)
        .args(["-noappend", "-comp", "zstd", "-quiet", "-no-progress"]);
    // Files an unprivileged user packs are theirs on the host; inside the VM they belong
    // to root, as in a container image.
    if !rustix::process::geteuid().is_root() {
        command.arg("-all-root");
    }
    let packed = run_build(&format!("packing {}", dir.display()), &mut command)
        .and_then(|()| publish(&staged, out));
    if packed.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    packed
}

/// A hash of a directory tree's names, types, modes, owners, sizes, modification times
/// and link targets: any edit changes it, without reading every file's content.
fn tree_hash(dir: &Path) -> Result<String, MicrovmError> {
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    entries.sort();
    Ok(short_hash(entries.iter().map(|e| e.as_bytes())))
}

fn walk(root: &Path, relative: &Path, out: &mut Vec<String>) -> Result<(), MicrovmError> {
    let dir = root.join(relative);
    let read =
        std::fs::read_dir(&dir).map_err(MicrovmError::io(format!("read {}", dir.display())))?;
    for entry in read {
        let entry = entry.map_err(MicrovmError::io(format!("read {}", dir.display())))?;
        let path = relative.join(entry.file_name());
        let meta = entry.metadata().map_err(MicrovmError::io(format!(
            "stat {}",
            root.join(&path).display()
        )))?;
        let target = if meta.file_type().is_symlink() {
            std::fs::read_link(root.join(&path))
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        out.push(format!(
            "{}\0{:o}\0{}:{}\0{}\0{}.{}\0{target}",
            path.display(),
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
        if meta.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_map_to_sources() {
        assert_eq!(
            BaseSource::from_image(&ImageRef::Oci(MICROVM_BASE_IMAGE.into())).unwrap(),
            BaseSource::Debian
        );
        assert_eq!(
            BaseSource::from_image(&ImageRef::Directory("/srv/root".into())).unwrap(),
            BaseSource::Directory("/srv/root".into())
        );
        let error = BaseSource::from_image(&ImageRef::Oci("python:3.12-alpine".into()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("python:3.12-alpine"), "{error}");
        assert!(BaseSource::from_image(&ImageRef::Host).is_err());
    }

    #[test]
    fn a_directory_edit_changes_its_cache_entry() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(tree.path().join("a"), "one").unwrap();
        let cache = Path::new("/cache");
        let source = BaseSource::Directory(tree.path().into());
        let before = source.cached_path(cache).unwrap();
        assert_eq!(before, source.cached_path(cache).unwrap(), "stable");
        std::fs::create_dir(tree.path().join("sub")).unwrap();
        std::fs::write(tree.path().join("sub/b"), "two").unwrap();
        let after = source.cached_path(cache).unwrap();
        assert_ne!(before, after);
        std::fs::write(tree.path().join("sub/b"), "three").unwrap();
        assert_ne!(
            after,
            source.cached_path(cache).unwrap(),
            "a size change counts"
        );
    }
}
