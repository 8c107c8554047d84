//! The agent as a microVM's init (`--guest`): it starts from the initramfs, mounts the
//! sandbox's read-only base image from the first virtio disk with a writable layer in
//! memory over it, moves into that root and mounts the kernel file systems. Runs before
//! any thread exists (it sets the environment).

use std::ffi::CStr;

use rustix::fs::Mode;
use rustix::mount::{MountFlags, mount, mount_move};

/// The disk holding the base image (the first virtio-blk device).
const BASE_DEVICE: &str = "/dev/vda";
/// File systems a base image may have, tried in order (the host builds ext4).
const BASE_FILE_SYSTEMS: [&str; 2] = ["ext4", "squashfs"];
/// The search path of commands in the guest (the kernel starts init with none).
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const HOSTNAME: &[u8] = b"sandbox";

/// Why the guest could not be set up (printed on the VM's console, which the host shows).
#[derive(Debug, thiserror::Error)]
#[error("guest set-up: {step}: {source}")]
pub(crate) struct GuestError {
    step: String,
    source: std::io::Error,
}

fn step<T>(what: impl Into<String>, result: rustix::io::Result<T>) -> Result<T, GuestError> {
    result.map_err(|errno| GuestError {
        step: what.into(),
        source: errno.into(),
    })
}

fn mkdir(path: &str) -> Result<(), GuestError> {
    match rustix::fs::mkdir(path, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => step(format!("mkdir {path}"), Err(e)),
    }
}

fn mount_fs(
    source: &str,
    target: &str,
    fs: &str,
    flags: MountFlags,
    data: Option<&CStr>,
) -> Result<(), GuestError> {
    mkdir(target)?;
    step(
        format!("mount {fs} on {target}"),
        mount(source, target, fs, flags, data),
    )
}

/// Builds the sandbox's root and enters it: base image (read-only) + tmpfs upper layer as
/// an overlay, then `/proc`, `/sys`, `/dev`, `/dev/pts`, `/dev/shm`, `/tmp`, `/run`, and
/// the working directory (which an image need not have).
pub(crate) fn enter_root(
    workdir: Option<&std::path::Path>,
    shares: &[crate::args::Share],
) -> Result<(), GuestError> {
    // In the initramfs (a writable ramfs holding only this program).
    mount_fs("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID, None)?;
    mkdir("/base")?;
    let mut mounted = Err(rustix::io::Errno::NODEV);
    for fs in BASE_FILE_SYSTEMS {
        mounted = mount(BASE_DEVICE, "/base", fs, MountFlags::RDONLY, None);
        if mounted.is_ok() {
            break;
        }
    }
    step(
        format!("mount the base image {BASE_DEVICE} (ext4 or squashfs)"),
        mounted,
    )?;
    mount_fs(
        "tmpfs",
        "/layer",
        "tmpfs",
        MountFlags::NOSUID,
        Some(c"mode=0755"),
    )?;
    mkdir("/layer/upper")?;
    mkdir("/layer/work")?;
    mount_fs(
        "overlay",
        "/root",
        "overlay",
        MountFlags::empty(),
        Some(c"lowerdir=/base,upperdir=/layer/upper,workdir=/layer/work"),
    )?;
    // The initramfs cannot be pivoted away from: move the new root over it and chroot
    // (what switch_root does). The initramfs stays, unreachable, holding this binary.
    step("chdir /root", rustix::process::chdir("/root"))?;
    step("move the root", mount_move(".", "/"))?;
    step("chroot", rustix::process::chroot("."))?;
    step("chdir /", rustix::process::chdir("/"))?;

    let nodev = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs("proc", "/proc", "proc", nodev, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nodev, None)?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID, None)?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"mode=0620,ptmxmode=0666"),
    )?;
    mount_fs("tmpfs", "/dev/shm", "tmpfs", nodev, Some(c"mode=1777"))?;
    mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"mode=1777"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"mode=0755"),
    )?;
    for share in shares {
        mount_share(share)?;
    }
    if let Some(workdir) = workdir {
        std::fs::create_dir_all(workdir).map_err(|source| GuestError {
            step: format!("create the workdir {}", workdir.display()),
            source,
        })?;
    }
    step("sethostname", rustix::system::sethostname(HOSTNAME))?;
    if let Err(e) = loopback_up() {
        // Programs that serve on localhost need it; the agent itself does not.
        tracing::warn!("cannot bring the loopback interface up: {e}");
    }
    // SAFETY: called before the runtime and any other thread exist (see `main_entry`), so
    // nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("PATH", GUEST_PATH);
        std::env::set_var("HOME", "/root");
    }
    Ok(())
}

/// Mounts a host directory the hypervisor shares over 9p (virtio transport).
fn mount_share(share: &crate::args::Share) -> Result<(), GuestError> {
    std::fs::create_dir_all(&share.path).map_err(|source| GuestError {
        step: format!("create the mount point {}", share.path.display()),
        source,
    })?;
    let flags = if share.writable {
        MountFlags::NOSUID | MountFlags::NODEV
    } else {
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::RDONLY
    };
    // 9p2000.L for Linux semantics; a large msize makes big reads and writes few messages.
    step(
        format!(
            "mount the shared directory {} ({})",
            share.path.display(),
            share.tag
        ),
        mount(
            share.tag.as_str(),
            &share.path,
            "9p",
            flags,
            Some(c"trans=virtio,version=9p2000.L,msize=262144,cache=none"),
        ),
    )
}

/// Sets `lo` up (the kernel creates it down).
fn loopback_up() -> std::io::Result<()> {
    // No library in the tree sets interface flags (rustix has no SIOCSIFFLAGS, and a
    // netlink crate for one flag is out of proportion): one ioctl on a datagram socket.
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value for it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCSIFFLAGS reads an ifreq, which `request` is, for the interface it names.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the VM: flushes the file systems and restarts, which the hypervisor (QEMU with
/// `-no-reboot`, Firecracker) turns into its exit. Never returns.
pub(crate) fn power_off() -> ! {
    rustix::fs::sync();
    let error = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    // Only reached if the reboot was refused; PID 1 exiting panics the kernel, which
    // `panic=-1` also turns into an exit.
    tracing::error!("reboot failed: {error:?}");
    std::process::exit(1)
}
