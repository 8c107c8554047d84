//! Naming a host process so that it stays the same process across pid reuse: how
//! backends record the processes a sandbox owns (its creator, its hypervisor).

/// `program` in a directory of `PATH`, if one holds it as an executable file.
pub fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file this process may execute.
pub fn is_executable(path: &std::path::Path) -> bool {
    path.is_file() && rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok()
}

/// `pid:start-time` of process `pid`: unique across pid reuse. `None` when there is no
/// such process, or it has exited and only waits to be reaped (a zombie: a killed
/// hypervisor whose parent is gone may stay one for a while).
pub fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields counted after the `(comm)`, which may hold spaces: the state (field 3), the
    // start time (field 22).
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    let start = fields.nth(18)?;
    Some(format!("{pid}:{start}"))
}

/// Whether the process recorded as `recorded` (an [`identity`]) still runs (a zombie
/// not yet reaped counts as running).
pub fn alive(recorded: &str) -> bool {
    pid_of(recorded).is_some()
}

/// The pid of the process recorded as `recorded`, if that very process still exists.
pub fn pid_of(recorded: &str) -> Option<u32> {
    let pid = recorded.split_once(':')?.0.parse::<u32>().ok()?;
    identity(pid).filter(|now| now == recorded).map(|_| pid)
}

/// Sends `signal` to the process recorded as `recorded`, only if it is still that
/// process; returns whether it was signalled.
pub fn signal(recorded: &str, signal: rustix::process::Signal) -> bool {
    pid_of(recorded)
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        .is_some_and(|pid| rustix::process::kill_process(pid, signal).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_identified_across_pid_reuse() {
        let me = identity(std::process::id()).unwrap();
        assert!(alive(&me));
        let (pid, _) = me.split_once(':').unwrap();
        assert!(!alive(&format!("{pid}:1")), "same pid, other start time");
        assert!(!alive("4194304:1"));
        assert!(!alive("garbage"));
        // An exited child not yet reaped is not alive.
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let recorded = identity(pid).unwrap();
        assert!(signal(&recorded, rustix::process::Signal::KILL));
        let start = std::time::Instant::now();
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(start.elapsed().as_secs() < 10, "the child never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(identity(pid).is_none());
        assert!(!alive(&recorded));
        child.wait().unwrap();
    }
}
