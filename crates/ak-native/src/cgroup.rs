//! Resource limits for one sandbox on cgroup v2, v1 and hybrid (v1 controllers + v2 for `cgroup.kill`) hosts.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use ak_core::Resources;
use rustix::fs::{Access, AtFlags, CWD};
use rustix::process::{Pid, PidfdFlags, Signal};

/// Directory under each hierarchy's root that holds one child cgroup per sandbox.
pub const PARENT_DIR: &str = "agentkernel";

/// CFS period for CPU limits: the kernel default, so a quota reads as a share of 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel rejects CFS quotas below 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long `remove` waits for exiting processes to leave before giving up on EBUSY.
const REMOVE_PATIENCE: Duration = Duration::from_millis(500);
/// How long `kill_all` keeps re-reading `cgroup.procs` for processes forked mid-kill or still exiting.
const KILL_PATIENCE: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Controllers a sandbox cannot run without: an unlimited sandbox could exhaust the host.
const REQUIRED: [&str; 2] = ["memory", "pids"];

/// A cgroup operation failed; every variant names the file or hierarchy involved.
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
        "cannot enable controllers in {0}: the cgroup has processes of its own, and cgroup v2 \
         only allows controllers below cgroups without member processes (run agentkernel in a \
         child cgroup)"
    )]
    ControllersBusy(PathBuf),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot SIGKILL process {pid} listed in {path}: {source}")]
    Signal {
        pid: u32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} still lists {remaining} process(es) after {waited:?} of SIGKILL")]
    KillIncomplete {
        path: PathBuf,
        remaining: usize,
        waited: Duration,
    },
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// Where the cgroup hierarchies this crate uses are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One unified hierarchy holding every controller.
    V2 { root: PathBuf },
    /// Per-controller v1 hierarchies; `unified` is the (controller-less) v2 mount of a
    /// hybrid host, used only for `cgroup.kill`.
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
        unified: Option<PathBuf>,
    },
    Unavailable { reason: String },
}

/// One line of `/proc/self/mountinfo`, reduced to what layout detection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    mount_point: PathBuf,
    fstype: String,
    super_options: String,
}

/// Parses `/proc/<pid>/mountinfo`; malformed lines are skipped.
fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // Optional fields sit between the mount options and the " - " separator, and
            // spaces inside paths are escaped, so the separator is unambiguous.
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?.to_string();
            let _source = right.next();
            let super_options = right.next().unwrap_or("").to_string();
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                fstype,
                super_options,
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash in paths.
fn unescape_octal(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b))
        });
        match escape {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// Parses a space-separated controller list (`cgroup.controllers`, `cgroup.subtree_control`).
fn parse_controllers(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Value of `key` in a flat keyed file such as `memory.events` or `memory.oom_control`.
fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Parses `cgroup.procs`: one pid per line.
fn parse_pids(text: &str) -> Vec<u32> {
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
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

    /// Derives the layout from the text of a mountinfo file. The first mount of each
    /// hierarchy wins; v1 controllers take precedence because a controller bound to v1
    /// cannot also be used through v2.
    pub fn from_mountinfo(text: &str) -> CgroupLayout {
        let (mut memory, mut pids, mut cpu, mut unified) = (None, None, None, None);
        let mut any_v1 = false;
        for entry in parse_mountinfo(text) {
            match entry.fstype.as_str() {
                "cgroup2" if unified.is_none() => unified = Some(entry.mount_point),
                "cgroup" => {
                    any_v1 = true;
                    for option in entry.super_options.split(',') {
                        let slot = match option {
                            "memory" => &mut memory,
                            "pids" => &mut pids,
                            "cpu" => &mut cpu,
                            _ => continue,
                        };
                        if slot.is_none() {
                            *slot = Some(entry.mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        if memory.is_some() || pids.is_some() || cpu.is_some() {
            CgroupLayout::V1 {
                memory,
                pids,
                cpu,
                unified,
            }
        } else if let Some(root) = unified {
            CgroupLayout::V2 { root }
        } else if any_v1 {
            CgroupLayout::Unavailable {
                reason: "only cgroup v1 hierarchies without the memory, pids and cpu controllers \
                         are mounted"
                    .into(),
            }
        } else {
            CgroupLayout::Unavailable {
                reason: "no cgroup filesystem is mounted (no cgroup or cgroup2 entry in \
                         /proc/self/mountinfo)"
                    .into(),
            }
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
                let have: Vec<_> = named.iter().filter(|(_, p)| p.is_some()).map(|(n, _)| *n);
                let have = have.collect::<Vec<_>>();
                let missing: Vec<_> = named.iter().filter(|(_, p)| p.is_none()).map(|(n, _)| *n);
                let missing = missing.collect::<Vec<_>>();
                let mut v1 = format!("v1 {}", have.join(","));
                if !missing.is_empty() {
                    v1.push_str(&format!(" (no {})", missing.join(",")));
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
                let file = root.join("cgroup.controllers");
                let text = fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                let available = parse_controllers(&text);
                if let Some(missing) = REQUIRED.iter().find(|c| !available.contains(**c)) {
                    return Err(format!(
                        "the {missing} controller is not available in {} (it lists: {})",
                        file.display(),
                        if available.is_empty() { "none" } else { text.trim() }
                    ));
                }
                check_writable(root)
            }
            CgroupLayout::V1 {
                memory, pids, cpu, ..
            } => {
                for (name, dir) in [("memory", memory), ("pids", pids)] {
                    if dir.is_none() {
                        return Err(format!("no cgroup v1 hierarchy with the {name} controller is mounted"));
                    }
                }
                [memory, pids, cpu].into_iter().flatten().try_for_each(|h| check_writable(h))
            }
        }
    }

    /// The hierarchies sandbox cgroups live in, the v2 one of a hybrid host last.
    fn hierarchies(&self) -> Vec<&Path> {
        match self {
            CgroupLayout::V2 { root } => vec![root.as_path()],
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

/// Whether the effective uid may create sandbox cgroups in `hierarchy`: in the existing
/// `agentkernel` dir (a delegated subtree), or in the hierarchy root to create it.
fn check_writable(hierarchy: &Path) -> Result<(), String> {
    let parent = hierarchy.join(PARENT_DIR);
    let (target, note) = if parent.is_dir() {
        (parent.as_path(), String::new())
    } else {
        (hierarchy, format!(" (needed to create {PARENT_DIR})"))
    };
    let access = Access::WRITE_OK | Access::EXEC_OK;
    match rustix::fs::accessat(CWD, target, access, AtFlags::EACCESS) {
        Ok(()) => Ok(()),
        Err(e) => {
            let detail = if e == rustix::io::Errno::ACCESS || e == rustix::io::Errno::PERM {
                String::new()
            } else {
                format!(": {}", io::Error::from(e))
            };
            Err(format!(
                "cgroups need root or a delegated subtree: {} is not writable by uid {}{note}{detail}",
                target.display(),
                rustix::process::geteuid().as_raw(),
            ))
        }
    }
}

fn validate_id(id: &str) -> Result<(), CgroupError> {
    let bad = id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0', '\n']);
    if bad {
        Err(CgroupError::InvalidId(id.to_string()))
    } else {
        Ok(())
    }
}

/// Whether this sandbox's files use v2 or v1 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V2,
    V1,
}

/// The cgroup directories of one sandbox, one per hierarchy.
#[derive(Debug)]
pub struct SandboxCgroup {
    id: String,
    flavor: Flavor,
    /// Every directory, deduplicated (co-mounted v1 controllers share one), in creation order.
    dirs: Vec<PathBuf>,
    /// The directory holding the memory controller's files.
    memory: Option<PathBuf>,
    /// The v2 directory whose `cgroup.kill` ends every process at once.
    kill: Option<PathBuf>,
}

/// Removes the directories created so far unless disarmed, so a failed `create` leaves nothing.
#[derive(Default)]
struct Rollback(Vec<PathBuf>);

impl Drop for Rollback {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            if let Err(e) = fs::remove_dir(dir) {
                tracing::warn!("cannot remove {} after a failed cgroup set-up: {e}", dir.display());
            }
        }
    }
}

fn sandbox_dir(hierarchy: &Path, id: &str) -> PathBuf {
    hierarchy.join(PARENT_DIR).join(id)
}

fn write_value(path: &Path, value: impl ToString) -> Result<(), CgroupError> {
    fs::write(path, value.to_string()).map_err(io_error("write", path))
}

fn write_if_present(path: &Path, value: impl ToString) -> Result<(), CgroupError> {
    if path.exists() {
        write_value(path, value)
    } else {
        tracing::debug!("{} does not exist on this kernel; not set", path.display());
        Ok(())
    }
}

fn read_controllers(path: &Path) -> Result<BTreeSet<String>, CgroupError> {
    let text = fs::read_to_string(path).map_err(io_error("read", path))?;
    Ok(parse_controllers(&text))
}

/// Creates the shared parent; concurrent creators race, so an existing one is fine.
fn make_parent(hierarchy: &Path) -> Result<(), CgroupError> {
    let parent = hierarchy.join(PARENT_DIR);
    match fs::create_dir(&parent) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_error("create", &parent)(e)),
        _ => Ok(()),
    }
}

/// Creates a sandbox's own directory, which must be new: reusing one could inherit
/// another sandbox's processes or limits.
fn make_sandbox_dir(dir: &Path, rollback: &mut Rollback) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => {
            rollback.0.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(CgroupError::AlreadyExists(dir.to_path_buf()))
        }
        Err(e) => Err(io_error("create", dir)(e)),
    }
}

/// Enables `wanted` for the children of `dir`, writing only what is not already on (a
/// delegated subtree may allow reading but not writing `cgroup.subtree_control`).
fn enable_controllers(dir: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = read_controllers(&file)?;
    for controller in wanted.iter().filter(|c| !enabled.contains(**c)) {
        fs::write(&file, format!("+{controller}")).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                CgroupError::ControllersBusy(dir.to_path_buf())
            } else {
                io_error("write", &file)(e)
            }
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
        let mut rollback = Rollback::default();
        let cgroup = match layout {
            CgroupLayout::Unavailable { reason } => {
                return Err(CgroupError::Unavailable(reason.clone()));
            }
            CgroupLayout::V2 { root } => create_v2(root, id, limits, &mut rollback)?,
            CgroupLayout::V1 { .. } => create_v1(layout, id, limits, &mut rollback)?,
        };
        rollback.0.clear();
        tracing::debug!(id, dirs = ?cgroup.dirs, "sandbox cgroup created");
        Ok(cgroup)
    }

    /// Reopens the cgroup of a sandbox by id (for cleanup after a crash), without creating it.
    pub fn existing(layout: &CgroupLayout, id: &str) -> SandboxCgroup {
        let mut cgroup = SandboxCgroup {
            id: id.to_string(),
            flavor: Flavor::V2,
            dirs: Vec::new(),
            memory: None,
            kill: None,
        };
        if validate_id(id).is_err() {
            // Never a path outside the parent dirs; such an id cannot have been created.
            tracing::warn!(id, "not a valid sandbox cgroup id; nothing to reopen");
            return cgroup;
        }
        for hierarchy in layout.hierarchies() {
            let dir = sandbox_dir(hierarchy, id);
            if !cgroup.dirs.contains(&dir) {
                cgroup.dirs.push(dir);
            }
        }
        match layout {
            CgroupLayout::V2 { root } => {
                cgroup.memory = Some(sandbox_dir(root, id));
                cgroup.kill = Some(sandbox_dir(root, id));
            }
            CgroupLayout::V1 {
                memory, unified, ..
            } => {
                cgroup.flavor = Flavor::V1;
                cgroup.memory = memory.as_deref().map(|h| sandbox_dir(h, id));
                cgroup.kill = unified.as_deref().map(|h| sandbox_dir(h, id));
            }
            CgroupLayout::Unavailable { .. } => {}
        }
        cgroup
    }

    /// Moves `pid` into the sandbox: writes it into `cgroup.procs` of every directory.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        self.dirs
            .iter()
            .try_for_each(|dir| write_value(&dir.join("cgroup.procs"), pid))
    }

    /// SIGKILLs every process of the sandbox and waits (bounded) until none is listed.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if let Some(dir) = &self.kill {
            let file = dir.join("cgroup.kill");
            match fs::write(&file, "1") {
                Ok(()) => {}
                // The cgroup is gone, or the kernel predates cgroup.kill (5.14): the signal
                // loop below covers both.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!("{} is missing; signalling each process", file.display());
                }
                Err(e) => return Err(io_error("write", &file)(e)),
            }
        }
        // Also after cgroup.kill: it only queues the signals, and on hybrid hosts a
        // process that never reached the v2 directory would survive it.
        let deadline = Instant::now() + KILL_PATIENCE;
        self.dirs
            .iter()
            .try_for_each(|dir| signal_until_empty(&dir.join("cgroup.procs"), deadline))
    }

    /// Highest memory use seen (v2 `memory.peak`, v1 `memory.max_usage_in_bytes`).
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        let file = match self.flavor {
            Flavor::V2 => "memory.peak",
            Flavor::V1 => "memory.max_usage_in_bytes",
        };
        let text = fs::read_to_string(self.memory.as_ref()?.join(file)).ok()?;
        text.trim().parse().ok()
    }

    /// Whether the kernel's OOM killer ended a process of this sandbox.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
        match self.flavor {
            Flavor::V2 => parse_keyed(&read("memory.events"), "oom_kill").is_some_and(|n| n > 0),
            Flavor::V1 => match parse_keyed(&read("memory.oom_control"), "oom_kill") {
                Some(kills) => kills > 0,
                // Kernels before 4.13 lack the counter; hitting the limit is the closest
                // sign left, though reclaim alone can also raise it.
                None => parse_keyed(&format!("failcnt {}", read("memory.failcnt")), "failcnt")
                    .is_some_and(|n| n > 0),
            },
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

fn create_v2(
    root: &Path,
    id: &str,
    limits: &Resources,
    rollback: &mut Rollback,
) -> Result<SandboxCgroup, CgroupError> {
    let controllers_file = root.join("cgroup.controllers");
    let available = read_controllers(&controllers_file)?;
    if let Some(missing) = REQUIRED.iter().find(|c| !available.contains(**c)) {
        return Err(CgroupError::MissingController {
            controller: missing,
            detail: format!("not listed in {}", controllers_file.display()),
        });
    }
    let has_cpu = available.contains("cpu");
    let wanted: &[&str] = if has_cpu {
        &["memory", "pids", "cpu"]
    } else {
        &REQUIRED
    };
    enable_controllers(root, wanted)?;
    make_parent(root)?;
    enable_controllers(&root.join(PARENT_DIR), wanted)?;
    let dir = sandbox_dir(root, id);
    make_sandbox_dir(&dir, rollback)?;

    write_value(&dir.join("memory.max"), limits.memory_bytes)?;
    // The limit covers RAM and swap together, as on v1 with memsw.
    write_if_present(&dir.join("memory.swap.max"), 0)?;
    write_value(&dir.join("pids.max"), limits.pids)?;
    match (limits.cpus, has_cpu) {
        (Some(cpus), true) => write_value(
            &dir.join("cpu.max"),
            format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpus)),
        )?,
        (Some(_), false) => tracing::warn!(
            id,
            "the cpu controller is not available in {}: the CPU limit is not applied",
            controllers_file.display()
        ),
        (None, _) => {}
    }
    Ok(SandboxCgroup {
        id: id.to_string(),
        flavor: Flavor::V2,
        dirs: vec![dir.clone()],
        memory: Some(dir.clone()),
        kill: Some(dir),
    })
}

fn create_v1(
    layout: &CgroupLayout,
    id: &str,
    limits: &Resources,
    rollback: &mut Rollback,
) -> Result<SandboxCgroup, CgroupError> {
    let CgroupLayout::V1 {
        memory: Some(memory),
        pids: Some(pids),
        cpu,
        unified,
    } = layout
    else {
        let controller = match layout {
            CgroupLayout::V1 { memory: None, .. } => "memory",
            _ => "pids",
        };
        return Err(CgroupError::MissingController {
            controller,
            detail: format!("no cgroup v1 hierarchy with the {controller} controller is mounted"),
        });
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for hierarchy in [Some(memory), Some(pids), cpu.as_ref()].into_iter().flatten() {
        let dir = sandbox_dir(hierarchy, id);
        if !dirs.contains(&dir) {
            make_parent(hierarchy)?;
            make_sandbox_dir(&dir, rollback)?;
            dirs.push(dir);
        }
    }

    let memory_dir = sandbox_dir(memory, id);
    write_value(&memory_dir.join("memory.limit_in_bytes"), limits.memory_bytes)?;
    // After the RAM limit: the kernel requires memsw >= limit. Equal means no swap.
    write_if_present(&memory_dir.join("memory.memsw.limit_in_bytes"), limits.memory_bytes)?;
    write_value(&sandbox_dir(pids, id).join("pids.max"), limits.pids)?;
    match (limits.cpus, cpu) {
        (Some(cpus), Some(cpu)) => {
            let dir = sandbox_dir(cpu, id);
            write_value(&dir.join("cpu.cfs_period_us"), CPU_PERIOD_US)?;
            write_value(&dir.join("cpu.cfs_quota_us"), cpu_quota_us(cpus))?;
        }
        (Some(_), None) => tracing::warn!(
            id,
            "no cgroup v1 hierarchy with the cpu controller is mounted: the CPU limit is not applied"
        ),
        (None, _) => {}
    }

    // The v2 directory only adds cgroup.kill; without it kill_all signals each process.
    let mut kill = None;
    if let Some(unified) = unified {
        let dir = sandbox_dir(unified, id);
        match make_parent(unified).and_then(|()| make_sandbox_dir(&dir, rollback)) {
            Ok(()) => {
                dirs.push(dir.clone());
                kill = Some(dir);
            }
            Err(e) => tracing::warn!(id, "no v2 cgroup for cgroup.kill, killing by signals: {e}"),
        }
    }
    Ok(SandboxCgroup {
        id: id.to_string(),
        flavor: Flavor::V1,
        dirs,
        memory: Some(memory_dir),
        kill,
    })
}

fn read_pids(procs: &Path) -> io::Result<Vec<u32>> {
    fs::read_to_string(procs).map(|text| parse_pids(&text))
}

/// Re-sends SIGKILL to whatever `procs` lists until it lists nothing or `deadline` passes
/// (new processes may be forked between reading the list and signalling).
fn signal_until_empty(procs: &Path, deadline: Instant) -> Result<(), CgroupError> {
    let own = std::process::id();
    loop {
        let listed = match read_pids(procs) {
            Ok(pids) => pids,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("read", procs)(e)),
        };
        // Killing ourselves would end the service, not the sandbox.
        let listed: Vec<u32> = listed.into_iter().filter(|pid| *pid != own).collect();
        if listed.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::KillIncomplete {
                path: procs.to_path_buf(),
                remaining: listed.len(),
                waited: KILL_PATIENCE,
            });
        }
        sigkill_members(procs, &listed)?;
        thread::sleep(POLL_INTERVAL);
    }
}

/// A listed pid may exit and be reused by an unrelated process before we signal it, so each
/// process is pinned with a pidfd first and only signalled if its pid is still listed after
/// pinning (then the pidfd's process is the member).
fn sigkill_members(procs: &Path, listed: &[u32]) -> Result<(), CgroupError> {
    let pinned: Vec<_> = listed
        .iter()
        .filter_map(|&pid| Some((pid, Pid::from_raw(i32::try_from(pid).ok()?)?)))
        .map(|(pid, raw)| (pid, raw, rustix::process::pidfd_open(raw, PidfdFlags::empty())))
        .collect();
    let still_listed: BTreeSet<u32> = read_pids(procs).unwrap_or_default().into_iter().collect();
    for (pid, raw, pidfd) in pinned {
        if !still_listed.contains(&pid) {
            continue;
        }
        let sent = match pidfd {
            Ok(fd) => rustix::process::pidfd_send_signal(&fd, Signal::KILL),
            // Before Linux 5.3 there are no pidfds; accept the small reuse window.
            Err(rustix::io::Errno::NOSYS) => rustix::process::kill_process(raw, Signal::KILL),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                return Err(CgroupError::Signal {
                    pid,
                    path: procs.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// Removes `dir` after any nested cgroups (rmdir refuses a cgroup with children).
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path(), deadline)?;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("list", dir)(e)),
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(POLL_INTERVAL);
            }
            Err(e) => return Err(io_error("remove", dir)(e)),
        }
    }
}

/// Ids of sandbox cgroups that exist under the agentkernel parent dirs (for leak checks and
/// crash cleanup).
pub fn list_sandbox_cgroups(layout: &CgroupLayout) -> Vec<String> {
    let mut ids = BTreeSet::new();
    for hierarchy in layout.hierarchies() {
        let Ok(entries) = fs::read_dir(hierarchy.join(PARENT_DIR)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Ok(name) = entry.file_name().into_string() {
                    ids.insert(name);
                }
            }
        }
    }
    ids.into_iter().collect()
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
