//! Tests of the cgroup module: mountinfo parsing offline, and real cgroups when run as root.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use std::{fs, thread};

use ak_core::Resources;

use super::parse::{parse_keyed, parse_pids};
use super::sandbox::{MIN_CPU_QUOTA_US, cpu_quota_us, validate_id};
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

/// `remove` first tries a bare rmdir; a refusal because of nested cgroups (which a workload
/// may create in a delegated subtree) must still end with everything removed.
#[test]
fn real_remove_takes_nested_cgroups() {
    let Some(layout) = real_layout() else { return };
    let limits = Resources {
        cpus: None,
        memory_bytes: 64 << 20,
        pids: 16,
    };
    let cgroup = SandboxCgroup::create(&layout, &unique_id(), &limits).unwrap();
    for dir in cgroup.paths() {
        fs::create_dir_all(dir.join("nested/deeper")).unwrap();
    }
    cgroup.remove().unwrap();
    assert!(cgroup.paths().iter().all(|p| !p.exists()));
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
