//! Resource limits for one sandbox on cgroup v2, v1 and hybrid (v1 + v2 for cgroup.kill) hosts.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use std::{fs, io, thread};

use ak_core::Resources;
use rustix::fs::AtFlags;
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

/// Directory under each hierarchy's root that holds one child cgroup per sandbox.
pub const PARENT_DIR: &str = "agentkernel";

/// CFS period: the kernel default, so a quota reads as a share of 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel rejects CFS quotas below 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long `remove` retries EBUSY while killed processes finish exiting.
const REMOVE_PATIENCE: Duration = Duration::from_millis(500);
/// How long `kill_all` re-reads `cgroup.procs` for processes forked mid-kill or still exiting.
const KILL_PATIENCE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(5);
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
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

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

/// `(mount point, fstype, super options)` of each well-formed line of a mountinfo file.
fn parse_mountinfo(text: &str) -> impl Iterator<Item = (PathBuf, &str, &str)> {
    text.lines().filter_map(|line| {
        // Optional fields sit before the " - " separator and paths have their spaces
        // escaped, so the separator is unambiguous.
        let (left, right) = line.split_once(" - ")?;
        let mount_point = PathBuf::from(unescape_octal(left.split(' ').nth(4)?));
        let mut right = right.split(' ');
        let fstype = right.next()?;
        Some((mount_point, fstype, right.nth(1).unwrap_or("")))
    })
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash in paths.
fn unescape_octal(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while let Some(&byte) = bytes.get(i) {
        let digits = bytes
            .get(i + 1..i + 4)
            .filter(|d| byte == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match digits.map(|d| d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'))) {
            Some(value) => {
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// Parses a space-separated controller list (`cgroup.controllers`, `cgroup.subtree_control`).
fn parse_controllers(text: &str) -> BTreeSet<&str> {
    text.split_whitespace().collect()
}

/// Value of `key` in a flat keyed file such as `memory.events` or `memory.oom_control`.
fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| match line.split_once(' ') {
        Some((k, v)) if k == key => v.trim().parse().ok(),
        _ => None,
    })
}

/// Parses `cgroup.procs`: one pid per line.
fn parse_pids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(MIN_CPU_QUOTA_US)
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
    fn hierarchies(&self) -> Vec<&Path> {
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
fn v2_controllers(root: &Path) -> Result<BTreeSet<String>, CgroupError> {
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

fn v1_required(memory: &Option<PathBuf>, pids: &Option<PathBuf>) -> Result<(), CgroupError> {
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

fn validate_id(id: &str) -> Result<(), CgroupError> {
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
    v2: bool,
    /// Every directory, deduplicated (co-mounted v1 controllers share one), in creation order.
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// The v2 directory whose `cgroup.kill` ends every process at once.
    kill: Option<PathBuf>,
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
        let deadline = Instant::now() + REMOVE_PATIENCE;
        let mut first_error = None;
        for dir in self.dirs.iter().rev() {
            if let Err(e) = remove_tree(dir, deadline) {
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

/// Removes `dir` after any nested cgroups (rmdir refuses a cgroup with children).
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
        Ok(entries) => {
            for entry in entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            {
                remove_tree(&entry.path(), deadline)?;
            }
        }
    }
    loop {
        match fs::remove_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// This machine's `/proc/self/mountinfo`, cgroup part: v1 controllers + bare v2.
    const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PURE_V2: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const PURE_V1: &str = "\
30 24 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct
31 24 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
32 24 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:13 - cgroup cgroup rw,pids
";

    fn v1(memory: &str, pids: &str, cpu: Option<&str>, unified: Option<&str>) -> CgroupLayout {
        CgroupLayout::V1 {
            memory: Some(memory.into()),
            pids: Some(pids.into()),
            cpu: cpu.map(PathBuf::from),
            unified: unified.map(PathBuf::from),
        }
    }

    fn v2(root: &str) -> CgroupLayout {
        CgroupLayout::V2 { root: root.into() }
    }

    #[test]
    fn mountinfo_layouts_and_descriptions() {
        let (memory, pids) = ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids");
        let systemd = "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        let cases = [
            (
                HYBRID.to_string(),
                v1(
                    memory,
                    pids,
                    Some("/sys/fs/cgroup/cpu"),
                    Some("/sys/fs/cgroup/unified"),
                ),
                "hybrid: v1 memory,pids,cpu + v2 at /sys/fs/cgroup/unified (cgroup.kill)",
            ),
            (PURE_V2.into(), v2("/sys/fs/cgroup"), "v2 at /sys/fs/cgroup"),
            (
                PURE_V1.into(),
                v1(memory, pids, Some("/sys/fs/cgroup/cpu,cpuacct"), None),
                "v1 memory,pids,cpu",
            ),
            // Only name=systemd on v1: the controllers are on the v2 mount.
            (
                format!("{systemd}41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"),
                v2("/sys/fs/cgroup/unified"),
                "v2 at /sys/fs/cgroup/unified",
            ),
            (
                "1 0 0:1 / /my\\040cg rw - cgroup2 x rw\n".into(),
                v2("/my cg"),
                "v2 at /my cg",
            ),
        ];
        for (text, layout, description) in cases {
            assert_eq!(CgroupLayout::from_mountinfo(&text), layout);
            assert_eq!(layout.describe(), description);
        }
        for text in ["", "garbage\n\n1 2 3\n", systemd] {
            let layout = CgroupLayout::from_mountinfo(text);
            assert!(
                matches!(layout, CgroupLayout::Unavailable { .. }),
                "{text:?}"
            );
            assert!(layout.usable().is_err());
        }
        let no_pids = CgroupLayout::V1 {
            memory: Some("/m".into()),
            pids: None,
            cpu: None,
            unified: None,
        };
        assert_eq!(no_pids.describe(), "v1 memory (no pids,cpu)");
        assert!(no_pids.usable().is_err_and(|e| e.contains("pids")));
    }

    #[test]
    fn small_parsers() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_keyed(events, "oom_kill"), Some(1));
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_keyed(oom_control, "oom_kill"), Some(3));
        assert_eq!(parse_keyed("oom_kill_disable 0\n", "oom_kill"), None);
        assert_eq!(parse_pids("12\n345\n"), vec![12, 345]);
        assert!(parse_pids("").is_empty());
        let quotas = [0.5, 2.0, 0.001].map(cpu_quota_us);
        assert_eq!(quotas, [50_000, 200_000, MIN_CPU_QUOTA_US]);
        for bad in ["", ".", "..", "a/b", "x\ny"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn existing_paths_per_layout() {
        let hybrid = SandboxCgroup::existing(&CgroupLayout::from_mountinfo(HYBRID), "s1");
        let dirs: Vec<_> = ["memory", "pids", "cpu", "unified"]
            .map(|h| PathBuf::from(format!("/sys/fs/cgroup/{h}/agentkernel/s1")))
            .into();
        assert_eq!(hybrid.paths(), dirs);
        let co_mounted = v1("/cg/all", "/cg/all", Some("/cg/all"), None);
        assert_eq!(
            SandboxCgroup::existing(&co_mounted, "s1").paths(),
            [PathBuf::from("/cg/all/agentkernel/s1")]
        );
        assert!(
            SandboxCgroup::existing(&co_mounted, "../x")
                .paths()
                .is_empty()
        );
        let gone = SandboxCgroup::existing(&CgroupLayout::from_mountinfo(""), "s1");
        assert!(gone.paths().is_empty() && gone.remove().is_ok() && gone.kill_all().is_ok());
    }

    /// The detected layout when real cgroups can be created here, else `None` (and why).
    fn real_layout() -> Option<CgroupLayout> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: not running as root");
            return None;
        }
        let layout = CgroupLayout::detect();
        match layout.usable() {
            Ok(()) => Some(layout),
            Err(reason) => {
                eprintln!("skipped: {reason}");
                None
            }
        }
    }

    fn unique_id() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!(
            "test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Limits are written, processes are killed and the directories go away.
    fn lifecycle(layout: &CgroupLayout) {
        let id = unique_id();
        let limits = Resources {
            cpus: Some(0.5),
            memory_bytes: 64 << 20,
            pids: 16,
        };
        let cgroup = SandboxCgroup::create(layout, &id, &limits).unwrap();
        eprintln!("{} -> {:?}", layout.describe(), cgroup.paths());
        let (memory, cpu) = (cgroup.memory.clone().unwrap(), cgroup.cpu.clone().unwrap());
        if cgroup.v2 {
            assert_eq!(read(&memory, "memory.max"), "67108864");
            assert_eq!(read(&cpu, "cpu.max"), "50000 100000");
        } else {
            assert_eq!(read(&memory, "memory.limit_in_bytes"), "67108864");
            assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
        }
        assert_eq!(read(cgroup.pids.as_ref().unwrap(), "pids.max"), "16");
        assert!(list_sandbox_cgroups(layout).contains(&id));
        assert!(matches!(
            SandboxCgroup::create(layout, &id, &limits),
            Err(CgroupError::AlreadyExists(_))
        ));
        assert!(
            cgroup.paths().iter().all(|p| p.is_dir()),
            "a failed create removed another's dirs"
        );

        // A shell with children of its own: all of them must die.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        cgroup.add_process(child.id()).unwrap();
        for dir in cgroup.paths() {
            assert!(parse_pids(&read(dir, "cgroup.procs")).contains(&child.id()));
        }
        thread::sleep(Duration::from_millis(50));
        cgroup.kill_all().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(!cgroup.oom_killed());
        cgroup.remove().unwrap();
        assert!(cgroup.paths().iter().all(|p| !p.exists()));
        cgroup.remove().unwrap();
        assert!(!list_sandbox_cgroups(layout).contains(&id));
    }

    #[test]
    fn real_cgroup_lifecycle() {
        if let Some(layout) = real_layout() {
            lifecycle(&layout);
        }
    }

    /// On a hybrid host, also the pure v1 path: no cgroup.kill, each process signalled.
    #[test]
    fn real_cgroup_lifecycle_without_cgroup_kill() {
        match real_layout() {
            Some(CgroupLayout::V1 {
                memory,
                pids,
                cpu: Some(cpu),
                unified: Some(_),
            }) => {
                lifecycle(&CgroupLayout::V1 {
                    memory,
                    pids,
                    cpu: Some(cpu),
                    unified: None,
                });
            }
            Some(other) => eprintln!("skipped: not a hybrid host ({})", other.describe()),
            None => {}
        }
    }

    /// A create that fails halfway removes the directories it made.
    #[test]
    fn real_failed_create_rolls_back() {
        let (memory, pids) = match real_layout() {
            Some(CgroupLayout::V1 {
                memory,
                pids,
                unified,
                ..
            }) => {
                // A hybrid host's v2 mount has no memory controller: the v2 path must say so.
                if let Some(root) = unified {
                    let limits = Resources {
                        cpus: None,
                        memory_bytes: 1 << 30,
                        pids: 1,
                    };
                    let error = SandboxCgroup::create(&v2(&root.to_string_lossy()), "x", &limits);
                    assert!(matches!(
                        error,
                        Err(CgroupError::MissingController {
                            controller: "memory",
                            ..
                        })
                    ));
                }
                (memory, pids)
            }
            Some(other) => {
                eprintln!("skipped: not a v1 host ({})", other.describe());
                return;
            }
            None => return,
        };
        let cpu = Some("/nonexistent-ak".into());
        let broken = CgroupLayout::V1 {
            memory,
            pids,
            cpu,
            unified: None,
        };
        let id = unique_id();
        let limits = Resources {
            cpus: Some(1.0),
            memory_bytes: 64 << 20,
            pids: 16,
        };
        let error = SandboxCgroup::create(&broken, &id, &limits).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent-ak/agentkernel"),
            "{error}"
        );
        assert!(!list_sandbox_cgroups(&broken).contains(&id));
    }

    #[test]
    fn real_oom_kill_is_reported_and_crash_cleanup_works() {
        let Some(layout) = real_layout() else { return };
        let id = unique_id();
        let limits = Resources {
            cpus: None,
            memory_bytes: 32 << 20,
            pids: 16,
        };
        let cgroup = SandboxCgroup::create(&layout, &id, &limits).unwrap();
        // Waits for a line so it is inside the cgroup before dd allocates its 128 MiB buffer.
        let mut child = Command::new("sh")
            .args([
                "-c",
                "read _ && exec dd if=/dev/zero of=/dev/null bs=128M count=1",
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        cgroup.add_process(child.id()).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(cgroup.oom_killed());
        let peak = cgroup.peak_memory_bytes();
        eprintln!("peak memory of the OOM-killed sandbox: {peak:?}");
        assert!(peak.is_none_or(|p| p > 1 << 20 && p <= 32 << 20));
        // As after a crash: only the id is known.
        let reopened = SandboxCgroup::existing(&layout, &id);
        assert_eq!(reopened.paths(), cgroup.paths());
        reopened.kill_all().unwrap();
        reopened.remove().unwrap();
        assert!(!list_sandbox_cgroups(&layout).contains(&id));
    }
}
