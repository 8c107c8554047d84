//! A volume's size limit, where the file system keeps one; a write past it fails with
//! EDQUOT inside the sandbox, whatever its backend or uid:
//!
//! - btrfs with quotas enabled (`btrfs quota enable MOUNT`): the data directory is a
//!   subvolume of its own with a limit on its quota group (qgroups apply to root too);
//! - ext4 (with the `project` and `quota` features) or xfs, mounted `prjquota`: the data
//!   directory gets a project id that everything made below it inherits, and the project
//!   a hard block limit (no sandbox holds CAP_SYS_RESOURCE on the host, which would let
//!   it pass). The kernels of the machines this is developed on are built without
//!   `CONFIG_QUOTA` and `CONFIG_XFS_QUOTA`, so only the btrfs path is exercised by tests
//!   here; this one is written to the kernel's documented interface.
//!
//! No crate wraps these ioctls or `quotactl_fd(2)`, so they are called here directly.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
/// New files and directories below take the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
/// `PRJQUOTA` of `<linux/quota.h>`; `QCMD(cmd, type)` shifts the command by 8 bits.
const PRJQUOTA: libc::c_int = 2;
const fn qcmd(command: libc::c_int, kind: libc::c_int) -> libc::c_int {
    (((command as u32) << 8) | (kind as u32 & 0xff)) as libc::c_int
}

/// How a volume's limit is kept (recorded with the volume, to lift it on removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// A btrfs subvolume's quota group.
    Subvolume,
    /// A project quota with this id.
    Project(u32),
}

/// `BTRFS_SUPER_MAGIC`, the `f_type` of a btrfs file system.
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;
/// `_IOW(0x94, 14, struct btrfs_ioctl_vol_args)` and `_IOR(0x94, 43, struct
/// btrfs_ioctl_qgroup_limit_args)`.
const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
const BTRFS_IOC_QGROUP_LIMIT: libc::c_ulong = 0x8030_942b;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`: a limit on what the subvolume refers to.
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct BtrfsVolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_qgroup_limit_args` (its `struct btrfs_qgroup_limit` inlined).
#[repr(C)]
#[derive(Default)]
struct BtrfsQgroupLimitArgs {
    /// 0: the quota group of the subvolume the descriptor is in.
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// Makes the directory `data` (mode 0700, in an existing parent) holding at most `bytes`,
/// as its file system allows: a btrfs subvolume, else a directory with a project quota
/// whose id `project` draws. Nothing is left behind on an error.
pub fn make_limited(
    data: &Path,
    bytes: u64,
    project: impl FnOnce() -> u32,
) -> Result<Quota, QuotaError> {
    // Messages name where volumes live, not the work directory `data` is made in.
    let place = data
        .parent()
        .and_then(Path::parent)
        .unwrap_or(data)
        .display()
        .to_string();
    let failed = |source: std::io::Error| QuotaError::Failed {
        path: data.display().to_string(),
        source,
    };
    let (Some(parent), Some(name)) = (data.parent(), data.file_name()) else {
        return Err(failed(std::io::ErrorKind::InvalidInput.into()));
    };
    let parent_fd = open_dir(parent)?;
    let on_btrfs = rustix::fs::fstatfs(&parent_fd)
        .map_err(|e| failed(e.into()))?
        .f_type as u64
        == BTRFS_SUPER_MAGIC;
    if !on_btrfs {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(data)
            .map_err(failed)?;
        let id = project();
        return match limit(data, id, bytes) {
            Ok(()) => Ok(Quota::Project(id)),
            Err(e) => {
                let _ = std::fs::remove_dir(data);
                Err(match e {
                    QuotaError::Unsupported(_) => QuotaError::Unsupported(format!(
                        "the file system of {place} keeps no quotas this kernel can use, so a \
                         volume there cannot have a size limit (btrfs with quotas enabled, or \
                         ext4 or xfs mounted with prjquota on a kernel with quota support, can)"
                    )),
                    other => other,
                })
            }
        };
    }
    let name = name.as_encoded_bytes();
    let mut args = BtrfsVolArgs {
        fd: 0,
        name: [0; 4088],
    };
    if name.len() >= args.name.len() {
        return Err(failed(std::io::ErrorKind::InvalidInput.into()));
    }
    args.name[..name.len()].copy_from_slice(name);
    // SAFETY: BTRFS_IOC_SUBVOL_CREATE reads one `struct btrfs_ioctl_vol_args` (BtrfsVolArgs
    // has its layout, the name NUL-terminated) from the pointer, valid for the call.
    let made = unsafe {
        libc::ioctl(
            parent_fd.as_raw_fd(),
            BTRFS_IOC_SUBVOL_CREATE,
            &raw const args,
        )
    };
    if made != 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    let limited = (|| {
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
        let fd = open_dir(data)?;
        let mut limit = BtrfsQgroupLimitArgs {
            flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes,
            ..BtrfsQgroupLimitArgs::default()
        };
        // SAFETY: BTRFS_IOC_QGROUP_LIMIT reads (and may write back) one `struct
        // btrfs_ioctl_qgroup_limit_args` at the pointer, valid for the call's duration.
        let set = unsafe { libc::ioctl(fd.as_raw_fd(), BTRFS_IOC_QGROUP_LIMIT, &raw mut limit) };
        if set != 0 {
            let error = std::io::Error::last_os_error();
            // Quotas are not enabled on this file system.
            return Err(match error.raw_os_error() {
                Some(libc::ENOTCONN | libc::ENOENT | libc::EINVAL) => {
                    QuotaError::Unsupported(format!(
                        "the btrfs file system of {place} has quotas disabled, so a volume \
                         there cannot have a size limit (`btrfs quota enable` on its mount \
                         point allows it)"
                    ))
                }
                _ => failed(error),
            });
        }
        Ok(Quota::Subvolume)
    })();
    if limited.is_err() {
        // An empty subvolume is removed like a directory.
        let _ = std::fs::remove_dir(data);
    }
    limited
}

/// Why a limit could not be set.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The file system (or this kernel) keeps no quota a limit could be set with: why.
    #[error("{0}")]
    Unsupported(String),
    #[error("setting the size limit of {path}: {source}")]
    Failed {
        path: String,
        source: std::io::Error,
    },
}

fn open_dir(dir: &Path) -> Result<OwnedFd, QuotaError> {
    rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| QuotaError::Failed {
        path: dir.display().to_string(),
        source: e.into(),
    })
}

/// Gives `dir` (empty, just made) the project id `project`, inherited below it, and the
/// project a hard limit of `bytes` (rounded up to the quota's 1 KiB blocks). `bytes == 0`
/// lifts the limit (a removed volume's project).
pub fn limit(dir: &Path, project: u32, bytes: u64) -> Result<(), QuotaError> {
    let fd = open_dir(dir)?;
    let unsupported =
        || QuotaError::Unsupported(format!("{} keeps no project quotas", dir.display()));
    let failed = |source: std::io::Error| QuotaError::Failed {
        path: dir.display().to_string(),
        source,
    };
    let mut attributes = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr` (FsXattr has its layout) to the
    // pointer, which is valid for writes of that size for the call's duration.
    let got = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &raw mut attributes) };
    if got != 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => unsupported(),
            _ => failed(error),
        });
    }
    attributes.projid = project;
    attributes.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` from the pointer, valid for
    // reads of that size for the call's duration.
    let set = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, &raw const attributes) };
    if set != 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => unsupported(),
            _ => failed(error),
        });
    }
    let blocks = bytes.div_ceil(1024);
    let mut quota = libc::dqblk {
        dqb_bhardlimit: blocks,
        dqb_bsoftlimit: blocks,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: libc::QIF_BLIMITS,
    };
    // SAFETY: quotactl_fd(fd, Q_SETQUOTA, id, addr) reads one `struct if_dqblk` (libc's
    // dqblk) from `addr`, valid for reads for the call's duration; `fd` is open.
    let done = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            qcmd(libc::Q_SETQUOTA, PRJQUOTA),
            project,
            &raw mut quota,
        )
    };
    if done != 0 {
        let error = std::io::Error::last_os_error();
        // No quota support compiled in, or project quotas not switched on for this mount.
        return Err(match error.raw_os_error() {
            Some(libc::ENOSYS | libc::ESRCH | libc::EOPNOTSUPP | libc::ENOTTY) => unsupported(),
            _ => failed(error),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constants_are_the_kernels() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::size_of::<BtrfsVolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<BtrfsQgroupLimitArgs>(), 48);
        // QCMD(Q_SETQUOTA, PRJQUOTA) in <sys/quota.h> terms.
        assert_eq!(qcmd(libc::Q_SETQUOTA, PRJQUOTA) as u32, 0x8000_0802);
        assert_eq!(libc::Q_SETQUOTA, 0x0080_0008);
    }

    #[test]
    fn a_file_system_without_project_quotas_is_named() {
        // A tmpfs keeps no project quotas; nor does a file system mounted without prjquota.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let error = limit(dir.path(), 7, 1 << 20).unwrap_err();
        assert!(matches!(error, QuotaError::Unsupported(_)), "{error:?}");
    }
}
