//! Code that runs in the sandbox's first process between `clone3` and `execveat` of the
//! agent. That process shares its parent's memory and its parent thread's thread-locals
//! (`CLONE_VM`, see spawn.rs), while the parent's threads go on: it must not allocate, lock,
//! panic or touch `errno`, so it only reads the prepared [`ChildPlan`] and makes system
//! calls through `rawsys`; the first failure is reported to the parent as `(step, errno)`.

use std::ffi::CString;
use std::os::fd::RawFd;

use seccompiler::BpfProgram;

use crate::landlock::LandlockPlan;
use crate::overlay::OverlayMount;
use crate::plan::Op;
use crate::rawsys::sys;

/// Steps after the mount ops; their numbers follow the ops' indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Step {
    Sync = 1_000_000,
    Credentials,
    Namespaces,
    CgroupNamespace,
    Propagation,
    PivotRoot,
    Hostname,
    Loopback,
    Rlimits,
    Descriptors,
    Landlock,
    Capabilities,
    NoNewPrivs,
    Seccomp,
    Exec,
    Session,
    CgroupJoin,
    Layers,
}

impl Step {
    pub(crate) const ALL: [Step; 18] = [
        Step::Sync,
        Step::Credentials,
        Step::Namespaces,
        Step::CgroupNamespace,
        Step::Propagation,
        Step::PivotRoot,
        Step::Hostname,
        Step::Loopback,
        Step::Rlimits,
        Step::Descriptors,
        Step::Landlock,
        Step::Capabilities,
        Step::NoNewPrivs,
        Step::Seccomp,
        Step::Exec,
        Step::Session,
        Step::CgroupJoin,
        Step::Layers,
    ];

    pub(crate) fn describe(code: u32, ops: &[Op]) -> String {
        if let Some(op) = ops.get(code as usize) {
            return op.describe();
        }
        match Step::ALL.iter().find(|s| **s as u32 == code) {
            Some(Step::Sync) => "wait for the parent".into(),
            Some(Step::Credentials) => "become root of the user namespace".into(),
            Some(Step::Namespaces) => "create network, mount, uts and ipc namespaces".into(),
            Some(Step::CgroupNamespace) => "enter a cgroup namespace".into(),
            Some(Step::Propagation) => "make mounts private".into(),
            Some(Step::PivotRoot) => "pivot_root into the sandbox root".into(),
            Some(Step::Hostname) => "set the hostname".into(),
            Some(Step::Loopback) => "bring up loopback".into(),
            Some(Step::Rlimits) => "set resource limits".into(),
            Some(Step::Descriptors) => "set up file descriptors".into(),
            Some(Step::Landlock) => "apply landlock rules".into(),
            Some(Step::Capabilities) => "drop capabilities".into(),
            Some(Step::NoNewPrivs) => "set no_new_privs".into(),
            Some(Step::Seccomp) => "install the seccomp filter".into(),
            Some(Step::Exec) => "execute the agent".into(),
            Some(Step::Session) => "start a new session".into(),
            Some(Step::CgroupJoin) => "join the sandbox's cgroups".into(),
            Some(Step::Layers) => "open the image's layers in the sandbox's mount namespace".into(),
            None => format!("unknown step {code}"),
        }
    }
}

/// Everything the child needs, built by the parent before `clone3`.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    pub ops: Vec<Op>,
    pub new_root: CString,
    pub hostname: CString,
    /// Root callers may drop the host's supplementary groups; unprivileged ones cannot.
    pub drop_groups: bool,
    /// Leave the caller's session and process group (persistent sandboxes): a terminal's
    /// Ctrl-C or hang-up meant for the caller must not reach a sandbox that outlives it.
    pub new_session: bool,
    pub cgroup_namespace: bool,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    pub landlock: Option<LandlockPlan>,
    pub seccomp: Vec<BpfProgram>,
    /// Capabilities removed from the bounding set.
    pub drop_caps: Vec<u32>,
    pub agent_fd: RawFd,
    /// v1 `tasks` files of the sandbox's cgroups: the child moves itself (`0`) into each
    /// before anything else, so everything it does is charged and limited there.
    pub cgroup_join: Vec<RawFd>,
    /// Left open across exec: the agent's end of the control socket (ephemeral), or its
    /// listening socket and the runtime directory's lock (persistent).
    pub inherit_fds: Vec<RawFd>,
    /// Becomes the agent's stderr instead of the caller's (persistent sandboxes).
    pub stderr_fd: Option<RawFd>,
    pub sync_fd: RawFd,
    pub error_fd: RawFd,
    /// Gets one byte once the child has its own network namespace (and is then closed).
    pub netns_ready_fd: Option<RawFd>,
    /// Whether the child makes its network namespace; `false` when it was born in one
    /// made ahead with loopback up (netns.rs).
    pub own_netns: bool,
    /// The parent's ends of the pipes: the child's copies must go at once, or a parent
    /// that dies would never be noticed (the child would hold the write end it waits on).
    pub parent_fds: Vec<RawFd>,
    pub dev_null: CString,
    pub root_dir: CString,
    pub dot: CString,
    pub empty: CString,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
    /// An overlay root's layers: each path is opened again once the child has its own
    /// mount namespace (overlayfs takes no layer from another one) and put at the given
    /// descriptor number, which the overlay step names as `/proc/self/fd/N`.
    pub layers: Vec<(CString, RawFd)>,
}

// SAFETY: the raw pointers point into CStrings owned by the same spawn call, which outlive
// every use; the plan is only read.
unsafe impl Send for ChildPlan {}
unsafe impl Sync for ChildPlan {}

/// Runs the plan and executes the agent; never returns.
pub(crate) fn run(plan: &ChildPlan) -> ! {
    let (step, error) = match steps(plan) {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&step.to_le_bytes());
    report[4..].copy_from_slice(&error.to_le_bytes());
    // SAFETY: writing a stack buffer to our error pipe, then leaving without unwinding.
    unsafe {
        let _ = sys!(
            libc::SYS_write,
            plan.error_fd,
            report.as_ptr(),
            report.len()
        );
        loop {
            let _ = sys!(libc::SYS_exit_group, 125);
        }
    }
}

enum Never {}

/// Tags a system call's failure with the step it belongs to.
fn at(step: Step) -> impl Fn(i32) -> (u32, i32) {
    move |errno| (step as u32, errno)
}

fn steps(plan: &ChildPlan) -> Result<Never, (u32, i32)> {
    // SAFETY (whole function): plain system calls on NUL-terminated strings and stack
    // buffers prepared by the parent; nothing here allocates, and nothing touches errno
    // or any other thread-local (see rawsys.rs).
    unsafe {
        // Only this thread exists here, so moving itself needs no lock that would wait
        // for an RCU grace period (see `SandboxCgroup::entry`).
        for &fd in &plan.cgroup_join {
            match sys!(libc::SYS_write, fd, c"0".as_ptr(), 1) {
                Ok(1) => {}
                Ok(_) => return Err((Step::CgroupJoin as u32, libc::EIO)),
                Err(errno) => return Err((Step::CgroupJoin as u32, errno)),
            }
            let _ = sys!(libc::SYS_close, fd);
        }
        for &fd in &plan.parent_fds {
            let _ = sys!(libc::SYS_close, fd);
        }
        // First go: the id maps are written, so files we create have owners.
        wait_for_parent(plan.sync_fd)?;
        let _ = sys!(libc::SYS_close, plan.sync_fd);

        if plan.new_session {
            sys!(libc::SYS_setsid).map_err(at(Step::Session))?;
        }
        // Raw system calls, not libc's wrappers: those apply a credential change to every
        // thread the parent has (glibc's setxid broadcast).
        if plan.drop_groups {
            sys!(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
                .map_err(at(Step::Credentials))?;
        }
        // The layers are opened with the caller's own host credentials, before the child
        // becomes the namespace's root (no one on the host): the store's directory is
        // private to the caller.
        if !plan.layers.is_empty() {
            sys!(libc::SYS_unshare, libc::CLONE_NEWNS).map_err(at(Step::Namespaces))?;
            for (path, fd) in &plan.layers {
                let opened = sys!(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
                )
                .map_err(at(Step::Layers))?;
                sys!(libc::SYS_dup3, opened, *fd, libc::O_CLOEXEC).map_err(at(Step::Layers))?;
                let _ = sys!(libc::SYS_close, opened);
            }
        }
        sys!(libc::SYS_setresgid, 0, 0, 0).map_err(at(Step::Credentials))?;
        sys!(libc::SYS_setresuid, 0, 0, 0).map_err(at(Step::Credentials))?;
        // The network, mount, uts and ipc namespaces are made here rather than by clone3:
        // a network namespace costs most of a millisecond of kernel work, which this way
        // overlaps with the parent's cgroup set-up instead of delaying it.
        let namespaces = if plan.own_netns {
            libc::CLONE_NEWNET
        } else {
            0
        } | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | if plan.layers.is_empty() {
                libc::CLONE_NEWNS
            } else {
                0
            };
        sys!(libc::SYS_unshare, namespaces).map_err(at(Step::Namespaces))?;
        if let Some(fd) = plan.netns_ready_fd {
            let byte = 1u8;
            let _ = sys!(libc::SYS_write, fd, &raw const byte, 1);
            let _ = sys!(libc::SYS_close, fd);
        }
        sys!(
            libc::SYS_mount,
            std::ptr::null::<libc::c_char>(),
            plan.root_dir.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null::<libc::c_void>()
        )
        .map_err(at(Step::Propagation))?;

        // Modes in the plan are exact; the agent gets the usual 022 back before exec.
        let _ = sys!(libc::SYS_umask, 0);
        for (index, op) in plan.ops.iter().enumerate() {
            run_op(op).map_err(|e| (index as u32, e))?;
        }

        sys!(libc::SYS_chdir, plan.new_root.as_ptr()).map_err(at(Step::PivotRoot))?;
        sys!(libc::SYS_pivot_root, plan.dot.as_ptr(), plan.dot.as_ptr())
            .map_err(at(Step::PivotRoot))?;
        sys!(libc::SYS_umount2, plan.dot.as_ptr(), libc::MNT_DETACH)
            .map_err(at(Step::PivotRoot))?;
        sys!(libc::SYS_chdir, plan.root_dir.as_ptr()).map_err(at(Step::PivotRoot))?;

        let hostname = plan.hostname.as_bytes();
        sys!(libc::SYS_sethostname, hostname.as_ptr(), hostname.len())
            .map_err(at(Step::Hostname))?;
        if plan.own_netns {
            loopback_up().map_err(at(Step::Loopback))?;
        }

        for &(resource, limit) in &plan.rlimits {
            let value = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            sys!(
                libc::SYS_prlimit64,
                0,
                resource,
                &raw const value,
                std::ptr::null_mut::<libc::rlimit>()
            )
            .map_err(at(Step::Rlimits))?;
        }

        // Standard input and output of the agent are /dev/null; stderr stays the caller's
        // (or becomes the persistent sandbox's log), for the agent's own diagnostics. Every
        // other inherited descriptor closes at exec.
        let null = sys!(
            libc::SYS_openat,
            libc::AT_FDCWD,
            plan.dev_null.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC
        )
        .map_err(at(Step::Descriptors))?;
        dup_onto(null, 0).map_err(at(Step::Descriptors))?;
        dup_onto(null, 1).map_err(at(Step::Descriptors))?;
        if null > 1 {
            let _ = sys!(libc::SYS_close, null);
        }
        if let Some(log) = plan.stderr_fd {
            dup_onto(log as usize, 2).map_err(at(Step::Descriptors))?;
        }
        sys!(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC
        )
        .map_err(at(Step::Descriptors))?;
        for &fd in &plan.inherit_fds {
            sys!(libc::SYS_fcntl, fd, libc::F_SETFD, 0).map_err(at(Step::Descriptors))?;
        }

        let _ = sys!(libc::SYS_umask, 0o022);
        sys!(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            .map_err(at(Step::NoNewPrivs))?;
        if let Some(landlock) = &plan.landlock {
            landlock.apply().map_err(at(Step::Landlock))?;
        }
        for &cap in &plan.drop_caps {
            sys!(libc::SYS_prctl, libc::PR_CAPBSET_DROP, cap, 0, 0, 0)
                .map_err(at(Step::Capabilities))?;
        }
        sys!(
            libc::SYS_prctl,
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0
        )
        .map_err(at(Step::Capabilities))?;
        // We joined our cgroups first thing, so the cgroup namespace made now has our own
        // cgroup as its root.
        if plan.cgroup_namespace {
            sys!(libc::SYS_unshare, libc::CLONE_NEWCGROUP).map_err(at(Step::CgroupNamespace))?;
        }
        for program in &plan.seccomp {
            let fprog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            sys!(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &raw const fprog
            )
            .map_err(at(Step::Seccomp))?;
        }

        // The kernel's signal set is 8 bytes (glibc's sigset_t is larger).
        let empty_set = 0u64;
        let _ = sys!(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const empty_set,
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>()
        );
        let Err(errno) = sys!(
            libc::SYS_execveat,
            plan.agent_fd,
            plan.empty.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
            libc::AT_EMPTY_PATH
        ) else {
            // execveat returns only on failure.
            return Err((Step::Exec as u32, libc::EIO));
        };
        Err((Step::Exec as u32, errno))
    }
}

/// `dup2(fd, target)`: dup3 refuses equal descriptors, where dup2 keeps the one there
/// (then only its close-on-exec flag has to go).
///
/// # Safety
/// Both must be descriptors this process may replace.
unsafe fn dup_onto(fd: usize, target: usize) -> Result<(), i32> {
    // SAFETY: per the function's contract.
    unsafe {
        if fd == target {
            sys!(libc::SYS_fcntl, fd, libc::F_SETFD, 0).map(drop)
        } else {
            sys!(libc::SYS_dup3, fd, target, 0).map(drop)
        }
    }
}

/// Blocks until the parent writes one byte; a closed pipe means the parent gave up.
fn wait_for_parent(fd: RawFd) -> Result<(), (u32, i32)> {
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte into a stack variable.
        match unsafe { sys!(libc::SYS_read, fd, &raw mut byte, 1) } {
            Ok(1) => return Ok(()),
            Err(libc::EINTR) => continue,
            _ => return Err((Step::Sync as u32, libc::EPIPE)),
        }
    }
}

fn run_op(op: &Op) -> Result<(), i32> {
    // SAFETY: system calls on NUL-terminated strings owned by the plan.
    unsafe {
        match op {
            Op::Mkdir { path, mode } => {
                match sys!(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), *mode) {
                    Ok(_) | Err(libc::EEXIST) => Ok(()),
                    Err(errno) => Err(errno),
                }
            }
            Op::Symlink { target, link } => {
                match sys!(
                    libc::SYS_symlinkat,
                    target.as_ptr(),
                    libc::AT_FDCWD,
                    link.as_ptr()
                ) {
                    Ok(_) | Err(libc::EEXIST) => Ok(()),
                    Err(errno) => Err(errno),
                }
            }
            Op::Touch { path } => {
                let fd = sys!(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644
                )?;
                sys!(libc::SYS_close, fd).map(drop)
            }
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => sys!(
                libc::SYS_mount,
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                *flags,
                data.as_ptr()
            )
            .map(drop),
            Op::Bind {
                source,
                target,
                attrs,
            } => {
                sys!(
                    libc::SYS_mount,
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null::<libc::c_char>(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null::<libc::c_void>()
                )?;
                if *attrs == crate::plan::KEEP_ATTRS {
                    return Ok(());
                }
                set_attr(target, *attrs, libc::AT_RECURSIVE as u32)
            }
            Op::Overlay(overlay) => mount_overlay(overlay),
            Op::MoveMount { fd, target } => {
                // SAFETY: the parent opened it and keeps it open until we have exec'd.
                let mount = std::os::fd::BorrowedFd::borrow_raw(*fd);
                rustix::mount::move_mount(
                    mount,
                    c"",
                    rustix::fs::CWD,
                    target.as_c_str(),
                    rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
                )
                .map_err(|e| e.raw_os_error())
            }
        }
    }
}

/// Mounts an overlay through the new mount API, one `lowerdir+` per layer (Linux 6.8+:
/// no limit on the number of layers); on an older kernel, with `mount(2)` and the layers
/// in one data string, when they fit in it.
fn mount_overlay(overlay: &OverlayMount) -> Result<(), i32> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
        fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    };
    let raw = |e: rustix::io::Errno| e.raw_os_error();
    let context = ChildFd::from(fsopen(c"overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(raw)?);
    for lower in &overlay.lowers {
        if let Err(error) = fsconfig_set_string(&context, c"lowerdir+", lower.as_c_str()) {
            drop(context);
            return match (&overlay.legacy_data, error) {
                (Some(data), rustix::io::Errno::INVAL) => mount_overlay_legacy(overlay, data),
                // Too many layers for one data string on a kernel without `lowerdir+`.
                (None, rustix::io::Errno::INVAL) => Err(libc::E2BIG),
                (_, error) => Err(raw(error)),
            };
        }
    }
    fsconfig_set_string(&context, c"upperdir", overlay.upper.as_c_str()).map_err(raw)?;
    fsconfig_set_string(&context, c"workdir", overlay.work.as_c_str()).map_err(raw)?;
    fsconfig_set_flag(&context, c"userxattr").map_err(raw)?;
    fsconfig_create(&context).map_err(raw)?;
    let mount = ChildFd::from(
        fsmount(
            &context,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
        )
        .map_err(raw)?,
    );
    move_mount(
        &mount,
        c"",
        rustix::fs::CWD,
        overlay.target.as_c_str(),
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(raw)
}

/// A descriptor the child owns: closed through `rawsys` when dropped, where std's
/// `OwnedFd` would close it through libc (see the module's comment).
struct ChildFd(RawFd);

impl From<std::os::fd::OwnedFd> for ChildFd {
    fn from(fd: std::os::fd::OwnedFd) -> ChildFd {
        ChildFd(std::os::fd::IntoRawFd::into_raw_fd(fd))
    }
}

impl std::os::fd::AsFd for ChildFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: open until this value is dropped.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}

impl Drop for ChildFd {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns.
        let _ = unsafe { sys!(libc::SYS_close, self.0) };
    }
}

fn mount_overlay_legacy(overlay: &OverlayMount, data: &std::ffi::CStr) -> Result<(), i32> {
    // SAFETY: NUL-terminated strings owned by the plan.
    unsafe {
        sys!(
            libc::SYS_mount,
            c"overlay".as_ptr(),
            overlay.target.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr()
        )
        .map(drop)
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn set_attr(target: &CString, attrs: u64, flags: u32) -> Result<(), i32> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid path and mount_attr of the size passed.
    unsafe {
        sys!(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            flags,
            &raw const attr,
            std::mem::size_of::<MountAttr>()
        )
        .map(drop)
    }
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace (allocation-free and
/// errno-free: the child calls it between clone and exec; netns.rs, for a namespace made
/// ahead).
pub(crate) fn loopback_up() -> Result<(), i32> {
    // SAFETY: an ifreq on the stack, named "lo", for ioctls on a socket opened here.
    unsafe {
        let socket = sys!(
            libc::SYS_socket,
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0
        )?;
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
            *slot = *byte as libc::c_char;
        }
        let result = sys!(
            libc::SYS_ioctl,
            socket,
            libc::SIOCGIFFLAGS,
            &raw mut request
        )
        .and_then(|_| {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            sys!(
                libc::SYS_ioctl,
                socket,
                libc::SIOCSIFFLAGS,
                &raw const request
            )
        });
        let _ = sys!(libc::SYS_close, socket);
        result.map(drop)
    }
}
