//! ak-netif: IPv4 interface configuration by ioctl (flags, address, netmask, default
//! route), as `ifconfig` and `route` do it. Shared by the guest agent (a VM's `lo` and
//! `eth0`), the native backend (a sandbox's `lo`, set up in a freshly cloned child) and the
//! microVM backend (the host side of a VM's tap).
//!
//! Our own, on purpose: rustix has none of these ioctls, and a netlink crate for an
//! address and a route is out of proportion. Nothing here allocates (errors are errno
//! values), so the native backend may call it between `clone` and `exec`.
//!
//! Request numbers are cast to `libc::Ioctl`: glibc's `ioctl` takes a `c_ulong` request,
//! musl's a `c_int`, and the agent is also built against musl
//! (`scripts/build-musl-agent.sh`).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// A datagram socket to configure interfaces through (of the network namespace it was
/// opened in).
#[derive(Debug)]
pub struct Interfaces {
    socket: OwnedFd,
}

impl Interfaces {
    pub fn open() -> io::Result<Interfaces> {
        let socket = rustix::net::socket_with(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        Ok(Interfaces { socket })
    }

    /// Sets interface `name` up (the kernel creates interfaces down), keeping its other flags.
    pub fn set_up(&self, name: &str) -> io::Result<()> {
        let mut request = ifreq(name)?;
        // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq it is given.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCGIFFLAGS as libc::Ioctl, &mut request) })?;
        // SAFETY: the kernel just wrote the flags member of the union.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads an ifreq.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &request) })
    }

    /// Gives interface `name` the IPv4 `address` with `netmask`.
    pub fn set_address(&self, name: &str, address: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
        let mut request = ifreq(name)?;
        request.ifr_ifru.ifru_addr = sockaddr(address);
        // SAFETY: SIOCSIFADDR reads an ifreq holding a sockaddr_in.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCSIFADDR as libc::Ioctl, &request) })?;
        request.ifr_ifru.ifru_netmask = sockaddr(netmask);
        // SAFETY: as above, for the netmask.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCSIFNETMASK as libc::Ioctl, &request) })
    }

    /// Sets the MTU of interface `name`.
    pub fn set_mtu(&self, name: &str, mtu: u16) -> io::Result<()> {
        let mut request = ifreq(name)?;
        request.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        // SAFETY: SIOCSIFMTU reads an ifreq holding the MTU.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCSIFMTU as libc::Ioctl, &request) })
    }

    /// Adds the default route through `gateway` (the interface is the one that reaches it).
    pub fn add_default_route(&self, gateway: Ipv4Addr) -> io::Result<()> {
        // SAFETY: rtentry is plain data; zeroed is a valid value for it (no device pointer:
        // the kernel finds the interface from the gateway).
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr(gateway);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // SAFETY: SIOCADDRT reads an rtentry.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCADDRT as libc::Ioctl, &route) })
    }

    fn fd(&self) -> libc::c_int {
        self.socket.as_raw_fd()
    }
}

/// Makes the tun or tap device behind `tun` (an open `/dev/net/tun` attached to it)
/// persistent or not: a persistent device outlives its last open file.
pub fn set_tun_persistent(tun: BorrowedFd<'_>, persistent: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument.
    check(unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(persistent),
        )
    })
}

/// An `ifreq` naming interface `name`: 1 to 15 bytes, no `/` (an `InvalidInput` error
/// otherwise).
pub fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value for it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(request)
}

/// A system call's -1 as the error it set.
pub fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size and both are plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("a-name-of-15-ch").is_ok());
        for bad in ["", "a-name-of-16-chr", "a/b"] {
            let error = ifreq(bad).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn addresses_are_in_network_order() {
        let raw = sockaddr(Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(raw.sa_family, libc::AF_INET as libc::sa_family_t);
        // sa_data: two bytes of port, then the address as it goes on the wire.
        let bytes: Vec<u8> = raw.sa_data[2..6].iter().map(|&b| b as u8).collect();
        assert_eq!(bytes, [10, 213, 0, 1]);
    }

    #[test]
    fn a_missing_interface_is_an_os_error() {
        let interfaces = Interfaces::open().unwrap();
        let error = interfaces.set_up("ak-no-such-if").unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENODEV));
    }
}
