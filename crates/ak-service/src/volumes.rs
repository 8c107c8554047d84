//! Named volumes: directories under the state directory that outlive the sandboxes using
//! them, mounted by name (`--volume cache:/root/.cache`, the SDKs' `volumes`). A volume is
//! created on first use or with `volume create`, and removed only when nothing uses it.
//!
//! Who uses a volume: named sandboxes say so in the registry (their spec lists it); a
//! one-shot sandbox holds a lock on the volume's lock file while it lives (shared for
//! read-only and shared users, exclusive for an exclusive writer), so a removal or an
//! exclusive user started meanwhile finds it busy. The lock dies with the process that
//! held it, so a killed run never leaves a volume "in use".

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ak_core::volume::{VolumeAccess, VolumeMount};
use ak_core::{Mount, SandboxSpec, SandboxState};
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::registry::now_unix;
use crate::volume_quota::{Quota, QuotaError};
use crate::{Caller, Service};

/// The directory holding one volume's files inside its own directory.
const DATA_DIR: &str = "data";
const META_FILE: &str = "volume.json";
const LOCK_FILE: &str = "lock";

/// What `volume inspect` and `volume list` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Who made it: `local`, `api` or `mcp` (`volume create`), or `first use` (a sandbox
    /// that named it).
    pub created_by: String,
    /// Bytes its files take on disk (allocated blocks: a sparse file counts what it holds).
    pub size_bytes: u64,
    /// The most its files may take (a project quota), when it was created with a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit_bytes: Option<u64>,
    /// The named sandboxes whose spec mounts it, with how.
    pub used_by: Vec<VolumeUser>,
    /// Where its files are on the host: shown to the local user only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// A named sandbox that mounts a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUser {
    pub sandbox: String,
    pub state: SandboxState,
    pub access: VolumeAccess,
}

/// What `volume.json` records.
#[derive(Debug, Serialize, Deserialize)]
struct VolumeMeta {
    created_at: i64,
    created_by: String,
    /// The size limit and the quota project that enforces it (see `volume_quota`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<VolumeLimit>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct VolumeLimit {
    bytes: u64,
    quota: Quota,
}

/// The locks a one-shot sandbox holds on its volumes while it lives.
#[derive(Debug, Default)]
pub(crate) struct VolumeLease {
    locks: Vec<File>,
}

impl VolumeLease {
    pub(crate) fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }
}

impl Service {
    fn volumes_dir(&self) -> Result<PathBuf, ServiceError> {
        Ok(self.state_dir()?.join("volumes"))
    }

    fn volume_dir(&self, name: &str) -> Result<PathBuf, ServiceError> {
        ak_core::volume::validate_volume_name(name)?;
        Ok(self.volumes_dir()?.join(name))
    }

    /// Creates an empty volume, of at most `size_limit` bytes when given (where the file
    /// system keeps project quotas; elsewhere that is an error and nothing is made); an
    /// error if it exists.
    pub async fn create_volume(
        &self,
        caller: Caller,
        name: &str,
        size_limit: Option<u64>,
    ) -> Result<VolumeInfo, ServiceError> {
        let result = self
            .make_volume(caller.as_str(), name, true, size_limit)
            .and_then(|()| self.volume_info(caller, name));
        self.audited(
            caller,
            "volume-create",
            None,
            Some(name.to_string()),
            result,
        )
    }

    /// Every volume, by name.
    pub async fn list_volumes(&self, caller: Caller) -> Result<Vec<VolumeInfo>, ServiceError> {
        let dir = self.volumes_dir()?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(state_error("read", &dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join(META_FILE).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
            .iter()
            .map(|name| self.volume_info(caller, name))
            .collect()
    }

    /// One volume.
    pub async fn inspect_volume(
        &self,
        caller: Caller,
        name: &str,
    ) -> Result<VolumeInfo, ServiceError> {
        self.volume_info(caller, name)
    }

    /// Removes a volume and its files: refused while a named sandbox mounts it (whatever
    /// its state: its next start would find it gone) or a one-shot sandbox uses it.
    pub async fn remove_volume(&self, caller: Caller, name: &str) -> Result<(), ServiceError> {
        let result = self.remove_volume_unaudited(name);
        self.audited(
            caller,
            "volume-remove",
            None,
            Some(name.to_string()),
            result,
        )
    }

    fn remove_volume_unaudited(&self, name: &str) -> Result<(), ServiceError> {
        let dir = self.existing_volume(name)?;
        let users = self.named_users(name)?;
        if let Some(user) = users.first() {
            return Err(ServiceError::InUse(format!(
                "volume '{name}' is used by sandbox '{}' ({}); remove the sandbox first",
                user.sandbox, user.state
            )));
        }
        let _lock = lock(&dir, VolumeAccess::Exclusive).map_err(|_| {
            ServiceError::InUse(format!("volume '{name}' is in use by a running command"))
        })?;
        // Renamed aside first, so that a removal cut short never leaves a volume that
        // looks whole but has lost part of its files.
        let doomed = self.volumes_dir()?.join(format!(
            ".removing-{name}-{}",
            ak_core::spec::new_sandbox_id()
        ));
        let limit = read_meta(&dir).ok().and_then(|meta| meta.limit);
        std::fs::rename(&dir, &doomed).map_err(|e| state_error("rename", &dir, e))?;
        // A project's limit goes with the volume (its id may be drawn again); a btrfs
        // subvolume is removed with the files, its quota group stays (empty, unlimited
        // once nothing refers to it).
        if let Some(VolumeLimit {
            quota: Quota::Project(id),
            ..
        }) = limit
            && let Err(e) = crate::volume_quota::limit(&doomed.join(DATA_DIR), id, 0)
        {
            tracing::warn!("lifting the size limit of volume '{name}': {e}");
        }
        std::fs::remove_dir_all(&doomed).map_err(|e| state_error("remove", &doomed, e))
    }

    /// Makes `name`'s directory, its data directory and its record. `exclusive`: an error
    /// when it exists already; otherwise an existing volume is left as it is.
    fn make_volume(
        &self,
        created_by: &str,
        name: &str,
        exclusive: bool,
        size_limit: Option<u64>,
    ) -> Result<(), ServiceError> {
        let dir = self.volume_dir(name)?;
        if dir.join(META_FILE).is_file() {
            return if exclusive {
                Err(ServiceError::InUse(format!(
                    "a volume named '{name}' already exists"
                )))
            } else {
                Ok(())
            };
        }
        let volumes = self.volumes_dir()?;
        // Search bits for everyone, as the sandboxes directory: the sandbox's root (an
        // unprivileged host uid for the native backend) must pass through to the data.
        for parent in [self.state_dir()?, volumes.as_path()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(|e| state_error("create", parent, e))?;
            add_search_bits(parent)?;
        }
        // Built aside and renamed into place: a volume is whole or absent.
        let building = volumes.join(format!(
            ".creating-{name}-{}",
            ak_core::spec::new_sandbox_id()
        ));
        let built = (|| {
            std::fs::DirBuilder::new()
                .mode(0o711)
                .create(&building)
                .map_err(|e| state_error("create", &building, e))?;
            std::fs::set_permissions(&building, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| state_error("chmod", &building, e))?;
            let data = building.join(DATA_DIR);
            let limit = match size_limit {
                Some(0) => {
                    return Err(ServiceError::InvalidInput(
                        "a volume's size limit must be above 0 bytes".into(),
                    ));
                }
                Some(bytes) => {
                    let quota = crate::volume_quota::make_limited(&data, bytes, || {
                        self.free_quota_project()
                    })
                    .map_err(|e| match e {
                        QuotaError::Unsupported(_) => ServiceError::Unavailable(e.to_string()),
                        other => ServiceError::State(other.to_string()),
                    })?;
                    Some(VolumeLimit { bytes, quota })
                }
                None => {
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&data)
                        .map_err(|e| state_error("create", &data, e))?;
                    None
                }
            };
            File::create(building.join(LOCK_FILE))
                .map_err(|e| state_error("create", &building, e))?;
            let meta = VolumeMeta {
                created_at: now_unix(),
                created_by: created_by.to_string(),
                limit,
            };
            let text = serde_json::to_vec_pretty(&meta)
                .map_err(|e| ServiceError::State(format!("encode volume record: {e}")))?;
            std::fs::write(building.join(META_FILE), text)
                .map_err(|e| state_error("write", &building, e))?;
            match std::fs::rename(&building, &dir) {
                Ok(()) => Ok(()),
                // Another process made it meanwhile.
                Err(_) if dir.join(META_FILE).is_file() && !exclusive => Ok(()),
                Err(_) if dir.join(META_FILE).is_file() => Err(ServiceError::InUse(format!(
                    "a volume named '{name}' already exists"
                ))),
                Err(e) => Err(state_error("rename", &building, e)),
            }
        })();
        if built.is_err() || building.exists() {
            let _ = std::fs::remove_dir_all(&building);
        }
        built
    }

    fn existing_volume(&self, name: &str) -> Result<PathBuf, ServiceError> {
        let dir = self.volume_dir(name)?;
        if !dir.join(META_FILE).is_file() {
            return Err(ServiceError::NoSuch(format!("volume named '{name}'")));
        }
        Ok(dir)
    }

    fn volume_info(&self, caller: Caller, name: &str) -> Result<VolumeInfo, ServiceError> {
        let dir = self.existing_volume(name)?;
        let meta = read_meta(&dir)?;
        let data = dir.join(DATA_DIR);
        Ok(VolumeInfo {
            name: name.to_string(),
            created_at: meta.created_at,
            created_by: meta.created_by,
            size_bytes: disk_usage(&data),
            size_limit_bytes: meta.limit.map(|l| l.bytes),
            used_by: self.named_users(name)?,
            path: (!caller.is_remote()).then_some(data),
        })
    }

    /// A quota project id no volume uses: random in the upper half of the ids (below it,
    /// ids an administrator may have given by hand), checked against every volume's.
    fn free_quota_project(&self) -> u32 {
        let Ok(volumes) = self.volumes_dir() else {
            return 0x8000_0000;
        };
        let used: std::collections::HashSet<u32> = std::fs::read_dir(volumes)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|entry| match read_meta(&entry.path()).ok()?.limit?.quota {
                        Quota::Project(id) => Some(id),
                        Quota::Subvolume => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        loop {
            // A fresh sandbox id's first 32 bits: a v4 UUID's hex, random (and always hex:
            // the parse cannot fail, a failure would only retry).
            let id = ak_core::spec::new_sandbox_id();
            let random = u32::from_str_radix(id.get(..8).unwrap_or_default(), 16).unwrap_or(0);
            let project = 0x8000_0000 | random;
            if !used.contains(&project) {
                return project;
            }
        }
    }

    /// The named sandboxes whose spec mounts `name`.
    fn named_users(&self, name: &str) -> Result<Vec<VolumeUser>, ServiceError> {
        Ok(self
            .registry()?
            .list()?
            .into_iter()
            .filter_map(|record| {
                let access = record.spec.volumes.iter().find(|v| v.name == name)?.access;
                Some(VolumeUser {
                    sandbox: record.name,
                    state: record.state,
                    access,
                })
            })
            .collect())
    }

    /// Remote callers name volumes the local user made (`volume create`): they may not
    /// leave new directories on the host by naming them, as the SDKs document.
    pub(crate) fn admit_volumes(
        &self,
        caller: Caller,
        spec: &SandboxSpec,
    ) -> Result<(), ServiceError> {
        if !caller.is_remote() {
            return Ok(());
        }
        for volume in &spec.volumes {
            if self.existing_volume(&volume.name).is_err() {
                return Err(ServiceError::NoSuch(format!(
                    "volume named '{}' (the host's user creates volumes: `agentkernel volume create {}`)",
                    volume.name, volume.name
                )));
            }
        }
        Ok(())
    }

    /// Turns `spec`'s volumes into mounts of their data directories (creating missing
    /// volumes), after checking that every other user of each volume can share it as asked.
    /// `named`: the named sandbox being started, whose own record does not count as another
    /// user. A one-shot sandbox keeps the returned lease for as long as it lives; a named
    /// sandbox is found through the registry instead.
    pub(crate) fn attach_volumes(
        &self,
        spec: &mut SandboxSpec,
        named: Option<&str>,
        root_owner: Option<(u32, u32)>,
    ) -> Result<VolumeLease, ServiceError> {
        let mut lease = VolumeLease::default();
        if spec.volumes.is_empty() {
            return Ok(lease);
        }
        let users = self.registry()?.list()?;
        for volume in spec.volumes.clone() {
            self.make_volume("first use", &volume.name, false, None)?;
            let dir = self.existing_volume(&volume.name)?;
            if let Some(other) =
                users.iter().find(|record| {
                    Some(record.name.as_str()) != named
                        && record.state.is_up()
                        && record.spec.volumes.iter().any(|v| {
                            v.name == volume.name && !v.access.compatible_with(volume.access)
                        })
                })
            {
                return Err(in_use(&volume, &format!("sandbox '{}'", other.name)));
            }
            let lock =
                lock(&dir, volume.access).map_err(|_| in_use(&volume, "a running command"))?;
            if named.is_none() {
                lease.locks.push(lock);
            }
            let data = dir.join(DATA_DIR);
            if let Some((uid, gid)) = root_owner {
                // Only the top directory: what sandboxes made inside is theirs as it is.
                rustix::fs::chown(
                    &data,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .map_err(|e| ServiceError::State(format!("chown {}: {e}", data.display())))?;
            }
            spec.mounts.retain(|m| m.target != volume.target);
            spec.mounts.push(Mount {
                host: data,
                target: volume.target.clone(),
                writable: volume.access.writable(),
            });
        }
        Ok(lease)
    }
}

fn in_use(volume: &VolumeMount, by: &str) -> ServiceError {
    ServiceError::InUse(format!(
        "volume '{}' is in use by {by}: sandboxes share a volume only when each mounts it \
         :ro or :shared (this one asked for {})",
        volume.name,
        volume.access.as_str()
    ))
}

/// Takes the volume's lock without waiting: shared for read-only and shared users,
/// exclusive for an exclusive writer and for removal.
fn lock(dir: &Path, access: VolumeAccess) -> Result<File, ServiceError> {
    let path = dir.join(LOCK_FILE);
    let file = File::open(&path).map_err(|e| state_error("open", &path, e))?;
    let operation = match access {
        VolumeAccess::Exclusive => FlockOperation::NonBlockingLockExclusive,
        VolumeAccess::ReadOnly | VolumeAccess::Shared => FlockOperation::NonBlockingLockShared,
    };
    rustix::fs::flock(&file, operation)
        .map_err(|e| ServiceError::InUse(format!("{} is locked: {e}", path.display())))?;
    Ok(file)
}

fn add_search_bits(dir: &Path) -> Result<(), ServiceError> {
    let mode = std::fs::metadata(dir)
        .map_err(|e| state_error("stat", dir, e))?
        .permissions()
        .mode();
    if mode & 0o111 != 0o111 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o111))
            .map_err(|e| state_error("chmod", dir, e))?;
    }
    Ok(())
}

/// Bytes allocated under `dir`, never following a symlink (a sandbox made what is in it).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// A volume's record.
fn read_meta(dir: &Path) -> Result<VolumeMeta, ServiceError> {
    let path = dir.join(META_FILE);
    let text = std::fs::read(&path).map_err(|e| state_error("read", &path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| ServiceError::State(format!("{}: {e}", path.display())))
}

fn state_error(what: &str, path: &Path, error: std::io::Error) -> ServiceError {
    ServiceError::State(format!("{what} {}: {error}", path.display()))
}
