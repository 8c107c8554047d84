//! The decisions: which names resolve and which connections go through, for one sandbox.
//! A connection is allowed only to an address in an allowed CIDR, or to one that an allowed
//! name resolved to *for this sandbox* (so IP literals and names the sandbox resolved some
//! other way get nothing). Special addresses (private, loopback, link-local, the host's own)
//! need a CIDR or an exactly named host: a wildcard pattern cannot lead to them, so an
//! allowed `*.example.org` whose DNS an attacker controls cannot rebind to the metadata
//! service. The allowlist is re-read from the policy file whenever that file changes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

use ak_core::egress::{Allowlist, HostPattern, Rule, canonical, is_special};

use crate::helper::PolicyFile;

/// Most addresses remembered per sandbox; beyond it the oldest answers are forgotten
/// (their names resolve again on the next lookup).
const MAX_RESOLVED: usize = 65536;

/// The outcome of a check: the rule that allowed it, or why not.
pub type Decision = Result<Rule, String>;

/// One sandbox's policy and what its names resolved to.
#[derive(Debug)]
pub struct Gate {
    source: Option<PathBuf>,
    host_addresses: HashSet<IpAddr>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    list: Allowlist,
    /// Identity of the policy file last read (device, inode, mtime, size).
    loaded: Option<(u64, u64, i64, i64, u64)>,
    resolved: HashMap<IpAddr, BTreeSet<String>>,
}

impl Gate {
    /// A gate for `list` that never changes (tests).
    pub fn fixed(list: Allowlist, host_addresses: HashSet<IpAddr>) -> Gate {
        Gate {
            source: None,
            host_addresses,
            state: Mutex::new(State {
                list,
                loaded: None,
                resolved: HashMap::new(),
            }),
        }
    }

    /// A gate reading its allowlist from `policy` (now and whenever it changes).
    pub fn from_file(
        policy: PathBuf,
        host_addresses: HashSet<IpAddr>,
    ) -> Result<Gate, crate::EgressError> {
        let gate = Gate {
            source: Some(policy),
            host_addresses,
            state: Mutex::new(State {
                list: Allowlist::default(),
                loaded: None,
                resolved: HashMap::new(),
            }),
        };
        let mut state = gate.lock();
        gate.reload(&mut state)?;
        drop(state);
        Ok(gate)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed in a way that
        // widens the policy (every change is one assignment), so keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the policy file again if it changed. A file that cannot be read or parsed
    /// keeps the last good allowlist (it is written by rename, whole, so this means someone
    /// else wrote it) and says so in the log.
    fn reload(&self, state: &mut State) -> Result<(), crate::EgressError> {
        let Some(path) = &self.source else {
            return Ok(());
        };
        let meta = std::fs::metadata(path)
            .map_err(crate::EgressError::io(format!("read {}", path.display())))?;
        let id = (
            meta.dev(),
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.size(),
        );
        if state.loaded == Some(id) {
            return Ok(());
        }
        let policy = PolicyFile::read(path)?;
        state.list = policy.allowlist;
        state.loaded = Some(id);
        Ok(())
    }

    fn current(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.lock();
        if let Err(error) = self.reload(&mut state) {
            tracing::warn!("keeping the previous allowlist: {error}");
        }
        state
    }

    /// The pattern that lets `name` resolve.
    pub fn name(&self, name: &str) -> Option<HostPattern> {
        self.current().list.host_rule(name).cloned()
    }

    /// Whether an answer of `address` for `name` (allowed by `pattern`) may reach the
    /// sandbox: a special address only through an exactly named host or a CIDR.
    pub fn answer_allowed(&self, pattern: &HostPattern, address: IpAddr) -> bool {
        let address = canonical(address);
        if !self.is_special(address) || pattern.is_exact() {
            return true;
        }
        self.current().list.cidr_rule(address).is_some()
    }

    /// Remembers that `name` resolved to `addresses` for this sandbox.
    pub fn record(&self, name: &str, addresses: &[IpAddr]) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut state = self.lock();
        if state.resolved.len() + addresses.len() > MAX_RESOLVED {
            state.resolved.clear();
        }
        for address in addresses {
            state
                .resolved
                .entry(canonical(*address))
                .or_default()
                .insert(name.clone());
        }
    }

    /// The names this sandbox resolved to `address` (for the audit log).
    pub fn names_of(&self, address: IpAddr) -> Option<String> {
        let state = self.lock();
        let names = state.resolved.get(&canonical(address))?;
        Some(names.iter().cloned().collect::<Vec<_>>().join(","))
    }

    /// Whether a new connection to `destination` is allowed.
    pub fn connect(&self, destination: SocketAddr) -> Decision {
        let address = canonical(destination.ip());
        let state = self.current();
        if !state.list.port_allowed(destination.port()) {
            return Err(format!("port {} is not allowed", destination.port()));
        }
        if let Some(net) = state.list.cidr_rule(address) {
            return Ok(Rule::Cidr(*net));
        }
        let names = state.resolved.get(&address);
        let patterns = names
            .into_iter()
            .flatten()
            .filter_map(|name| state.list.host_rule(name));
        let mut wildcard_only = false;
        for pattern in patterns {
            if pattern.is_exact() || !self.is_special(address) {
                return Ok(Rule::Host(pattern.clone()));
            }
            wildcard_only = true;
        }
        if wildcard_only {
            return Err("a private or host address reached through a wildcard".into());
        }
        Err("not an address an allowed name resolved to".into())
    }

    /// Whether a host name the sandbox sent (TLS SNI, HTTP `Host`) is allowed; an address
    /// written as the name must lie in an allowed CIDR.
    pub fn named_host(&self, name: &str) -> Decision {
        let state = self.current();
        if let Ok(address) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
            return match state.list.cidr_rule(address) {
                Some(net) => Ok(Rule::Cidr(*net)),
                None => Err(format!("{name} is not in an allowed CIDR")),
            };
        }
        match state.list.host_rule(name) {
            Some(pattern) => Ok(Rule::Host(pattern.clone())),
            None => Err(format!("{name} is not an allowed host")),
        }
    }

    fn is_special(&self, address: IpAddr) -> bool {
        is_special(address) || self.host_addresses.contains(&address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(hosts: &[&str], cidrs: &[&str]) -> Gate {
        let mut list = Allowlist::default();
        for host in hosts {
            list.add_host(host).unwrap();
        }
        for cidr in cidrs {
            list.add_cidr(cidr).unwrap();
        }
        let host: HashSet<IpAddr> = ["203.0.113.9".parse().unwrap()].into();
        Gate::fixed(list, host)
    }

    fn at(address: &str, port: u16) -> SocketAddr {
        SocketAddr::new(address.parse().unwrap(), port)
    }

    #[test]
    fn only_addresses_of_allowed_names_or_cidrs() {
        let gate = gate(&["example.com"], &["198.51.100.0/24"]);
        assert!(
            gate.connect(at("93.184.216.34", 443)).is_err(),
            "IP literal"
        );
        gate.record("example.com.", &["93.184.216.34".parse().unwrap()]);
        assert_eq!(
            gate.connect(at("93.184.216.34", 443)),
            Ok(Rule::Host("example.com".parse().unwrap()))
        );
        assert!(gate.connect(at("198.51.100.7", 22)).is_ok());
        assert!(gate.connect(at("::ffff:198.51.100.7", 22)).is_ok());
        // A name not on the list that resolved somehow still opens nothing.
        gate.record("evil.com", &["192.0.2.66".parse().unwrap()]);
        assert!(gate.connect(at("192.0.2.66", 443)).is_err());
    }

    #[test]
    fn wildcards_never_lead_to_special_addresses() {
        let gate = gate(&["*.example.org", "db.internal"], &[]);
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        let wildcard: HostPattern = "*.example.org".parse().unwrap();
        assert!(!gate.answer_allowed(&wildcard, metadata));
        assert!(!gate.answer_allowed(&wildcard, "203.0.113.9".parse().unwrap()));
        gate.record("rebind.example.org", &[metadata]);
        assert!(gate.connect(SocketAddr::new(metadata, 80)).is_err());
        let exact: HostPattern = "db.internal".parse().unwrap();
        assert!(gate.answer_allowed(&exact, "10.0.0.5".parse().unwrap()));
        gate.record("db.internal", &["10.0.0.5".parse().unwrap()]);
        assert!(gate.connect(at("10.0.0.5", 5432)).is_ok());
    }

    #[test]
    fn ports_narrow_everything() {
        let mut list = Allowlist::default();
        list.add_cidr("198.51.100.0/24").unwrap();
        list.add_port(443).unwrap();
        let gate = Gate::fixed(list, HashSet::new());
        assert!(gate.connect(at("198.51.100.1", 443)).is_ok());
        assert!(gate.connect(at("198.51.100.1", 80)).is_err());
    }

    #[test]
    fn sent_names_are_checked() {
        let gate = gate(&["*.example.org"], &["198.51.100.0/24"]);
        assert!(gate.named_host("a.example.org").is_ok());
        assert!(gate.named_host("evil.com").is_err());
        assert!(gate.named_host("198.51.100.3").is_ok());
        assert!(gate.named_host("192.0.2.1").is_err());
    }

    #[test]
    fn a_changed_policy_file_applies_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        let write = |hosts: &[&str]| {
            let mut list = Allowlist::default();
            for host in hosts {
                list.add_host(host).unwrap();
            }
            PolicyFile {
                allowlist: list,
                upstream_dns: None,
                secrets: None,
            }
            .write(&path)
            .unwrap();
        };
        write(&["a.example"]);
        let gate = Gate::from_file(path.clone(), HashSet::new()).unwrap();
        gate.record("a.example", &["192.0.2.1".parse().unwrap()]);
        assert!(gate.connect(at("192.0.2.1", 80)).is_ok());
        assert!(gate.name("b.example").is_none());
        write(&["b.example"]);
        assert!(gate.name("b.example").is_some());
        assert!(
            gate.connect(at("192.0.2.1", 80)).is_err(),
            "a.example was removed"
        );
        std::fs::write(&path, "not json").unwrap();
        assert!(
            gate.name("b.example").is_some(),
            "a bad file keeps the last good list"
        );
    }
}
