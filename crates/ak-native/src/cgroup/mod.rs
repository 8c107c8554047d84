//! Resource limits for one sandbox on cgroup v2, v1 and hybrid (v1 + v2 for cgroup.kill) hosts.
//!
//! `layout` finds the hierarchies, `sandbox` manages one sandbox's directories in them,
//! and `parse` reads the kernel's file formats.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod layout;
mod parse;
mod sandbox;
#[cfg(test)]
mod tests;

pub use layout::CgroupLayout;
pub use sandbox::{CgroupEntry, SandboxCgroup, list_sandbox_cgroups};

/// Directory under each hierarchy's root that holds one child cgroup per sandbox.
pub const PARENT_DIR: &str = "agentkernel";

/// How long `kill_all` re-reads `cgroup.procs` for processes forked mid-kill or still exiting.
const KILL_PATIENCE: Duration = Duration::from_secs(1);
/// Without these a sandbox could exhaust the host's memory or pid space.
const REQUIRED: [&str; 2] = ["memory", "pids"];

/// A cgroup operation failed; each variant names the file or hierarchy involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroups are not usable: {0}")]
    Unavailable(String),
    #[error("invalid sandbox id {0:?} for a cgroup (expected one non-empty path component)")]
    InvalidId(String),
    #[error("the {controller} controller is not available: {detail}")]
    MissingController {
        controller: &'static str,
        detail: String,
    },
    #[error("cgroup {0} already exists")]
    AlreadyExists(PathBuf),
    #[error(
        "cannot enable controllers below {0}: it has processes of its own, which cgroup v2 \
         forbids for a cgroup with controllers enabled (run agentkernel in a child cgroup)"
    )]
    ControllersBusy(PathBuf),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} still lists {remaining} process(es) after {KILL_PATIENCE:?} of SIGKILL")]
    KillIncomplete { path: PathBuf, remaining: usize },
    #[error("the sandbox has no cgroup v2 directory, whose cgroup.freeze stops its processes")]
    NoFreezer,
    #[error("{0} did not report the sandbox frozen within {FREEZE_PATIENCE:?}")]
    FreezeIncomplete(PathBuf),
}

/// How long freezing may take: the kernel stops each task at its next return to user
/// space, which takes microseconds unless one is stuck in an uninterruptible wait.
pub const FREEZE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}
