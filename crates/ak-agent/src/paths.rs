//! Path validation and resolution inside the sandbox root, through `openat2(RESOLVE_IN_ROOT)`.
//!
//! Every path from the host is checked (not empty, no NUL, no `..`), made absolute against
//! the workdir, and then opened relative to a directory fd of the root with
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: the kernel resolves absolute symlinks and any
//! `..` inside symlink targets as if the root were `/`, so no symlink planted by a command
//! can lead a file operation outside the root, and `/proc/*/fd` style magic links are
//! refused outright.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use ak_protocol::{AgentError, ErrorKind};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// An absolute, normalised path inside the sandbox, without `.` or `..` components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SandboxPath {
    components: Vec<String>,
}

impl SandboxPath {
    /// The sandbox root itself.
    pub(crate) fn root() -> Self {
        SandboxPath {
            components: Vec::new(),
        }
    }

    /// Validates `request` and makes it absolute: relative paths start at `base`.
    pub(crate) fn parse(request: &str, base: &SandboxPath) -> Result<Self, AgentError> {
        if request.is_empty() {
            return Err(invalid("the path is empty".to_string()));
        }
        if request.contains('\0') {
            return Err(invalid(format!("path {request:?} contains a NUL byte")));
        }
        let mut components = if request.starts_with('/') {
            Vec::new()
        } else {
            base.components.clone()
        };
        for component in request.split('/') {
            match component {
                "" | "." => {}
                // Refused rather than normalised: `a/../b` is ambiguous once `a` is a
                // symlink, and no legitimate client needs it.
                ".." => {
                    return Err(invalid(format!(
                        "path {request:?} contains a `..` component, which is not allowed"
                    )));
                }
                name => components.push(name.to_string()),
            }
        }
        Ok(SandboxPath { components })
    }

    /// The last component; `None` for the root.
    pub(crate) fn name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }

    /// The directory that holds this path; the root is its own parent.
    pub(crate) fn parent(&self) -> SandboxPath {
        let mut components = self.components.clone();
        components.pop();
        SandboxPath { components }
    }

    /// The path below this one named `name` (a single component).
    pub(crate) fn join(&self, name: &str) -> SandboxPath {
        let mut components = self.components.clone();
        components.push(name.to_string());
        SandboxPath { components }
    }

    /// Every ancestor from the first component down to this path itself.
    pub(crate) fn prefixes(&self) -> impl Iterator<Item = SandboxPath> + '_ {
        (1..=self.components.len()).map(|len| SandboxPath {
            components: self.components[..len].to_vec(),
        })
    }

    /// The absolute path as text, for system calls and messages.
    pub(crate) fn display(&self) -> String {
        if self.components.is_empty() {
            return "/".to_string();
        }
        self.components
            .iter()
            .fold(String::new(), |path, component| path + "/" + component)
    }
}

fn invalid(message: String) -> AgentError {
    AgentError::new(ErrorKind::InvalidPath, message)
}

/// The directory every file operation is confined to, and the default working directory.
#[derive(Debug)]
pub(crate) struct Root {
    dir: OwnedFd,
    host_dir: PathBuf,
    workdir: SandboxPath,
}

/// How often a resolution is retried when the kernel reports a concurrent rename (`EAGAIN`).
const RESOLVE_RETRIES: usize = 8;

impl Root {
    /// Opens `host_dir` as the root. `workdir` is a path inside it; relative request paths
    /// start there.
    pub(crate) fn open(host_dir: &Path, workdir: &Path) -> std::io::Result<Root> {
        let dir = rustix::fs::open(
            host_dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let workdir = workdir.to_str().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("workdir {} is not valid UTF-8", workdir.display()),
            )
        })?;
        let workdir = SandboxPath::parse(workdir, &SandboxPath::root())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.message))?;
        Ok(Root {
            dir,
            host_dir: host_dir.to_path_buf(),
            workdir,
        })
    }

    /// Validates a path from the host and makes it absolute.
    pub(crate) fn resolve(&self, request: &str) -> Result<SandboxPath, AgentError> {
        SandboxPath::parse(request, &self.workdir)
    }

    /// Where `path` is for the agent itself (the root is `/` in a real sandbox, a test
    /// directory in tests). Used for an exec's working directory, which the kernel resolves.
    pub(crate) fn host_path(&self, path: &Path) -> PathBuf {
        let in_sandbox = Path::new(&self.workdir.display()).join(path);
        let relative = in_sandbox.strip_prefix("/").unwrap_or(&in_sandbox);
        self.host_dir.join(relative)
    }

    /// `openat2` of `path` confined to the root. The final component is followed when it
    /// is a symlink (also confined), unless `flags` has `NOFOLLOW`.
    pub(crate) fn open_at(
        &self,
        path: &SandboxPath,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, Errno> {
        let text = path.display();
        let mut attempts = 0;
        loop {
            match rustix::fs::openat2(
                self.dir.as_fd(),
                text.as_str(),
                flags | OFlags::CLOEXEC,
                mode,
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                // The kernel asks for a retry when a rename raced with the confined lookup.
                Err(Errno::AGAIN) if attempts < RESOLVE_RETRIES => attempts += 1,
                Err(Errno::INTR) => {}
                Err(Errno::NOSYS) if self.is_sandbox_root() => {
                    return open_without_openat2(&text, flags, mode);
                }
                other => return other,
            }
        }
    }

    /// Whether the root is the process's own `/` (a real sandbox, not a test directory).
    fn is_sandbox_root(&self) -> bool {
        self.host_dir == Path::new("/")
    }

    /// Opens the directory holding `path`, for `*at` calls on its last component. The
    /// last component itself is never followed by those calls, so a symlink there is
    /// handled as the link, not its target.
    pub(crate) fn open_parent(&self, path: &SandboxPath) -> Result<OwnedFd, Errno> {
        self.open_at(
            &path.parent(),
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
    }
}

/// `open` of absolute `path` for kernels without `openat2` (gVisor's): when the root is
/// the process's own `/`, the kernel confines every lookup, symlinks included, to it
/// anyway, which is what `RESOLVE_IN_ROOT` adds elsewhere. Magic links are not refused
/// here, but inside such a sandbox they lead only to the sandbox's own objects.
fn open_without_openat2(path: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    loop {
        match rustix::fs::open(path, flags | OFlags::CLOEXEC, mode) {
            Err(Errno::INTR) => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SandboxPath {
        SandboxPath::parse("/work/dir", &SandboxPath::root()).unwrap()
    }

    #[test]
    fn relative_paths_start_at_the_workdir() {
        let path = SandboxPath::parse("a/./b//c/", &base()).unwrap();
        assert_eq!(path.display(), "/work/dir/a/b/c");
        assert_eq!(path.name(), Some("c"));
        assert_eq!(path.parent().display(), "/work/dir/a/b");
        assert_eq!(SandboxPath::parse(".", &base()).unwrap(), base());
    }

    #[test]
    fn absolute_paths_ignore_the_workdir() {
        let path = SandboxPath::parse("/etc/passwd", &base()).unwrap();
        assert_eq!(path.display(), "/etc/passwd");
        let root = SandboxPath::parse("/", &base()).unwrap();
        assert_eq!(root.display(), "/");
        assert_eq!(root.name(), None);
        assert_eq!(root.parent(), root);
    }

    #[test]
    fn dot_dot_nul_and_empty_are_refused() {
        for bad in ["..", "../x", "a/../b", "/a/..", "a/b/..", "", "a\0b"] {
            let err = SandboxPath::parse(bad, &base()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidPath, "{bad:?}");
        }
        let err = SandboxPath::parse("x/../y", &base()).unwrap_err();
        assert!(err.message.contains("`..`"), "{}", err.message);
        assert!(
            SandboxPath::parse("", &base())
                .unwrap_err()
                .message
                .contains("empty")
        );
        assert!(
            SandboxPath::parse("a\0", &base())
                .unwrap_err()
                .message
                .contains("NUL")
        );
        // Names that merely contain dots are fine.
        assert!(SandboxPath::parse("..a/b..", &base()).is_ok());
    }

    #[test]
    fn prefixes_walk_down() {
        let path = SandboxPath::parse("/a/b/c", &base()).unwrap();
        let prefixes: Vec<String> = path.prefixes().map(|p| p.display()).collect();
        assert_eq!(prefixes, ["/a", "/a/b", "/a/b/c"]);
    }

    #[test]
    fn host_paths_are_below_the_root() {
        let root = Root::open(Path::new("/tmp"), Path::new("/work")).unwrap();
        assert_eq!(root.host_path(Path::new("x")), Path::new("/tmp/work/x"));
        assert_eq!(root.host_path(Path::new("/y")), Path::new("/tmp/y"));
    }

    #[test]
    fn symlinks_cannot_leave_the_root() {
        let top = tempfile::tempdir().unwrap();
        let root_dir = top.path().join("root");
        std::fs::create_dir(&root_dir).unwrap();
        std::fs::write(top.path().join("secret"), "outside").unwrap();
        std::os::unix::fs::symlink("../secret", root_dir.join("up")).unwrap();
        std::os::unix::fs::symlink(top.path().join("secret"), root_dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc/passwd", root_dir.join("magic")).unwrap();
        let root = Root::open(&root_dir, Path::new("/")).unwrap();
        for name in ["up", "abs", "magic"] {
            let path = root.resolve(name).unwrap();
            let result = root.open_at(&path, OFlags::RDONLY, Mode::empty());
            assert!(result.is_err(), "{name} was opened outside the root");
        }
        // The same names inside the root resolve to files inside it.
        std::fs::write(root_dir.join("secret"), "inside").unwrap();
        let fd = root
            .open_at(&root.resolve("up").unwrap(), OFlags::RDONLY, Mode::empty())
            .unwrap();
        let mut content = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut content).unwrap();
        assert_eq!(content, "inside");
    }
}
