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
/// (non-blocking). The calling thread is back in its own namespace when this returns.
pub fn open_in(netns: &Path) -> Result<OwnedFd, EgressError> {
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
    let made = make_device();
    // Back home before anything else: every socket this process opens from now on must be
    // the host's. Failing to return would leave the helper connecting from inside the
    // sandbox, so it is an error however the device went.
    move_into_link_name_space(own.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| EgressError::io("return to the host's network namespace")(e.into()))?;
    made
}

fn make_device() -> Result<OwnedFd, EgressError> {
    let tun = rustix::fs::open(
        "/dev/net/tun",
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| EgressError::io("open /dev/net/tun")(e.into()))?;
    let mut request =
        ak_netif::ifreq(crate::DEVICE).map_err(EgressError::io("name the TUN device"))?;
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
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
