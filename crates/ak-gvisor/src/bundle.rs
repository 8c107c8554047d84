//! The OCI bundle of one sandbox: its `config.json`, from the sandbox's spec. The agent is
//! the container's process; the host image gets the same replaced, hidden and scratch
//! places as on the native backend (`ak_core::host_image`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ak_core::backend::Lifetime;
use ak_core::host_image::{HIDDEN_DIRS, HIDDEN_FILES, SCRATCH_DIRS, TOP_LEVEL_REPLACED};
use ak_core::{ImageRef, SandboxSpec};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder, get_default_mounts,
};

use crate::error::GvisorError;

/// Where the agent binary appears inside the sandbox (bind-mounted read-only).
pub const AGENT_PATH: &str = "/.agentkernel/agent";
/// Where the host's per-sandbox socket directory appears inside the sandbox.
pub const RUN_DIR: &str = "/.agentkernel/run";
/// The agent's socket, in that directory.
pub const SOCKET_NAME: &str = "agent.sock";

/// What a bundle needs besides the spec.
#[derive(Debug, Clone)]
pub struct Bundle<'a> {
    pub spec: &'a SandboxSpec,
    pub lifetime: Lifetime,
    /// The static agent on the host.
    pub agent: &'a Path,
    /// The host directory the agent's socket is made in.
    pub socket_dir: &'a Path,
    /// The network namespace with the outbound network's interface, if any.
    pub netns: Option<&'a Path>,
    /// The resolver configuration for the outbound network.
    pub resolv_conf: Option<&'a Path>,
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Result<Mount, GvisorError> {
    let mode = if read_only { "ro" } else { "rw" };
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            mode.to_string(),
            "nosuid".into(),
            "nodev".into(),
        ])
        .build()
        .map_err(|e| GvisorError::Bundle(e.to_string()))
}

fn tmpfs(destination: &str, options: &str) -> Result<Mount, GvisorError> {
    MountBuilder::default()
        .destination(destination)
        .typ("tmpfs")
        .source("tmpfs")
        .options(
            options
                .split(',')
                .map(str::to_string)
                .collect::<Vec<String>>(),
        )
        .build()
        .map_err(|e| GvisorError::Bundle(e.to_string()))
}

fn path_str(path: &Path) -> Result<&str, GvisorError> {
    path.to_str()
        .ok_or_else(|| GvisorError::Unsupported(format!("{} is not UTF-8", path.display())))
}

impl Bundle<'_> {
    /// The image's root directory on the host.
    fn root(&self) -> Result<PathBuf, GvisorError> {
        match &self.spec.image {
            ImageRef::Host | ImageRef::Auto => Ok(PathBuf::from("/")),
            ImageRef::Directory(dir) => Ok(dir.clone()),
            ImageRef::Oci(name) => Err(GvisorError::Unsupported(format!(
                "OCI images (here {name}) need an image store, which the gvisor backend does \
                 not have yet; use --image host or a directory holding a root filesystem"
            ))),
        }
    }

    fn mounts(&self, host_image: bool) -> Result<Vec<Mount>, GvisorError> {
        let spec = self.spec;
        let memory = spec.resources.memory_bytes;
        let mut mounts: Vec<Mount> = get_default_mounts()
            .into_iter()
            // The cgroup tree is the host's business; gVisor shows its own anyway.
            .filter(|m| m.destination() != Path::new("/sys/fs/cgroup"))
            .collect();
        // Writable scratch places, as large as the memory limit (tmpfs in gVisor is the
        // sandbox's own memory, counted against its limit).
        let scratch: Vec<(&str, u32)> = if host_image {
            SCRATCH_DIRS.to_vec()
        } else {
            vec![("/tmp", 0o1777), ("/run", 0o755)]
        };
        for (dir, mode) in &scratch {
            mounts.push(tmpfs(
                dir,
                &format!("nosuid,nodev,mode={mode:o},size={memory}"),
            )?);
        }
        if host_image {
            let scratch_names: HashSet<&str> = scratch
                .iter()
                .map(|(d, _)| d.trim_start_matches('/'))
                .collect();
            for name in TOP_LEVEL_REPLACED {
                let fresh = ["proc", "sys", "dev"].contains(name) || scratch_names.contains(name);
                if !fresh && Path::new("/").join(name).is_dir() {
                    mounts.push(tmpfs(
                        &format!("/{name}"),
                        "ro,nosuid,nodev,mode=755,size=4k",
                    )?);
                }
            }
            for dir in HIDDEN_DIRS.iter().filter(|d| Path::new(d).is_dir()) {
                mounts.push(tmpfs(dir, "ro,nosuid,nodev,mode=755,size=4k")?);
            }
            for file in HIDDEN_FILES.iter().filter(|f| Path::new(f).exists()) {
                mounts.push(bind(Path::new("/dev/null"), file, true)?);
            }
        }
        if let Some(resolv_conf) = self.resolv_conf {
            mounts.push(bind(resolv_conf, "/etc/resolv.conf", true)?);
        }
        mounts.push(bind(self.agent, AGENT_PATH, true)?);
        mounts.push(bind(self.socket_dir, RUN_DIR, false)?);
        let workdir = path_str(&spec.workdir)?;
        if !spec.mounts.iter().any(|m| m.target == spec.workdir) {
            mounts.push(tmpfs(
                workdir,
                &format!("nosuid,nodev,mode=755,size={memory}"),
            )?);
        }
        for mount in &spec.mounts {
            mounts.push(bind(
                &mount.host,
                path_str(&mount.target)?,
                !mount.writable,
            )?);
        }
        Ok(mounts)
    }

    /// The whole `config.json`.
    pub fn spec(&self) -> Result<Spec, GvisorError> {
        let spec = self.spec;
        let error = |e: oci_spec::OciSpecError| GvisorError::Bundle(e.to_string());
        let root = self.root()?;
        let host_image = root == Path::new("/");
        let socket = format!("{RUN_DIR}/{SOCKET_NAME}");
        let listen = match self.lifetime {
            // One connection; the agent, and with it the sandbox, ends when it closes.
            Lifetime::Ephemeral => "--listen-once",
            Lifetime::Persistent => "--listen",
        };
        let capabilities: HashSet<Capability> = spec
            .policy
            .capabilities
            .iter()
            .map(|c| {
                c.name()
                    .parse::<Capability>()
                    .map_err(|_| GvisorError::Bundle(format!("unknown capability {}", c.name())))
            })
            .collect::<Result<_, _>>()?;
        let process = ProcessBuilder::default()
            .terminal(false)
            .user(
                UserBuilder::default()
                    .uid(0u32)
                    .gid(0u32)
                    .build()
                    .map_err(error)?,
            )
            .args(vec![
                AGENT_PATH.to_string(),
                listen.to_string(),
                socket,
                "--workdir".into(),
                path_str(&spec.workdir)?.to_string(),
            ])
            .env(
                spec.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
            )
            .cwd("/")
            .no_new_privileges(true)
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(capabilities.clone())
                    .effective(capabilities.clone())
                    .permitted(capabilities)
                    .inheritable(HashSet::new())
                    .ambient(HashSet::new())
                    .build()
                    .map_err(error)?,
            )
            .build()
            .map_err(error)?;

        let memory = i64::try_from(spec.resources.memory_bytes).unwrap_or(i64::MAX);
        let mut resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(memory)
                    .swap(memory)
                    .build()
                    .map_err(error)?,
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(i64::try_from(spec.resources.pids).unwrap_or(i64::MAX))
                    .build()
                    .map_err(error)?,
            );
        if let Some(cpus) = spec.resources.cpus {
            const PERIOD: u64 = 100_000;
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .period(PERIOD)
                    .quota((cpus * PERIOD as f64).round() as i64)
                    .build()
                    .map_err(error)?,
            );
        }
        let namespaces = [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network,
        ]
        .into_iter()
        .map(|typ| {
            let mut namespace = LinuxNamespaceBuilder::default().typ(typ);
            if typ == LinuxNamespaceType::Network
                && let Some(netns) = self.netns
            {
                namespace = namespace.path(netns);
            }
            namespace.build().map_err(error)
        })
        .collect::<Result<Vec<_>, _>>()?;
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .resources(resources.build().map_err(error)?)
            .cgroups_path(PathBuf::from(format!("/agentkernel-gvisor/{}", spec.id)))
            .build()
            .map_err(error)?;

        SpecBuilder::default()
            .version("1.0.2")
            .root(
                RootBuilder::default()
                    .path(root)
                    .readonly(spec.policy.read_only_root)
                    .build()
                    .map_err(error)?,
            )
            .hostname(spec.hostname.clone())
            .process(process)
            .mounts(self.mounts(host_image)?)
            .linux(linux)
            .build()
            .map_err(error)
    }

    /// Writes `config.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), GvisorError> {
        let spec = self.spec()?;
        spec.save(dir.join("config.json"))
            .map_err(|e| GvisorError::Bundle(e.to_string()))
    }
}
