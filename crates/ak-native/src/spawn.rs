//! Starting a sandbox: prepare the child's plan, `clone3` into fresh namespaces, map ids
//! and place the child in its cgroup from outside, then let it build its root and execute
//! the agent. Returns once the agent runs (or with the step that failed).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use ak_core::SandboxSpec;

use crate::cgroup::CgroupEntry;
use crate::child::{self, ChildPlan, Step};
use crate::error::NativeError;
use crate::landlock::LandlockPlan;
use crate::netns::AheadNetns;
use crate::plan::{
    HiddenPaths, MountPlanner, RootSource, cstring, env_block, os_cstring, pointer_array,
};
use crate::rawsys::{self, ChildStack, CloneArgs};

/// First uid/gid on the host that root-run sandboxes map to (65536 ids from here). Far
/// above the ranges `useradd` and `/etc/subuid` hand out, so no host account owns them.
pub const ROOT_MAPPED_BASE: u32 = 1_000_000_000;
const MAPPED_RANGE: u32 = ak_core::backend::SANDBOX_ID_COUNT;

/// What the caller needs to start one sandbox.
pub(crate) struct SpawnRequest<'a> {
    pub spec: &'a SandboxSpec,
    pub root: RootSource<'a>,
    pub hidden: &'a HiddenPaths,
    pub new_root: &'a Path,
    pub resolv_conf: Option<&'a Path>,
    pub secrets: Option<&'a ak_egress::provision::SecretFiles>,
    pub agent_fd: RawFd,
    pub landlock_abi: Option<u32>,
    pub seccomp: &'a [seccompiler::BpfProgram],
    pub cap_last: u32,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// Set for a persistent sandbox, which is reached through a listener instead of a
    /// socket pair; `None` keeps the ephemeral start exactly as it was.
    pub persistent: Option<PersistentFds>,
    /// The runtime directory's lock: held by the agent from then on, so that the sandbox,
    /// not (only) its creator, keeps the directory from being swept. A daemon that hands a
    /// sandbox to a client and then dies must not get that sandbox swept while in use.
    pub hold_fd: RawFd,
    /// The sandbox's cgroups, created with their limits before the clone: the child starts
    /// in them (v2) or joins them as its first step (v1), before it does anything else.
    pub cgroup: Option<&'a CgroupEntry>,
    /// Runs in the parent once the child has made its own network namespace, while it goes
    /// on building its root: starts the network helper, whose own start (~3.5 ms here) then
    /// overlaps the rest of the sandbox's.
    pub after_netns: Option<&'a mut dyn FnMut(u32) -> Result<(), NativeError>>,
    /// A network namespace made ahead (netns.rs): the child starts in it instead of making
    /// its own.
    pub netns: Option<&'a AheadNetns>,
}

/// What a persistent sandbox's agent inherits from the parent (all close-on-exec here).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PersistentFds {
    /// The listening socket the host created at `<rundir>/agent.sock`.
    pub listener: RawFd,
    /// The agent's stderr: the creator's may be a pipe whose reader goes away with it.
    pub log: RawFd,
}

/// A started sandbox init process.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: u32,
    pub pidfd: OwnedFd,
    /// The host's end of the socket pair; `None` for a persistent sandbox.
    pub socket: Option<std::os::unix::net::UnixStream>,
}

const AGENT_BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("USER", "root"),
    ("LANG", "C.UTF-8"),
];

fn pipe() -> Result<(OwnedFd, OwnedFd), NativeError> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| NativeError::io("create a pipe")(e.into()))?;
    Ok((read, write))
}

pub(crate) fn spawn(request: SpawnRequest<'_>) -> Result<Spawned, NativeError> {
    let spec = request.spec;
    let ops = MountPlanner::new(request.new_root).build(
        spec,
        request.root,
        request.resolv_conf,
        request.secrets,
        request.hidden,
        request.netns.map(AheadNetns::sysfs_fd),
    )?;

    let (sync_read, sync_write) = pipe()?;
    let (error_read, error_write) = pipe()?;
    let netns_ready = match request.after_netns {
        Some(_) => Some(pipe()?),
        None => None,
    };

    let mut env: Vec<(String, String)> = AGENT_BASE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("HOSTNAME".into(), spec.hostname.clone()));
    if let Ok(term) = std::env::var("TERM") {
        env.push(("TERM".into(), term));
    }
    for (key, value) in &spec.env {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    let env_strings = env_block(&env)?;
    let mut argv_strings = vec![cstring("ak-agent")?];
    let mut host_socket = None;
    let mut agent_socket = None;
    let (inherit_fds, stderr_fd) = match request.persistent {
        None => {
            let (host, agent) = std::os::unix::net::UnixStream::pair()
                .map_err(NativeError::io("create the agent socket"))?;
            argv_strings.push(cstring("--fd")?);
            argv_strings.push(cstring(agent.as_raw_fd().to_string())?);
            let inherit = vec![agent.as_raw_fd(), request.hold_fd];
            host_socket = Some(host);
            agent_socket = Some(agent);
            (inherit, None)
        }
        Some(fds) => {
            argv_strings.push(cstring("--listen-fd")?);
            argv_strings.push(cstring(fds.listener.to_string())?);
            (vec![fds.listener, request.hold_fd], Some(fds.log))
        }
    };
    argv_strings.push(cstring("--hold-fd")?);
    argv_strings.push(cstring(request.hold_fd.to_string())?);
    argv_strings.push(cstring("--workdir")?);
    argv_strings.push(os_cstring(spec.workdir.as_os_str())?);

    let keep: Vec<u32> = spec
        .policy
        .capabilities
        .iter()
        .map(|c| c.number())
        .collect();
    let is_root = rustix::process::geteuid().is_root();
    let plan = ChildPlan {
        ops,
        new_root: os_cstring(request.new_root.as_os_str())?,
        hostname: cstring(&spec.hostname)?,
        drop_groups: is_root,
        // Every sandbox leaves the caller's session: the terminal's Ctrl-C must reach the
        // command once, forwarded by the caller, not also the agent directly.
        new_session: true,
        cgroup_namespace: Path::new("/proc/self/ns/cgroup").exists(),
        rlimits: request.rlimits,
        landlock: match (spec.policy.landlock, request.landlock_abi) {
            (true, Some(abi)) => Some(LandlockPlan::new(spec, abi, request.agent_fd)?),
            _ => None,
        },
        seccomp: request.seccomp.to_vec(),
        drop_caps: (0..=request.cap_last)
            .filter(|c| !keep.contains(c))
            .collect(),
        agent_fd: request.agent_fd,
        cgroup_join: request
            .cgroup
            .map(|entry| entry.self_join.iter().map(AsRawFd::as_raw_fd).collect())
            .unwrap_or_default(),
        inherit_fds,
        stderr_fd,
        sync_fd: sync_read.as_raw_fd(),
        error_fd: error_write.as_raw_fd(),
        netns_ready_fd: netns_ready.as_ref().map(|(_, write)| write.as_raw_fd()),
        own_netns: request.netns.is_none(),
        parent_fds: [&sync_write, &error_read]
            .into_iter()
            .chain(netns_ready.as_ref().map(|(read, _)| read))
            .map(AsRawFd::as_raw_fd)
            .collect(),
        dev_null: CString::from(c"/dev/null"),
        root_dir: CString::from(c"/"),
        dot: CString::from(c"."),
        empty: CString::from(c""),
        argv: pointer_array(&argv_strings),
        envp: pointer_array(&env_strings),
        layers: match request.root {
            RootSource::Layers(layered) => layered.reopen()?,
            RootSource::Tree { .. } => Vec::new(),
        },
    };

    let clone_into = request
        .cgroup
        .and_then(|entry| entry.clone_into.as_ref())
        .map(AsRawFd::as_raw_fd);
    let stack = ChildStack::new().map_err(NativeError::io("map the sandbox child's stack"))?;
    let (pid, pidfd) = match request.netns {
        Some(netns) => netns.clone_inside(|| clone_child(&plan, &stack, clone_into))?,
        None => clone_child(&plan, &stack, clone_into)?,
    };
    // From here until the child has executed the agent or is gone, it runs in our memory,
    // on `stack` and reading `plan`: every way out of this function (an error, a panic)
    // first ends it, which this guard does unless disarmed. Declared after `plan` and
    // `stack`, it is dropped before them.
    let mut child_guard = ChildGuard {
        pid,
        pidfd: &pidfd,
        armed: true,
    };
    drop(agent_socket);
    drop(sync_read);
    drop(error_write);

    let go = || {
        rustix::io::write(&sync_write, &[1])
            .map(drop)
            .map_err(|e| NativeError::io("release the sandbox process")(e.into()))
    };
    let netns_ready = netns_ready.map(|(read, _write)| read);
    let released = write_id_maps(pid, is_root)
        .and_then(|()| go())
        .and_then(|()| match (netns_ready, request.after_netns) {
            // End of file instead of the byte: the child failed before, and the error pipe
            // says where.
            (Some(ready), Some(after_netns)) if read_byte(&ready) => after_netns(pid),
            _ => Ok(()),
        });
    drop(sync_write);
    released?;

    // The error pipe closes on exec (success) or carries (step, errno). The kernel closes
    // it after the child has left our memory: at exec, after the switch to the agent's
    // own; at exit, after it let go of ours.
    let mut report = Vec::with_capacity(8);
    let mut error_read = std::fs::File::from(error_read);
    error_read
        .read_to_end(&mut report)
        .map_err(NativeError::io("read the sandbox start-up status"))?;
    if report.len() == 8 {
        let step = u32::from_le_bytes([report[0], report[1], report[2], report[3]]);
        let errno = i32::from_le_bytes([report[4], report[5], report[6], report[7]]);
        return Err(NativeError::ChildStep {
            step: Step::describe(step, &plan.ops),
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    child_guard.armed = false;
    drop(child_guard);
    drop(stack);
    drop(plan);
    drop(argv_strings);
    drop(env_strings);
    Ok(Spawned {
        pid,
        pidfd,
        socket: host_socket,
    })
}

/// Whether one byte arrived before the end of the pipe.
fn read_byte(pipe: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(pipe, &mut byte) {
            Err(rustix::io::Errno::INTR) => continue,
            result => return matches!(result, Ok(1)),
        }
    }
}

/// `clone3`'s flag to start the child in the cgroup2 directory `clone_args.cgroup` names
/// (Linux 5.7; libc's constant is declared as a C int, too narrow for it).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Ends a sandbox child that may still run in our memory (see `spawn`).
struct ChildGuard<'a> {
    pid: u32,
    pidfd: &'a OwnedFd,
    armed: bool,
}

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            reap(self.pid, self.pidfd);
        }
    }
}

/// `clone3` into new user and pid namespaces, and into the cgroup2 directory `cgroup` when
/// given; the child runs the plan on `stack` and never returns.
///
/// The child shares our memory (`CLONE_VM`) instead of getting a copy of it: copying the
/// page tables of a large, multi-threaded parent (the daemon), then copying every page
/// either side writes to while the other still maps it (each copy a TLB shootdown across
/// the parent's CPUs), and tearing the copy down again at exec cost ~0.8 ms of CPU per
/// sandbox in a burst of pooled runs (`perf`, docs/benchmarks.md). glibc's `posix_spawn`
/// does the same. What sharing demands of the child is in child.rs and rawsys.rs; the
/// rest (the parent keeps `plan` and `stack` until the child is gone from its memory) is
/// `spawn`'s. Two things it changes, both because until exec the child's memory is the
/// parent's:
/// - An out-of-memory kill in the sandbox's cgroup during set-up would take the parent
///   too. The set-up charges about 0.5 MiB (`memory.max_usage_in_bytes` of a sandbox
///   with 8 MiB: 512 KiB, of which 250 KiB kernel memory) to a cgroup of at least
///   `ak_core::resources::MIN_MEMORY` (8 MiB) with nothing else in it, so it cannot.
/// - When a root caller's child takes its mapped ids (`setresuid`), the kernel marks the
///   memory it runs in non-dumpable, which is now the caller's: a root daemon or CLI is
///   non-dumpable from its first sandbox on (`PR_GET_DUMPABLE` reads 0; no core dump
///   without `fs.suid_dumpable=2`). Setting it back is safe only while no other child is
///   between its id change and its exec, when a dumpable memory would let processes of
///   the mapped uid trace it; so it stays off. Rootless callers keep their ids, and
///   nothing changes for them.
fn clone_child(
    plan: &ChildPlan,
    stack: &ChildStack,
    cgroup: Option<RawFd>,
) -> Result<(u32, OwnedFd), NativeError> {
    let mut pidfd: RawFd = -1;
    let (stack_low, stack_size) = stack.region();
    let mut args = CloneArgs {
        // The other namespaces are created by the child itself (see child.rs).
        flags: (libc::CLONE_VM | libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_PIDFD)
            as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack_low,
        stack_size,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    extern "C" fn entry(plan: *const std::ffi::c_void) -> ! {
        // SAFETY: `clone_child`'s caller keeps the plan alive until the child is gone.
        child::run(unsafe { &*plan.cast::<ChildPlan>() })
    }
    // Signals stay blocked in the child until just before exec, so no handler of the
    // parent's (e.g. the async runtime's) runs in the half-built sandbox.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers; clone3 gets a properly sized clone_args whose stack
    // the caller keeps mapped, and an entry that only makes raw system calls.
    let cloned = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let cloned = rawsys::clone3_with_entry(&mut args, entry, (plan as *const ChildPlan).cast());
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        cloned
    };
    let pid = cloned.map_err(|errno| {
        NativeError::io("clone3 into new namespaces")(std::io::Error::from_raw_os_error(errno))
    })?;
    // SAFETY: clone3 with CLONE_PIDFD stored a new, owned pidfd.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid, pidfd))
}

/// Maps uid/gid 0 inside to an unprivileged host id: the caller's own when unprivileged,
/// a range far from any host account when root.
fn write_id_maps(pid: u32, is_root: bool) -> Result<(), NativeError> {
    let proc_dir = format!("/proc/{pid}");
    let write = |file: &str, content: String| {
        std::fs::write(format!("{proc_dir}/{file}"), content)
            .map_err(NativeError::io(format!("write {proc_dir}/{file}")))
    };
    if is_root {
        write("uid_map", format!("0 {ROOT_MAPPED_BASE} {MAPPED_RANGE}\n"))?;
        write("gid_map", format!("0 {ROOT_MAPPED_BASE} {MAPPED_RANGE}\n"))?;
    } else {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        write("uid_map", format!("0 {uid} 1\n"))?;
        write("setgroups", "deny".into())?;
        write("gid_map", format!("0 {gid} 1\n"))?;
    }
    Ok(())
}

/// Kills and reaps a sandbox init that will not be used.
pub(crate) fn reap(pid: u32, pidfd: &OwnedFd) {
    let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
    let _ = rustix::process::waitpid(
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::WaitOptions::empty(),
    );
}
