//! Landlock rules for a sandbox, prepared in the parent and applied by the child with raw
//! system calls. The `landlock` crate allocates while building a ruleset, which the
//! child between `clone3` and exec must not do (see `plan.rs`), so the few structures are
//! here.

use std::ffi::CString;
use std::os::fd::RawFd;

use ak_core::SandboxSpec;

use crate::error::NativeError;
use crate::plan::{SCRATCH_DIRS, cstring};
use crate::rawsys::sys;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_SYM: u64 = 1 << 12;
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

const RULE_PATH_BENEATH: libc::c_int = 1;
const CREATE_RULESET_VERSION: u32 = 1 << 0;

/// `struct landlock_ruleset_attr`, first field only (valid for every ABI).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The landlock ABI version of the running kernel, or `None` without landlock (not built
/// in, disabled at boot, or filtered).
pub fn abi_version() -> Option<u32> {
    // SAFETY: a version query takes no attribute pointer and size 0.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    (version > 0).then_some(version as u32)
}

/// File-system rights the kernel of `abi` knows: every one of them is restricted.
fn handled_access(abi: u32) -> u64 {
    match abi {
        1 => (1 << 13) - 1,
        2 => (1 << 14) - 1,
        3 | 4 => (1 << 15) - 1,
        _ => (1 << 16) - 1,
    }
}

/// Rules to apply in the child, after `pivot_root`.
#[derive(Debug)]
pub(crate) struct LandlockPlan {
    handled: u64,
    /// Paths inside the sandbox and the rights granted beneath them.
    rules: Vec<(CString, u64)>,
    /// The agent binary (outside the sandbox's tree) may be executed once, by the child.
    agent_fd: RawFd,
}

impl LandlockPlan {
    pub(crate) fn new(spec: &SandboxSpec, abi: u32, agent_fd: RawFd) -> Result<Self, NativeError> {
        let handled = handled_access(abi);
        let read_only = EXECUTE | READ_FILE | READ_DIR;
        // A writable root: what the root tmpfs holds may be made, changed and removed.
        // The right reaches everything beneath `/`, so what protects the image is its
        // read-only mounts (and the host's own files, ownership); device nodes stay
        // refused (the root is nodev as well).
        let root = if spec.policy.writable_root() {
            read_only
                | WRITE_FILE
                | TRUNCATE
                | REMOVE_DIR
                | REMOVE_FILE
                | MAKE_DIR
                | MAKE_REG
                | MAKE_SOCK
                | MAKE_FIFO
                | MAKE_SYM
                | REFER
        } else {
            read_only
        };
        let mut rules = vec![
            (cstring("/")?, root),
            (
                cstring("/dev")?,
                read_only | WRITE_FILE | TRUNCATE | IOCTL_DEV,
            ),
            (cstring("/proc")?, READ_FILE | WRITE_FILE | READ_DIR),
        ];
        let writable = SCRATCH_DIRS
            .iter()
            .map(|(dir, _)| dir.to_string())
            .chain(std::iter::once("/dev/shm".to_string()))
            .chain(std::iter::once(spec.workdir.to_string_lossy().into_owned()))
            .chain(
                spec.mounts
                    .iter()
                    .filter(|m| m.writable)
                    .map(|m| m.target.to_string_lossy().into_owned()),
            );
        for path in writable {
            rules.push((cstring(path)?, handled));
        }
        Ok(LandlockPlan {
            handled,
            rules,
            agent_fd,
        })
    }

    /// Restricts the calling (child) process. Allocation-free and errno-free (it runs in
    /// the child, see rawsys.rs); returns the errno on failure. Requires `no_new_privs` to
    /// be set already.
    pub(crate) fn apply(&self) -> Result<(), i32> {
        let attr = RulesetAttr {
            handled_access_fs: self.handled,
        };
        // SAFETY: attr is a valid ruleset_attr of the size passed.
        let ruleset = unsafe {
            sys!(
                libc::SYS_landlock_create_ruleset,
                &raw const attr,
                std::mem::size_of::<RulesetAttr>(),
                0u32
            )?
        };
        let result = self.add_rules(ruleset).and_then(|()| {
            // SAFETY: ruleset is a landlock ruleset fd owned by this function.
            unsafe { sys!(libc::SYS_landlock_restrict_self, ruleset, 0u32).map(drop) }
        });
        // SAFETY: closing the fd this function opened.
        let _ = unsafe { sys!(libc::SYS_close, ruleset) };
        result
    }

    fn add_rules(&self, ruleset: usize) -> Result<(), i32> {
        for (path, access) in &self.rules {
            // SAFETY: path is a NUL-terminated string prepared by the parent.
            let opened = unsafe {
                sys!(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_PATH | libc::O_CLOEXEC
                )
            };
            let fd = match opened {
                Ok(fd) => fd,
                Err(libc::ENOENT) => continue,
                Err(errno) => return Err(errno),
            };
            let result = add_rule(ruleset, fd, access & self.handled);
            // SAFETY: closing the fd opened just above.
            let _ = unsafe { sys!(libc::SYS_close, fd) };
            result?;
        }
        add_rule(
            ruleset,
            self.agent_fd as usize,
            (EXECUTE | READ_FILE) & self.handled,
        )
    }
}

fn add_rule(ruleset: usize, fd: usize, access: u64) -> Result<(), i32> {
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: fd as i32,
    };
    // SAFETY: attr is a valid path_beneath_attr; ruleset and fd are open.
    unsafe {
        sys!(
            libc::SYS_landlock_add_rule,
            ruleset,
            RULE_PATH_BENEATH,
            &raw const attr,
            0u32
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_rights(profile: &str) -> u64 {
        let options = ak_core::config::SandboxOptions {
            profile: Some(profile.into()),
            ..Default::default()
        };
        let spec = ak_core::config::resolve(
            options,
            std::path::Path::new("/"),
            "0123456789abcdef0123456789abcdef".into(),
        )
        .unwrap();
        let plan = LandlockPlan::new(&spec, 7, -1).unwrap();
        let (path, rights) = &plan.rules[0];
        assert_eq!(path.as_bytes(), b"/");
        *rights
    }

    #[test]
    fn the_root_is_writable_unless_restrictive() {
        let making = MAKE_DIR | MAKE_REG | WRITE_FILE | REMOVE_FILE;
        assert_eq!(root_rights("moderate") & making, making);
        assert_eq!(root_rights("permissive") & making, making);
        assert_eq!(root_rights("restrictive") & making, 0);
        // Device nodes are never made, whatever the profile.
        for profile in ["permissive", "moderate", "restrictive"] {
            assert_eq!(root_rights(profile) & ((1 << 6) | (1 << 11) | IOCTL_DEV), 0);
        }
    }

    #[test]
    fn handled_access_grows_with_abi() {
        assert!(handled_access(1) < handled_access(2));
        assert!(handled_access(3) < handled_access(5));
        assert_eq!(handled_access(7), handled_access(5));
    }
}
