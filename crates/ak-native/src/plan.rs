//! The set-up steps of one sandbox, prepared in the parent. The child that runs them shares
//! the memory of a possibly multi-threaded process (`clone3` with `CLONE_VM`, see
//! spawn.rs), where allocating would use the parent thread's allocator state at the same
//! time as the parent; so every string, path and pointer array is built here and the child
//! only reads them.

use std::ffi::{CString, OsStr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ak_core::{ImageRef, SandboxSpec};

use crate::error::NativeError;
use crate::overlay::{LayeredRoot, Merged, MergedView, OverlayMount};

/// Writable directories of every sandbox, with their modes. They live in the sandbox's
/// root tmpfs (private, memory-accounted, as large as the memory limit) rather than in
/// tmpfs mounts of their own: every mount costs tens of microseconds at each start.
pub(crate) use ak_core::host_image::SCRATCH_DIRS;
use ak_core::host_image::{
    HIDDEN_DIRS as HOST_HIDDEN_DIRS, HIDDEN_FILES as HOST_HIDDEN_FILES,
    TOP_LEVEL_REPLACED as HOST_TOP_LEVEL_REPLACED,
};

/// Host devices made available in the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Kernel interfaces in `/proc` the sandbox has no business reading.
const PROC_HIDDEN_FILES: &[&str] = &["kcore", "keys", "timer_list", "sysrq-trigger", "kallsyms"];

/// Which of the places the plan hides exist here: checked once per process rather than
/// with some twenty `stat` calls at every sandbox start.
#[derive(Debug, Clone)]
pub(crate) struct HiddenPaths {
    dirs: Vec<&'static str>,
    files: Vec<&'static str>,
    proc_files: Vec<&'static str>,
    proc_sys: bool,
}

impl HiddenPaths {
    pub(crate) fn detect() -> HiddenPaths {
        HiddenPaths {
            dirs: HOST_HIDDEN_DIRS
                .iter()
                .copied()
                .filter(|d| Path::new(d).is_dir())
                .collect(),
            files: HOST_HIDDEN_FILES
                .iter()
                .copied()
                .filter(|f| Path::new(f).exists())
                .collect(),
            proc_files: PROC_HIDDEN_FILES
                .iter()
                .copied()
                .filter(|f| Path::new("/proc").join(f).exists())
                .collect(),
            proc_sys: Path::new("/proc/sys").is_dir(),
        }
    }
}

/// `mount_setattr` attribute bits (`linux/mount.h`).
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
/// For [`Op::Bind`]: no `mount_setattr` call; the new mount keeps the source mount's
/// attributes.
pub(crate) const KEEP_ATTRS: u64 = 0;

/// One set-up step. Errors carry the step's index back to the parent, which describes it.
#[derive(Debug)]
pub(crate) enum Op {
    /// Create a directory; one that exists already is fine.
    Mkdir {
        path: CString,
        mode: u32,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// Create an empty file to mount over; one that exists already is fine.
    Touch {
        path: CString,
    },
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: CString,
    },
    /// Bind `source` over `target` (recursively), then apply `attrs` to the whole tree
    /// (none with [`KEEP_ATTRS`]).
    Bind {
        source: CString,
        target: CString,
        attrs: u64,
    },
    /// Mount an overlay of an image's layers (nosuid, nodev).
    Overlay(OverlayMount),
    /// Attach the detached mount open as `fd` (made by the parent) at `target`.
    MoveMount {
        fd: RawFd,
        target: CString,
    },
}

impl Op {
    pub(crate) fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Op::Mkdir { path, .. } => format!("create directory {}", s(path)),
            Op::Symlink { target, link } => format!("create symlink {} -> {}", s(link), s(target)),
            Op::Touch { path } => format!("create mount point {}", s(path)),
            Op::Mount { fstype, target, .. } => format!("mount {} on {}", s(fstype), s(target)),
            Op::Bind { source, target, .. } => format!("bind {} on {}", s(source), s(target)),
            Op::MoveMount { target, .. } => format!("attach a prepared mount on {}", s(target)),
            Op::Overlay(overlay) => format!(
                "mount the image's {} layers as an overlay on {}",
                overlay.lowers.len(),
                s(&overlay.target)
            ),
        }
    }
}

/// A directory entry at the top of an image, as the parent saw it.
#[derive(Debug, Clone)]
pub(crate) enum TopEntry {
    Dir(String),
    Symlink(String, PathBuf),
}

/// Lists the top level of an image root (directories and symlinks; files are skipped).
pub(crate) fn list_top_level(root: &Path) -> Result<Vec<TopEntry>, NativeError> {
    let io = |source| NativeError::Io {
        what: format!("list {}", root.display()),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry.file_type().map_err(io)?;
        if file_type.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(io)?;
            entries.push(TopEntry::Symlink(name, target));
        } else if file_type.is_dir() {
            entries.push(TopEntry::Dir(name));
        }
    }
    entries.sort_by(|a, b| top_name(a).cmp(top_name(b)));
    Ok(entries)
}

fn top_name(entry: &TopEntry) -> &str {
    match entry {
        TopEntry::Dir(name) | TopEntry::Symlink(name, _) => name,
    }
}

pub(crate) fn cstring(bytes: impl AsRef<[u8]>) -> Result<CString, NativeError> {
    CString::new(bytes.as_ref()).map_err(|_| {
        NativeError::InvalidSpec(format!(
            "path contains a NUL byte: {}",
            String::from_utf8_lossy(bytes.as_ref())
        ))
    })
}

fn path_c(path: &Path) -> Result<CString, NativeError> {
    cstring(path.as_os_str().as_bytes())
}

/// What a sandbox's root is assembled from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RootSource<'a> {
    /// A directory tree (the host's root, or a directory image), bound read-only into a
    /// root tmpfs entry by entry.
    Tree {
        image_root: &'a Path,
        top: &'a [TopEntry],
    },
    /// A stored OCI image: its layers under a writable overlay.
    Layers(&'a LayeredRoot),
}

/// Builds the mount steps that assemble the sandbox root under `new_root`.
#[derive(Debug)]
pub(crate) struct MountPlanner<'a> {
    new_root: &'a Path,
    ops: Vec<Op>,
    /// Directories already planned, so that each is created once.
    made: std::collections::HashSet<PathBuf>,
    /// For an overlay root: the image's tree, asked about every path the plan touches
    /// before the mount on it is ours.
    image: Option<MergedView<'a>>,
    /// Places (inside the sandbox) where the plan mounts something of its own: beneath
    /// them nothing comes from the image.
    ours: Vec<PathBuf>,
}

impl<'a> MountPlanner<'a> {
    pub(crate) fn new(new_root: &'a Path) -> Self {
        MountPlanner {
            new_root,
            ops: Vec::new(),
            made: std::collections::HashSet::new(),
            image: None,
            ours: Vec::new(),
        }
    }

    /// `path` (absolute, inside the sandbox) as a host path under the new root.
    fn inside(&self, path: &str) -> PathBuf {
        self.new_root.join(path.trim_start_matches('/'))
    }

    /// The whole plan for `spec`, whose root is assembled from `source`.
    pub(crate) fn build(
        mut self,
        spec: &SandboxSpec,
        source: RootSource<'a>,
        resolv_conf: Option<&Path>,
        secrets: Option<&ak_egress::provision::SecretFiles>,
        hidden: &HiddenPaths,
        sysfs: Option<RawFd>,
    ) -> Result<Vec<Op>, NativeError> {
        let host_image = matches!(spec.image, ImageRef::Host | ImageRef::Auto);
        let ro = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

        match source {
            RootSource::Tree { image_root, top } => {
                self.plan_tree_root(spec, image_root, top, host_image)?
            }
            RootSource::Layers(layered) => self.plan_overlay_root(layered)?,
        }

        if host_image {
            // One empty read-only tmpfs, bound over the other hidden directories: a bind
            // keeps the source mount's read-only, nosuid and nodev, and costs less than a
            // new tmpfs superblock at start and at teardown (2.9 against 7.5 µs to mount).
            if let Some((first, rest)) = hidden.dirs.split_first() {
                let empty = self.inside(first);
                self.mount(
                    "tmpfs",
                    empty.clone(),
                    "tmpfs",
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY,
                    "mode=0755,size=4k",
                )?;
                for dir in rest {
                    self.bind(&empty.to_string_lossy(), self.inside(dir), KEEP_ATTRS)?;
                }
            }
            for file in &hidden.files {
                // Not nodev: the mask is the /dev/null device itself.
                self.bind(
                    "/dev/null",
                    self.inside(file),
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
                )?;
            }
        }

        // With outbound network the resolver is the helper's, whatever the image says. A
        // resolv.conf that is a symlink (systemd-resolved) cannot be bound over safely.
        if let Some(resolv_conf) = resolv_conf {
            self.plan_file_over(source, "/etc/resolv.conf", resolv_conf, true)?;
        }
        // The secrets directory (the sandbox CA, its bundle, secret files), read-only; the
        // bundle also over the image's system bundle, where it has one.
        if let Some(secrets) = secrets {
            let target = ak_core::secrets::RUN_DIR;
            self.ensure_dir(target)?;
            self.claim(&self.inside(target));
            self.ops.push(Op::Bind {
                source: path_c(&secrets.dir)?,
                target: path_c(&self.inside(target))?,
                attrs: ro,
            });
            self.plan_file_over(
                source,
                ak_core::secrets::SYSTEM_BUNDLE,
                &secrets.bundle,
                false,
            )?;
        }

        self.plan_dev()?;
        self.plan_proc(hidden)?;
        self.ensure_dir("/sys")?;
        match sysfs {
            // Made read-only by the parent for a network namespace made ahead, which the
            // sandbox may not mount one for (see netns.rs).
            Some(fd) => self.attach(fd, self.inside("/sys"))?,
            None => self.mount(
                "sysfs",
                self.inside("/sys"),
                "sysfs",
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                "",
            )?,
        }

        // User mounts, then the default workdir unless a mount already provides it.
        for mount in &spec.mounts {
            let target = mount.target.to_string_lossy().into_owned();
            self.ensure_dir(&target)?;
            let attrs = if mount.writable {
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
            } else {
                ro
            };
            self.claim(&self.inside(&target));
            self.ops.push(Op::Bind {
                source: path_c(&mount.host)?,
                target: path_c(&self.inside(&target))?,
                attrs,
            });
        }
        // The workdir is created in the root tmpfs (or a scratch directory) unless an image
        // directory or a mount provides it; creating it inside a read-only image fails.
        self.ensure_dir(&spec.workdir.to_string_lossy())?;
        Ok(self.ops)
    }

    /// The root of a tree image: a private tmpfs holding the mount points and the scratch
    /// directories; everything that comes from the image is mounted read-only onto it.
    fn plan_tree_root(
        &mut self,
        spec: &SandboxSpec,
        image_root: &Path,
        top: &[TopEntry],
        host_image: bool,
    ) -> Result<(), NativeError> {
        let ro = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        // A named sandbox's root is the on-disk directory the service gave it (kept across
        // stops, copied by snapshots), any other's a private tmpfs.
        match &spec.root_dir {
            Some(dir) => self.ops.push(Op::Bind {
                source: path_c(dir)?,
                target: path_c(self.new_root)?,
                attrs: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            }),
            None => {
                let root_data = format!("mode=0755,size={}", spec.resources.memory_bytes);
                self.mount(
                    "tmpfs",
                    self.new_root.to_path_buf(),
                    "tmpfs",
                    libc::MS_NOSUID | libc::MS_NODEV,
                    &root_data,
                )?;
            }
        }

        for (dir, mode) in SCRATCH_DIRS {
            self.mkdir(self.inside(dir), *mode)?;
        }
        for entry in top {
            match entry {
                TopEntry::Symlink(name, target) => self.ops.push(Op::Symlink {
                    target: path_c(target)?,
                    link: path_c(&self.inside(name))?,
                }),
                TopEntry::Dir(name) => {
                    let target = self.inside(name);
                    self.mkdir(target.clone(), 0o755)?;
                    if host_image && HOST_TOP_LEVEL_REPLACED.contains(&name.as_str()) {
                        continue;
                    }
                    if !host_image && ["proc", "sys", "dev", "tmp", "run"].contains(&name.as_str())
                    {
                        continue;
                    }
                    let attrs = if spec.policy.read_only_root {
                        ro
                    } else {
                        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
                    };
                    self.ops.push(Op::Bind {
                        source: path_c(&image_root.join(name))?,
                        target: path_c(&target)?,
                        attrs,
                    });
                }
            }
        }
        Ok(())
    }

    /// The root of a stored image: its layers under the sandbox's writable layer. The
    /// image's files are as writable as a container's (copied up on write; the layers
    /// never change); landlock decides what the sandbox may write, as for a tree root.
    fn plan_overlay_root(&mut self, layered: &'a LayeredRoot) -> Result<(), NativeError> {
        match &layered.writable {
            crate::overlay::WritableLayer::Tmpfs { dir, size } => {
                self.mount(
                    "tmpfs",
                    dir.clone(),
                    "tmpfs",
                    libc::MS_NOSUID | libc::MS_NODEV,
                    &format!("mode=0755,size={size}"),
                )?;
            }
            crate::overlay::WritableLayer::Disk { .. } => {}
        }
        self.mkdir(layered.writable.upper(), 0o755)?;
        self.mkdir(layered.writable.work(), 0o755)?;
        self.ops
            .push(Op::Overlay(OverlayMount::new(layered, self.new_root)?));
        self.image = Some(MergedView::new(&layered.layers));
        // The scratch directories an image lacks are made in its writable layer; those it
        // has keep their modes.
        for (dir, mode) in SCRATCH_DIRS {
            self.mkdir(self.inside(dir), *mode)?;
        }
        Ok(())
    }

    /// Binds the host file `file` read-only over the image's `path` (absolute, inside the
    /// sandbox) when that is a regular file; a missing one is created first only when
    /// `create` says so. A symlink (systemd-resolved's resolv.conf, a bundle linked
    /// elsewhere) cannot be bound over safely and is left as it is.
    fn plan_file_over(
        &mut self,
        source: RootSource<'_>,
        path: &str,
        file: &Path,
        create: bool,
    ) -> Result<(), NativeError> {
        let target = self.inside(path);
        let parent = Path::new(path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        let bindable = match source {
            RootSource::Tree { image_root, .. } => image_root
                .join(path.trim_start_matches('/'))
                .symlink_metadata()
                .is_ok_and(|m| m.is_file()),
            RootSource::Layers(_) => match self.merged_kind(path) {
                Merged::Other => {
                    self.ensure_dir(&parent)?;
                    true
                }
                Merged::Missing if create => {
                    self.ensure_dir(&parent)?;
                    self.ops.push(Op::Touch {
                        path: path_c(&target)?,
                    });
                    true
                }
                Merged::Missing | Merged::Dir | Merged::Symlink => false,
            },
        };
        if bindable {
            self.ops.push(Op::Bind {
                source: path_c(file)?,
                target: path_c(&target)?,
                attrs: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            });
        } else {
            tracing::warn!("the image's {path} is not a regular file: the sandbox uses it as is");
        }
        Ok(())
    }

    /// What `path` (inside the sandbox, its parent a directory) is in the image's tree.
    fn merged_kind(&mut self, path: &str) -> Merged {
        match self.image.as_mut() {
            None => Merged::Missing,
            Some(view) => match view.first_non_dir(Path::new(path)) {
                None => Merged::Dir,
                Some((found, kind)) if found == Path::new(path) => kind,
                Some(_) => Merged::Missing,
            },
        }
    }

    /// Refuses a directory to be made or mounted on at `target` (a host path) when the
    /// image puts a symlink or a file on its way: before `pivot_root` the kernel would
    /// follow the symlink on the host.
    fn guard(&mut self, target: &Path) -> Result<(), NativeError> {
        let Some(view) = self.image.as_mut() else {
            return Ok(());
        };
        let Ok(inside) = target.strip_prefix(self.new_root) else {
            return Ok(());
        };
        let inside = Path::new("/").join(inside);
        if self.ours.iter().any(|mount| inside.starts_with(mount)) {
            return Ok(());
        }
        match view.first_non_dir(&inside) {
            Some((found, Merged::Symlink)) => Err(NativeError::InvalidSpec(format!(
                "the image's {} is a symlink, so {} cannot be made or mounted on",
                found.display(),
                inside.display()
            ))),
            Some((found, Merged::Other)) => Err(NativeError::InvalidSpec(format!(
                "the image's {} is not a directory, so {} cannot be made or mounted on",
                found.display(),
                inside.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Notes that a mount of ours covers `target` (a host path under the new root).
    fn claim(&mut self, target: &Path) {
        if self.image.is_none() {
            return;
        }
        if let Ok(inside) = target.strip_prefix(self.new_root)
            && !inside.as_os_str().is_empty()
        {
            self.ours.push(Path::new("/").join(inside));
        }
    }

    fn plan_dev(&mut self) -> Result<(), NativeError> {
        self.ensure_dir("/dev")?;
        self.mount(
            "tmpfs",
            self.inside("/dev"),
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0755,size=64k",
        )?;
        for device in DEVICES {
            let target = self.inside(&format!("/dev/{device}"));
            self.ops.push(Op::Touch {
                path: path_c(&target)?,
            });
            // A device node cannot be executed, so nosuid (the attribute set here before)
            // changed nothing and cost a system call per device.
            self.ops.push(Op::Bind {
                source: cstring(format!("/dev/{device}"))?,
                target: path_c(&target)?,
                attrs: KEEP_ATTRS,
            });
        }
        self.ensure_dir("/dev/pts")?;
        self.mount(
            "devpts",
            self.inside("/dev/pts"),
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
        )?;
        self.ensure_dir("/dev/shm")?;
        self.mount(
            "tmpfs",
            self.inside("/dev/shm"),
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777,size=64m",
        )?;
        for (link, target) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            self.ops.push(Op::Symlink {
                target: cstring(target)?,
                link: path_c(&self.inside(&format!("/dev/{link}")))?,
            });
        }
        Ok(())
    }

    fn plan_proc(&mut self, hidden: &HiddenPaths) -> Result<(), NativeError> {
        self.ensure_dir("/proc")?;
        self.mount(
            "proc",
            self.inside("/proc"),
            "proc",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        )?;
        for file in &hidden.proc_files {
            self.bind(
                "/dev/null",
                self.inside(&format!("/proc/{file}")),
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
            )?;
        }
        // Namespaced /proc/sys entries would be writable by the sandbox's root; none of
        // them should change from inside.
        if hidden.proc_sys {
            let target = self.inside("/proc/sys");
            self.ops.push(Op::Bind {
                source: path_c(&target)?,
                target: path_c(&target)?,
                attrs: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            });
        }
        Ok(())
    }

    fn mount(
        &mut self,
        source: &str,
        target: PathBuf,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> Result<(), NativeError> {
        self.guard(&target)?;
        self.claim(&target);
        self.ops.push(Op::Mount {
            source: cstring(source)?,
            target: path_c(&target)?,
            fstype: cstring(fstype)?,
            flags,
            data: cstring(data)?,
        });
        Ok(())
    }

    fn attach(&mut self, fd: RawFd, target: PathBuf) -> Result<(), NativeError> {
        self.guard(&target)?;
        self.claim(&target);
        self.ops.push(Op::MoveMount {
            fd,
            target: path_c(&target)?,
        });
        Ok(())
    }

    fn bind(&mut self, source: &str, target: PathBuf, attrs: u64) -> Result<(), NativeError> {
        self.guard(&target)?;
        self.claim(&target);
        self.ops.push(Op::Bind {
            source: cstring(source)?,
            target: path_c(&target)?,
            attrs,
        });
        Ok(())
    }

    /// Makes sure every component of `path` exists under the new root. Components that exist
    /// in a read-only bind are fine (mkdir reports EEXIST before EROFS); new ones can only be
    /// created inside tmpfs mounts, never on the host.
    fn ensure_dir(&mut self, path: &str) -> Result<(), NativeError> {
        let mut current = self.new_root.to_path_buf();
        for component in Path::new(path).components().skip(1) {
            current.push(component);
            self.mkdir(current.clone(), 0o755)?;
        }
        Ok(())
    }

    fn mkdir(&mut self, path: PathBuf, mode: u32) -> Result<(), NativeError> {
        if self.made.contains(&path) {
            return Ok(());
        }
        self.guard(&path)?;
        let op = Op::Mkdir {
            path: path_c(&path)?,
            mode,
        };
        if self.made.insert(path) {
            self.ops.push(op);
        }
        Ok(())
    }
}

/// `KEY=VALUE` C strings for `execve`.
pub(crate) fn env_block(env: &[(String, String)]) -> Result<Vec<CString>, NativeError> {
    env.iter()
        .map(|(k, v)| cstring(format!("{k}={v}")))
        .collect()
}

/// A NULL-terminated pointer array over `strings` (which must outlive it).
pub(crate) fn pointer_array(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Converts an OS string for the kernel.
pub(crate) fn os_cstring(value: &OsStr) -> Result<CString, NativeError> {
    cstring(value.as_bytes())
}
