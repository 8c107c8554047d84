//! The OCI bundle of one sandbox: its `config.json`, from the sandbox's spec. The agent is
//! the container's process; the host image gets the same replaced, hidden and scratch
//! places as on the native backend (`ak_core::host_image`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ak_core::backend::Lifetime;
use ak_core::host_image::{HIDDEN_DIRS, HIDDEN_FILES, SCRATCH_DIRS, TOP_LEVEL_REPLACED};
use ak_core::{ImageRef, SandboxSpec};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder, get_default_mounts,
};

use crate::error::GvisorError;

/// Where the agent binary appears inside the sandbox (bind-mounted read-only).
pub const AGENT_PATH: &str = "/.agentkernel/agent";
/// Where the host's per-sandbox socket directory appears inside the sandbox.
pub const RUN_DIR: &str = "/.agentkernel/run";
/// The agent's socket, in that directory.
pub const SOCKET_NAME: &str = "agent.sock";
/// Where the seccomp filters the agent installs appear inside the sandbox (read-only).
pub const SECCOMP_PATH: &str = "/.agentkernel/seccomp.bpf";

/// Host tasks gVisor itself needs in the sandbox's cgroup (the sentry's and gofer's Go
/// threads) on top of the sandbox's own processes: the pids limit counts them, and with
/// fewer than ~40 runsc cannot even start (measured: 32 fails, 48 starts). gVisor does
/// not enforce a process limit inside its own kernel, so this host limit is the one there
/// is: guest processes cost host tasks under systrap and ptrace, and a fork bomb meets
/// the limit there.
const RUNSC_OWN_TASKS: u64 = 64;

/// Makes mount points in the sandbox's own root directory; a mount point inside a
/// directory bound from the image must exist there already (making it would write to the
/// image: on the host image, to the host).
struct MountPoints<'a> {
    rootfs: &'a Path,
    image_root: &'a Path,
    /// The image's top-level directories bound into the root.
    binds: HashSet<String>,
}

impl MountPoints<'_> {
    /// Whether `path` is to be made in the root (else it exists in a bound image directory).
    fn place(&self, path: &Path, is_dir: bool) -> Result<bool, GvisorError> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        if self.binds.contains(first) {
            let existing = self.image_root.join(relative);
            let fits = existing.metadata().is_ok_and(|m| m.is_dir() == is_dir);
            return if fits {
                Ok(false)
            } else {
                Err(GvisorError::Unsupported(format!(
                    "cannot mount at {}: it would have to be made inside the image's /{first}",
                    path.display()
                )))
            };
        }
        Ok(true)
    }

    fn dir(&self, path: &Path) -> Result<(), GvisorError> {
        if self.place(path, true)? {
            make_below(self.rootfs, path, true)?;
        }
        Ok(())
    }

    fn file(&self, path: &Path) -> Result<(), GvisorError> {
        if self.place(path, false)? {
            make_below(self.rootfs, path, false)?;
        }
        Ok(())
    }
}

/// Makes `path` (a directory, or an empty file unless `is_dir`) below `root`, with any
/// directories above it, never following a symbolic link: `root` may be a stored image's
/// own tree, whose links (`/workspace -> /etc`) are the image's to choose and would
/// otherwise lead the host's root anywhere. What exists is kept as it is.
fn make_below(root: &Path, path: &Path, is_dir: bool) -> Result<(), GvisorError> {
    use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat};
    let refused =
        |why: &str| GvisorError::Unsupported(format!("cannot mount at {}: {why}", path.display()));
    let names: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(Ok(name)),
            std::path::Component::RootDir | std::path::Component::CurDir => None,
            _ => Some(Err(())),
        })
        .collect::<Result<_, _>>()
        .map_err(|()| refused("the path leaves the root"))?;
    let directory = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let failed = |what: String| move |e: rustix::io::Errno| GvisorError::io(what)(e.into());
    let mut dir = openat(CWD, root, directory, Mode::empty())
        .map_err(failed(format!("open {}", root.display())))?;
    for (i, name) in names.iter().enumerate() {
        if i + 1 == names.len() && !is_dir {
            return match openat(
                &dir,
                *name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(_) => Ok(()),
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::ISDIR) => {
                    Err(refused("the image has a link or a directory there"))
                }
                Err(e) => Err(failed(format!("make {}", path.display()))(e)),
            };
        }
        match mkdirat(&dir, *name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(failed(format!("make {}", path.display()))(e)),
        }
        dir = match openat(&dir, *name, directory, Mode::empty()) {
            Ok(next) => next,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(refused(&format!(
                    "{} is a link or a file in the image",
                    name.to_string_lossy()
                )));
            }
            Err(e) => return Err(failed(format!("open {}", path.display()))(e)),
        };
    }
    Ok(())
}

/// runsc's `--overlay2` for `spec`: a writable root gets an overlay in the sandbox's own
/// memory (counted against its limit; the root directory of ours on the host stays as it
/// was made), a read-only one none. A stored image's root is already an overlay with an
/// upper directory of the sandbox's own ([`crate::image`]): none either.
pub fn root_overlay(spec: &SandboxSpec) -> &'static str {
    if spec.policy.writable_root() && crate::image::stored(spec).is_none() {
        "--overlay2=root:memory"
    } else {
        "--overlay2=none"
    }
}

/// What a bundle needs besides the spec.
#[derive(Debug, Clone)]
pub struct Bundle<'a> {
    pub spec: &'a SandboxSpec,
    /// Where `config.json` and the root directory go.
    pub bundle_dir: &'a Path,
    pub lifetime: Lifetime,
    /// The static agent on the host.
    pub agent: &'a Path,
    /// The host directory the agent's socket is made in.
    pub socket_dir: &'a Path,
    /// The seccomp filters (the native backend's) for the agent to install.
    pub seccomp: &'a Path,
    /// The network namespace with the outbound network's interface, if any.
    pub netns: Option<&'a Path>,
    /// The resolver configuration for the outbound network.
    pub resolv_conf: Option<&'a Path>,
    /// A sandbox with secrets: what is shown read-only at `/run/agentkernel`.
    pub secrets: Option<&'a ak_egress::provision::SecretFiles>,
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
    /// The image's root directory on the host, for an image that is a directory (the host
    /// image is `/`); a stored image's root is its overlay ([`crate::image`]).
    fn root(&self) -> Result<PathBuf, GvisorError> {
        match &self.spec.image {
            ImageRef::Host | ImageRef::Auto => Ok(PathBuf::from("/")),
            ImageRef::Directory(dir) => Ok(dir.clone()),
            ImageRef::Oci(name)
            | ImageRef::Stored(ak_core::StoredImage {
                reference: name, ..
            }) => Err(GvisorError::Unsupported(format!(
                "OCI image {name} is not in the image store (the service pulls it first)"
            ))),
        }
    }

    /// The container's root directory and the image directory its top level comes from:
    /// for a stored image, both are its overlay (the image is the root); otherwise an empty
    /// directory of ours that the image's top-level directories are bound into.
    fn root_and_image(&self) -> Result<(PathBuf, PathBuf), GvisorError> {
        if let Some(image) = crate::image::stored(self.spec) {
            let owner = crate::image::id_mapping(self.spec).map(|(base, _)| (base, base));
            let merged = crate::image::mount(self.bundle_dir, image, owner)?;
            return Ok((merged.clone(), merged));
        }
        let image_root = self.root()?;
        let rootfs = self.bundle_dir.join("rootfs");
        std::fs::create_dir(&rootfs)
            .map_err(GvisorError::io(format!("make {}", rootfs.display())))?;
        Ok((rootfs, image_root))
    }

    /// Builds the sandbox's root directory `rootfs`, an empty directory of ours, and the
    /// mounts onto it. The root is never the image itself: gVisor's file server makes a
    /// missing mount point in the directory below it, so a root of `/` would leave
    /// `/workspace` and `/.agentkernel` in the host's `/`. Every mount point is made here,
    /// in `rootfs`, or must already exist in the image.
    fn mounts(
        &self,
        image_root: &Path,
        rootfs: &Path,
        host_image: bool,
    ) -> Result<Vec<Mount>, GvisorError> {
        let spec = self.spec;
        let memory = spec.resources.memory_bytes;
        let mut points = MountPoints {
            rootfs,
            binds: HashSet::new(),
            image_root,
        };
        let mut mounts: Vec<Mount> = get_default_mounts()
            .into_iter()
            // The cgroup tree is the host's business; gVisor shows its own anyway.
            .filter(|m| m.destination() != Path::new("/sys/fs/cgroup"))
            .collect();
        for dir in ["proc", "sys", "dev"] {
            points.dir(Path::new(dir))?;
        }
        // The image's top level: its directories bound (read-only unless the policy says
        // otherwise), its links copied; on the host image, the places that never come from
        // the host stay empty directories of ours.
        // (A stored image's overlay is the root itself: nothing to bind.)
        let entries = if image_root == rootfs {
            Vec::new()
        } else {
            std::fs::read_dir(image_root)
                .map_err(GvisorError::io(format!("read {}", image_root.display())))?
                .flatten()
                .collect()
        };
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let source = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_symlink() {
                let target = std::fs::read_link(&source)
                    .map_err(GvisorError::io(format!("read {}", source.display())))?;
                std::os::unix::fs::symlink(&target, rootfs.join(name)).map_err(GvisorError::io(
                    format!("link {name} in the sandbox's root"),
                ))?;
                continue;
            }
            if !kind.is_dir() {
                continue;
            }
            points.dir(Path::new(name))?;
            let replaced = ["proc", "sys", "dev"].contains(&name)
                || (host_image && TOP_LEVEL_REPLACED.contains(&name));
            if !replaced {
                points.binds.insert(name.to_string());
                // The image itself is never written, whatever the profile.
                mounts.push(bind(&source, &format!("/{name}"), true)?);
            }
        }
        // Writable scratch places, as large as the memory limit (tmpfs in gVisor is the
        // sandbox's own memory, counted against its limit).
        let scratch: Vec<(&str, u32)> = if host_image {
            SCRATCH_DIRS.to_vec()
        } else {
            vec![("/tmp", 0o1777), ("/run", 0o755)]
        };
        for (dir, mode) in &scratch {
            if points.binds.remove(dir.trim_start_matches('/')) {
                mounts.retain(|m| m.destination() != Path::new(dir));
            }
            points.dir(Path::new(dir))?;
            mounts.push(tmpfs(
                dir,
                &format!("nosuid,nodev,mode={mode:o},size={memory}"),
            )?);
        }
        if host_image {
            for dir in HIDDEN_DIRS.iter().filter(|d| Path::new(d).is_dir()) {
                mounts.push(tmpfs(dir, "ro,nosuid,nodev,mode=755,size=4k")?);
            }
            for file in HIDDEN_FILES.iter().filter(|f| Path::new(f).exists()) {
                mounts.push(bind(Path::new("/dev/null"), file, true)?);
            }
        }
        if let Some(resolv_conf) = self.resolv_conf {
            // Only over a file the image has: never made in an image directory.
            let has_file = image_root
                .join("etc/resolv.conf")
                .symlink_metadata()
                .is_ok_and(|m| m.is_file());
            // A stored image's root is the sandbox's own (its overlay): the mount point is
            // made there when the image has an /etc without the file.
            let own_root = image_root == rootfs
                && image_root
                    .join("etc")
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_dir())
                && image_root
                    .join("etc/resolv.conf")
                    .symlink_metadata()
                    .is_err();
            if own_root {
                points.file(Path::new("/etc/resolv.conf"))?;
            }
            if has_file || own_root {
                mounts.push(bind(resolv_conf, "/etc/resolv.conf", true)?);
            } else {
                tracing::warn!(
                    "{} has no regular etc/resolv.conf: DNS inside the sandbox uses what it has",
                    image_root.display()
                );
            }
        }
        if let Some(secrets) = self.secrets {
            // Below the scratch /run, which is mounted first.
            points.dir(Path::new(ak_core::secrets::RUN_DIR))?;
            mounts.push(bind(&secrets.dir, ak_core::secrets::RUN_DIR, true)?);
            // Over the image's system bundle where it is a regular file (never made).
            let system = ak_core::secrets::SYSTEM_BUNDLE;
            if image_root
                .join(system.trim_start_matches('/'))
                .symlink_metadata()
                .is_ok_and(|m| m.is_file())
            {
                mounts.push(bind(&secrets.bundle, system, true)?);
            }
        }
        points.dir(Path::new(RUN_DIR))?;
        points.file(Path::new(AGENT_PATH))?;
        points.file(Path::new(SECCOMP_PATH))?;
        mounts.push(bind(self.agent, AGENT_PATH, true)?);
        mounts.push(bind(self.seccomp, SECCOMP_PATH, true)?);
        mounts.push(bind(self.socket_dir, RUN_DIR, false)?);
        let workdir = path_str(&spec.workdir)?;
        if !spec.mounts.iter().any(|m| m.target == spec.workdir) {
            points.dir(&spec.workdir)?;
            mounts.push(tmpfs(
                workdir,
                &format!("nosuid,nodev,mode=755,size={memory}"),
            )?);
        }
        for mount in &spec.mounts {
            if mount.host.is_dir() {
                points.dir(&mount.target)?;
            } else {
                points.file(&mount.target)?;
            }
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
        let (rootfs, image_root) = self.root_and_image()?;
        let host_image = image_root == Path::new("/");
        let mounts = self.mounts(&image_root, &rootfs, host_image)?;
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
                // The native backend's deny-list, installed by the agent inside gVisor's
                // kernel before it serves: the same promises on both backends. (runsc's
                // own OCI seccomp support ignores `errnoRet`, and `clone3` must fail with
                // ENOSYS for libc to fall back to the filterable `clone`.)
                "--seccomp".into(),
                SECCOMP_PATH.into(),
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
                    .limit(
                        i64::try_from(spec.resources.pids.saturating_add(RUNSC_OWN_TASKS))
                            .unwrap_or(i64::MAX),
                    )
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
        let mut namespaces = [
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
        let mut linux = LinuxBuilder::default();
        if let Some((base, count)) = crate::image::id_mapping(spec) {
            // The stored image's owners (see `crate::image`): root inside is `base` on the
            // host, as the layers' files are owned.
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::User)
                    .build()
                    .map_err(error)?,
            );
            let mapping = LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(base)
                .size(count)
                .build()
                .map_err(error)?;
            linux = linux
                .uid_mappings(vec![mapping])
                .gid_mappings(vec![mapping]);
        }
        let linux = linux
            .namespaces(namespaces)
            .resources(resources.build().map_err(error)?)
            .cgroups_path(crate::sandbox::cgroup_path(&spec.id))
            .build()
            .map_err(error)?;

        SpecBuilder::default()
            .version("1.0.2")
            .root(
                RootBuilder::default()
                    .path(rootfs)
                    // Writable unless restrictive, as on the native backend: new top-level
                    // places (`/app`) go to the root's overlay in gVisor's memory (see
                    // `root_overlay`), never to the root directory on the host.
                    .readonly(!spec.policy.writable_root())
                    .build()
                    .map_err(error)?,
            )
            .hostname(spec.hostname.clone())
            .process(process)
            .mounts(mounts)
            .linux(linux)
            .build()
            .map_err(error)
    }

    /// Makes the root directory and writes `config.json`, in the bundle directory.
    pub fn write(&self) -> Result<(), GvisorError> {
        let spec = self.spec()?;
        spec.save(self.bundle_dir.join("config.json"))
            .map_err(|e| GvisorError::Bundle(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::make_below;

    #[test]
    fn mount_points_never_follow_the_images_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("workspace")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("file")).unwrap();

        let dir = make_below(root.path(), "/workspace/run".as_ref(), true).unwrap_err();
        assert!(dir.to_string().contains("workspace is a link"), "{dir}");
        let file = make_below(root.path(), "/file".as_ref(), false).unwrap_err();
        assert!(file.to_string().contains("a link"), "{file}");
        let up = make_below(root.path(), "/a/../../x".as_ref(), true).unwrap_err();
        assert!(up.to_string().contains("leaves the root"), "{up}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        // What is not a link is made, parents too, and what exists is kept.
        make_below(root.path(), "/.agentkernel/run".as_ref(), true).unwrap();
        std::fs::write(root.path().join(".agentkernel/agent"), "kept").unwrap();
        make_below(root.path(), "/.agentkernel/agent".as_ref(), false).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join(".agentkernel/agent")).unwrap(),
            "kept"
        );
        make_below(root.path(), "/etc/resolv.conf".as_ref(), false).unwrap();
        assert!(root.path().join("etc/resolv.conf").is_file());
    }
}
