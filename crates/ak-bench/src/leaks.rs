//! Host resources a sandbox could leave behind, snapshotted before and after a run so a
//! harness or test can prove nothing leaked: mounts, cgroups, network namespaces, sandbox
//! processes and runtime directories.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Host uids at or above this are the native backend's mapped sandbox roots.
const MAPPED_ROOT_UIDS: u32 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    pub mounts: usize,
    pub cgroups: Vec<String>,
    pub net_namespaces: Vec<u64>,
    pub sandbox_processes: Vec<u32>,
    pub runtime_dirs: Vec<String>,
}

fn list_dir(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn pids() -> impl Iterator<Item = u32> {
    list_dir(Path::new("/proc"))
        .into_iter()
        .filter_map(|name| name.parse().ok())
}

/// Processes whose host uid is a sandbox uid: the mapped-root range, or one of `uids`
/// (the callers that ran rootless sandboxes).
fn sandbox_processes(uids: &[u32]) -> Vec<u32> {
    pids()
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let uid: Option<u32> = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok());
            uid.is_some_and(|uid| uid >= MAPPED_ROOT_UIDS || uids.contains(&uid))
        })
        .collect()
}

fn net_namespaces() -> Vec<u64> {
    let mut inodes: Vec<u64> = pids()
        .filter_map(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).ok())
        .map(|m| m.ino())
        .collect();
    inodes.sort();
    inodes.dedup();
    inodes
}

/// agentkernel's cgroups on every hierarchy (v1 controllers and the v2 tree).
fn cgroups() -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup");
    let mut cgroups = Vec::new();
    for hierarchy in list_dir(root) {
        let parent = root.join(&hierarchy).join("agentkernel");
        for id in list_dir(&parent) {
            if parent.join(&id).is_dir() {
                cgroups.push(format!("{hierarchy}/{id}"));
            }
        }
    }
    let parent = root.join("agentkernel");
    for id in list_dir(&parent) {
        if parent.join(&id).is_dir() {
            cgroups.push(id);
        }
    }
    cgroups
}

impl HostSnapshot {
    /// The host now. `rootless_uids`: host uids that ran rootless sandboxes, whose
    /// processes and runtime directories count as the sandboxes'.
    pub fn take(rootless_uids: &[u32]) -> HostSnapshot {
        let mut runtime_dirs = list_dir(Path::new("/run/agentkernel"));
        for uid in rootless_uids {
            runtime_dirs.extend(list_dir(
                &std::env::temp_dir().join(format!("agentkernel-{uid}")),
            ));
        }
        HostSnapshot {
            mounts: std::fs::read_to_string("/proc/self/mountinfo")
                .map_or(0, |m| m.lines().count()),
            cgroups: cgroups(),
            net_namespaces: net_namespaces(),
            sandbox_processes: sandbox_processes(rootless_uids),
            runtime_dirs,
        }
    }

    /// What is on the host now that was not at `self` (taken before any sandbox ran),
    /// one line per kind of leak; empty when nothing leaked. Waits up to `settle` for
    /// clean-up that finishes asynchronously (processes being reaped).
    pub fn leaks_since(&self, rootless_uids: &[u32], settle: Duration) -> Vec<String> {
        let deadline = Instant::now() + settle;
        let mut after = HostSnapshot::take(rootless_uids);
        while !(after.sandbox_processes.is_empty()
            && after.cgroups.is_empty()
            && after.runtime_dirs.is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
            after = HostSnapshot::take(rootless_uids);
        }
        let mut leaks = Vec::new();
        if after.mounts != self.mounts {
            leaks.push(format!(
                "host mounts changed: {} before, {} after",
                self.mounts, after.mounts
            ));
        }
        if !after.cgroups.is_empty() {
            leaks.push(format!("leftover cgroups: {:?}", after.cgroups));
        }
        if !after.runtime_dirs.is_empty() {
            leaks.push(format!("leftover runtime dirs: {:?}", after.runtime_dirs));
        }
        if !after.sandbox_processes.is_empty() {
            leaks.push(format!(
                "leftover sandbox processes: {:?}",
                after.sandbox_processes
            ));
        }
        let new_netns: Vec<_> = after
            .net_namespaces
            .iter()
            .filter(|ns| !self.net_namespaces.contains(ns))
            .collect();
        if !new_netns.is_empty() {
            leaks.push(format!("leftover network namespaces: {new_netns:?}"));
        }
        leaks
    }
}
