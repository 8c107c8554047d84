//! Host resources a sandbox could leave behind, snapshotted before and after a run so a
//! harness or test can prove nothing leaked: mounts, cgroups, network namespaces and
//! interfaces, sandbox processes, network helpers and runtime directories.

use std::os::unix::fs::MetadataExt;

use ak_core::BackendKind;
use ak_core::runtime::{NATIVE_NETWORK_HELPER, backend_runtime_base};
use std::path::Path;
use std::time::{Duration, Instant};

/// Host uids at or above this are the native backend's mapped sandbox roots.
const MAPPED_ROOT_UIDS: u32 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    pub mounts: usize,
    pub cgroups: Vec<String>,
    pub net_namespaces: Vec<u64>,
    /// The host's network interfaces (a tap left behind shows up here).
    pub interfaces: Vec<String>,
    pub sandbox_processes: Vec<u32>,
    /// Network helpers ([`NATIVE_NETWORK_HELPER`]), whoever runs them.
    pub network_helpers: Vec<u32>,
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
/// (the callers that ran rootless sandboxes); and gVisor's (`runsc`, `runsc-gofer`,
/// `runsc-sandbox`), whatever their uid.
fn sandbox_processes(uids: &[u32]) -> Vec<u32> {
    pids()
        .filter(|pid| {
            let program = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let program = program.split(|&b| b == 0).next().unwrap_or_default();
            if program
                .rsplit(|&b| b == b'/')
                .next()
                .is_some_and(|name| name.starts_with(b"runsc"))
            {
                return true;
            }
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

fn network_helpers() -> Vec<u32> {
    pids()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == NATIVE_NETWORK_HELPER)
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

/// agentkernel's cgroups on every hierarchy (v1 controllers and the v2 tree): the native
/// backend's under `agentkernel`, the ones runsc makes for gVisor sandboxes under
/// `agentkernel-gvisor`.
fn cgroups() -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup");
    let mut cgroups = Vec::new();
    for parent_name in ["agentkernel", ak_core::runtime::GVISOR_CGROUP_PARENT] {
        for hierarchy in list_dir(root) {
            let parent = root.join(&hierarchy).join(parent_name);
            for id in list_dir(&parent) {
                if parent.join(&id).is_dir() {
                    cgroups.push(format!("{hierarchy}/{parent_name}/{id}"));
                }
            }
        }
        let parent = root.join(parent_name);
        for id in list_dir(&parent) {
            if parent.join(&id).is_dir() {
                cgroups.push(format!("{parent_name}/{id}"));
            }
        }
    }
    cgroups
}

/// How many mounts the host has, less the tmpfs that root's native sandboxes mount once
/// on their runtime base and keep (`ak_native::rundir`): made by whichever sandbox first
/// finds the base on disk, it is the runtime's own filesystem, not a sandbox's leftover.
fn host_mounts() -> usize {
    let base = backend_runtime_base(BackendKind::Native);
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    mountinfo
        .lines()
        // Field 5 is the mount point (octal escapes only for spaces and the like, which
        // the base's path has none of).
        .filter(|line| line.split(' ').nth(4) != base.to_str())
        .count()
}

impl HostSnapshot {
    /// The host now. `rootless_uids`: host uids that ran rootless sandboxes, whose
    /// processes and runtime directories count as the sandboxes'.
    pub fn take(rootless_uids: &[u32]) -> HostSnapshot {
        // The native backend's, and the container backends' (one per engine).
        let mut runtime_dirs: Vec<String> = [
            BackendKind::Native,
            BackendKind::Gvisor,
            BackendKind::Docker,
            BackendKind::Podman,
        ]
        .into_iter()
        .flat_map(|kind| {
            list_dir(&backend_runtime_base(kind))
                .into_iter()
                .map(move |dir| format!("{kind}/{dir}"))
        })
        .collect();
        for uid in rootless_uids {
            runtime_dirs.extend(list_dir(
                &std::env::temp_dir().join(format!("agentkernel-{uid}")),
            ));
        }
        HostSnapshot {
            mounts: host_mounts(),
            cgroups: cgroups(),
            net_namespaces: net_namespaces(),
            interfaces: list_dir(Path::new("/sys/class/net")),
            sandbox_processes: sandbox_processes(rootless_uids),
            network_helpers: network_helpers(),
            runtime_dirs,
        }
    }

    /// What is on the host now that was not at `self` (taken before the sandboxes
    /// ran), one line per kind of leak; empty when nothing leaked. What already existed
    /// at `self` (a user's running sandboxes) is not counted. Waits up to `settle` for
    /// clean-up that finishes asynchronously (processes being reaped).
    pub fn leaks_since(&self, rootless_uids: &[u32], settle: Duration) -> Vec<String> {
        let deadline = Instant::now() + settle;
        let mut new = self.new_in(&HostSnapshot::take(rootless_uids));
        while !(new.sandbox_processes.is_empty()
            && new.cgroups.is_empty()
            && new.runtime_dirs.is_empty()
            && new.net_namespaces.is_empty()
            && new.interfaces.is_empty()
            && new.network_helpers.is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
            new = self.new_in(&HostSnapshot::take(rootless_uids));
        }
        let mut leaks = Vec::new();
        if new.mounts != self.mounts {
            leaks.push(format!(
                "host mounts changed: {} before, {} after",
                self.mounts, new.mounts
            ));
        }
        if !new.cgroups.is_empty() {
            leaks.push(format!("leftover cgroups: {:?}", new.cgroups));
        }
        if !new.runtime_dirs.is_empty() {
            leaks.push(format!("leftover runtime dirs: {:?}", new.runtime_dirs));
        }
        if !new.sandbox_processes.is_empty() {
            leaks.push(format!(
                "leftover sandbox processes: {:?}",
                new.sandbox_processes
            ));
        }
        if !new.net_namespaces.is_empty() {
            leaks.push(format!(
                "leftover network namespaces: {:?}",
                new.net_namespaces
            ));
        }
        if !new.interfaces.is_empty() {
            leaks.push(format!("leftover network interfaces: {:?}", new.interfaces));
        }
        if !new.network_helpers.is_empty() {
            leaks.push(format!(
                "leftover network helpers: {:?}",
                new.network_helpers
            ));
        }
        leaks
    }

    /// What `after` has that `self` has not (mounts: `after`'s count, compared whole).
    fn new_in(&self, after: &HostSnapshot) -> HostSnapshot {
        fn added<T: PartialEq + Clone>(before: &[T], after: &[T]) -> Vec<T> {
            after
                .iter()
                .filter(|x| !before.contains(x))
                .cloned()
                .collect()
        }
        HostSnapshot {
            mounts: after.mounts,
            cgroups: added(&self.cgroups, &after.cgroups),
            net_namespaces: added(&self.net_namespaces, &after.net_namespaces),
            interfaces: added(&self.interfaces, &after.interfaces),
            sandbox_processes: added(&self.sandbox_processes, &after.sandbox_processes),
            network_helpers: added(&self.network_helpers, &after.network_helpers),
            runtime_dirs: added(&self.runtime_dirs, &after.runtime_dirs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(cgroups: &[&str], processes: &[u32]) -> HostSnapshot {
        HostSnapshot {
            mounts: 30,
            cgroups: cgroups.iter().map(|c| c.to_string()).collect(),
            net_namespaces: vec![1],
            interfaces: vec!["lo".into()],
            sandbox_processes: processes.to_vec(),
            network_helpers: Vec::new(),
            runtime_dirs: Vec::new(),
        }
    }

    #[test]
    fn only_what_appeared_since_the_snapshot_counts() {
        let before = snapshot(&["memory/a"], &[10]);
        let new = before.new_in(&snapshot(&["memory/a", "memory/b"], &[10, 11]));
        assert_eq!(new.cgroups, ["memory/b"]);
        assert_eq!(new.sandbox_processes, [11]);
        assert!(new.net_namespaces.is_empty());
        assert_eq!(before.new_in(&before), snapshot(&[], &[]).without_network());
        let mut with_tap = before.clone();
        with_tap.interfaces.push("tap0".into());
        with_tap.network_helpers.push(12);
        let new = before.new_in(&with_tap);
        assert_eq!(
            (new.interfaces, new.network_helpers),
            (vec!["tap0".into()], vec![12])
        );
    }

    impl HostSnapshot {
        fn without_network(mut self) -> HostSnapshot {
            self.net_namespaces.clear();
            self.interfaces.clear();
            self
        }
    }
}
