//! The container for one sandbox: our agent as its entrypoint, its control socket in a
//! bind-mounted host directory, and the policy's hardening.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ak_core::backend::Lifetime;
use ak_core::{BackendKind, NetworkMode, SandboxSpec};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountTypeEnum, ResourcesUlimits};

/// Where the agent binary appears inside the container (bind-mounted read-only).
pub const AGENT_PATH: &str = "/.agentkernel/agent";
/// Where the host's per-sandbox runtime directory appears inside the container.
pub const RUN_DIR: &str = "/.agentkernel/run";
/// The agent's socket, in that directory.
pub const SOCKET_NAME: &str = "agent.sock";

/// Labels that let the reconciler find our containers (and only ours) after a crash.
pub const LABEL_SANDBOX: &str = "io.agentkernel.sandbox";
pub const LABEL_LIFETIME: &str = "io.agentkernel.lifetime";
/// `pid:start-time` of the process that made an ephemeral container; once that process is
/// gone, nobody can reach the container any more and the sweep removes it.
pub const LABEL_CREATOR: &str = "io.agentkernel.creator";

/// The container's name for sandbox `id`.
pub fn container_name(id: &str) -> String {
    format!("agentkernel-{id}")
}

/// What a container for `spec` needs that the spec does not say.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub kind: BackendKind,
    pub spec: &'a SandboxSpec,
    pub image: &'a str,
    pub lifetime: Lifetime,
    /// The static agent on the host.
    pub agent: &'a Path,
    /// The sandbox's runtime directory on the host (holds the agent's socket).
    pub run_dir: &'a Path,
    pub creator: &'a str,
    /// Limits (name, soft, hard) to set explicitly: Podman's defaults can exceed what its
    /// service may grant, Docker inherits its daemon's.
    pub ulimits: Vec<(&'static str, u64, u64)>,
    /// An allowlist sandbox's `/etc/resolv.conf` on the host (naming the egress helper's
    /// resolver), bound read-only over the engine's.
    pub resolv_conf: Option<&'a Path>,
    /// A sandbox with secrets: the host directory bound read-only at `/run/agentkernel`
    /// (`secrets.rs`).
    pub secrets_dir: Option<&'a Path>,
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Mount {
    Mount {
        typ: Some(MountTypeEnum::BIND),
        source: Some(source.to_string_lossy().into_owned()),
        target: Some(target.to_string_lossy().into_owned()),
        read_only: Some(read_only),
        ..Mount::default()
    }
}

/// Engines mount tmpfs `noexec` unless told otherwise; agents build and run programs in
/// /tmp and their workdir.
const TMPFS_OPTIONS: &str = "rw,exec,nosuid,nodev";

impl Plan<'_> {
    pub fn read_only_root(&self) -> bool {
        // A container's root is a copy-on-write layer thrown away with it (the image
        // itself is never written).
        !self.spec.policy.writable_root()
    }

    /// A private /tmp, and a scratch workdir when the root is read-only and nothing is
    /// mounted there.
    fn tmpfs(&self) -> HashMap<String, String> {
        let mut tmpfs = HashMap::from([("/tmp".to_string(), format!("{TMPFS_OPTIONS},mode=1777"))]);
        let workdir_mounted = self
            .spec
            .mounts
            .iter()
            .any(|m| m.target == self.spec.workdir);
        if self.read_only_root() && !workdir_mounted {
            tmpfs.insert(
                self.spec.workdir.to_string_lossy().into_owned(),
                format!("{TMPFS_OPTIONS},mode=0755"),
            );
        }
        tmpfs
    }

    /// The Engine API's create body.
    pub fn body(&self) -> ContainerCreateBody {
        let spec = self.spec;
        let socket = PathBuf::from(RUN_DIR).join(SOCKET_NAME);
        let listen = match self.lifetime {
            // One connection; the agent, and with it the container, ends when it closes.
            Lifetime::Ephemeral => "--listen-once",
            Lifetime::Persistent => "--listen",
        };
        let mut mounts = vec![
            bind(self.agent, Path::new(AGENT_PATH), true),
            bind(self.run_dir, Path::new(RUN_DIR), false),
        ];
        mounts.extend(
            spec.mounts
                .iter()
                .map(|m| bind(&m.host, &m.target, !m.writable)),
        );
        if let Some(resolv_conf) = self.resolv_conf {
            mounts.push(bind(resolv_conf, Path::new("/etc/resolv.conf"), true));
        }
        if let Some(secrets) = self.secrets_dir {
            mounts.push(bind(secrets, Path::new(ak_core::secrets::RUN_DIR), true));
        }
        let lifetime = match self.lifetime {
            Lifetime::Ephemeral => "ephemeral",
            Lifetime::Persistent => "persistent",
        };
        let mut labels = HashMap::from([
            (LABEL_SANDBOX.to_string(), spec.id.clone()),
            (LABEL_LIFETIME.to_string(), lifetime.to_string()),
        ]);
        if self.lifetime == Lifetime::Ephemeral {
            labels.insert(LABEL_CREATOR.to_string(), self.creator.to_string());
        }
        let memory = i64::try_from(spec.resources.memory_bytes).unwrap_or(i64::MAX);
        let host_config = HostConfig {
            mounts: Some(mounts),
            // Our agent is the init: it reaps, forwards signals and ends the container.
            init: Some(false),
            auto_remove: Some(self.lifetime == Lifetime::Ephemeral),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(
                spec.policy
                    .capabilities
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect(),
            ),
            // The engine's default seccomp profile stays on (it is never set unconfined).
            security_opt: Some(vec!["no-new-privileges".into()]),
            privileged: Some(false),
            readonly_rootfs: Some(self.read_only_root()),
            tmpfs: Some(self.tmpfs()),
            memory: Some(memory),
            // Equal to the memory limit: no swap beyond it.
            memory_swap: Some(memory),
            nano_cpus: spec.resources.cpus.map(|cpus| (cpus * 1e9) as i64),
            pids_limit: Some(i64::try_from(spec.resources.pids).unwrap_or(i64::MAX)),
            network_mode: match spec.policy.network {
                // An allowlist's only way out is the egress helper's TUN device, added to
                // the container's namespace once it runs (`egress.rs`).
                NetworkMode::None | NetworkMode::Allowlist => Some("none".into()),
                // The engine's default network: outbound through NAT; the host's loopback
                // is not the container's.
                NetworkMode::Outbound => None,
            },
            ulimits: (!self.ulimits.is_empty()).then(|| {
                self.ulimits
                    .iter()
                    .map(|(name, soft, hard)| ResourcesUlimits {
                        name: Some((*name).into()),
                        soft: Some(i64::try_from(*soft).unwrap_or(i64::MAX)),
                        hard: Some(i64::try_from(*hard).unwrap_or(i64::MAX)),
                    })
                    .collect()
            }),
            // Podman's crun cannot drive hybrid cgroups; runc can.
            runtime: (self.kind == BackendKind::Podman).then(|| "runc".to_string()),
            ..HostConfig::default()
        };
        ContainerCreateBody {
            image: Some(self.image.to_string()),
            hostname: Some(spec.hostname.clone()),
            user: Some("0:0".into()),
            entrypoint: Some(vec![
                AGENT_PATH.to_string(),
                listen.to_string(),
                socket.to_string_lossy().into_owned(),
                "--workdir".into(),
                spec.workdir.to_string_lossy().into_owned(),
            ]),
            cmd: Some(Vec::new()),
            // The engine creates the workdir in the container when the image lacks it.
            working_dir: Some(spec.workdir.to_string_lossy().into_owned()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            // An allowlist container too: the engine's network stack has nothing to give
            // it (the egress helper adds its device); the namespace is its own either way.
            network_disabled: Some(spec.policy.network != NetworkMode::Outbound),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ak_core::config::{NetworkSetting, SandboxOptions, resolve};

    fn spec(profile: &str, network: Option<bool>) -> SandboxSpec {
        let options = SandboxOptions {
            profile: Some(profile.into()),
            network: network.map(NetworkSetting::Enabled),
            backend: Some("docker".into()),
            ..SandboxOptions::default()
        };
        resolve(
            options,
            Path::new("/"),
            "0123456789abcdef0123456789abcdef".into(),
        )
        .unwrap()
    }

    fn plan(spec: &SandboxSpec) -> Plan<'_> {
        Plan {
            kind: BackendKind::Docker,
            spec,
            image: "alpine:3.20",
            lifetime: Lifetime::Persistent,
            agent: Path::new("/opt/ak-agent"),
            run_dir: Path::new("/run/agentkernel-docker/x"),
            creator: "1:2",
            ulimits: Vec::new(),
            resolv_conf: None,
            secrets_dir: None,
        }
    }

    fn body(spec: &SandboxSpec, lifetime: Lifetime, kind: BackendKind) -> ContainerCreateBody {
        Plan {
            kind,
            spec,
            image: "alpine:3.20",
            lifetime,
            agent: Path::new("/opt/ak-agent"),
            run_dir: Path::new("/run/agentkernel-docker/x"),
            creator: "1:2",
            ulimits: if kind == BackendKind::Podman {
                vec![("nofile", 1024, 4096)]
            } else {
                Vec::new()
            },
            resolv_conf: None,
            secrets_dir: None,
        }
        .body()
    }

    #[test]
    fn the_agent_is_the_entrypoint_and_hardening_is_on() {
        let spec = spec("moderate", None);
        let body = body(&spec, Lifetime::Ephemeral, BackendKind::Docker);
        let entry = body.entrypoint.clone().unwrap();
        assert_eq!(entry[0], AGENT_PATH);
        assert_eq!(entry[1], "--listen-once");
        assert_eq!(entry[2], "/.agentkernel/run/agent.sock");
        let host = body.host_config.unwrap();
        assert_eq!(host.cap_drop.unwrap(), ["ALL"]);
        assert!(host.cap_add.unwrap().contains(&"CHOWN".to_string()));
        assert_eq!(host.security_opt.unwrap(), ["no-new-privileges"]);
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.readonly_rootfs, Some(false));
        assert_eq!(host.auto_remove, Some(true));
        assert_eq!(host.init, Some(false));
        assert!(host.tmpfs.unwrap().contains_key("/tmp"));
        assert_eq!(host.memory, Some(spec.resources.memory_bytes as i64));
        assert_eq!(host.pids_limit, Some(spec.resources.pids as i64));
        assert_eq!(host.network_mode, None);
        assert_eq!(host.runtime, None);
        assert_eq!(host.ulimits, None);
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts[0].read_only, Some(true), "the agent is read-only");
        assert_eq!(mounts[1].read_only, Some(false));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_SANDBOX], spec.id);
        assert_eq!(labels[LABEL_CREATOR], "1:2");
    }

    #[test]
    fn an_allowlist_has_no_engine_network_and_our_resolver() {
        let options = SandboxOptions {
            backend: Some("docker".into()),
            allow_hosts: Some(vec!["pypi".into()]),
            ..SandboxOptions::default()
        };
        let spec = resolve(
            options,
            Path::new("/"),
            "0123456789abcdef0123456789abcdef".into(),
        )
        .unwrap();
        let body = Plan {
            resolv_conf: Some(Path::new("/run/x.egress/resolv.conf")),
            ..plan(&spec)
        }
        .body();
        assert_eq!(body.network_disabled, Some(true));
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        let resolv = host
            .mounts
            .unwrap()
            .into_iter()
            .find(|m| m.target.as_deref() == Some("/etc/resolv.conf"))
            .expect("resolv.conf is bound");
        assert_eq!(resolv.read_only, Some(true));
        assert_eq!(resolv.source.as_deref(), Some("/run/x.egress/resolv.conf"));
    }

    #[test]
    fn restrictive_is_read_only_without_network_or_capabilities() {
        let spec = spec("restrictive", None);
        let body = body(&spec, Lifetime::Persistent, BackendKind::Podman);
        assert_eq!(body.entrypoint.unwrap()[1], "--listen");
        assert_eq!(body.network_disabled, Some(true));
        let host = body.host_config.unwrap();
        assert_eq!(host.readonly_rootfs, Some(true));
        let tmpfs = host.tmpfs.clone().unwrap();
        assert!(tmpfs["/tmp"].contains(",exec,"), "{tmpfs:?}");
        assert!(
            tmpfs.contains_key("/workspace"),
            "a writable workdir: {tmpfs:?}"
        );
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert!(host.cap_add.unwrap().is_empty());
        assert_eq!(host.auto_remove, Some(false));
        assert_eq!(host.runtime.as_deref(), Some("runc"));
        assert_eq!(host.ulimits.unwrap()[0].hard, Some(4096));
        assert!(!body.labels.unwrap().contains_key(LABEL_CREATOR));
    }
}
