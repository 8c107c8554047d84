//! Finding the cgroup hierarchies of this host and whether this process may use them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::{fs, io};

use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::parse::{parse_controllers, parse_mountinfo};
use super::{CgroupError, PARENT_DIR, REQUIRED, io_err};

/// Where the cgroup hierarchies this crate uses are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One unified hierarchy holding every controller.
    V2 {
        root: PathBuf,
    },
    /// Per-controller v1 hierarchies; `unified` is the controller-less v2 mount of a hybrid
    /// host, used only for `cgroup.kill`.
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
        unified: Option<PathBuf>,
    },
    Unavailable {
        reason: String,
    },
}

impl CgroupLayout {
    /// Detects the layout of this host from `/proc/self/mountinfo`.
    pub fn detect() -> CgroupLayout {
        match fs::read_to_string("/proc/self/mountinfo") {
            Ok(text) => CgroupLayout::from_mountinfo(&text),
            Err(e) => CgroupLayout::Unavailable {
                reason: format!("cannot read /proc/self/mountinfo: {e}"),
            },
        }
    }

    /// Derives the layout from a mountinfo text. The first mount of each hierarchy wins;
    /// v1 controllers take precedence because a controller bound to v1 is absent from v2.
    pub fn from_mountinfo(text: &str) -> CgroupLayout {
        let (mut memory, mut pids, mut cpu, mut unified) = (None, None, None, None);
        let mut any_v1 = false;
        for (mount_point, fstype, options) in parse_mountinfo(text) {
            if fstype == "cgroup2" {
                unified = unified.or(Some(mount_point));
            } else if fstype == "cgroup" {
                any_v1 = true;
                for option in options.split(',') {
                    let slot = match option {
                        "memory" => &mut memory,
                        "pids" => &mut pids,
                        "cpu" => &mut cpu,
                        _ => continue,
                    };
                    slot.get_or_insert_with(|| mount_point.clone());
                }
            }
        }
        let reason = match (memory.is_some() || pids.is_some() || cpu.is_some(), unified) {
            (true, unified) => {
                return CgroupLayout::V1 {
                    memory,
                    pids,
                    cpu,
                    unified,
                };
            }
            (false, Some(root)) => return CgroupLayout::V2 { root },
            _ if any_v1 => {
                "only cgroup v1 hierarchies without the memory, pids and cpu controllers are mounted"
            }
            _ => {
                "no cgroup filesystem is mounted (no cgroup or cgroup2 line in /proc/self/mountinfo)"
            }
        };
        CgroupLayout::Unavailable {
            reason: reason.into(),
        }
    }

    /// One line for `agentkernel status`.
    pub fn describe(&self) -> String {
        match self {
            CgroupLayout::V2 { root } => format!("v2 at {}", root.display()),
            CgroupLayout::V1 {
                memory,
                pids,
                cpu,
                unified,
            } => {
                let named = [("memory", memory), ("pids", pids), ("cpu", cpu)];
                let names = |present: bool| -> Vec<&str> {
                    named
                        .iter()
                        .filter(|(_, p)| p.is_some() == present)
                        .map(|(n, _)| *n)
                        .collect()
                };
                let mut v1 = format!("v1 {}", names(true).join(","));
                if !names(false).is_empty() {
                    v1 = format!("{v1} (no {})", names(false).join(","));
                }
                match unified {
                    Some(u) => format!("hybrid: {v1} + v2 at {} (cgroup.kill)", u.display()),
                    None => v1,
                }
            }
            CgroupLayout::Unavailable { reason } => reason.clone(),
        }
    }

    /// Whether this process can create sandbox cgroups; `Err` says why not.
    pub fn usable(&self) -> Result<(), String> {
        match self {
            CgroupLayout::Unavailable { reason } => Err(reason.clone()),
            CgroupLayout::V2 { root } => {
                v2_controllers(root).map_err(|e| e.to_string())?;
                check_writable(root)
            }
            CgroupLayout::V1 {
                memory, pids, cpu, ..
            } => {
                v1_required(memory, pids).map_err(|e| e.to_string())?;
                [memory, pids, cpu]
                    .into_iter()
                    .flatten()
                    .try_for_each(|h| check_writable(h))
            }
        }
    }

    /// The hierarchies sandbox cgroups live in; a hybrid host's v2 one last.
    pub(super) fn hierarchies(&self) -> Vec<&Path> {
        match self {
            CgroupLayout::V2 { root } => vec![root],
            CgroupLayout::V1 {
                memory,
                pids,
                cpu,
                unified,
            } => [memory, pids, cpu, unified]
                .into_iter()
                .flatten()
                .map(PathBuf::as_path)
                .collect(),
            CgroupLayout::Unavailable { .. } => Vec::new(),
        }
    }
}

/// Reads a v2 root's controllers, failing unless memory and pids are among them.
pub(super) fn v2_controllers(root: &Path) -> Result<BTreeSet<String>, CgroupError> {
    let file = root.join("cgroup.controllers");
    let text = fs::read_to_string(&file).map_err(io_err("read", &file))?;
    let available = parse_controllers(&text);
    match REQUIRED.into_iter().find(|c| !available.contains(c)) {
        Some(controller) => Err(CgroupError::MissingController {
            controller,
            detail: format!("{} lists only {:?}", file.display(), text.trim()),
        }),
        None => Ok(available.into_iter().map(str::to_string).collect()),
    }
}

pub(super) fn v1_required(
    memory: &Option<PathBuf>,
    pids: &Option<PathBuf>,
) -> Result<(), CgroupError> {
    match [("memory", memory), ("pids", pids)]
        .into_iter()
        .find(|(_, dir)| dir.is_none())
    {
        Some((controller, _)) => Err(CgroupError::MissingController {
            controller,
            detail: "no cgroup v1 hierarchy has it and no v2 hierarchy is used".into(),
        }),
        None => Ok(()),
    }
}

/// Whether the effective uid may create sandbox cgroups in `hierarchy`: in an existing
/// `agentkernel` dir (a delegated subtree), or else in the hierarchy root to create it.
fn check_writable(hierarchy: &Path) -> Result<(), String> {
    let parent = hierarchy.join(PARENT_DIR);
    let (target, note) = if parent.is_dir() {
        (parent.as_path(), String::new())
    } else {
        (hierarchy, format!(" (needed to create {PARENT_DIR})"))
    };
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    let checked = rustix::fs::accessat(rustix::fs::CWD, target, access, AtFlags::EACCESS);
    checked.map_err(|e| {
        // Plain permission problems need no errno; EROFS and the like do.
        let detail = match e {
            Errno::ACCESS | Errno::PERM => String::new(),
            other => format!(": {}", io::Error::from(other)),
        };
        format!(
            "cgroups need root or a delegated subtree: {} is not writable by uid {}{note}{detail}",
            target.display(),
            rustix::process::geteuid().as_raw()
        )
    })
}
