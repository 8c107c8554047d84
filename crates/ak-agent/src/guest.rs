//! The agent as a microVM's init (`--guest`): it starts from the initramfs, mounts the
//! sandbox's read-only base image from the first virtio disk with a writable layer in
//! memory over it, moves into that root and mounts the kernel file systems. Runs before
//! any thread exists (it sets the environment).

use std::ffi::CStr;
use std::net::Ipv4Addr;

use rustix::fs::Mode;
use rustix::mount::{MountFlags, mount, mount_bind, mount_move, mount_remount};

/// The disk holding the base image (the first virtio-blk device).
const BASE_DEVICE: &str = "/dev/vda";
/// The disk holding a named sandbox's writable layer (`--layer-disk`: the second
/// virtio-blk device, ext4 made by the host).
const LAYER_DEVICE: &str = "/dev/vdb";
/// File systems a base image may have, tried in order (the host builds ext4).
const BASE_FILE_SYSTEMS: [&str; 2] = ["ext4", "squashfs"];
/// The search path of commands in the guest (the kernel starts init with none).
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const HOSTNAME: &[u8] = b"sandbox";
/// The VM's network device (the only virtio-net device, when the host gives one).
const NIC: &str = "eth0";

/// Milliseconds since the guest's kernel started (CLOCK_BOOTTIME).
fn since_boot_ms() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return f64::NAN;
    }
    now.tv_sec as f64 * 1e3 + now.tv_nsec as f64 / 1e6
}

/// The guest's start-up steps reached so far, with the time since the kernel started:
/// kept in memory and logged in one line once the agent is ready (`AK_AGENT_LOG=debug` on
/// the kernel command line), since a console line per step would itself cost the boot
/// milliseconds under emulation. The host's clock cannot tell the kernel's part of a boot
/// from ours; this can.
static STEPS: std::sync::Mutex<Vec<(&'static str, f64)>> = std::sync::Mutex::new(Vec::new());

/// Notes that the guest's start-up reached `step`.
pub(crate) fn reached(step: &'static str) {
    let at = since_boot_ms();
    if let Ok(mut steps) = STEPS.lock() {
        steps.push((step, at));
    }
}

/// Logs the steps noted so far (at debug level) and forgets them.
pub(crate) fn log_steps() {
    let Ok(mut steps) = STEPS.lock() else {
        return;
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        let mut previous = None;
        let line: Vec<String> = steps
            .iter()
            .map(|(step, at)| {
                let took = previous.map_or(String::new(), |p: f64| format!(" (+{:.1})", at - p));
                previous = Some(*at);
                format!("{step} {at:.1}{took}")
            })
            .collect();
        tracing::debug!("guest start-up, ms since boot: {}", line.join("; "));
    }
    steps.clear();
}

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

/// Builds the sandbox's root and enters it: base image (read-only) + an upper layer (a
/// tmpfs, or the layer disk when `layer_disk`) as an overlay, then `/proc`, `/sys`, `/dev`, `/dev/pts`, `/dev/shm`, `/tmp`, `/run`, and
/// the working directory (which an image need not have).
pub(crate) fn enter_root(
    workdir: Option<&std::path::Path>,
    shares: &[crate::args::Share],
    layer_disk: bool,
) -> Result<(), GuestError> {
    // In the initramfs (a writable ramfs holding only this program).
    mount_fs("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID, None)?;
    reached("devtmpfs mounted in the initramfs");
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
    reached("base image mounted");
    if layer_disk {
        // Kept by the host across stops and copied by its snapshots, taken between two
        // instructions (the vCPUs stopped): with every write journalled, data included,
        // the copy's journal recovers a state the guest really had (an ordered-data
        // file system can come back with an appended file's new size before its data,
        // zeros at its end; measured).
        mount_fs(
            LAYER_DEVICE,
            "/layer",
            "ext4",
            MountFlags::NOSUID,
            Some(c"data=journal"),
        )?;
    } else {
        mount_fs(
            "tmpfs",
            "/layer",
            "tmpfs",
            MountFlags::NOSUID,
            Some(c"mode=0755"),
        )?;
    }
    mkdir("/layer/upper")?;
    mkdir("/layer/work")?;
    reached("layer mounted");
    mount_fs(
        "overlay",
        "/root",
        "overlay",
        MountFlags::empty(),
        Some(c"lowerdir=/base,upperdir=/layer/upper,workdir=/layer/work"),
    )?;
    reached("overlay mounted");
    // The initramfs cannot be pivoted away from: move the new root over it and chroot
    // (what switch_root does). The initramfs stays, unreachable, holding this binary.
    step("chdir /root", rustix::process::chdir("/root"))?;
    step("move the root", mount_move(".", "/"))?;
    step("chroot", rustix::process::chroot("."))?;
    step("chdir /", rustix::process::chdir("/"))?;
    reached("root moved");

    let nodev = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs("proc", "/proc", "proc", nodev, None)?;
    reached("proc mounted");
    mount_fs("sysfs", "/sys", "sysfs", nodev, None)?;
    reached("sysfs mounted");
    mount_fs("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID, None)?;
    reached("devtmpfs mounted");
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"mode=0620,ptmxmode=0666"),
    )?;
    reached("devpts mounted");
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
    reached("tmpfs on /dev/shm /tmp /run mounted");
    for share in shares {
        mount_share(share)?;
    }
    if let Some(workdir) = workdir {
        std::fs::create_dir_all(workdir).map_err(|source| GuestError {
            step: format!("create the workdir {}", workdir.display()),
            source,
        })?;
    }
    reached("shares and workdir ready");
    step("sethostname", rustix::system::sethostname(HOSTNAME))?;
    reached("hostname set");
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
    reached("loopback up");
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

/// Where the guest's trust bundle is written (on the `/run` tmpfs, before any command).
const TRUST_BUNDLE: &str = "/run/.agentkernel-trust.pem";

/// Makes the sandbox's trust bundle from the guest's own system roots and the sandbox CA
/// (see [`crate::args::TrustBundle`]): the host wrote a bundle of the CA alone, since it
/// cannot read the guest image's roots. The file is bound read-only over the shared
/// bundle and over the system bundle when that is a regular file (never made).
pub(crate) fn trust_bundle(trust: &crate::args::TrustBundle) -> Result<(), GuestError> {
    let io = |step: String| move |source| GuestError { step, source };
    let ca = std::fs::read(&trust.ca).map_err(io(format!("read {}", trust.ca.display())))?;
    // The roots through any links (Alpine's bundle is reached through one).
    let mut text = match std::fs::read(&trust.system) {
        Ok(roots) => roots,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(format!("read {}", trust.system.display()))(e)),
    };
    // Roots, then the CA: the order `ak_egress::provision::bundle` makes on the host.
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(&ca);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(TRUST_BUNDLE)
            .and_then(|mut file| file.write_all(&text))
            .map_err(io(format!("write {TRUST_BUNDLE}")))?;
    }
    let system_is_file = std::fs::symlink_metadata(&trust.system).is_ok_and(|m| m.is_file());
    let targets = std::iter::once(&trust.bundle).chain(system_is_file.then_some(&trust.system));
    for target in targets {
        step(
            format!("bind the trust bundle over {}", target.display()),
            mount_bind(TRUST_BUNDLE, target),
        )?;
        step(
            format!("make {} read-only", target.display()),
            mount_remount(
                target,
                MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
                c"",
            ),
        )?;
    }
    reached("trust bundle made");
    Ok(())
}

/// Sets `lo` up.
fn loopback_up() -> std::io::Result<()> {
    ak_netif::Interfaces::open()?.set_up("lo")
}

/// Configures the VM's network device from `--net` (address, up, default route through
/// the host) and writes `/etc/resolv.conf` with the host's nameservers; with none, the
/// image's own file stays (the host warned that the VM has no DNS).
pub(crate) fn network_up(
    net: &crate::args::Net,
    nameservers: &[Ipv4Addr],
) -> Result<(), GuestError> {
    let failed = |what: String| move |source| GuestError { step: what, source };
    configure_nic(net).map_err(failed(format!(
        "configure {NIC} as {}/{} via {}",
        net.address, net.prefix, net.gateway
    )))?;
    if nameservers.is_empty() {
        return Ok(());
    }
    let text: String = nameservers
        .iter()
        .map(|ns| format!("nameserver {ns}\n"))
        .collect();
    // The image's file may be a link (to systemd-resolved's): replaced, not followed.
    match std::fs::remove_file("/etc/resolv.conf") {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed("replace /etc/resolv.conf".into())(e)),
    }
    std::fs::write("/etc/resolv.conf", text).map_err(failed("write /etc/resolv.conf".into()))
}

fn configure_nic(net: &crate::args::Net) -> std::io::Result<()> {
    let interfaces = ak_netif::Interfaces::open()?;
    interfaces.set_address(NIC, net.address, net.netmask())?;
    interfaces.set_up(NIC)?;
    interfaces.add_default_route(net.gateway)
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
