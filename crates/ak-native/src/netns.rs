//! A one-shot sandbox's network namespace, made ahead on a thread of its own while the
//! caller prepares the rest, for callers that may (root). Creating a network namespace is
//! the largest single step of a sandbox's start (most of a millisecond of kernel work:
//! `perf` puts `setup_net` at 0.7 ms a run here), and the open network's helper, whose
//! own start takes longer than everything else, can only begin once it exists. Made this
//! way, both overlap the caller's preparation instead of following it.
//!
//! The namespace belongs to the caller's user namespace, not the sandbox's, so the
//! sandbox's root has no `CAP_NET_ADMIN` or `CAP_NET_RAW` over it: it cannot change its
//! interfaces, routes or firewall (kernel code that unprivileged user namespaces otherwise
//! reach), and cannot mount a sysfs for it either. What it needs is done here instead:
//! loopback is brought up, unprivileged ICMP echo sockets are allowed (so `ping` works
//! without raw sockets), and a read-only sysfs instance of the namespace is made for the
//! child to move into its root.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

use crate::error::NativeError;
use crate::network::{HelperKind, HelperTarget, NetworkHelper};

/// Set once the namespace could not be made here (no `CAP_SYS_ADMIN` where this runs),
/// so later sandboxes of this process make their own without trying again.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// A network namespace with loopback up, and its sysfs as a detached mount.
#[derive(Debug)]
pub(crate) struct AheadNetns {
    netns: OwnedFd,
    sysfs: OwnedFd,
}

/// What the thread hands back: the namespace, and the open network's helper if asked for
/// (started or failed: a failure there is the sandbox's, not a reason to make no namespace).
type Made = (AheadNetns, Option<Result<NetworkHelper, NativeError>>);

/// The namespace (and, for the open network, its helper) being made. Dropped unfinished
/// (the sandbox failed before it needed them), it waits for the thread and stops the
/// helper, so that no helper runs on for nobody.
#[derive(Debug)]
pub(crate) struct Making(Option<JoinHandle<Result<Made, NativeError>>>);

impl Drop for Making {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take()
            && let Ok(Ok((_, Some(Ok(helper))))) = thread.join()
        {
            helper.stop();
        }
    }
}

impl Making {
    /// Starts making one, with the open network's helper once it exists when `open_network`;
    /// `None` where this process cannot (not root, or refused before).
    pub(crate) fn start(open_network: bool) -> Option<Making> {
        if !rustix::process::geteuid().is_root() || REFUSED.load(Ordering::Relaxed) {
            return None;
        }
        let cpus = cpus_here();
        let allowed = cpus.map(|(allowed, _)| allowed);
        let thread = std::thread::Builder::new()
            .name("ak-netns".into())
            .spawn(move || make(open_network, allowed))
            .ok()?;
        if let Some((allowed, here)) = &cpus {
            start_elsewhere(&thread, allowed, *here);
        }
        Some(Making(Some(thread)))
    }

    /// The namespace, or `None` when it could not be made here (the sandbox then makes its
    /// own, as every rootless one does); other failures (the helper's) are errors.
    pub(crate) fn finish(mut self) -> Result<Option<Made>, NativeError> {
        let Some(thread) = self.0.take() else {
            return Ok(None);
        };
        match thread.join() {
            Ok(Ok(made)) => Ok(Some(made)),
            Ok(Err(NativeError::Unavailable(reason))) => {
                REFUSED.store(true, Ordering::Relaxed);
                tracing::debug!("network namespaces are made by each sandbox: {reason}");
                Ok(None)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(NativeError::Network(
                "the thread making the network namespace panicked".into(),
            )),
        }
    }
}

impl AheadNetns {
    /// The sysfs mount for the child to move to its `/sys`.
    pub(crate) fn sysfs_fd(&self) -> RawFd {
        self.sysfs.as_raw_fd()
    }

    /// Runs `clone` with the calling thread in this namespace, so that the process it makes
    /// starts there; the thread is back in its own before this returns.
    pub(crate) fn clone_inside<T>(
        &self,
        clone: impl FnOnce() -> Result<T, NativeError>,
    ) -> Result<T, NativeError> {
        let own = own_netns()?;
        rustix::thread::move_into_link_name_space(
            self.netns.as_fd(),
            Some(LinkNameSpaceType::Network),
        )
        .map_err(|e| NativeError::io("enter the sandbox's network namespace")(e.into()))?;
        let cloned = clone();
        if let Err(error) =
            rustix::thread::move_into_link_name_space(own.as_fd(), Some(LinkNameSpaceType::Network))
        {
            // A thread of ours left in a sandbox's network would do the host's networking
            // there from now on; nothing sound can follow.
            tracing::error!("cannot return to the host's network namespace: {error}");
            std::process::abort();
        }
        cloned
    }
}

/// The CPUs this thread may run on, and which one it runs on now.
fn cpus_here() -> Option<(libc::cpu_set_t, usize)> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled in by the kernel.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let here = libc::sched_getcpu();
        if here < 0 || libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return None;
        }
        Some((allowed, here as usize))
    }
}

/// Moves a thread not yet running to the other CPUs than `here`. Left to the scheduler,
/// a new thread waits on its creator's CPU until the creator blocks (0.3-0.85 ms later on
/// this project's VMs, `perf` timelines), which is when the creator wants its result.
fn start_elsewhere<T>(thread: &JoinHandle<T>, allowed: &libc::cpu_set_t, here: usize) {
    use std::os::unix::thread::JoinHandleExt;
    let mut elsewhere = *allowed;
    // SAFETY: CPU_* on a local set; the thread is alive (not joined yet).
    unsafe {
        libc::CPU_CLR(here, &mut elsewhere);
        if libc::CPU_COUNT(&elsewhere) > 0 {
            libc::pthread_setaffinity_np(
                thread.as_pthread_t(),
                std::mem::size_of::<libc::cpu_set_t>(),
                &elsewhere,
            );
        }
    }
}

fn own_netns() -> Result<File, NativeError> {
    File::open("/proc/thread-self/ns/net")
        .map_err(NativeError::io("open this thread's network namespace"))
}

/// On its own thread: the namespace, then (back in the host's) the helper.
fn make(open_network: bool, allowed: Option<libc::cpu_set_t>) -> Result<Made, NativeError> {
    if let Some(allowed) = allowed {
        // Started on another CPU (`start_elsewhere`); from here on free to move again, so
        // that many at once (a daemon's burst) spread over every CPU, and the helper,
        // which inherits this thread's CPUs, gets all the caller's.
        // SAFETY: a valid set for this thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &allowed) };
    }
    let host = own_netns()?;
    // SAFETY: only the network namespace of this thread, which no other thread shares.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.map_err(|e| {
        NativeError::Unavailable(format!("cannot create a network namespace here: {e}"))
    })?;
    let inside = set_up_inside();
    // Back before anything else: the helper must reach the world from the host's network.
    rustix::thread::move_into_link_name_space(host.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| NativeError::io("return to the host's network namespace")(e.into()))?;
    let ahead = inside?;
    let helper = open_network.then(|| {
        // The helper opens the namespace through our descriptor, which stays open until it
        // has reported ready.
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            ahead.netns.as_raw_fd()
        ));
        NetworkHelper::start(HelperTarget::Netns(&path), HelperKind::Slirp)
    });
    Ok((ahead, helper))
}

/// In the new namespace: loopback, ICMP echo sockets, the sysfs instance.
fn set_up_inside() -> Result<AheadNetns, NativeError> {
    // What fails here fails for every sandbox of this host: they make their own instead.
    let unavailable =
        |what: &str, e: std::io::Error| NativeError::Unavailable(format!("{what}: {e}"));
    crate::child::loopback_up().map_err(|errno| {
        unavailable(
            "bring up loopback",
            std::io::Error::from_raw_os_error(errno),
        )
    })?;
    // A per-namespace setting: any group may open ICMP echo sockets, as distributions set
    // on the host, since the sandbox has no raw sockets here. Without it only `ping` fails.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647") {
        tracing::debug!("ICMP echo sockets stay root's in the sandbox: {e}");
    }
    let netns = own_netns()?.into();
    let sysfs = rustix::mount::fsopen("sysfs", FsOpenFlags::FSOPEN_CLOEXEC)
        .and_then(|fs| {
            rustix::mount::fsconfig_create(&fs)?;
            rustix::mount::fsmount(
                &fs,
                FsMountFlags::FSMOUNT_CLOEXEC,
                MountAttrFlags::MOUNT_ATTR_RDONLY
                    | MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NODEV
                    | MountAttrFlags::MOUNT_ATTR_NOEXEC,
            )
        })
        .map_err(|e| unavailable("mount the namespace's sysfs", e.into()))?;
    Ok(AheadNetns { netns, sysfs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Whether interface `name` is up in this thread's network namespace.
    fn is_up(name: &std::ffi::CStr) -> bool {
        // SAFETY: an ifreq zeroed and named, for SIOCGIFFLAGS on a socket of ours.
        unsafe {
            let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let mut request: libc::ifreq = std::mem::zeroed();
            for (slot, byte) in request.ifr_name.iter_mut().zip(name.to_bytes()) {
                *slot = *byte as libc::c_char;
            }
            let ok = libc::ioctl(socket, libc::SIOCGIFFLAGS as _, &mut request) == 0;
            libc::close(socket);
            ok && request.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0
        }
    }

    #[test]
    fn a_namespace_made_ahead_has_loopback_up_and_its_sysfs_and_the_caller_comes_home() {
        let Some(making) = Making::start(false) else {
            eprintln!("skipped: making a network namespace needs root");
            return;
        };
        let (ahead, helper) = making.finish().unwrap().expect("root makes one");
        assert!(helper.is_none());
        let home = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        let made = rustix::fs::fstat(&ahead.netns).unwrap().st_ino;
        assert_ne!(made, home, "a namespace of its own");
        let sysfs = rustix::fs::fstatfs(&ahead.sysfs).unwrap();
        assert_eq!(sysfs.f_type, libc::SYSFS_MAGIC);

        let child = ahead
            .clone_inside(|| {
                // SAFETY: the forked child only makes system calls and leaves with _exit.
                match unsafe { libc::fork() } {
                    0 => {
                        let inside = std::fs::metadata("/proc/self/ns/net")
                            .is_ok_and(|meta| meta.ino() == made);
                        let code = if inside && is_up(c"lo") { 0 } else { 1 };
                        // SAFETY: leaving without the parent's destructors.
                        unsafe { libc::_exit(code) }
                    }
                    pid if pid > 0 => Ok(pid),
                    _ => Err(NativeError::io("fork")(std::io::Error::last_os_error())),
                }
            })
            .unwrap();
        let back = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        assert_eq!(
            back, home,
            "the caller's thread is back in its own namespace"
        );
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child starts in the namespace, with loopback up"
        );
    }

    #[test]
    fn an_expected_run_takes_the_namespace_started_for_it_and_only_one_that_fits() {
        use ak_core::backend::Lifetime;
        use ak_core::{Backend, NetworkMode};
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: making a network namespace needs root");
            return;
        }
        let backend = crate::NativeBackend::new(PathBuf::from("/nonexistent/ak-agent"))
            .with_netns_ahead(true);
        let expected = |backend: &crate::NativeBackend| {
            backend
                .expected_netns
                .lock()
                .unwrap()
                .as_ref()
                .map(|(open, _)| *open)
        };
        let mut spec = ak_core::config::resolve(
            ak_core::config::SandboxOptions::default(),
            std::path::Path::new("/"),
            ak_core::spec::new_sandbox_id(),
        )
        .unwrap();
        spec.policy.network = NetworkMode::None;
        backend.expect_ephemeral(&spec);
        assert_eq!(expected(&backend), Some(false), "started by the hint");
        let making = backend.netns_for(&spec, Lifetime::Ephemeral).unwrap();
        assert_eq!(expected(&backend), None, "taken by the creation");
        let (_, helper) = making.finish().unwrap().expect("root makes one");
        assert!(helper.is_none(), "no helper without a network");

        // One made for another network is let go, and the creation gets its own.
        backend.expect_ephemeral(&spec);
        spec.policy.network = NetworkMode::Outbound;
        let making = backend.netns_for(&spec, Lifetime::Ephemeral).unwrap();
        assert_eq!(expected(&backend), None);
        let (_, helper) = making.finish().unwrap().expect("root makes one");
        helper.expect("the open network's helper").unwrap().stop();

        // A persistent sandbox leaves the hint's namespace alone (it makes its own).
        spec.policy.network = NetworkMode::None;
        backend.expect_ephemeral(&spec);
        assert!(backend.netns_for(&spec, Lifetime::Persistent).is_none());
        assert_eq!(expected(&backend), Some(false));
    }
}
