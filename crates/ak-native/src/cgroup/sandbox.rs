//! One sandbox's cgroup directories: creating them with limits, adding, killing and
//! accounting its processes, and removing them again.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use std::{fs, io, thread};

use ak_core::Resources;
use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

use super::layout::{v1_required, v2_controllers};
use super::parse::{parse_controllers, parse_keyed, parse_pids};
use super::{CgroupError, CgroupLayout, KILL_PATIENCE, PARENT_DIR, REQUIRED, io_err};

/// CFS period: the kernel default, so a quota reads as a share of 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel rejects CFS quotas below 1 ms.
pub(super) const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long `remove` retries EBUSY while killed processes finish exiting.
const REMOVE_PATIENCE: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(5);

pub(super) fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(MIN_CPU_QUOTA_US)
}

pub(super) fn validate_id(id: &str) -> Result<(), CgroupError> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0', '\n']) {
        Err(CgroupError::InvalidId(id.to_string()))
    } else {
        Ok(())
    }
}

/// The cgroup directories of one sandbox, one per hierarchy.
#[derive(Debug)]
pub struct SandboxCgroup {
    id: String,
    /// File names differ: v2 (`memory.max`, `memory.peak`) or v1 (`memory.limit_in_bytes`).
    pub(super) v2: bool,
    /// Every directory, deduplicated (co-mounted v1 controllers share one), in creation order.
    dirs: Vec<PathBuf>,
    pub(super) memory: Option<PathBuf>,
    pub(super) pids: Option<PathBuf>,
    pub(super) cpu: Option<PathBuf>,
    /// The v2 directory whose `cgroup.kill` ends every process at once.
    kill: Option<PathBuf>,
}

/// How a new process enters a sandbox's cgroups by itself; see [`SandboxCgroup::entry`].
#[derive(Debug)]
pub struct CgroupEntry {
    /// The sandbox's v2 directory, for `clone3`'s `CLONE_INTO_CGROUP`.
    pub clone_into: Option<OwnedFd>,
    /// Its v1 `tasks` files, opened for writing: the new process writes `0` to each.
    pub self_join: Vec<OwnedFd>,
}

/// Removes the directories created so far unless cleared, so a failed `create` leaves nothing.
struct Rollback(Vec<PathBuf>);

impl Drop for Rollback {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            if let Err(e) = fs::remove_dir(dir) {
                tracing::warn!(
                    "cannot remove {} after a failed cgroup set-up: {e}",
                    dir.display()
                );
            }
        }
    }
}

fn write_value(dir: &Path, file: &str, value: impl ToString) -> Result<(), CgroupError> {
    let path = dir.join(file);
    fs::write(&path, value.to_string()).map_err(io_err("write", &path))
}

/// Writes files that only some kernels have (swap accounting).
fn write_if_present(dir: &Path, file: &str, value: impl ToString) -> Result<(), CgroupError> {
    if dir.join(file).exists() {
        write_value(dir, file, value)
    } else {
        tracing::debug!("{}/{file} does not exist here; not set", dir.display());
        Ok(())
    }
}

/// Creates the shared parent; concurrent creators race, so an existing one is fine.
fn make_parent(hierarchy: &Path) -> Result<(), CgroupError> {
    let parent = hierarchy.join(PARENT_DIR);
    match fs::create_dir(&parent) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err("create", &parent)(e)),
        _ => Ok(()),
    }
}

/// Creates a sandbox's own directory, which must be new: reusing one could inherit another
/// sandbox's processes or limits.
fn make_sandbox_dir(dir: &Path, rollback: &mut Rollback) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => {
            rollback.0.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(CgroupError::AlreadyExists(dir.to_path_buf()))
        }
        Err(e) => Err(io_err("create", dir)(e)),
    }
}

/// Enables `wanted` for the children of `dir`, writing only what is not on yet (a delegated
/// subtree may let us read `cgroup.subtree_control` but not write it).
fn enable_controllers(dir: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let text = fs::read_to_string(&file).map_err(io_err("read", &file))?;
    let enabled = parse_controllers(&text);
    for controller in wanted.iter().filter(|c| !enabled.contains(*c)) {
        fs::write(&file, format!("+{controller}")).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => CgroupError::ControllersBusy(dir.to_path_buf()),
            _ => io_err("write", &file)(e),
        })?;
    }
    Ok(())
}

impl SandboxCgroup {
    /// Creates `<hierarchy>/agentkernel/<id>` in every hierarchy it uses, sets the limits.
    pub fn create(
        layout: &CgroupLayout,
        id: &str,
        limits: &Resources,
    ) -> Result<SandboxCgroup, CgroupError> {
        validate_id(id)?;
        let mut cgroup = SandboxCgroup::existing(layout, id);
        match layout {
            CgroupLayout::Unavailable { reason } => {
                return Err(CgroupError::Unavailable(reason.clone()));
            }
            CgroupLayout::V2 { root } => {
                if !v2_controllers(root)?.contains("cpu") {
                    cgroup.cpu = None;
                }
                let wanted = if cgroup.cpu.is_some() {
                    &["memory", "pids", "cpu"][..]
                } else {
                    &REQUIRED
                };
                enable_controllers(root, wanted)?;
                make_parent(root)?;
                enable_controllers(&root.join(PARENT_DIR), wanted)?;
            }
            CgroupLayout::V1 { memory, pids, .. } => v1_required(memory, pids)?,
        }
        let mut rollback = Rollback(Vec::new());
        for dir in cgroup.dirs.clone() {
            let hierarchy = dir
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("/"));
            let made = make_parent(hierarchy).and_then(|()| make_sandbox_dir(&dir, &mut rollback));
            match made {
                // On a hybrid host the v2 directory only adds cgroup.kill; kill_all can
                // signal each process instead.
                Err(e) if !cgroup.v2 && cgroup.kill.as_ref() == Some(&dir) => {
                    tracing::warn!(
                        id,
                        "no v2 cgroup for cgroup.kill, killing by signals instead: {e}"
                    );
                    cgroup.kill = None;
                    cgroup.dirs.retain(|d| *d != dir);
                }
                other => other?,
            }
        }
        cgroup.set_limits(limits)?;
        rollback.0.clear();
        tracing::debug!(id, dirs = ?cgroup.dirs, "sandbox cgroup created");
        Ok(cgroup)
    }

    fn set_limits(&self, limits: &Resources) -> Result<(), CgroupError> {
        let (Some(memory), Some(pids)) = (&self.memory, &self.pids) else {
            return Err(CgroupError::Unavailable("no memory or pids cgroup".into()));
        };
        if self.v2 {
            write_value(memory, "memory.max", limits.memory_bytes)?;
            // The limit covers RAM and swap together, as on v1 with memsw.
            write_if_present(memory, "memory.swap.max", 0)?;
        } else {
            write_value(memory, "memory.limit_in_bytes", limits.memory_bytes)?;
            // After the RAM limit: the kernel requires memsw >= limit. Equal means no swap.
            write_if_present(memory, "memory.memsw.limit_in_bytes", limits.memory_bytes)?;
        }
        write_value(pids, "pids.max", limits.pids)?;
        match (limits.cpus, &self.cpu) {
            (Some(cpus), Some(cpu)) if self.v2 => write_value(
                cpu,
                "cpu.max",
                format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpus)),
            ),
            (Some(cpus), Some(cpu)) => {
                write_value(cpu, "cpu.cfs_period_us", CPU_PERIOD_US)?;
                write_value(cpu, "cpu.cfs_quota_us", cpu_quota_us(cpus))
            }
            (Some(_), None) => {
                tracing::warn!(
                    id = self.id,
                    "no cpu controller here: the CPU limit is not applied"
                );
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }

    /// Reopens the cgroup of a sandbox by id (for cleanup after a crash), without creating it.
    pub fn existing(layout: &CgroupLayout, id: &str) -> SandboxCgroup {
        let valid = validate_id(id).is_ok();
        if !valid {
            // Such an id was never created, and must not name a path outside the parents.
            tracing::warn!(id, "not a valid sandbox cgroup id; nothing to reopen");
        }
        let at = |h: Option<&PathBuf>| h.filter(|_| valid).map(|h| h.join(PARENT_DIR).join(id));
        let (v2, memory, pids, cpu, kill) = match layout {
            CgroupLayout::V2 { root } => (
                true,
                at(Some(root)),
                at(Some(root)),
                at(Some(root)),
                at(Some(root)),
            ),
            CgroupLayout::V1 {
                memory,
                pids,
                cpu,
                unified,
            } => (
                false,
                at(memory.as_ref()),
                at(pids.as_ref()),
                at(cpu.as_ref()),
                at(unified.as_ref()),
            ),
            CgroupLayout::Unavailable { .. } => (false, None, None, None, None),
        };
        let mut dirs = Vec::new();
        for dir in [&memory, &pids, &cpu, &kill].into_iter().flatten() {
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        SandboxCgroup {
            id: id.into(),
            v2,
            dirs,
            memory,
            pids,
            cpu,
            kill,
        }
    }

    /// What a new process needs to start inside the sandbox's cgroups instead of being
    /// moved into them afterwards. Moving another process takes the kernel's global
    /// `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace period (5–26 ms
    /// here) unless a cgroup2 mount has `favordynmods`; starting in the v2 directory
    /// (`CLONE_INTO_CGROUP`) and a single-threaded process writing `0` to a v1 `tasks` file
    /// (moving only itself) take that lock for reading only, or not at all.
    pub fn entry(&self) -> Result<CgroupEntry, CgroupError> {
        let open = |path: &Path, flags: OFlags| {
            rustix::fs::open(path, flags | OFlags::CLOEXEC, rustix::fs::Mode::empty())
                .map_err(|e| io_err("open", path)(e.into()))
        };
        let v2_dir = if self.v2 {
            self.memory.as_ref()
        } else {
            self.kill.as_ref()
        };
        let clone_into = v2_dir
            .map(|dir| open(dir, OFlags::RDONLY | OFlags::DIRECTORY))
            .transpose()?;
        let self_join = self
            .dirs
            .iter()
            .filter(|dir| Some(*dir) != v2_dir)
            .map(|dir| open(&dir.join("tasks"), OFlags::WRONLY))
            .collect::<Result<_, _>>()?;
        Ok(CgroupEntry {
            clone_into,
            self_join,
        })
    }

    /// Moves `pid` into the sandbox: writes it into `cgroup.procs` of every directory.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        self.dirs
            .iter()
            .try_for_each(|dir| write_value(dir, "cgroup.procs", pid))
    }

    /// SIGKILLs every process of the sandbox and waits (bounded) until none is listed.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if let Some(dir) = &self.kill {
            let file = dir.join("cgroup.kill");
            match fs::write(&file, "1") {
                // Gone already, or a kernel before 5.14: the signal loop below covers both.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!("no {}", file.display())
                }
                other => other.map_err(io_err("write", &file))?,
            }
        }
        // Also after cgroup.kill: it only queues the signals, and on a hybrid host a process
        // that never reached the v2 directory would survive it.
        let deadline = Instant::now() + KILL_PATIENCE;
        self.dirs
            .iter()
            .try_for_each(|dir| signal_until_empty(&dir.join("cgroup.procs"), deadline))
    }

    /// Freezes (`true`) or thaws every process of the sandbox through the v2 directory's
    /// `cgroup.freeze`; freezing returns once `cgroup.events` reports `frozen 1`, so that
    /// nothing runs while the caller copies the sandbox's files.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let dir = if self.v2 {
            self.memory.as_ref()
        } else {
            self.kill.as_ref()
        }
        .ok_or(CgroupError::NoFreezer)?;
        write_value(dir, "cgroup.freeze", u8::from(frozen))?;
        let events = dir.join("cgroup.events");
        let deadline = Instant::now() + super::FREEZE_PATIENCE;
        loop {
            let text = fs::read_to_string(&events).map_err(io_err("read", &events))?;
            if parse_keyed(&text, "frozen") == Some(u64::from(frozen)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::FreezeIncomplete(events));
            }
            thread::sleep(Duration::from_micros(200));
        }
    }

    /// Highest memory use seen (v2 `memory.peak`, v1 `memory.max_usage_in_bytes`).
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        fs::read_to_string(self.memory.as_ref()?.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the kernel's OOM killer ended a process of this sandbox.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
        let events = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        match parse_keyed(&read(events), "oom_kill") {
            Some(kills) => kills > 0,
            // v1 before Linux 4.13 has no counter; hitting the limit is the closest sign
            // left, though reclaim alone can also raise it.
            None => {
                !self.v2
                    && read("memory.failcnt")
                        .trim()
                        .parse()
                        .is_ok_and(|n: u64| n > 0)
            }
        }
    }

    /// Removes every directory (nested cgroups first); missing ones are fine, so this is
    /// idempotent. EBUSY from processes still exiting is retried for up to ~500 ms.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut patience = Patience(None);
        let mut first_error = None;
        for dir in self.dirs.iter().rev() {
            if let Err(e) = remove_tree(dir, &mut patience) {
                tracing::warn!(id = self.id, "{e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every directory of this sandbox.
    pub fn paths(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// Re-sends SIGKILL to whatever `procs` lists until it lists nothing or `deadline` passes
/// (processes may fork between our reading the list and signalling).
fn signal_until_empty(procs: &Path, deadline: Instant) -> Result<(), CgroupError> {
    let own = std::process::id();
    loop {
        let listed = match fs::read_to_string(procs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => parse_pids(&other.map_err(io_err("read", procs))?),
        };
        // Killing ourselves would end the service, not the sandbox.
        let listed: Vec<u32> = listed.into_iter().filter(|pid| *pid != own).collect();
        if listed.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::KillIncomplete {
                path: procs.into(),
                remaining: listed.len(),
            });
        }
        // A listed pid may exit and be reused by an unrelated process before the signal, so
        // each is pinned with a pidfd and signalled only if still listed after pinning.
        let pinned: Vec<_> = listed
            .iter()
            .filter_map(|&pid| Some((pid, Pid::from_raw(i32::try_from(pid).ok()?)?)))
            .map(|(pid, raw)| {
                (
                    pid,
                    raw,
                    rustix::process::pidfd_open(raw, PidfdFlags::empty()),
                )
            })
            .collect();
        let still_listed = parse_pids(&fs::read_to_string(procs).unwrap_or_default());
        for (_, raw, pidfd) in pinned
            .into_iter()
            .filter(|(pid, ..)| still_listed.contains(pid))
        {
            let sent = match pidfd {
                Ok(fd) => rustix::process::pidfd_send_signal(&fd, Signal::KILL),
                // Before Linux 5.3 there are no pidfds; accept the small reuse window.
                Err(Errno::NOSYS) => rustix::process::kill_process(raw, Signal::KILL),
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) | Err(Errno::SRCH) => {}
                Err(e) => return Err(io_err("SIGKILL a process listed in", procs)(e.into())),
            }
        }
        thread::sleep(POLL);
    }
}

/// The `REMOVE_PATIENCE` window of one `remove`, started at the first refusal so that a
/// removal that succeeds at once costs no more than its rmdirs.
struct Patience(Option<Instant>);

impl Patience {
    fn exhausted(&mut self) -> bool {
        let deadline = *self
            .0
            .get_or_insert_with(|| Instant::now() + REMOVE_PATIENCE);
        Instant::now() >= deadline
    }
}

/// Removes `dir` and any nested cgroups. A sandbox's cgroup is normally empty by now, so the
/// first rmdir usually succeeds and is the only syscall; only when the kernel refuses (nested
/// cgroups, or processes still exiting) are children listed and removed and rmdir retried.
fn remove_tree(dir: &Path, patience: &mut Patience) -> Result<(), CgroupError> {
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // cgroupfs answers EBUSY for a cgroup with children; ENOTEMPTY is the generic answer.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {}
        Err(e) => return Err(io_err("remove", dir)(e)),
    }
    match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
        Ok(entries) => {
            for entry in entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            {
                remove_tree(&entry.path(), patience)?;
            }
        }
    }
    loop {
        match fs::remove_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && !patience.exhausted() => {
                thread::sleep(POLL)
            }
            other => return other.map_err(io_err("remove", dir)),
        }
    }
}

/// Ids of sandbox cgroups that exist under the agentkernel parent dirs (for leak checks and
/// crash cleanup).
pub fn list_sandbox_cgroups(layout: &CgroupLayout) -> Vec<String> {
    let entries = layout
        .hierarchies()
        .into_iter()
        .filter_map(|h| fs::read_dir(h.join(PARENT_DIR)).ok());
    let ids: BTreeSet<String> = entries
        .flat_map(|dir| dir.flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.into_iter().collect()
}
