//! ak-egress: enforcement of a sandbox's egress allowlist, outside the sandbox.
//!
//! A helper process of ours holds the TUN device of the sandbox's network namespace (as
//! `slirp4netns` holds its tap for the open network) and runs a user-space TCP/IP stack
//! (`ipstack`) over it. Nothing leaves the sandbox except through this stack:
//!
//! - DNS to the sandbox's resolver is answered here: only allowed names resolve (others get
//!   NXDOMAIN), upstream answers are filtered, and every address an allowed name resolved
//!   to is remembered for this sandbox ([`gate`]);
//! - a TCP SYN is refused at once with a RST unless its destination is an address an allowed
//!   name resolved to, or lies in an allowed CIDR ([`device`]); an accepted connection has its
//!   first bytes checked (TLS SNI, HTTP `Host`) against the allowlist before a real socket
//!   is opened on the host ([`relay`]);
//! - UDP other than DNS to the resolver, ICMP and IPv6 are dropped.
//!
//! - with secrets, connections to a secret's hosts are intercepted ([`intercept`]): the real
//!   value replaces its placeholder in request headers and is masked back in responses;
//!   a placeholder heading anywhere else is blocked ([`secrets`]).
//!
//! The allowlist lives in a policy file that is read again whenever it changes, so a new
//! allowlist applies to the next connection. Every verdict goes to an [`AuditSink`].

pub mod audit;
pub mod ca;
mod closing;
pub mod device;
pub mod dns;
mod error;
pub mod ethernet;
pub mod gate;
pub mod helper;
pub mod intercept;
pub mod launch;
pub mod peek;
pub mod provision;
pub mod relay;
pub mod scan;
pub mod secrets;
mod settings;
pub mod tun;

pub use audit::{AuditSink, Event, Verdict};
pub use error::EgressError;
pub use gate::Gate;
pub use helper::{HelperArgs, PolicyFile};
pub use settings::Egress;

use std::net::Ipv4Addr;

/// The sandbox's side of the TUN link.
pub const SANDBOX_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The gateway the sandbox routes everything through (no host answers there: the stack
/// terminates every connection itself).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The sandbox's resolver (the same address `slirp4netns` answers on for the open network,
/// so a sandbox's `resolv.conf` is the same in both modes).
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The TUN device's name inside the sandbox.
pub const DEVICE: &str = "tun0";
/// MTU of the TUN link: as large as the stack takes, so that bulk transfers cost few
/// packets (slirp4netns uses the same).
pub const MTU: u16 = 65520;
