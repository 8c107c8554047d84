//! Base images: the sandbox's image as a read-only ext4 disk, cached by a hash of its
//! content. The default is a Debian minimal root built with `debootstrap`; a directory
//! works too (its tree is hashed, so an edited directory is rebuilt).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ak_core::image::MICROVM_BASE_IMAGE;
use ak_core::{ImageRef, StoredImage};

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
    /// A container image, exported through a container engine (see
    /// [`crate::ImageExporter`]) and cached by the image's content id.
    Container(String),
    /// An image of the local image store: its layers merged (see [`super::layers`]),
    /// cached by its manifest's digest. No container engine involved.
    Stored(Box<StoredImage>),
}

impl BaseSource {
    pub fn from_image(image: &ImageRef) -> Result<BaseSource, MicrovmError> {
        match image {
            ImageRef::Oci(name) if name == MICROVM_BASE_IMAGE => Ok(BaseSource::Debian),
            ImageRef::Directory(path) => Ok(BaseSource::Directory(path.clone())),
            ImageRef::Oci(name) => Ok(BaseSource::Container(name.clone())),
            ImageRef::Stored(stored) => Ok(BaseSource::Stored(Box::new(stored.clone()))),
            ImageRef::Host | ImageRef::Auto => Err(MicrovmError::Unsupported(format!(
                "image {image}: a VM cannot boot the host's root; use {MICROVM_BASE_IMAGE} or a root file system directory"
            ))),
        }
    }

    /// The cache file this source's image lives in (whether built or not).
    pub fn cached_path(&self, cache: &Path) -> Result<PathBuf, MicrovmError> {
        let name = match self {
            BaseSource::Debian => format!(
                "{MICROVM_BASE_IMAGE}-{}.ext4",
                short_hash([
                    b"debootstrap --variant=minbase".as_slice(),
                    DEBIAN_SUITE.as_bytes()
                ])
            ),
            BaseSource::Directory(dir) => format!("dir-{}.ext4", tree_hash(dir)?),
            BaseSource::Stored(image) => format!(
                "store-{}.ext4",
                short_hash([image.digest.as_bytes(), &image.id_base.to_le_bytes()])
            ),
            BaseSource::Container(name) => {
                return Err(MicrovmError::Artifact(format!(
                    "the container image {name} is found by its id: see container_path"
                )));
            }
        };
        Ok(images(cache).join(name))
    }
}

fn images(cache: &Path) -> PathBuf {
    cache.join("images")
}

/// The cache file of the container image whose content id is `id`.
pub fn container_path(cache: &Path, id: &str) -> PathBuf {
    images(cache).join(format!("oci-{}.ext4", short_hash([id.as_bytes()])))
}

/// A fresh directory to export a container image into (beside the cache entries, so the
/// packed result is renamed, never copied, into place).
pub fn export_staging(cache: &Path) -> Result<PathBuf, MicrovmError> {
    let dir = images(cache).join(format!(
        ".export-{}-{}",
        std::process::id(),
        short_hash([format!("{:?}", std::time::SystemTime::now()).as_bytes()])
    ));
    std::fs::create_dir_all(&dir).map_err(MicrovmError::io(format!("create {}", dir.display())))?;
    Ok(dir)
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
            pack(dir, &path)?;
            Ok(path)
        }
        BaseSource::Stored(image) => {
            pack_stored(cache, image, &path)?;
            Ok(path)
        }
        BaseSource::Container(_) => exported_on_first_use(),
    }
}

/// Merges a stored image's layers into a staging tree and packs it into `out`.
fn pack_stored(cache: &Path, image: &StoredImage, out: &Path) -> Result<(), MicrovmError> {
    let staging = export_staging(cache)?;
    // Owners are set back to the image's own only where this process may set owners.
    let id_base = rustix::process::geteuid()
        .is_root()
        .then_some(image.id_base);
    let packed =
        super::layers::merge(&image.layers, &staging, id_base).and_then(|()| pack(&staging, out));
    if let Err(e) = std::fs::remove_dir_all(&staging) {
        tracing::warn!("cannot remove {}: {e}", staging.display());
    }
    packed.map_err(|e| MicrovmError::Build {
        what: format!("the disk of image {}", image.reference),
        detail: e.to_string(),
    })
}

fn exported_on_first_use() -> Result<PathBuf, MicrovmError> {
    Err(MicrovmError::Artifact(
        "container images are exported by the backend on first use, not here".into(),
    ))
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
            pack(dir, &path)?;
        }
        BaseSource::Container(_) => return exported_on_first_use(),
        BaseSource::Stored(image) => {
            progress(&Progress {
                message: format!("packing image {} into an ext4 image", image.reference),
                position: 0,
                length: None,
            });
            pack_stored(cache, image, &path)?;
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
                    message: format!("packing {MICROVM_BASE_IMAGE} into an ext4 image"),
                    position: 0,
                    length: None,
                });
                pack(&staging, &path)
            });
            if let Err(e) = std::fs::remove_dir_all(&staging) {
                tracing::warn!("cannot remove {}: {e}", staging.display());
            }
            built?;
        }
    }
    Ok(path)
}

/// Packs `dir` into an ext4 file system image `out` (through a staged name).
///
/// Uncompressed on purpose: under emulation, decompressing squashfs (zstd) made the
/// guest's boot 9% and its first command 100 ms slower (measured: docs/benchmarks.md);
/// the file is sparse, so its disk cost is close to the tree's.
pub(crate) fn pack(dir: &Path, out: &Path) -> Result<(), MicrovmError> {
    let mkfs = tools::require_program("mkfs.ext4", "install Debian's e2fsprogs package")?;
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(MicrovmError::io(format!("create {}", parent.display())))?;
    let (bytes, entries) = tree_size(dir)?;
    // Room for metadata and block rounding: a quarter more, plus 64 MiB.
    let size = (bytes + bytes / 4 + (64 << 20)).next_multiple_of(1 << 20);
    let inodes = entries + entries / 4 + 1024;
    let staged = parent.join(format!(".staged-{}.ext4", std::process::id()));
    let packed = std::fs::File::create(&staged)
        .and_then(|file| file.set_len(size))
        .map_err(MicrovmError::io(format!("create {}", staged.display())))
        .and_then(|()| {
            run_build(
                &format!("packing {}", dir.display()),
                Command::new(mkfs)
                    .args([
                        "-q",
                        "-F",
                        "-m",
                        "0",
                        "-O",
                        "^has_journal",
                        "-L",
                        "agentkernel",
                    ])
                    .arg("-N")
                    .arg(inodes.to_string())
                    .arg("-d")
                    .arg(dir)
                    .arg(&staged),
            )
        })
        .and_then(|()| publish(&staged, out));
    if packed.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    packed
}

/// The bytes (in whole 4 KiB blocks) and entries of a tree.
fn tree_size(dir: &Path) -> Result<(u64, u64), MicrovmError> {
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    let bytes = entries.iter().map(|e| e.size.next_multiple_of(4096)).sum();
    Ok((bytes, entries.len() as u64))
}

/// A hash of a directory tree's names, types, modes, owners, sizes, modification times
/// and link targets: any edit changes it, without reading every file's content.
fn tree_hash(dir: &Path) -> Result<String, MicrovmError> {
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    let mut lines: Vec<String> = entries.into_iter().map(|e| e.line).collect();
    lines.sort();
    Ok(short_hash(lines.iter().map(|l| l.as_bytes())))
}

/// One entry of a tree: what the hash covers, and its size.
struct TreeEntry {
    line: String,
    size: u64,
}

fn walk(root: &Path, relative: &Path, out: &mut Vec<TreeEntry>) -> Result<(), MicrovmError> {
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
        out.push(TreeEntry {
            line: format!(
                "{}\0{:o}\0{}:{}\0{}\0{}.{}\0{target}",
                path.display(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec()
            ),
            size: meta.size(),
        });
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
        assert_eq!(
            BaseSource::from_image(&ImageRef::Oci("python:3.12-alpine".into())).unwrap(),
            BaseSource::Container("python:3.12-alpine".into())
        );
        assert_ne!(
            container_path(Path::new("/c"), "sha256:aa"),
            container_path(Path::new("/c"), "sha256:ab")
        );
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
