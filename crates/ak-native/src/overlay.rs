//! The root of a sandbox whose image is a stack of unpacked OCI layers: an overlayfs with
//! the layers as read-only lower directories and a writable upper directory of its own,
//! mounted by the child inside its user namespace (`userxattr`, so no host privilege is
//! involved). What the parent prepares here: where the writable layer lives, the mount
//! step's strings, and a look at the merged tree (without mounting it) so that no step of
//! the plan follows a symlink the image put on its way.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use ak_core::SandboxSpec;
use ak_core::image::MOUNT_DATA_MAX;
use rustix::fs::{Mode, OFlags};

use crate::error::NativeError;
use crate::plan::cstring;

/// Where a sandbox's writable layer (the overlay's upper and work directories) lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WritableLayer {
    /// A tmpfs the child mounts at `dir`, as large as the sandbox's memory limit and charged
    /// to its cgroup, as the root tmpfs of a host-image sandbox is; gone with the sandbox.
    Tmpfs { dir: PathBuf, size: u64 },
    /// The on-disk root directory the service gave a named sandbox (`SandboxSpec::root_dir`):
    /// kept across stops and copied by snapshots, as a tree-image sandbox's root is.
    Disk { dir: PathBuf },
}

impl WritableLayer {
    /// The one choice of where a sandbox's writes to its image go: the root directory the
    /// service gave it when it has one (named sandboxes), else memory.
    pub(crate) fn for_sandbox(spec: &SandboxSpec, rundir: &Path) -> WritableLayer {
        match &spec.root_dir {
            Some(dir) => WritableLayer::Disk { dir: dir.clone() },
            None => WritableLayer::Tmpfs {
                dir: rundir.join("layer"),
                size: spec.resources.memory_bytes,
            },
        }
    }

    /// Makes what the host side of the writable layer needs before the clone.
    pub(crate) fn prepare(&self) -> Result<(), NativeError> {
        match self {
            // The child mounts the tmpfs here; only its mount namespace sees it.
            WritableLayer::Tmpfs { dir, .. } => std::fs::create_dir(dir)
                .map_err(NativeError::io(format!("create {}", dir.display()))),
            // The service made it, owned by the sandbox's root.
            WritableLayer::Disk { .. } => Ok(()),
        }
    }

    fn dir(&self) -> &Path {
        match self {
            WritableLayer::Tmpfs { dir, .. } | WritableLayer::Disk { dir } => dir,
        }
    }

    pub(crate) fn upper(&self) -> PathBuf {
        self.dir().join("upper")
    }

    pub(crate) fn work(&self) -> PathBuf {
        self.dir().join("work")
    }
}

/// The layers of a stored image and the writable layer above them.
#[derive(Debug)]
pub(crate) struct LayeredRoot {
    /// Lowest first, as the store lists them.
    pub layers: Vec<PathBuf>,
    /// Each layer opened (`O_PATH`) by the parent, which reserves the descriptor numbers:
    /// the child reopens each at its number in its own mount namespace and names them as
    /// `/proc/self/fd/N`, since it could not walk the store's private (0700) directory
    /// as the sandbox's root, which is no one on the host.
    handles: Vec<OwnedFd>,
    pub writable: WritableLayer,
}

impl LayeredRoot {
    pub(crate) fn open(
        layers: &[PathBuf],
        writable: WritableLayer,
    ) -> Result<LayeredRoot, NativeError> {
        let handles = layers
            .iter()
            .map(|layer| {
                rustix::fs::open(
                    layer,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| {
                    NativeError::io(format!("open the image layer {}", layer.display()))(e.into())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LayeredRoot {
            layers: layers.to_vec(),
            handles,
            writable,
        })
    }

    /// Each layer's path and the descriptor the child reopens it at.
    pub(crate) fn reopen(&self) -> Result<Vec<(CString, RawFd)>, NativeError> {
        self.layers
            .iter()
            .zip(&self.handles)
            .map(|(path, fd)| Ok((cstring(path.as_os_str().as_bytes())?, fd.as_raw_fd())))
            .collect()
    }

    /// The layers as the child names them, top first (the order overlayfs takes them in).
    fn lower_paths(&self) -> Vec<PathBuf> {
        self.handles
            .iter()
            .rev()
            .map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
            .collect()
    }
}

/// The overlay mount step's prepared strings.
#[derive(Debug)]
pub(crate) struct OverlayMount {
    pub target: CString,
    /// Lower directories top first, the order `lowerdir+` takes them in.
    pub lowers: Vec<CString>,
    pub upper: CString,
    pub work: CString,
    /// The same mount as one `mount(2)` data string, for kernels before 6.8 that lack
    /// `lowerdir+`; `None` when it would not fit in a page (too many layers).
    pub legacy_data: Option<CString>,
}

impl OverlayMount {
    pub(crate) fn new(root: &LayeredRoot, target: &Path) -> Result<OverlayMount, NativeError> {
        if root.layers.is_empty() {
            return Err(NativeError::InvalidSpec(
                "the stored image has no layers".into(),
            ));
        }
        let bytes = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let lower_paths = root.lower_paths();
        let lowers = lower_paths
            .iter()
            .map(|l| cstring(bytes(l)))
            .collect::<Result<Vec<_>, _>>()?;
        let upper = root.writable.upper();
        let work = root.writable.work();
        let lower_refs: Vec<&Path> = lower_paths.iter().map(PathBuf::as_path).collect();
        let data = ak_core::image::overlay_mount_data(&lower_refs, &upper, &work, "userxattr");
        let legacy_data = if data.len() <= MOUNT_DATA_MAX {
            Some(cstring(data)?)
        } else {
            None
        };
        Ok(OverlayMount {
            target: cstring(bytes(target))?,
            lowers,
            upper: cstring(bytes(&upper))?,
            work: cstring(bytes(&work))?,
            legacy_data,
        })
    }
}

/// What a path is in the merged view of the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merged {
    Missing,
    Dir,
    Symlink,
    Other,
}

/// Looks paths up in the merged view of a layer stack the way overlayfs will resolve them
/// (top layer first, whiteouts hide, opaque directories end the descent), without
/// following any symlink. The planner asks it about every path it creates or mounts on:
/// before `pivot_root` a symlink in the image would be followed on the host.
#[derive(Debug)]
pub(crate) struct MergedView<'a> {
    /// Top first.
    layers: Vec<&'a Path>,
    known: HashMap<PathBuf, Merged>,
}

impl<'a> MergedView<'a> {
    pub(crate) fn new(layers: &'a [PathBuf]) -> Self {
        MergedView {
            layers: layers.iter().rev().map(PathBuf::as_path).collect(),
            known: HashMap::new(),
        }
    }

    /// The first component of `path` (absolute, inside the sandbox) that is not a
    /// directory, and what it is; `None` when every component is a directory.
    pub(crate) fn first_non_dir(&mut self, path: &Path) -> Option<(PathBuf, Merged)> {
        let mut live: Vec<&Path> = self.layers.clone();
        let mut current = PathBuf::from("/");
        for component in path.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            current.push(name);
            let (kind, next) = self.step(&live, &current);
            self.known.insert(current.clone(), kind);
            if kind != Merged::Dir {
                return Some((current, kind));
            }
            live = next;
        }
        None
    }

    /// What `path` is, given the layers in which its parent is a directory (top first),
    /// and the layers in which it is one in turn.
    fn step<'l>(&self, live: &[&'l Path], path: &Path) -> (Merged, Vec<&'l Path>) {
        let relative = path.strip_prefix("/").unwrap_or(path);
        let mut kind = None;
        let mut dirs = Vec::new();
        for layer in live {
            let Ok(meta) = std::fs::symlink_metadata(layer.join(relative)) else {
                continue;
            };
            let file_type = meta.file_type();
            let this = if file_type.is_char_device() && meta.rdev() == 0 {
                // A whiteout: nothing of this name below.
                Merged::Missing
            } else if file_type.is_symlink() {
                Merged::Symlink
            } else if file_type.is_dir() {
                Merged::Dir
            } else {
                Merged::Other
            };
            if kind.is_none() {
                kind = Some(this);
            }
            if this != Merged::Dir || kind != Some(Merged::Dir) {
                break;
            }
            dirs.push(*layer);
            if is_opaque(&layer.join(relative)) {
                break;
            }
        }
        (kind.unwrap_or(Merged::Missing), dirs)
    }
}

/// Whether overlayfs, mounted with `userxattr`, treats `dir` as opaque.
fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 2];
    matches!(
        rustix::fs::lgetxattr(dir, "user.overlay.opaque", &mut value),
        Ok(1) if value[0] == b'y'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_merged_view_sees_symlinks_whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let low = layer(tmp.path(), "low");
        let high = layer(tmp.path(), "high");
        std::fs::create_dir_all(low.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/etc", low.join("usr/lib/evil")).unwrap();
        std::os::unix::fs::symlink("/etc", low.join("app")).unwrap();
        std::fs::create_dir_all(low.join("data/deep")).unwrap();
        std::fs::create_dir_all(high.join("usr")).unwrap();
        // `app` is a directory in the upper layer: the lower symlink is covered.
        std::fs::create_dir_all(high.join("app")).unwrap();
        std::fs::create_dir_all(high.join("data")).unwrap();
        let layers = vec![low.clone(), high.clone()];
        let mut view = MergedView::new(&layers);
        assert_eq!(view.first_non_dir(Path::new("/usr/lib")), None);
        assert_eq!(
            view.first_non_dir(Path::new("/usr/lib/evil/x")),
            Some((PathBuf::from("/usr/lib/evil"), Merged::Symlink))
        );
        assert_eq!(
            view.first_non_dir(Path::new("/app/x")).unwrap().1,
            Merged::Missing
        );
        assert_eq!(view.first_non_dir(Path::new("/data/deep")), None);
        // Opaque: the lower layer's `data/deep` is hidden.
        rustix::fs::lsetxattr(
            high.join("data"),
            "user.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let mut view = MergedView::new(&layers);
        assert_eq!(
            view.first_non_dir(Path::new("/data/deep")),
            Some((PathBuf::from("/data/deep"), Merged::Missing))
        );
    }

    #[test]
    fn the_legacy_string_is_dropped_when_it_does_not_fit_a_page() {
        let tmp = tempfile::tempdir().unwrap();
        let layers: Vec<PathBuf> = (0..300)
            .map(|i| {
                let dir = tmp.path().join(i.to_string());
                std::fs::create_dir(&dir).unwrap();
                dir
            })
            .collect();
        let writable = || WritableLayer::Tmpfs {
            dir: "/run/x/layer".into(),
            size: 1,
        };
        let root = LayeredRoot::open(&layers, writable()).unwrap();
        let mount = OverlayMount::new(&root, Path::new("/run/x/root")).unwrap();
        assert!(mount.legacy_data.is_none());
        assert_eq!(mount.lowers.len(), 300);
        // Top first: the last layer opened is the first lower.
        let last = root.handles.last().unwrap().as_raw_fd();
        assert_eq!(
            mount.lowers[0].to_str().unwrap(),
            format!("/proc/self/fd/{last}")
        );
        let few = LayeredRoot::open(&layers[..2], writable()).unwrap();
        let data = OverlayMount::new(&few, Path::new("/r"))
            .unwrap()
            .legacy_data
            .unwrap();
        let data = data.to_str().unwrap();
        let (top, bottom) = (few.handles[1].as_raw_fd(), few.handles[0].as_raw_fd());
        assert_eq!(
            data,
            format!(
                "lowerdir=/proc/self/fd/{top}:/proc/self/fd/{bottom},upperdir=/run/x/layer/upper,workdir=/run/x/layer/work,userxattr"
            )
        );
    }
}
