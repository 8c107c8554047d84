//! A VM's tap device on the host: made persistent and owned by root (the hypervisor opens
//! it by name), given the host's address of the VM's /30 and brought up; deleted through
//! netlink, which works while a hypervisor still holds it (a tap takes a single opener, so
//! the tun device's own "persist off" needs the hypervisor gone first).
//!
//! Plain ioctls (the interface ones in `ak-netif`) and one netlink message: rustix has
//! neither the tun nor the interface address calls, and a netlink crate for one message
//! is out of proportion.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use ak_netif::check;

/// Creates tap `name` (failing if it exists), persistent, with `address`/`netmask`, up.
pub fn create(name: &str, address: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let mut request = ak_netif::ifreq(name)?;
    // IFF_TUN_EXCL: never adopt an existing interface of that name.
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as i16;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `request` is.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) })?;
    ak_netif::set_tun_persistent(tun.as_fd(), true)?;
    drop(tun);
    // The tap's IPv6 link-local address would be a second way to the host's services.
    let ipv6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if std::path::Path::new(&ipv6).exists() {
        std::fs::write(&ipv6, b"1")?;
    }
    let interfaces = ak_netif::Interfaces::open()?;
    interfaces.set_address(name, address, netmask)?;
    interfaces.set_up(name)
}

/// Deletes interface `name`; one that does not exist is no error.
pub fn delete(name: &str) -> io::Result<()> {
    let c_name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: c_name is a valid C string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Ok(());
    }
    #[repr(C)]
    struct Request {
        header: libc::nlmsghdr,
        link: libc::ifinfomsg,
    }
    // SAFETY: both are plain data; zeroed is a valid value for them.
    let mut message: Request = unsafe { std::mem::zeroed() };
    message.header.nlmsg_len = std::mem::size_of::<Request>() as u32;
    message.header.nlmsg_type = libc::RTM_DELLINK;
    message.header.nlmsg_flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    message.header.nlmsg_seq = 1;
    message.link.ifi_family = libc::AF_UNSPEC as u8;
    message.link.ifi_index = index as i32;
    // SAFETY: plain socket(2) call; the descriptor is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    check(raw)?;
    // SAFETY: raw is a fresh descriptor that nothing else owns.
    let socket: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) };
    // SAFETY: sends the bytes of `message`, which outlives the call (to the kernel: no
    // destination address needed).
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            (&raw const message).cast(),
            std::mem::size_of::<Request>(),
            0,
        )
    };
    check(sent as libc::c_int)?;
    #[repr(C)]
    struct Reply {
        header: libc::nlmsghdr,
        error: libc::nlmsgerr,
    }
    // SAFETY: plain data, zeroed is valid.
    let mut reply: Reply = unsafe { std::mem::zeroed() };
    // SAFETY: receives at most size_of::<Reply>() bytes into `reply` (longer replies
    // are truncated; the error code is at their start).
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            (&raw mut reply).cast(),
            std::mem::size_of::<Reply>(),
            0,
        )
    };
    check(received as libc::c_int)?;
    if reply.header.nlmsg_type != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other("unexpected netlink reply to RTM_DELLINK"));
    }
    match -reply.error.error {
        0 | libc::ENODEV => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}
