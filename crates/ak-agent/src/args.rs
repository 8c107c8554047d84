//! Command-line parsing, by hand: the agent starts on every sandbox run and must stay small.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Printed with every argument error.
pub(crate) const USAGE: &str = "usage: ak-agent (--fd N | --listen PATH | --listen-once PATH | --listen-fd N | --vsock PORT | --vsock-once PORT | --vsock-connect PORT | --serial N | --serial-once) [--hold-fd N] [--workdir DIR] [--seccomp FILE] [--guest] [--ready-port PORT] [--share TAG:PATH:rw|ro]... [--layer-disk] [--net ADDRESS/PREFIX,GATEWAY [--nameserver ADDRESS]...] [--trust-bundle CA,BUNDLE,SYSTEM]";

/// Where the host's connections come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One already connected Unix stream socket, inherited as this file descriptor.
    Fd(i32),
    /// A Unix socket listener to create at this path; every connection is served.
    Listen(PathBuf),
    /// A Unix socket listener to create at this path for exactly one connection (a
    /// container's one-shot sandbox): the agent ends when that connection closes.
    ListenOnce(PathBuf),
    /// A listening Unix socket the host created, inherited as this file descriptor; every
    /// connection is served.
    ListenFd(i32),
    /// A vsock listener on this port (inside a microVM); every connection is served.
    Vsock(u32),
    /// A vsock listener on this port for exactly one connection (a one-shot microVM): the
    /// agent, and with it the VM, ends when that connection closes.
    VsockOnce(u32),
    /// Connect to the host (vsock CID 2) on this port and serve that one connection (a
    /// one-shot microVM): the connection is both the host's sign that the agent is ready
    /// and its transport, which saves a second connection's set-up through the vsock
    /// device at every boot. The agent, and with it the VM, ends when it closes.
    VsockConnect(u32),
    /// A microVM's virtio-serial ports (`--serial N`: the control port and N data ports,
    /// each carrying one host connection at a time): the channel of VMs that can be saved
    /// with their memory, which vsock through vhost-user cannot.
    Serial(u32),
    /// A one-shot microVM started from a memory state (`--serial-once`): the control port
    /// and one data port, whose first host connection is served; the agent, and with it
    /// the VM, ends when that connection closes. A VM booted so serves nothing until it is
    /// saved (a template) and restored: every restored copy serves one command.
    SerialOnce,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Args {
    pub(crate) mode: Mode,
    /// An inherited descriptor kept open (never used) for the agent's whole life: the host
    /// holds a lock through it that tells it the sandbox still runs.
    pub(crate) hold_fd: Option<i32>,
    pub(crate) workdir: Option<PathBuf>,
    /// Seccomp filters to install before serving (see `seccomp.rs`).
    pub(crate) seccomp: Option<PathBuf>,
    /// Be a microVM's init: build the sandbox's root from the base disk first, and power
    /// the VM off at exit.
    pub(crate) guest: bool,
    /// Once listening, connect to the host (vsock CID 2) on this port and close: the host
    /// learns the agent is ready without polling.
    pub(crate) ready_port: Option<u32>,
    /// Host directories the VM's hypervisor shares over 9p, mounted by a `--guest` agent.
    pub(crate) shares: Vec<Share>,
    /// The root's writable layer is the second virtio disk (ext4, kept by the host for a
    /// named sandbox), not memory (`--guest` only).
    pub(crate) layer_disk: bool,
    /// The VM's network device (`eth0`), configured by a `--guest` agent.
    pub(crate) net: Option<Net>,
    /// Written to the guest's `/etc/resolv.conf` (needs `--net`).
    pub(crate) nameservers: Vec<Ipv4Addr>,
    /// A sandbox with secrets (`--guest` only): the guest's own trust bundle is made.
    pub(crate) trust_bundle: Option<TrustBundle>,
}

/// `--trust-bundle CA,BUNDLE,SYSTEM`: once the shares are mounted, the guest's system
/// roots (SYSTEM, its links followed) and the sandbox CA (the file CA, in a share) are
/// written to a file on `/run`, which is bound read-only over BUNDLE (the host's bundle in
/// the share, which lacks the guest's roots: the host cannot read them) and over SYSTEM
/// when that is a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustBundle {
    pub(crate) ca: PathBuf,
    pub(crate) bundle: PathBuf,
    pub(crate) system: PathBuf,
}

/// `--net ADDRESS/PREFIX,GATEWAY`: `eth0`'s address and the default route's gateway, which
/// is inside its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Net {
    pub(crate) address: Ipv4Addr,
    pub(crate) prefix: u8,
    pub(crate) gateway: Ipv4Addr,
}

impl Net {
    pub(crate) fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }
}

/// One `--share TAG:PATH:rw|ro`: the 9p device tagged TAG mounted at PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) tag: String,
    pub(crate) path: PathBuf,
    pub(crate) writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ArgsError {
    #[error("help requested")]
    Help,
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} given more than once")]
    Repeated(&'static str),
    #[error("{0} needs a non-negative file descriptor number, not {1:?}")]
    BadFd(&'static str, String),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} needs a port number, not {1:?}")]
    BadPort(&'static str, String),
    #[error(
        "only one of --fd, --listen, --listen-once, --listen-fd, --vsock, --vsock-once, --vsock-connect, --serial and --serial-once can be used"
    )]
    ConflictingModes,
    #[error(
        "one of --fd N, --listen PATH, --listen-once PATH, --listen-fd N, --vsock PORT, --vsock-once PORT, --vsock-connect PORT, --serial N or --serial-once is required"
    )]
    NoMode,
    #[error("--serial needs a number of data ports from 1 to {max}, not {0:?}", max = ak_protocol::serial::MAX_DATA_PORTS)]
    BadSerial(String),
    #[error("--ready-port is only for --vsock and --vsock-once")]
    ReadyPortWithoutVsock,
    #[error("--share needs TAG:/ABSOLUTE/PATH:rw or :ro, not {0:?}")]
    BadShare(String),
    #[error("--share is only for --guest")]
    ShareWithoutGuest,
    #[error("--layer-disk is only for --guest")]
    LayerDiskWithoutGuest,
    #[error(
        "--net needs ADDRESS/PREFIX,GATEWAY (IPv4, prefix 1-30, the gateway in the network and not the address), not {0:?}"
    )]
    BadNet(String),
    #[error("--net is only for --guest")]
    NetWithoutGuest,
    #[error("--nameserver needs an IPv4 address, not {0:?}")]
    BadNameserver(String),
    #[error("--nameserver is only for --net")]
    NameserverWithoutNet,
    #[error("--trust-bundle needs three absolute paths CA,BUNDLE,SYSTEM, not {0:?}")]
    BadTrustBundle(String),
    #[error("--trust-bundle is only for --guest")]
    TrustBundleWithoutGuest,
}

/// Parses the arguments after the program name.
pub(crate) fn parse<I>(args: I) -> Result<Args, ArgsError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut args = args.into_iter();
    let mut fd = None;
    let mut listen = None;
    let mut listen_once = None;
    let mut listen_fd = None;
    let mut hold_fd = None;
    let mut workdir = None;
    let mut seccomp = None;
    let mut vsock = None;
    let mut vsock_once = None;
    let mut vsock_connect = None;
    let mut ready_port = None;
    let mut serial = None;
    let mut serial_once = None;
    let mut guest = false;
    let mut layer_disk = false;
    let mut shares = Vec::new();
    let mut net = None;
    let mut nameservers = Vec::new();
    let mut trust_bundle = None;
    while let Some(arg) = args.next() {
        let text = arg
            .to_str()
            .ok_or_else(|| ArgsError::Unknown(arg.to_string_lossy().into_owned()))?;
        // Both `--opt value` and `--opt=value` are accepted.
        let (name, inline) = match text.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(OsString::from(value))),
            _ => (text, None),
        };
        let mut value = |option: &'static str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(ArgsError::MissingValue(option))
        };
        match name {
            "-h" | "--help" => return Err(ArgsError::Help),
            "--fd" => set_once(&mut fd, fd_number(value("--fd")?, "--fd")?, "--fd")?,
            "--listen-fd" => set_once(
                &mut listen_fd,
                fd_number(value("--listen-fd")?, "--listen-fd")?,
                "--listen-fd",
            )?,
            "--hold-fd" => set_once(
                &mut hold_fd,
                fd_number(value("--hold-fd")?, "--hold-fd")?,
                "--hold-fd",
            )?,
            "--listen" => set_once(&mut listen, PathBuf::from(value("--listen")?), "--listen")?,
            "--listen-once" => set_once(
                &mut listen_once,
                PathBuf::from(value("--listen-once")?),
                "--listen-once",
            )?,
            "--vsock" => set_once(&mut vsock, port(value("--vsock")?, "--vsock")?, "--vsock")?,
            "--vsock-once" => set_once(
                &mut vsock_once,
                port(value("--vsock-once")?, "--vsock-once")?,
                "--vsock-once",
            )?,
            "--vsock-connect" => set_once(
                &mut vsock_connect,
                port(value("--vsock-connect")?, "--vsock-connect")?,
                "--vsock-connect",
            )?,
            "--serial" => set_once(&mut serial, serial_ports(value("--serial")?)?, "--serial")?,
            "--serial-once" => set_once(&mut serial_once, (), "--serial-once")?,
            "--ready-port" => set_once(
                &mut ready_port,
                port(value("--ready-port")?, "--ready-port")?,
                "--ready-port",
            )?,
            "--share" => shares.push(share(value("--share")?)?),
            "--net" => set_once(&mut net, network(value("--net")?)?, "--net")?,
            "--trust-bundle" => set_once(
                &mut trust_bundle,
                trust(value("--trust-bundle")?)?,
                "--trust-bundle",
            )?,
            "--nameserver" => {
                let raw = value("--nameserver")?;
                let raw = raw.to_str().ok_or(ArgsError::NotUtf8("--nameserver"))?;
                nameservers.push(
                    raw.parse()
                        .map_err(|_| ArgsError::BadNameserver(raw.to_string()))?,
                );
            }
            "--layer-disk" if inline.is_none() => {
                if std::mem::replace(&mut layer_disk, true) {
                    return Err(ArgsError::Repeated("--layer-disk"));
                }
            }
            "--guest" if inline.is_none() => {
                if std::mem::replace(&mut guest, true) {
                    return Err(ArgsError::Repeated("--guest"));
                }
            }
            "--seccomp" => {
                set_once(
                    &mut seccomp,
                    PathBuf::from(value("--seccomp")?),
                    "--seccomp",
                )?;
            }
            "--workdir" => {
                set_once(
                    &mut workdir,
                    PathBuf::from(value("--workdir")?),
                    "--workdir",
                )?;
            }
            _ => return Err(ArgsError::Unknown(text.to_string())),
        }
    }

    let modes = [
        fd.map(Mode::Fd),
        listen.map(Mode::Listen),
        listen_once.map(Mode::ListenOnce),
        listen_fd.map(Mode::ListenFd),
        vsock.map(Mode::Vsock),
        vsock_once.map(Mode::VsockOnce),
        vsock_connect.map(Mode::VsockConnect),
        serial.map(Mode::Serial),
        serial_once.map(|()| Mode::SerialOnce),
    ];
    let mut given = modes.into_iter().flatten();
    let mode = given.next().ok_or(ArgsError::NoMode)?;
    if given.next().is_some() {
        return Err(ArgsError::ConflictingModes);
    }
    if ready_port.is_some() && !matches!(mode, Mode::Vsock(_) | Mode::VsockOnce(_)) {
        return Err(ArgsError::ReadyPortWithoutVsock);
    }
    if !shares.is_empty() && !guest {
        return Err(ArgsError::ShareWithoutGuest);
    }
    if layer_disk && !guest {
        return Err(ArgsError::LayerDiskWithoutGuest);
    }
    if net.is_some() && !guest {
        return Err(ArgsError::NetWithoutGuest);
    }
    if trust_bundle.is_some() && !guest {
        return Err(ArgsError::TrustBundleWithoutGuest);
    }
    if !nameservers.is_empty() && net.is_none() {
        return Err(ArgsError::NameserverWithoutNet);
    }
    Ok(Args {
        mode,
        hold_fd,
        workdir,
        seccomp,
        guest,
        ready_port,
        shares,
        layer_disk,
        net,
        nameservers,
        trust_bundle,
    })
}

fn trust(raw: OsString) -> Result<TrustBundle, ArgsError> {
    let raw = raw.to_str().ok_or(ArgsError::NotUtf8("--trust-bundle"))?;
    let paths: Vec<&str> = raw.split(',').collect();
    match paths[..] {
        [ca, bundle, system] if paths.iter().all(|p| p.starts_with('/')) => Ok(TrustBundle {
            ca: PathBuf::from(ca),
            bundle: PathBuf::from(bundle),
            system: PathBuf::from(system),
        }),
        _ => Err(ArgsError::BadTrustBundle(raw.to_string())),
    }
}

fn network(raw: OsString) -> Result<Net, ArgsError> {
    let raw = raw.to_str().ok_or(ArgsError::NotUtf8("--net"))?;
    let bad = || ArgsError::BadNet(raw.to_string());
    let (cidr, gateway) = raw.split_once(',').ok_or_else(bad)?;
    let (address, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let net = Net {
        address: address.parse().map_err(|_| bad())?,
        prefix: prefix.parse().map_err(|_| bad())?,
        gateway: gateway.parse().map_err(|_| bad())?,
    };
    let mask = u32::from(net.netmask());
    let same_network = u32::from(net.address) & mask == u32::from(net.gateway) & mask;
    if !(1..=30).contains(&net.prefix) || !same_network || net.address == net.gateway {
        return Err(bad());
    }
    Ok(net)
}

fn fd_number(raw: OsString, option: &'static str) -> Result<i32, ArgsError> {
    let raw = raw.to_str().ok_or(ArgsError::NotUtf8(option))?;
    raw.parse::<i32>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ArgsError::BadFd(option, raw.to_string()))
}

fn port(raw: OsString, option: &'static str) -> Result<u32, ArgsError> {
    let raw = raw.to_str().ok_or(ArgsError::NotUtf8(option))?;
    raw.parse::<u32>()
        .map_err(|_| ArgsError::BadPort(option, raw.to_string()))
}

fn serial_ports(raw: OsString) -> Result<u32, ArgsError> {
    let raw = raw.to_str().ok_or(ArgsError::NotUtf8("--serial"))?;
    raw.parse::<u32>()
        .ok()
        .filter(|n| (1..=ak_protocol::serial::MAX_DATA_PORTS).contains(n))
        .ok_or_else(|| ArgsError::BadSerial(raw.to_string()))
}

fn share(raw: OsString) -> Result<Share, ArgsError> {
    let raw = raw.to_str().ok_or(ArgsError::NotUtf8("--share"))?;
    let bad = || ArgsError::BadShare(raw.to_string());
    let (tag, rest) = raw.split_once(':').ok_or_else(bad)?;
    let (path, access) = rest.rsplit_once(':').ok_or_else(bad)?;
    let writable = match access {
        "rw" => true,
        "ro" => false,
        _ => return Err(bad()),
    };
    if tag.is_empty() || !path.starts_with('/') {
        return Err(bad());
    }
    Ok(Share {
        tag: tag.to_string(),
        path: PathBuf::from(path),
        writable,
    })
}

fn set_once<T>(slot: &mut Option<T>, value: T, option: &'static str) -> Result<(), ArgsError> {
    if slot.replace(value).is_some() {
        return Err(ArgsError::Repeated(option));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Args, ArgsError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn fd_mode() {
        let args = parse_strs(&["--fd", "3"]).unwrap();
        assert_eq!(args.mode, Mode::Fd(3));
        assert_eq!(args.hold_fd, None);
        assert_eq!(args.workdir, None);
    }

    #[test]
    fn listen_fd_mode_with_a_held_fd() {
        let args = parse_strs(&["--listen-fd", "3", "--hold-fd=4", "--workdir", "/w"]).unwrap();
        assert_eq!(args.mode, Mode::ListenFd(3));
        assert_eq!(args.hold_fd, Some(4));
        assert_eq!(args.workdir, Some("/w".into()));
        assert_eq!(
            parse_strs(&["--listen-fd", "3", "--hold-fd", "4", "--hold-fd", "5"]),
            Err(ArgsError::Repeated("--hold-fd"))
        );
    }

    #[test]
    fn listen_mode_with_workdir_in_both_spellings() {
        let args = parse_strs(&["--listen=/run/ak.sock", "--workdir", "/work"]).unwrap();
        assert_eq!(args.mode, Mode::Listen("/run/ak.sock".into()));
        assert_eq!(args.workdir, Some("/work".into()));
        let args = parse_strs(&["--workdir=/w", "--listen", "/s"]).unwrap();
        assert_eq!(args.mode, Mode::Listen("/s".into()));
        assert_eq!(args.workdir, Some("/w".into()));
    }

    #[test]
    fn listen_once_mode() {
        let args = parse_strs(&["--listen-once", "/s/agent.sock"]).unwrap();
        assert_eq!(args.mode, Mode::ListenOnce("/s/agent.sock".into()));
        assert_eq!(
            parse_strs(&["--listen-once", "/a", "--listen", "/b"]),
            Err(ArgsError::ConflictingModes)
        );
    }

    #[test]
    fn serial_mode_takes_a_bounded_number_of_ports() {
        let args = parse_strs(&["--guest", "--serial", "8"]).unwrap();
        assert_eq!(args.mode, Mode::Serial(8));
        for bad in ["0", "17", "x", "-1"] {
            assert_eq!(
                parse_strs(&["--serial", bad]),
                Err(ArgsError::BadSerial(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_strs(&["--serial", "8", "--vsock", "1024"]),
            Err(ArgsError::ConflictingModes)
        );
        assert_eq!(
            parse_strs(&["--serial", "8", "--ready-port", "1025"]),
            Err(ArgsError::ReadyPortWithoutVsock)
        );
        let args = parse_strs(&["--guest", "--serial-once"]).unwrap();
        assert_eq!(args.mode, Mode::SerialOnce);
        assert_eq!(
            parse_strs(&["--serial-once", "--serial", "1"]),
            Err(ArgsError::ConflictingModes)
        );
        assert_eq!(
            parse_strs(&["--serial-once", "--serial-once"]),
            Err(ArgsError::Repeated("--serial-once"))
        );
    }

    #[test]
    fn vsock_modes_for_a_microvm() {
        let args = parse_strs(&["--vsock", "1024", "--guest", "--ready-port=1025"]).unwrap();
        assert_eq!(args.mode, Mode::Vsock(1024));
        assert!(args.guest);
        assert_eq!(args.ready_port, Some(1025));
        let args = parse_strs(&["--vsock-once", "7"]).unwrap();
        assert_eq!(args.mode, Mode::VsockOnce(7));
        assert!(!args.guest);
        let args = parse_strs(&["--guest", "--vsock-connect", "1025"]).unwrap();
        assert_eq!(args.mode, Mode::VsockConnect(1025));
        assert_eq!(
            parse_strs(&["--vsock-connect", "1025", "--vsock-once", "1024"]),
            Err(ArgsError::ConflictingModes)
        );
        // The connection itself tells the host the agent is ready.
        assert_eq!(
            parse_strs(&["--vsock-connect", "1025", "--ready-port", "1026"]),
            Err(ArgsError::ReadyPortWithoutVsock)
        );
        assert_eq!(
            parse_strs(&["--vsock", "1", "--vsock-once", "2"]),
            Err(ArgsError::ConflictingModes)
        );
        assert_eq!(
            parse_strs(&["--vsock", "-1"]),
            Err(ArgsError::BadPort("--vsock", "-1".into()))
        );
        assert_eq!(
            parse_strs(&["--fd", "3", "--ready-port", "9"]),
            Err(ArgsError::ReadyPortWithoutVsock)
        );
        let args = parse_strs(&[
            "--guest",
            "--vsock",
            "1",
            "--share",
            "m0:/workspace:rw",
            "--share=m1:/a:b:ro",
        ])
        .unwrap();
        assert_eq!(
            args.shares,
            vec![
                Share {
                    tag: "m0".into(),
                    path: "/workspace".into(),
                    writable: true
                },
                Share {
                    tag: "m1".into(),
                    path: "/a:b".into(),
                    writable: false
                },
            ]
        );
        for bad in ["m0:/w", "m0:relative:rw", ":/w:rw", "m0:/w:rx"] {
            assert_eq!(
                parse_strs(&["--guest", "--vsock", "1", "--share", bad]),
                Err(ArgsError::BadShare(bad.into()))
            );
        }
        assert_eq!(
            parse_strs(&["--vsock", "1", "--share", "m0:/w:rw"]),
            Err(ArgsError::ShareWithoutGuest)
        );
        assert_eq!(
            parse_strs(&["--vsock", "1", "--guest", "--guest"]),
            Err(ArgsError::Repeated("--guest"))
        );
        assert_eq!(
            parse_strs(&["--vsock", "1", "--layer-disk"]),
            Err(ArgsError::LayerDiskWithoutGuest)
        );
        assert!(
            parse_strs(&["--vsock", "1", "--guest", "--layer-disk"])
                .unwrap()
                .layer_disk
        );
        assert_eq!(
            parse_strs(&["--vsock", "1", "--guest=yes"]),
            Err(ArgsError::Unknown("--guest=yes".into()))
        );
    }

    #[test]
    fn a_guest_network_and_its_nameservers() {
        let args = parse_strs(&[
            "--guest",
            "--vsock-once",
            "1",
            "--net",
            "10.213.0.6/30,10.213.0.5",
            "--nameserver",
            "192.168.1.1",
            "--nameserver=10.0.0.2",
        ])
        .unwrap();
        let net = args.net.unwrap();
        assert_eq!(
            net,
            Net {
                address: Ipv4Addr::new(10, 213, 0, 6),
                prefix: 30,
                gateway: Ipv4Addr::new(10, 213, 0, 5),
            }
        );
        assert_eq!(net.netmask(), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(
            args.nameservers,
            vec![Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        let plain = parse_strs(&["--guest", "--vsock", "1"]).unwrap();
        assert_eq!((plain.net, plain.nameservers), (None, Vec::new()));
        for bad in [
            "10.213.0.6/30",
            "10.213.0.6,10.213.0.5",
            "10.213.0.6/31,10.213.0.7",
            "10.213.0.6/0,10.213.0.5",
            "10.213.0.6/30,10.213.0.9",
            "10.213.0.6/30,10.213.0.6",
            "10.213.0.6/x,10.213.0.5",
            "fe80::1/64,fe80::2",
            "",
        ] {
            assert_eq!(
                parse_strs(&["--guest", "--vsock", "1", "--net", bad]),
                Err(ArgsError::BadNet(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_strs(&["--vsock", "1", "--net", "10.0.0.2/24,10.0.0.1"]),
            Err(ArgsError::NetWithoutGuest)
        );
        assert_eq!(
            parse_strs(&["--guest", "--vsock", "1", "--nameserver", "1.1.1.1"]),
            Err(ArgsError::NameserverWithoutNet)
        );
        assert_eq!(
            parse_strs(&[
                "--guest",
                "--vsock",
                "1",
                "--net",
                "10.0.0.2/24,10.0.0.1",
                "--nameserver",
                "::1"
            ]),
            Err(ArgsError::BadNameserver("::1".into()))
        );
        assert_eq!(
            parse_strs(&[
                "--guest",
                "--vsock",
                "1",
                "--net=10.0.0.2/24,10.0.0.1",
                "--net=10.0.0.3/24,10.0.0.1"
            ]),
            Err(ArgsError::Repeated("--net"))
        );
    }

    #[test]
    fn a_guest_trust_bundle() {
        let args = parse_strs(&[
            "--guest",
            "--vsock",
            "1",
            "--trust-bundle",
            "/run/a/ca.pem,/run/a/b.pem,/etc/s.crt",
        ])
        .unwrap();
        assert_eq!(
            args.trust_bundle,
            Some(TrustBundle {
                ca: "/run/a/ca.pem".into(),
                bundle: "/run/a/b.pem".into(),
                system: "/etc/s.crt".into(),
            })
        );
        for bad in ["/a,/b", "/a,/b,c", "/a,/b,/c,/d", ""] {
            assert_eq!(
                parse_strs(&["--guest", "--vsock", "1", "--trust-bundle", bad]),
                Err(ArgsError::BadTrustBundle(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_strs(&["--vsock", "1", "--trust-bundle", "/a,/b,/c"]),
            Err(ArgsError::TrustBundleWithoutGuest)
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert_eq!(parse_strs(&[]), Err(ArgsError::NoMode));
        assert_eq!(
            parse_strs(&["--fd", "3", "--listen", "/s"]),
            Err(ArgsError::ConflictingModes)
        );
        assert_eq!(
            parse_strs(&["--listen-fd", "3", "--listen", "/s"]),
            Err(ArgsError::ConflictingModes)
        );
        assert_eq!(parse_strs(&["--hold-fd", "4"]), Err(ArgsError::NoMode));
        assert_eq!(
            parse_strs(&["--listen-fd", "3", "--hold-fd", "x"]),
            Err(ArgsError::BadFd("--hold-fd", "x".into()))
        );
        assert_eq!(parse_strs(&["--fd"]), Err(ArgsError::MissingValue("--fd")));
        assert_eq!(
            parse_strs(&["--fd", "-1"]),
            Err(ArgsError::BadFd("--fd", "-1".into()))
        );
        assert_eq!(
            parse_strs(&["--fd", "x"]),
            Err(ArgsError::BadFd("--fd", "x".into()))
        );
        assert_eq!(
            parse_strs(&["--fd", "3", "--fd", "4"]),
            Err(ArgsError::Repeated("--fd"))
        );
        assert_eq!(
            parse_strs(&["--fd", "3", "--verbose"]),
            Err(ArgsError::Unknown("--verbose".into()))
        );
        assert_eq!(
            parse_strs(&["--workdir"]),
            Err(ArgsError::MissingValue("--workdir"))
        );
        assert_eq!(parse_strs(&["-h"]), Err(ArgsError::Help));
    }

    #[test]
    fn non_utf8_paths_are_kept() {
        use std::os::unix::ffi::OsStringExt;
        let path = OsString::from_vec(b"/tmp/\xff.sock".to_vec());
        let args = parse([OsString::from("--listen"), path.clone()]).unwrap();
        assert_eq!(args.mode, Mode::Listen(PathBuf::from(path)));
    }
}
