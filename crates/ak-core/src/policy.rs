//! Security profiles and the concrete policy each one resolves to. A profile name resolves
//! here, once; every backend reads the resulting [`SecurityPolicy`], never the name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::egress::Allowlist;
use crate::error::ConfigError;
use crate::resources::Resources;

/// Named security profiles, from most to least permissive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Permissive,
    #[default]
    Moderate,
    Restrictive,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Permissive, Profile::Moderate, Profile::Restrictive];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Permissive => "permissive",
            Profile::Moderate => "moderate",
            Profile::Restrictive => "restrictive",
        }
    }

    /// The policy this profile stands for.
    pub fn policy(self) -> SecurityPolicy {
        use Capability::*;
        match self {
            Profile::Permissive => SecurityPolicy {
                profile: self,
                network: NetworkMode::Outbound,
                // Docker's default set: what package managers and build tools expect of root.
                capabilities: vec![
                    Chown,
                    DacOverride,
                    Fowner,
                    Fsetid,
                    Kill,
                    Setgid,
                    Setuid,
                    Setpcap,
                    NetBindService,
                    NetRaw,
                    SysChroot,
                    Mknod,
                    AuditWrite,
                    Setfcap,
                ],
                read_only_root: true,
                landlock: true,
                allowlist: Allowlist::default(),
            },
            Profile::Moderate => SecurityPolicy {
                profile: self,
                network: NetworkMode::Outbound,
                capabilities: vec![
                    Chown,
                    DacOverride,
                    Fowner,
                    Fsetid,
                    Kill,
                    Setgid,
                    Setuid,
                    NetBindService,
                ],
                read_only_root: true,
                landlock: true,
                allowlist: Allowlist::default(),
            },
            Profile::Restrictive => SecurityPolicy {
                profile: self,
                network: NetworkMode::None,
                capabilities: Vec::new(),
                read_only_root: true,
                landlock: true,
                allowlist: Allowlist::default(),
            },
        }
    }

    /// Default limits for sandboxes of this profile (flags and config override them).
    pub fn default_resources(self) -> Resources {
        match self {
            Profile::Permissive => Resources {
                cpus: None,
                memory_bytes: 4 << 30,
                pids: 4096,
            },
            Profile::Moderate => Resources {
                cpus: Some(2.0),
                memory_bytes: 1 << 30,
                pids: 1024,
            },
            Profile::Restrictive => Resources {
                cpus: Some(1.0),
                memory_bytes: 512 << 20,
                pids: 256,
            },
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ConfigError::UnknownProfile(s.to_string()))
    }
}

/// What network a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace with only loopback.
    None,
    /// Outbound access only to what [`SecurityPolicy::allowlist`] names, enforced on the
    /// host side (`ak-egress`).
    Allowlist,
    /// Outbound access through the host to anywhere, never to the host's own loopback
    /// services. Called `outbound` before `allowlist` existed; records keep that name.
    #[serde(rename = "open", alias = "outbound")]
    Outbound,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Allowlist => "allowlist",
            NetworkMode::Outbound => "open",
        }
    }

    /// Whether the sandbox has an outbound interface at all.
    pub fn has_network(self) -> bool {
        self != NetworkMode::None
    }
}

impl FromStr for NetworkMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(NetworkMode::None),
            "allowlist" => Ok(NetworkMode::Allowlist),
            "open" | "outbound" => Ok(NetworkMode::Outbound),
            other => Err(ConfigError::UnknownNetworkMode(other.to_string())),
        }
    }
}

/// Linux capabilities a profile may keep. Every other capability is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Capability {
    Chown,
    DacOverride,
    Fowner,
    Fsetid,
    Kill,
    Setgid,
    Setuid,
    Setpcap,
    NetBindService,
    NetRaw,
    SysChroot,
    Mknod,
    AuditWrite,
    Setfcap,
}

impl Capability {
    /// The name container engines use (`CAP_` dropped), e.g. `NET_BIND_SERVICE`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Chown => "CHOWN",
            Capability::DacOverride => "DAC_OVERRIDE",
            Capability::Fowner => "FOWNER",
            Capability::Fsetid => "FSETID",
            Capability::Kill => "KILL",
            Capability::Setgid => "SETGID",
            Capability::Setuid => "SETUID",
            Capability::Setpcap => "SETPCAP",
            Capability::NetBindService => "NET_BIND_SERVICE",
            Capability::NetRaw => "NET_RAW",
            Capability::SysChroot => "SYS_CHROOT",
            Capability::Mknod => "MKNOD",
            Capability::AuditWrite => "AUDIT_WRITE",
            Capability::Setfcap => "SETFCAP",
        }
    }

    /// The kernel's number for this capability (`linux/capability.h`).
    pub fn number(self) -> u32 {
        match self {
            Capability::Chown => 0,
            Capability::DacOverride => 1,
            Capability::Fowner => 3,
            Capability::Fsetid => 4,
            Capability::Kill => 5,
            Capability::Setgid => 6,
            Capability::Setuid => 7,
            Capability::Setpcap => 8,
            Capability::NetBindService => 10,
            Capability::NetRaw => 13,
            Capability::SysChroot => 18,
            Capability::Mknod => 27,
            Capability::AuditWrite => 29,
            Capability::Setfcap => 31,
        }
    }
}

/// The concrete security settings of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityPolicy {
    pub profile: Profile,
    pub network: NetworkMode,
    /// Capabilities kept in the bounding set; all others are dropped.
    pub capabilities: Vec<Capability>,
    /// The image is mounted read-only (only the workdir, /tmp and mounts are writable).
    pub read_only_root: bool,
    /// Restrict file access with landlock where the kernel supports it.
    pub landlock: bool,
    /// What a sandbox in [`NetworkMode::Allowlist`] may reach (empty otherwise).
    #[serde(default, skip_serializing_if = "Allowlist::is_empty")]
    pub allowlist: Allowlist,
}

impl SecurityPolicy {
    /// Whether the sandbox may create files and directories anywhere its root itself holds
    /// them (`/app`, `/srv/x`), as in a container's copy-on-write layer: that root is
    /// private and thrown away with the sandbox, and the image under it stays read-only.
    /// Only the restrictive profile keeps the root read-only (its workdir, /tmp and
    /// mounts stay writable). The native and container backends take this one rule; a
    /// microVM's root is an overlay in the guest's own memory whatever the profile (the
    /// VM itself is the boundary).
    pub fn writable_root(&self) -> bool {
        self.profile != Profile::Restrictive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_strictly() {
        assert_eq!(
            "restrictive".parse::<Profile>().unwrap(),
            Profile::Restrictive
        );
        for bad in ["", "Moderate", "strict", "moderate "] {
            assert!(bad.parse::<Profile>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_restrictive_keeps_the_root_read_only() {
        assert!(!Profile::Restrictive.policy().writable_root());
        assert!(Profile::Moderate.policy().writable_root());
        assert!(Profile::Permissive.policy().writable_root());
    }

    #[test]
    fn restrictive_has_no_network_and_no_capabilities() {
        let policy = Profile::Restrictive.policy();
        assert_eq!(policy.network, NetworkMode::None);
        assert!(policy.capabilities.is_empty());
    }

    #[test]
    fn profiles_narrow_from_permissive_to_restrictive() {
        let caps = |p: Profile| p.policy().capabilities.len();
        assert!(caps(Profile::Permissive) > caps(Profile::Moderate));
        assert!(caps(Profile::Moderate) > caps(Profile::Restrictive));
        let mem = |p: Profile| p.default_resources().memory_bytes;
        assert!(mem(Profile::Permissive) > mem(Profile::Restrictive));
    }
}
