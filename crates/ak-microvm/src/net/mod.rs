//! A VM's network, for sandboxes whose policy allows one (root only): a tap device on the
//! host, a /30 of 10.213.0.0/16 (host .1, guest .2) leased crash-safely, NAT out of the
//! host and a firewall that keeps the guest off the host's own services and off other
//! VMs. Everything is released with the VM, and by the sweep when its creator died.
//!
//! Host-wide effect: IPv4 forwarding (`net.ipv4.ip_forward`) is turned on when it is off,
//! and left on (something else may rely on it by then); the lease directory records when
//! agentkernel did it.

mod firewall;
mod lease;
mod tap;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::MicrovmError;
pub use lease::Leases;

/// The first address of the VM range; slot `n` is its n-th /30.
const RANGE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
const PREFIX: u8 = 30;
/// The leases and the lock, inside the microvm runtime base (the sweep of VM directories
/// skips dot-names).
pub const LEASE_DIR: &str = ".net";
const LOCK: &str = "lock";
/// Written when agentkernel turned IPv4 forwarding on.
const FORWARDING_RECORD: &str = "ip_forward-enabled-by-agentkernel";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// One VM's network, recorded with the VM so that whoever ends it releases it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub slot: u32,
    pub tap: String,
    /// The sandbox id: the lease's owner and the firewall rules' mark.
    pub sandbox: String,
    pub leases: PathBuf,
}

impl Attachment {
    fn new(slot: u32, sandbox: &str, leases: &Path) -> Attachment {
        Attachment {
            slot,
            tap: format!("{}{slot}", firewall::TAP_PREFIX),
            sandbox: sandbox.to_string(),
            leases: leases.to_path_buf(),
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(RANGE) + self.slot * 4)
    }
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }
    pub fn guest(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 2)
    }
    /// A locally administered MAC that spells the guest's address.
    pub fn mac(&self) -> String {
        let [a, b, c, d] = self.guest().octets();
        format!("02:ac:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }
    /// The guest agent's `--net` value: its address with prefix, and its gateway.
    pub fn guest_arg(&self) -> String {
        format!("{}/{PREFIX},{}", self.guest(), self.host())
    }

    /// Removes the VM's firewall rules, its tap and its lease. Idempotent; the tap and the
    /// lease are only touched while the lease is still this VM's (a slot given back may
    /// already be another VM's).
    pub fn release(&self) -> Result<(), MicrovmError> {
        let leases = Leases {
            dir: self.leases.clone(),
        };
        let _lock = lock(&leases.dir)?;
        let rules = firewall::remove(&self.sandbox);
        let mut tap = Ok(());
        if leases.owner(self.slot).as_deref() == Some(self.sandbox.as_str()) {
            tap = tap::delete(&self.tap).map_err(MicrovmError::io(format!(
                "delete the tap device {}",
                self.tap
            )));
            if tap.is_ok() {
                leases.release(self.slot, &self.sandbox)?;
            }
        }
        rules.and(tap)
    }
}

/// An exclusive lock on the lease directory for the duration of a network change: leases,
/// taps and our firewall chains change one process at a time.
fn lock(dir: &Path) -> Result<std::fs::File, MicrovmError> {
    crate::lock_exclusive(&dir.join(LOCK))
}

/// Why no VM can get a network device here, if none can.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some(
            "a network device for a microVM needs root (a tap device and NAT rules on the host)"
                .into(),
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (the tun module)".into());
    }
    if firewall::program().is_none() || firewall::restore_program().is_none() {
        return Some("iptables not found (install Debian's iptables package)".into());
    }
    None
}

/// What `status` says about VM networks (of VMs under `run_base`).
pub fn describe(run_base: &Path) -> String {
    match unavailable() {
        Some(why) => format!("none: {why}"),
        None => {
            let forwarding = std::fs::read_to_string(IP_FORWARD).unwrap_or_default();
            let record = run_base.join(LEASE_DIR).join(FORWARDING_RECORD);
            let forwarding = if forwarding.trim() != "1" {
                "off: the first VM with a network turns it on, host-wide".to_string()
            } else if record.is_file() {
                format!("on, turned on by agentkernel (see {})", record.display())
            } else {
                "on".to_string()
            };
            format!(
                "a NIC with NAT for sandboxes given a network (--network): tap + iptables {}, 10.213.0.0/16; net.ipv4.ip_forward {forwarding}",
                firewall::program()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        }
    }
}

/// Gives sandbox `sandbox` (whose runtime directory in `run_base` exists) a network.
pub fn attach(run_base: &Path, sandbox: &str) -> Result<Attachment, MicrovmError> {
    if let Some(why) = unavailable() {
        return Err(MicrovmError::Unsupported(why));
    }
    let leases = Leases::open(run_base.join(LEASE_DIR))?;
    let lock = lock(&leases.dir)?;
    let slot = leases.acquire(sandbox)?;
    let attachment = Attachment::new(slot, sandbox, &leases.dir);
    let set_up = (|| {
        enable_forwarding(&leases.dir)?;
        // A tap left by a VM whose lease was lost would make the exclusive create fail.
        tap::create(&attachment.tap, attachment.host(), netmask()).map_err(MicrovmError::io(
            format!("create the tap device {}", attachment.tap),
        ))?;
        firewall::add(
            sandbox,
            &attachment.tap,
            attachment.guest(),
            attachment.network(),
        )
    })();
    drop(lock);
    if let Err(e) = set_up {
        if let Err(cleanup) = attachment.release() {
            tracing::warn!("{cleanup}");
        }
        return Err(e);
    }
    Ok(attachment)
}

fn netmask() -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX << (32 - PREFIX))
}

/// Turns IPv4 forwarding on (host-wide) if it is off, and records that it did.
fn enable_forwarding(leases: &Path) -> Result<(), MicrovmError> {
    let now = std::fs::read_to_string(IP_FORWARD)
        .map_err(MicrovmError::io(format!("read {IP_FORWARD}")))?;
    if now.trim() == "1" {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, b"1").map_err(MicrovmError::io(format!("write {IP_FORWARD}")))?;
    tracing::warn!(
        "turned on IPv4 forwarding (net.ipv4.ip_forward = 1, host-wide) for microVM networks; it stays on"
    );
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let record = leases.join(FORWARDING_RECORD);
    std::fs::write(
        &record,
        format!("net.ipv4.ip_forward was 0; set to 1 at unix time {when}\n"),
    )
    .map_err(MicrovmError::io(format!("write {}", record.display())))
}

/// Releases the networks of VMs whose runtime directory is gone (their creator died
/// between taking the lease and recording the VM, or the directory was removed by hand).
pub fn sweep(run_base: &Path) {
    let leases = Leases {
        dir: run_base.join(LEASE_DIR),
    };
    for (slot, owner) in leases.orphans(run_base) {
        tracing::info!("releasing the network of VM {owner}, which is gone");
        if let Err(e) = Attachment::new(slot, &owner, &leases.dir).release() {
            tracing::warn!("{e}");
        }
    }
}

/// The nameservers of the host's `resolv.conf` a guest can reach through NAT (IPv4, not
/// loopback), and the ones it cannot.
pub fn guest_nameservers(resolv_conf: &str) -> (Vec<Ipv4Addr>, Vec<String>) {
    let mut usable = Vec::new();
    let mut unusable = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(address) = words.next() else {
            continue;
        };
        match address.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if !v4.is_loopback() && !v4.is_unspecified() => usable.push(v4),
            _ => unusable.push(address.to_string()),
        }
    }
    (usable, unusable)
}

/// The host's nameservers for a guest; a warning when there are none it can reach.
pub fn host_nameservers() -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (usable, unusable) = guest_nameservers(&text);
    if usable.is_empty() {
        tracing::warn!(
            "the VM gets no DNS: the host's /etc/resolv.conf names no nameserver it can reach through NAT (only loopback or IPv6: {})",
            if unusable.is_empty() {
                "none at all".to_string()
            } else {
                unusable.join(", ")
            }
        );
    }
    usable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_slash_30s_of_the_vm_range() {
        let first = Attachment::new(0, "a", Path::new("/l"));
        assert_eq!(first.tap, "akv0");
        assert_eq!(first.guest_arg(), "10.213.0.2/30,10.213.0.1");
        let last = Attachment::new(lease::SLOTS - 1, "b", Path::new("/l"));
        assert_eq!(last.network(), Ipv4Addr::new(10, 213, 255, 252));
        assert_eq!(last.guest(), Ipv4Addr::new(10, 213, 255, 254));
        assert_eq!(last.mac(), "02:ac:0a:d5:ff:fe");
        assert!(last.tap.len() < libc::IFNAMSIZ);
        assert_eq!(netmask(), Ipv4Addr::new(255, 255, 255, 252));
    }

    #[test]
    fn only_nameservers_a_guest_can_reach_are_given() {
        let (usable, unusable) = guest_nameservers(
            "# comment\nsearch lan\nnameserver 127.0.0.53\nnameserver 192.168.1.1\n\
             nameserver ::1\nnameserver 2001:db8::1\nnameserver 10.0.0.2 # x\nnameserver\n",
        );
        assert_eq!(
            usable,
            vec![Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        assert_eq!(unusable, vec!["127.0.0.53", "::1", "2001:db8::1"]);
        assert!(guest_nameservers("nameserver 127.0.0.1\n").0.is_empty());
    }
}
