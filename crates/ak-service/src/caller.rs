//! Who asks, and what they may ask for. Every service operation takes a [`Caller`]; the
//! local user may ask for anything the host lets them, while remote callers (a token holder
//! over HTTP, an AI agent over MCP) get what the [`CallerPolicy`] allows: no host paths,
//! and profile, network and limits within its caps. Asking beyond a cap is refused with the
//! setting that would allow it, never silently clamped.

use std::path::Path;

use ak_core::config::{ApiOptions, NetworkSetting};
use ak_core::egress::Allowlist;
use ak_core::resources::{parse_cpus, parse_memory, parse_pids};
use ak_core::source::GitProtocol;
use ak_core::{ConfigError, ImageRef, NetworkMode, Profile, SandboxSpec};

use crate::error::ServiceError;

/// Who a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The user at this host's CLI (also when the daemon does the work for them).
    Local,
    /// A holder of the API token, over HTTP.
    Api,
    /// An agent client over MCP.
    Mcp,
}

impl Caller {
    /// The caller as the audit log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Caller::Local => "local",
            Caller::Api => "api",
            Caller::Mcp => "mcp",
        }
    }

    /// Whether the caller policy applies (everyone but the local user).
    pub fn is_remote(self) -> bool {
        !matches!(self, Caller::Local)
    }
}

/// What remote callers may ask for (`[api]` in the user's config file).
#[derive(Debug, Clone, PartialEq)]
pub struct CallerPolicy {
    /// The least restrictive profile allowed.
    pub max_profile: Profile,
    /// The widest network a sandbox may have.
    pub network: NetworkMode,
    /// What an allowlist sandbox's allowlist must stay within (`None`: anything).
    pub allowlist: Option<Allowlist>,
    /// `None`: the host's memory, read when a remote caller asks (so that local runs
    /// never pay for reading it).
    pub max_memory_bytes: Option<u64>,
    /// `None`: the host's CPUs, likewise.
    pub max_cpus: Option<f64>,
    pub max_pids: u64,
    /// The git protocols a source may use.
    pub source_protocols: Vec<GitProtocol>,
    /// Whether remote callers' secrets may take their values from the host user's secret
    /// store, or from the environment of the process serving them. Off by default: the
    /// caller names the hosts a secret goes to, so either would let a token holder send
    /// the user's secrets anywhere.
    pub secrets_from_store: bool,
    pub secrets_from_env: bool,
}

/// The kernel's largest pid limit (`PID_MAX_LIMIT` on 64-bit).
const KERNEL_MAX_PIDS: u64 = 4 << 20;

impl CallerPolicy {
    /// The defaults: the `moderate` profile, outbound network, and limits no larger than
    /// this host's memory and CPUs.
    pub fn host_default() -> CallerPolicy {
        CallerPolicy {
            max_profile: Profile::Moderate,
            network: NetworkMode::Outbound,
            allowlist: None,
            max_memory_bytes: None,
            max_cpus: None,
            max_pids: KERNEL_MAX_PIDS,
            source_protocols: vec![GitProtocol::Https],
            secrets_from_store: false,
            secrets_from_env: false,
        }
    }

    /// The policy `[api]` describes, over the host defaults; a bad value is an error.
    pub fn from_options(options: &ApiOptions) -> Result<CallerPolicy, ConfigError> {
        let mut policy = CallerPolicy::host_default();
        if let Some(profile) = &options.max_profile {
            policy.max_profile = profile.parse()?;
        }
        let bound = ak_core::config::entries(
            &options.allow_hosts,
            &options.allow_cidrs,
            &options.allow_ports,
        );
        let bounded = options.allow_hosts.is_some()
            || options.allow_cidrs.is_some()
            || options.allow_ports.is_some();
        policy.network = match options.network.map(NetworkSetting::mode) {
            // A bound on allowlists that the open network would step around is a mistake
            // to hear about, not a policy wider than the user wrote down.
            Some(NetworkMode::Outbound) if bounded => {
                return Err(ConfigError::ApiAllowlistWithOpenNetwork);
            }
            Some(mode) => mode,
            None if bounded => NetworkMode::Allowlist,
            None => NetworkMode::Outbound,
        };
        if bounded {
            policy.allowlist = Some(Allowlist::from_entries(&bound)?);
        }
        if let Some(memory) = &options.max_memory {
            policy.max_memory_bytes = Some(parse_memory(memory)?);
        }
        if let Some(cpus) = options.max_cpus {
            policy.max_cpus = Some(parse_cpus(cpus)?);
        }
        if let Some(pids) = options.max_pids {
            policy.max_pids = parse_pids(pids)?;
        }
        policy.secrets_from_store = options.secrets_from_store.unwrap_or(false);
        policy.secrets_from_env = options.secrets_from_env.unwrap_or(false);
        if let Some(protocols) = &options.source_protocols {
            policy.source_protocols = protocols
                .iter()
                .map(|p| GitProtocol::parse(p))
                .collect::<Result<_, _>>()?;
        }
        Ok(policy)
    }

    /// Refuses a sandbox a remote `caller` may not have; the local user passes.
    pub fn admit(&self, caller: Caller, spec: &SandboxSpec) -> Result<(), ServiceError> {
        if !caller.is_remote() {
            return Ok(());
        }
        let refuse = |what: String| {
            Err(ServiceError::Forbidden(format!(
                "{} callers may not {what}",
                caller.as_str()
            )))
        };
        if let ImageRef::Directory(dir) = &spec.image {
            return refuse(format!(
                "use a host directory ({}) as the image",
                dir.display()
            ));
        }
        if let Some(mount) = spec.mounts.first() {
            return refuse(format!("mount host paths ({})", mount.host.display()));
        }
        if let Some(source) = &spec.source {
            let protocol = source.protocol()?;
            if !self.source_protocols.contains(&protocol) {
                return refuse(format!(
                    "clone {} sources (allowed: {}; set source_protocols under [api])",
                    protocol.as_str(),
                    self.source_protocols
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if looseness(spec.policy.profile) > looseness(self.max_profile) {
            return refuse(format!(
                "use the {} profile (allowed up to {}; set max_profile under [api] to allow it)",
                spec.policy.profile.as_str(),
                self.max_profile.as_str()
            ));
        }
        self.admit_network(caller, spec.policy.network, &spec.policy.allowlist)?;
        let resources = &spec.resources;
        let max_memory = self
            .max_memory_bytes
            .or_else(host_memory_bytes)
            .unwrap_or(u64::MAX);
        if resources.memory_bytes > max_memory {
            return refuse(format!(
                "ask for {} bytes of memory (at most {max_memory}; set max_memory under [api])",
                resources.memory_bytes
            ));
        }
        let max_cpus = self.max_cpus.unwrap_or_else(host_cpus);
        let cpus = resources.cpus.unwrap_or_else(host_cpus);
        if cpus > max_cpus {
            return refuse(format!(
                "ask for {cpus} CPUs (at most {max_cpus}; set max_cpus under [api])"
            ));
        }
        if resources.pids > self.max_pids {
            return refuse(format!(
                "ask for {} processes (at most {}; set max_pids under [api])",
                resources.pids, self.max_pids
            ));
        }
        Ok(())
    }

    /// Refuses a network (`mode`, and `allowlist` for that mode) wider than the policy
    /// allows a remote `caller`; the local user passes. Creation and a running sandbox's
    /// change of allowlist both come through here.
    pub fn admit_network(
        &self,
        caller: Caller,
        mode: NetworkMode,
        allowlist: &Allowlist,
    ) -> Result<(), ServiceError> {
        if !caller.is_remote() {
            return Ok(());
        }
        let refuse = |what: String| {
            Err(ServiceError::Forbidden(format!(
                "{} callers may not {what}",
                caller.as_str()
            )))
        };
        if width(mode) > width(self.network) {
            return refuse(format!(
                "have the {} network (allowed up to {}; set network under [api] to allow it)",
                mode.as_str(),
                self.network.as_str()
            ));
        }
        if mode == NetworkMode::Allowlist
            && let Some(bound) = &self.allowlist
            && let Err(outside) = allowlist.within(bound)
        {
            return refuse(format!(
                "allow {outside} (outside allow_hosts, allow_cidrs and allow_ports under [api])"
            ));
        }
        Ok(())
    }

    /// Refuses a host directory as a named sandbox's workdir for remote callers.
    pub fn admit_dir(&self, caller: Caller, dir: Option<&Path>) -> Result<(), ServiceError> {
        match dir {
            Some(dir) if caller.is_remote() => Err(ServiceError::Forbidden(format!(
                "{} callers may not use a host directory ({}) as the workdir",
                caller.as_str(),
                dir.display()
            ))),
            _ => Ok(()),
        }
    }
}

/// How much of the network a mode reaches: higher reaches more.
fn width(mode: NetworkMode) -> u8 {
    match mode {
        NetworkMode::None => 0,
        NetworkMode::Allowlist => 1,
        NetworkMode::Outbound => 2,
    }
}

/// How far a profile loosens the sandbox: higher is less restricted.
fn looseness(profile: Profile) -> u8 {
    match profile {
        Profile::Restrictive => 0,
        Profile::Moderate => 1,
        Profile::Permissive => 2,
    }
}

fn host_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// `MemTotal` of /proc/meminfo.
fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ak_core::config::{NetworkSetting, SandboxOptions, resolve};

    fn spec(options: SandboxOptions) -> SandboxSpec {
        resolve(options, Path::new("/"), "0123456789abcdef".into()).expect("spec")
    }

    fn policy() -> CallerPolicy {
        CallerPolicy {
            max_profile: Profile::Moderate,
            network: NetworkMode::Outbound,
            allowlist: None,
            max_memory_bytes: Some(1 << 30),
            max_cpus: Some(2.0),
            max_pids: 2000,
            source_protocols: vec![GitProtocol::Https],
            secrets_from_store: false,
            secrets_from_env: false,
        }
    }

    #[test]
    fn remote_sources_use_only_the_allowed_protocols() {
        let with_source = |url: &str| SandboxOptions {
            source: Some(ak_core::source::GitSource::new(url, None).expect("source")),
            ..SandboxOptions::default()
        };
        let message = refusal(Caller::Api, with_source("file:///etc/repo"));
        assert!(message.contains("clone file sources"), "{message}");
        assert!(message.contains("source_protocols"), "{message}");
        assert!(refusal(Caller::Mcp, with_source("git@host:org/repo.git")).contains("ssh"));
        let allowed = policy().admit(Caller::Api, &spec(with_source("https://h/r.git")));
        assert!(allowed.is_ok(), "{allowed:?}");
        // The local user may clone from anywhere git can.
        let local = policy().admit(Caller::Local, &spec(with_source("file:///srv/r")));
        assert!(local.is_ok(), "{local:?}");
    }

    fn refusal(caller: Caller, options: SandboxOptions) -> String {
        match policy().admit(caller, &spec(options)) {
            Err(ServiceError::Forbidden(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_local_user_may_ask_for_anything() {
        let options = SandboxOptions {
            image: Some("/".into()),
            profile: Some("permissive".into()),
            memory: Some("100G".into()),
            ..SandboxOptions::default()
        };
        policy()
            .admit(Caller::Local, &spec(options))
            .expect("local");
    }

    #[test]
    fn remote_callers_get_what_the_policy_allows() {
        policy()
            .admit(Caller::Api, &spec(SandboxOptions::default()))
            .expect("defaults are within the caps");
        let host_dir = SandboxOptions {
            image: Some("/usr".into()),
            ..SandboxOptions::default()
        };
        assert!(refusal(Caller::Api, host_dir).contains("host directory"));
        let permissive = SandboxOptions {
            profile: Some("permissive".into()),
            ..SandboxOptions::default()
        };
        let message = refusal(Caller::Mcp, permissive);
        assert!(message.starts_with("mcp callers"), "{message}");
        assert!(message.contains("max_profile under [api]"), "{message}");
        let memory = SandboxOptions {
            memory: Some("2G".into()),
            ..SandboxOptions::default()
        };
        assert!(refusal(Caller::Api, memory).contains("max_memory"));
        let cpus = SandboxOptions {
            cpus: Some(3.0),
            ..SandboxOptions::default()
        };
        assert!(refusal(Caller::Api, cpus).contains("max_cpus"));
        let pids = SandboxOptions {
            pids: Some(2001),
            ..SandboxOptions::default()
        };
        assert!(refusal(Caller::Api, pids).contains("max_pids"));
        let mut mounted = spec(SandboxOptions::default());
        mounted.mounts.push(ak_core::Mount {
            host: "/srv".into(),
            target: "/srv".into(),
            writable: true,
        });
        let message = match policy().admit(Caller::Api, &mounted) {
            Err(ServiceError::Forbidden(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(message.contains("mount host paths"), "{message}");
    }

    #[test]
    fn network_can_be_denied_to_remote_callers() {
        let policy = CallerPolicy {
            network: NetworkMode::None,
            ..policy()
        };
        let open = spec(SandboxOptions::default());
        assert!(policy.admit(Caller::Api, &open).is_err());
        // An allowlist is still network: refused where none is allowed.
        let allowlist = spec(SandboxOptions {
            allow_hosts: Some(vec!["pypi".into()]),
            ..SandboxOptions::default()
        });
        assert!(policy.admit(Caller::Api, &allowlist).is_err());
        let closed = spec(SandboxOptions {
            network: Some(NetworkSetting::Enabled(false)),
            ..SandboxOptions::default()
        });
        policy.admit(Caller::Api, &closed).expect("no network");
    }

    #[test]
    fn bad_policy_settings_are_errors() {
        let options = ApiOptions {
            max_profile: Some("lenient".into()),
            ..ApiOptions::default()
        };
        assert!(CallerPolicy::from_options(&options).is_err());
        let options = ApiOptions {
            max_memory: Some("lots".into()),
            ..ApiOptions::default()
        };
        assert!(CallerPolicy::from_options(&options).is_err());
        let options = ApiOptions {
            max_profile: Some("restrictive".into()),
            network: Some(NetworkSetting::Enabled(false)),
            ..ApiOptions::default()
        };
        let policy = CallerPolicy::from_options(&options).expect("valid");
        assert_eq!(policy.max_profile, Profile::Restrictive);
        assert_eq!(policy.network, NetworkMode::None);
        // The older boolean: `true` is the open network.
        let options = ApiOptions {
            network: Some(NetworkSetting::Enabled(true)),
            ..ApiOptions::default()
        };
        let policy = CallerPolicy::from_options(&options).expect("valid");
        assert_eq!(policy.network, NetworkMode::Outbound);
        // Bounds on allowlists with the open network contradict each other.
        let options = ApiOptions {
            network: Some(NetworkSetting::Mode(NetworkMode::Outbound)),
            allow_hosts: Some(vec!["pypi".into()]),
            ..ApiOptions::default()
        };
        assert!(matches!(
            CallerPolicy::from_options(&options),
            Err(ConfigError::ApiAllowlistWithOpenNetwork)
        ));
        let options = ApiOptions {
            allow_hosts: Some(vec!["*.".into()]),
            ..ApiOptions::default()
        };
        assert!(CallerPolicy::from_options(&options).is_err());
    }

    #[test]
    fn remote_networks_stay_within_the_api_bounds() {
        let options = ApiOptions {
            allow_hosts: Some(vec!["pypi".into(), "*.example.org".into()]),
            allow_cidrs: Some(vec!["10.0.0.0/8".into()]),
            ..ApiOptions::default()
        };
        let policy = CallerPolicy::from_options(&options).expect("valid");
        // Allowed hosts alone make the widest network an allowlist.
        assert_eq!(policy.network, NetworkMode::Allowlist);
        let admit = |caller, options: SandboxOptions| policy.admit(caller, &spec(options));
        let within = SandboxOptions {
            allow_hosts: Some(vec!["pypi.org".into(), "a.example.org".into()]),
            allow_cidrs: Some(vec!["10.1.0.0/16".into()]),
            ..SandboxOptions::default()
        };
        admit(Caller::Api, within).expect("within the bounds");
        let outside = SandboxOptions {
            allow_hosts: Some(vec!["evil.test".into()]),
            ..SandboxOptions::default()
        };
        let message = match admit(Caller::Mcp, outside.clone()) {
            Err(ServiceError::Forbidden(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(message.contains("host evil.test"), "{message}");
        assert!(message.contains("allow_hosts"), "{message}");
        admit(Caller::Local, outside).expect("the local user is not bounded");
        let open = SandboxOptions {
            network: Some(NetworkSetting::Mode(NetworkMode::Outbound)),
            ..SandboxOptions::default()
        };
        let message = match admit(Caller::Api, open) {
            Err(ServiceError::Forbidden(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(
            message.contains("open network (allowed up to allowlist"),
            "{message}"
        );
        let none = SandboxOptions {
            network: Some(NetworkSetting::Mode(NetworkMode::None)),
            ..SandboxOptions::default()
        };
        admit(Caller::Api, none).expect("no network is within any bound");
    }
}
