//! The sandbox's TUN device: made inside the sandbox's network namespace by this process
//! (which enters that namespace for the moment it takes, then returns), configured as the
//! sandbox's only way out, and held here.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::error::EgressError;

/// Opens `tun0` in the network namespace at `netns` (`/proc/PID/ns/net` or a bound
/// namespace file), gives it the sandbox's address and default route, and returns it
/// (non-blocking). Root enters the namespace on this thread and returns; anyone else must
/// enter the sandbox's user namespace `userns` first, which cannot be undone, so a forked
/// child does that and hands the device back over a socket pair (as `slirp4netns` does).
/// Call before any other thread exists. `ethernet`: a TAP device instead, for a sandbox
/// whose network stack speaks Ethernet (see [`crate::ethernet`]).
pub fn open_in(
    netns: &Path,
    userns: Option<&Path>,
    ethernet: bool,
) -> Result<OwnedFd, EgressError> {
    match userns {
        Some(userns) if !rustix::process::geteuid().is_root() => {
            open_in_child(netns, userns, ethernet)
        }
        _ => open_here(netns, ethernet),
    }
}

/// [`open_in`] through a forked child that enters `userns`, then `netns`.
fn open_in_child(netns: &Path, userns: &Path, ethernet: bool) -> Result<OwnedFd, EgressError> {
    use rustix::net::{
        AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
    };
    use std::io::{IoSlice, IoSliceMut};
    use std::mem::MaybeUninit;

    let open = |path: &Path| {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| EgressError::io(format!("open {}", path.display()))(e.into()))
    };
    let (user_fd, net_fd) = (open(userns)?, open(netns)?);
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| EgressError::io("make a socket pair")(e.into()))?;
    // SAFETY: this process has one thread (the caller's promise), so the child may do
    // anything the parent could; it leaves with _exit, never returning here.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(EgressError::io("fork")(std::io::Error::last_os_error()));
    }
    if child == 0 {
        let made = move_into_link_name_space(user_fd.as_fd(), Some(LinkNameSpaceType::User))
            .map_err(|e| EgressError::io(format!("enter {}", userns.display()))(e.into()))
            .and_then(|()| {
                move_into_link_name_space(net_fd.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| EgressError::io(format!("enter {}", netns.display()))(e.into()))
            })
            .and_then(|()| make_device(ethernet));
        let code = match made {
            Ok(tun) => {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                let fds = [tun.as_fd()];
                control.push(SendAncillaryMessage::ScmRights(&fds));
                let sent = sendmsg(
                    &theirs,
                    &[IoSlice::new(b"t")],
                    &mut control,
                    SendFlags::empty(),
                );
                i32::from(sent.is_err())
            }
            Err(error) => {
                let message = error.to_string();
                let _ = rustix::io::write(&theirs, message.as_bytes());
                1
            }
        };
        // SAFETY: ends the child without running the parent's destructors or atexit.
        unsafe { libc::_exit(code) };
    }
    drop(theirs);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buffer = [0u8; 512];
    let received = recvmsg(
        &ours,
        &mut [IoSliceMut::new(&mut buffer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    );
    let mut tun = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                tun.get_or_insert(fd);
            }
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(child, &mut status, 0) };
    match (tun, received) {
        (Some(tun), _) => Ok(tun),
        (None, Ok(message)) => Err(EgressError::Child(
            String::from_utf8_lossy(&buffer[..message.bytes]).into_owned(),
        )),
        (None, Err(e)) => Err(EgressError::io("receive the TUN device")(e.into())),
    }
}

fn open_here(netns: &Path, ethernet: bool) -> Result<OwnedFd, EgressError> {
    let own = rustix::fs::open(
        "/proc/thread-self/ns/net",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| EgressError::io("open this thread's network namespace")(e.into()))?;
    let target = rustix::fs::open(netns, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| EgressError::io(format!("open {}", netns.display()))(e.into()))?;
    move_into_link_name_space(target.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| EgressError::io(format!("enter {}", netns.display()))(e.into()))?;
    let made = make_device(ethernet);
    // Back home before anything else: every socket this process opens from now on must be
    // the host's. Failing to return would leave the helper connecting from inside the
    // sandbox, so it is an error however the device went.
    move_into_link_name_space(own.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| EgressError::io("return to the host's network namespace")(e.into()))?;
    made
}

fn make_device(ethernet: bool) -> Result<OwnedFd, EgressError> {
    let tun = rustix::fs::open(
        "/dev/net/tun",
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| EgressError::io("open /dev/net/tun")(e.into()))?;
    let mut request =
        ak_netif::ifreq(crate::DEVICE).map_err(EgressError::io("name the TUN device"))?;
    let kind = if ethernet {
        libc::IFF_TAP
    } else {
        libc::IFF_TUN
    };
    request.ifr_ifru.ifru_flags = (kind | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq naming the device and its flags.
    ak_netif::check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &request) })
        .map_err(EgressError::io("create the TUN device"))?;
    let interfaces = ak_netif::Interfaces::open().map_err(EgressError::io("open a socket"))?;
    let configure = || -> std::io::Result<()> {
        interfaces.set_mtu(crate::DEVICE, crate::MTU)?;
        interfaces.set_address(
            crate::DEVICE,
            crate::SANDBOX_ADDRESS,
            Ipv4Addr::new(255, 255, 255, 0),
        )?;
        interfaces.set_up(crate::DEVICE)?;
        interfaces.add_default_route(crate::GATEWAY)
    };
    configure().map_err(EgressError::io("configure the TUN device"))?;
    Ok(tun)
}

/// The host's own addresses (of every interface of this network namespace): a sandbox
/// reaches them only through an allowed CIDR or an exactly named host.
pub fn host_addresses() -> std::collections::HashSet<IpAddr> {
    let mut found = std::collections::HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        tracing::warn!(
            "cannot list the host's addresses ({}); they are denied only as private or loopback ones",
            std::io::Error::last_os_error()
        );
        return found;
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let inet = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                found.insert(IpAddr::from(
                    u32::from_be(inet.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let inet6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                found.insert(IpAddr::from(inet6.sin6_addr.s6_addr));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: freed once, after the last use.
    unsafe { libc::freeifaddrs(list) };
    found
}
