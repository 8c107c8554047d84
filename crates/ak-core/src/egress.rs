//! The egress allowlist of a sandbox whose network mode is `allowlist`: domain patterns,
//! CIDRs and ports, parsed and validated here once. What the allowlist means on the wire
//! (which connections and DNS answers it lets through) is decided by `ak-egress`, from
//! [`Allowlist::host_rule`] and [`Allowlist::cidr_rule`].

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ConfigError;

/// Presets: a name that stands for the hosts a common tool needs.
pub const PRESETS: &[(&str, &[&str])] = &[
    ("pypi", &["pypi.org", "files.pythonhosted.org"]),
    ("npm", &["registry.npmjs.org", "registry.yarnpkg.com"]),
    (
        "crates",
        &["crates.io", "index.crates.io", "static.crates.io"],
    ),
    (
        "github",
        &[
            "github.com",
            "*.github.com",
            "*.githubusercontent.com",
            "codeload.github.com",
        ],
    ),
    (
        "debian",
        &["deb.debian.org", "security.debian.org", "*.debian.org"],
    ),
];

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_NAME: usize = 253;

/// A domain pattern: an exact name, or `*.name` (any name below it, not the name itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The part after `*.`.
    Subdomains(String),
}

impl HostPattern {
    /// Whether `name` (lowercase, no trailing dot) is one this pattern allows.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => name == exact,
            HostPattern::Subdomains(parent) => name
                .strip_suffix(parent.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }

    /// Whether this pattern names one host exactly (not a whole subtree): only exact
    /// names may resolve to private, loopback or link-local addresses.
    pub fn is_exact(&self) -> bool {
        matches!(self, HostPattern::Exact(_))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Subdomains(parent) => write!(f, "*.{parent}"),
        }
    }
}

impl FromStr for HostPattern {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ConfigError::InvalidAllowlist {
            entry: text.to_string(),
            reason: reason.to_string(),
        };
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        if lower.parse::<IpAddr>().is_ok() {
            return Err(invalid("an address is not a host name; allow it as a CIDR"));
        }
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, lower),
        };
        validate_name(&name).map_err(invalid)?;
        if wildcard && !name.contains('.') {
            return Err(invalid(
                "a wildcard needs at least two labels below it (*.example.com, not *.com)",
            ));
        }
        Ok(if wildcard {
            HostPattern::Subdomains(name)
        } else {
            HostPattern::Exact(name)
        })
    }
}

/// Checks a DNS name: 1 to 253 bytes of dot-separated labels of 1 to 63 letters, digits
/// and hyphens (underscores too, as in `_service` names), no label starting or ending with
/// a hyphen.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err("a host name has 1 to 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label of a host name has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(
                "a host name holds only letters, digits, '-', '_' and '.' (and a leading '*.')",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of a host name cannot start or end with '-'");
        }
    }
    Ok(())
}

/// Which entry of the allowlist let something through, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Host(HostPattern),
    Cidr(IpNet),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Host(pattern) => write!(f, "host {pattern}"),
            Rule::Cidr(net) => write!(f, "cidr {net}"),
        }
    }
}

/// An allowlist's entries as a user writes them (a host may be a preset), before they are
/// checked: what a request or a config layer carries, and what [`Allowlist::add_entries`]
/// takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowlistEntries {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// What a sandbox in `allowlist` mode may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowlist {
    /// Domain patterns (presets already expanded).
    #[serde(default, with = "as_strings")]
    pub hosts: Vec<HostPattern>,
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
    /// Destination ports allowed; empty allows every port.
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl Allowlist {
    /// The allowlist `entries` name (presets expanded, every entry checked).
    pub fn from_entries(entries: &AllowlistEntries) -> Result<Allowlist, ConfigError> {
        let mut list = Allowlist::default();
        list.add_entries(entries)?;
        Ok(list)
    }

    /// Adds every entry of `entries`; the first bad one is an error (and `self` is then
    /// left partly extended: callers extend a copy).
    pub fn add_entries(&mut self, entries: &AllowlistEntries) -> Result<(), ConfigError> {
        for host in &entries.hosts {
            self.add_host(host)?;
        }
        for cidr in &entries.cidrs {
            self.add_cidr(cidr)?;
        }
        for port in &entries.ports {
            self.add_port(*port)?;
        }
        Ok(())
    }

    /// Adds a host entry: a preset name (`pypi`), a domain or a `*.domain` pattern.
    pub fn add_host(&mut self, entry: &str) -> Result<(), ConfigError> {
        if let Some((_, hosts)) = PRESETS.iter().find(|(name, _)| *name == entry) {
            for host in *hosts {
                self.push_host(host.parse()?);
            }
            return Ok(());
        }
        self.push_host(entry.parse()?);
        Ok(())
    }

    /// Adds a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
    pub fn add_cidr(&mut self, entry: &str) -> Result<(), ConfigError> {
        let net = match entry.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                ConfigError::InvalidAllowlist {
                    entry: entry.to_string(),
                    reason: "expected a CIDR (10.0.0.0/8) or an address".into(),
                }
            })?,
        };
        // `10.1.2.3/8` is a typo for one of two things: refuse rather than guess.
        if net.trunc() != net {
            return Err(ConfigError::InvalidAllowlist {
                entry: entry.to_string(),
                reason: format!("host bits are set; did you mean {}?", net.trunc()),
            });
        }
        if !self.cidrs.contains(&net) {
            self.cidrs.push(net);
        }
        Ok(())
    }

    /// Adds an allowed destination port (1 to 65535).
    pub fn add_port(&mut self, port: u16) -> Result<(), ConfigError> {
        if port == 0 {
            return Err(ConfigError::InvalidAllowlist {
                entry: "0".into(),
                reason: "ports are 1 to 65535".into(),
            });
        }
        if !self.ports.contains(&port) {
            self.ports.push(port);
        }
        Ok(())
    }

    fn push_host(&mut self, pattern: HostPattern) {
        if !self.hosts.contains(&pattern) {
            self.hosts.push(pattern);
        }
    }

    /// The first host pattern that allows `name` (any case, trailing dot or not).
    pub fn host_rule(&self, name: &str) -> Option<&HostPattern> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().find(|pattern| pattern.matches(&name))
    }

    /// The first CIDR that holds `address`.
    pub fn cidr_rule(&self, address: IpAddr) -> Option<&IpNet> {
        let address = canonical(address);
        self.cidrs.iter().find(|net| net.contains(&address))
    }

    /// Whether connections to `port` are allowed.
    pub fn port_allowed(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.cidrs.is_empty()
    }

    /// Whether every destination `self` allows is also allowed by `wider`: each host
    /// pattern is covered by one of `wider`'s, each CIDR lies inside one of its CIDRs, and
    /// its ports are a subset (no port list is "every port").
    pub fn within(&self, wider: &Allowlist) -> Result<(), String> {
        for pattern in &self.hosts {
            let covered = wider.hosts.iter().any(|outer| match (outer, pattern) {
                (outer, HostPattern::Exact(name)) => outer.matches(name),
                (HostPattern::Subdomains(outer), HostPattern::Subdomains(inner)) => {
                    inner == outer || HostPattern::Subdomains(outer.clone()).matches(inner)
                }
                (HostPattern::Exact(_), HostPattern::Subdomains(_)) => false,
            });
            if !covered {
                return Err(format!("host {pattern}"));
            }
        }
        for net in &self.cidrs {
            if !wider.cidrs.iter().any(|outer| outer.contains(net)) {
                return Err(format!("cidr {net}"));
            }
        }
        if !wider.ports.is_empty() {
            if self.ports.is_empty() {
                return Err("every port".into());
            }
            if let Some(port) = self.ports.iter().find(|p| !wider.ports.contains(p)) {
                return Err(format!("port {port}"));
            }
        }
        Ok(())
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is, so that `::ffff:10.0.0.1`
/// meets the same rules as `10.0.0.1`.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Addresses a sandbox reaches only through an allowed CIDR or an exactly named host:
/// loopback, private (RFC 1918, unique local), shared (100.64/10), link-local (the cloud
/// metadata service at 169.254.169.254), unspecified, multicast and broadcast.
pub fn is_special(address: IpAddr) -> bool {
    match canonical(address) {
        IpAddr::V4(v4) => {
            let octets = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || octets[0] == 0
                || (octets[0] == 100 && (octets[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

mod as_strings {
    use super::*;

    pub fn serialize<S: Serializer>(hosts: &[HostPattern], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(hosts.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HostPattern>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(hosts: &[&str], cidrs: &[&str]) -> Allowlist {
        let mut list = Allowlist::default();
        for host in hosts {
            list.add_host(host).unwrap();
        }
        for cidr in cidrs {
            list.add_cidr(cidr).unwrap();
        }
        list
    }

    #[test]
    fn patterns_match_names_and_subdomains() {
        let list = list(&["Example.COM.", "*.example.org"], &[]);
        assert!(list.host_rule("example.com").is_some());
        assert!(list.host_rule("EXAMPLE.com.").is_some());
        assert!(list.host_rule("www.example.com").is_none());
        assert!(list.host_rule("a.example.org").is_some());
        assert!(list.host_rule("a.b.example.org").is_some());
        assert!(list.host_rule("example.org").is_none());
        assert!(list.host_rule("badexample.org").is_none());
        assert!(list.host_rule("example.org.evil.com").is_none());
    }

    #[test]
    fn presets_expand() {
        let list = list(&["pypi", "github"], &[]);
        assert!(list.host_rule("files.pythonhosted.org").is_some());
        assert!(list.host_rule("raw.githubusercontent.com").is_some());
        assert!(list.host_rule("npmjs.org").is_none());
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut list = Allowlist::default();
        for bad in [
            "",
            "*",
            "*.com",
            "exa mple.com",
            "-bad.com",
            "a..b",
            "10.0.0.1",
            "::1",
            "http://x.com",
        ] {
            assert!(list.add_host(bad).is_err(), "{bad:?}");
        }
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "example.com", ""] {
            assert!(list.add_cidr(bad).is_err(), "{bad:?}");
        }
        assert!(list.add_port(0).is_err());
        assert!(list.is_empty());
    }

    #[test]
    fn cidrs_hold_mapped_addresses_too() {
        let list = list(&[], &["198.18.0.0/15", "2001:db8::/32", "192.0.2.7"]);
        assert!(list.cidr_rule("198.19.1.1".parse().unwrap()).is_some());
        assert!(
            list.cidr_rule("::ffff:198.18.0.1".parse().unwrap())
                .is_some()
        );
        assert!(list.cidr_rule("2001:db8::1".parse().unwrap()).is_some());
        assert!(list.cidr_rule("192.0.2.7".parse().unwrap()).is_some());
        assert!(list.cidr_rule("192.0.2.8".parse().unwrap()).is_none());
    }

    #[test]
    fn special_addresses() {
        for special in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_special(special.parse().unwrap()), "{special}");
        }
        for public in ["93.184.216.34", "198.18.0.1", "2606:4700::1"] {
            assert!(!is_special(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn ports() {
        let mut list = Allowlist::default();
        assert!(list.port_allowed(22));
        list.add_port(443).unwrap();
        assert!(list.port_allowed(443));
        assert!(!list.port_allowed(80));
    }

    #[test]
    fn within_a_wider_list() {
        let wide = list(&["*.example.org", "pypi.org"], &["10.0.0.0/8"]);
        assert!(
            list(&["a.example.org"], &["10.1.0.0/16"])
                .within(&wide)
                .is_ok()
        );
        assert!(list(&["*.a.example.org"], &[]).within(&wide).is_ok());
        assert!(list(&["*.example.org"], &[]).within(&wide).is_ok());
        assert_eq!(
            list(&["example.org"], &[]).within(&wide),
            Err("host example.org".into())
        );
        assert!(list(&["*.pypi.org"], &[]).within(&wide).is_err());
        assert!(list(&[], &["0.0.0.0/0"]).within(&wide).is_err());
        let mut ported = wide.clone();
        ported.add_port(443).unwrap();
        assert_eq!(
            list(&["pypi.org"], &[]).within(&ported),
            Err("every port".into())
        );
    }

    #[test]
    fn serde_round_trip() {
        let mut original = list(&["*.example.org", "pypi.org"], &["10.0.0.0/8"]);
        original.add_port(443).unwrap();
        let json = serde_json::to_string(&original).unwrap();
        assert_eq!(
            json,
            r#"{"hosts":["*.example.org","pypi.org"],"cidrs":["10.0.0.0/8"],"ports":[443]}"#
        );
        let back: Allowlist = serde_json::from_str(&json).unwrap();
        assert_eq!(back, original);
        assert!(serde_json::from_str::<Allowlist>(r#"{"hosts":["*"]}"#).is_err());
    }
}
