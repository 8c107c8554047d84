//! Kernel features of this host, for `agentkernel status` and the native backend's availability.

use std::fs;
use std::io;
use std::path::Path;

use ak_core::kvm::KvmSupport;

use crate::cgroup::CgroupLayout;

/// What the kernel offers this process, each fact probed directly where that is cheap.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostFeatures {
    /// `uname -r`.
    pub kernel: String,
    /// Whether this process can create a user namespace; `Err` says why not.
    pub user_namespaces: Result<(), String>,
    /// `(name, present)` for user, mount, pid, uts, ipc, net and cgroup namespaces.
    pub namespaces: Vec<(String, bool)>,
    pub seccomp: bool,
    /// Landlock ABI version; `None` when the kernel lacks or disables Landlock.
    pub landlock_abi: Option<u32>,
    /// The `mount_setattr` system call (Linux 5.12) exists and is not filtered.
    pub mount_setattr: bool,
    /// `CgroupLayout::describe()` of this host.
    pub cgroups: String,
    pub cgroups_usable: Result<(), String>,
    /// How a sandbox's processes enter its cgroups (see [`CGROUP_ENTRY`]).
    pub cgroup_entry: &'static str,
    /// Where sandboxes' runtime directories go, and whether that is a tmpfs.
    pub runtime_dir: String,
    pub kvm: KvmSupport,
    pub running_as_root: bool,
}

/// Namespaces reported, with their file names under `/proc/self/ns`.
const NAMESPACES: [(&str, &str); 7] = [
    ("user", "user"),
    ("mount", "mnt"),
    ("pid", "pid"),
    ("uts", "uts"),
    ("ipc", "ipc"),
    ("net", "net"),
    ("cgroup", "cgroup"),
];

impl HostFeatures {
    /// Probes this host once per process (the probe forks); never fails, unknowns are
    /// reported as absent with a reason.
    pub fn detect() -> HostFeatures {
        static FEATURES: std::sync::OnceLock<HostFeatures> = std::sync::OnceLock::new();
        FEATURES.get_or_init(Self::probe).clone()
    }

    fn probe() -> HostFeatures {
        let running_as_root = rustix::process::geteuid().is_root();
        let cgroups = CgroupLayout::detect();
        let features = HostFeatures {
            kernel: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            user_namespaces: probe_user_namespaces(running_as_root),
            namespaces: NAMESPACES
                .iter()
                .map(|(name, file)| {
                    let present = Path::new("/proc/self/ns").join(file).exists();
                    (name.to_string(), present)
                })
                .collect(),
            seccomp: probe_seccomp(),
            landlock_abi: crate::landlock::abi_version(),
            mount_setattr: probe_mount_setattr(),
            cgroups: cgroups.describe(),
            cgroups_usable: cgroups.usable(),
            cgroup_entry: CGROUP_ENTRY,
            runtime_dir: describe_runtime_dir(&crate::rundir::runtime_base()),
            kvm: KvmSupport::detect(),
            running_as_root,
        };
        tracing::debug!(?features, "host features");
        features
    }
}

/// How sandboxes enter their cgroups, for `status`. No process is ever moved into one by
/// another (the move that waits for an RCU grace period unless cgroup2 is mounted with
/// `favordynmods`), so that mount option, once recommended here, makes no difference.
pub const CGROUP_ENTRY: &str = "at creation (clone3 into the v2 cgroup; v1 ones joined by the \
     sandbox's first thread): no host tweak needed, favordynmods makes no difference";

/// The `status` line for where runtime directories go. Each sandbox creates and removes
/// one; off a tmpfs that costs more (docs/benchmarks.md), so root's sandboxes mount one
/// there (`rundir::keep_in_memory`).
fn describe_runtime_dir(base: &Path) -> String {
    // A base not made yet goes where its nearest existing ancestor is.
    let existing = base
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    runtime_dir_line(
        base,
        crate::rundir::in_memory(existing),
        crate::rundir::BaseMount::for_runtime_base(),
    )
}

fn runtime_dir_line(
    base: &Path,
    in_memory: io::Result<bool>,
    mount: crate::rundir::BaseMount,
) -> String {
    const COST: &str = "on disk each sandbox spends ~0.2 ms more creating and removing its \
         runtime directory, more where the filesystem discards freed blocks at once \
         (docs/benchmarks.md)";
    match (in_memory, mount) {
        (Ok(true), _) => format!("{} (tmpfs)", base.display()),
        (Ok(false), crate::rundir::BaseMount::TmpfsWhenEmpty) => format!(
            "{} is not on a tmpfs yet: the next sandbox mounts one there once no sandbox's \
             directory is in it ({COST})",
            base.display()
        ),
        (Ok(false), crate::rundir::BaseMount::AsItIs) => format!(
            "{} is not on a tmpfs: set XDG_RUNTIME_DIR to a directory on one ({COST})",
            base.display()
        ),
        (Err(e), _) => format!("{}: filesystem unknown ({e})", base.display()),
    }
}

/// Whether `/proc/self/status` has a `Seccomp:` line (kernels built with seccomp).
fn parse_status_seccomp(status: &str) -> bool {
    status.lines().any(|line| line.starts_with("Seccomp:"))
}

/// Why the sysctls forbid user namespaces, if they do: the contents of
/// `/proc/sys/user/max_user_namespaces` and `/proc/sys/kernel/unprivileged_userns_clone`
/// (a Debian/Ubuntu patch that only restricts unprivileged callers).
fn userns_sysctl_block(
    max_user_namespaces: Option<&str>,
    unprivileged_userns_clone: Option<&str>,
    root: bool,
) -> Option<String> {
    if max_user_namespaces.is_some_and(|v| v.trim() == "0") {
        return Some(
            "user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0)".into(),
        );
    }
    if !root && unprivileged_userns_clone.is_some_and(|v| v.trim() == "0") {
        return Some(
            "unprivileged user namespaces are disabled (/proc/sys/kernel/unprivileged_userns_clone is 0)"
                .into(),
        );
    }
    None
}

fn probe_user_namespaces(root: bool) -> Result<(), String> {
    let read = |path: &str| fs::read_to_string(path).ok();
    let max = read("/proc/sys/user/max_user_namespaces");
    let clone = read("/proc/sys/kernel/unprivileged_userns_clone");
    if let Some(reason) = userns_sysctl_block(max.as_deref(), clone.as_deref(), root) {
        return Err(reason);
    }
    // The sysctls do not cover seccomp filters, LSMs or running inside a chroot or
    // container, so ask the kernel. The child is single-threaded, which unshare
    // (CLONE_NEWUSER) requires, and the namespace dies with it.
    // SAFETY: the child only makes raw system calls and `_exit`s, all async-signal-safe,
    // so forking a possibly multi-threaded process is sound.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: without `UnshareFlags::FILES` no file-descriptor table is split.
        let result =
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER) };
        let code = result.map_or_else(|e| e.raw_os_error().clamp(1, 255), |()| 0);
        // SAFETY: `_exit` skips atexit handlers and destructors, which belong to the parent.
        unsafe { libc::_exit(code) };
    }
    if child < 0 {
        return Err(format!(
            "cannot fork to probe user namespaces: {}",
            io::Error::last_os_error()
        ));
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing only into `status`.
        if unsafe { libc::waitpid(child, &mut status, 0) } >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(format!("cannot wait for the user namespace probe: {e}"));
        }
    }
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => Ok(()),
        (true, errno) => Err(format!(
            "unshare(CLONE_NEWUSER) failed: {}",
            io::Error::from_raw_os_error(errno)
        )),
        _ => Err(format!(
            "the user namespace probe died (wait status {status:#x})"
        )),
    }
}

fn probe_seccomp() -> bool {
    // SAFETY: PR_GET_SECCOMP reads this thread's mode and takes no pointers.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    mode >= 0 || fs::read_to_string("/proc/self/status").is_ok_and(|s| parse_status_seccomp(&s))
}

fn probe_mount_setattr() -> bool {
    // SAFETY: a bad dirfd, empty path and null attributes: the kernel rejects the call
    // before touching memory or mounts, and the errno tells whether the call exists.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            0,
            std::ptr::null::<libc::c_void>(),
            0usize,
        )
    };
    let errno = io::Error::last_os_error().raw_os_error();
    // ENOSYS: kernel older than 5.12; EPERM: a seccomp filter denies it.
    result == 0 || !matches!(errno, Some(libc::ENOSYS | libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_status_line() {
        assert!(parse_status_seccomp(
            "Name:\tcat\nSeccomp:\t0\nSeccomp_filters:\t0\n"
        ));
        assert!(!parse_status_seccomp("Name:\tcat\nNoNewPrivs:\t0\n"));
    }

    #[test]
    fn userns_sysctls() {
        assert!(
            userns_sysctl_block(Some("0\n"), None, true)
                .is_some_and(|r| r.contains("max_user_namespaces"))
        );
        assert_eq!(userns_sysctl_block(Some("96365\n"), None, false), None);
        let unprivileged = userns_sysctl_block(Some("10\n"), Some("0\n"), false);
        assert!(unprivileged.is_some_and(|r| r.contains("unprivileged_userns_clone")));
        // The Debian switch does not apply to root.
        assert_eq!(userns_sysctl_block(Some("10\n"), Some("0\n"), true), None);
        assert_eq!(userns_sysctl_block(None, Some("1\n"), false), None);
    }

    #[test]
    fn the_runtime_dir_line_says_what_a_tmpfs_saves_and_who_mounts_it() {
        use crate::rundir::BaseMount;
        let base = Path::new("/run/agentkernel");
        assert_eq!(
            runtime_dir_line(base, Ok(true), BaseMount::TmpfsWhenEmpty),
            "/run/agentkernel (tmpfs)"
        );
        let root = runtime_dir_line(base, Ok(false), BaseMount::TmpfsWhenEmpty);
        assert!(
            root.contains("the next sandbox mounts one") && root.contains("ms more"),
            "{root}"
        );
        let user = runtime_dir_line(base, Ok(false), BaseMount::AsItIs);
        assert!(
            user.contains("XDG_RUNTIME_DIR") && user.contains("ms more"),
            "{user}"
        );
        let unknown = runtime_dir_line(
            base,
            Err(io::ErrorKind::PermissionDenied.into()),
            BaseMount::AsItIs,
        );
        assert!(unknown.contains("filesystem unknown"), "{unknown}");
    }

    #[test]
    fn detect_runs_and_reports_a_kernel() {
        let features = HostFeatures::detect();
        assert!(!features.kernel.is_empty());
        assert_eq!(features.namespaces.len(), NAMESPACES.len());
        assert!(
            features
                .namespaces
                .iter()
                .any(|(name, present)| name == "mount" && *present)
        );
        eprintln!("host features: {features:#?}");
    }
}
