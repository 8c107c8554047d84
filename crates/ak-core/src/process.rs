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

/// SIGKILLs the process of `pidfd` and waits, at most `limit`, until it has exited (a
/// zombie counts as exited); reaps it if it is our child (it may not be: after a restart
/// the creator is gone, so this waits on the pidfd, not on `waitpid`). Returns whether it
/// is gone.
pub fn kill_and_wait(pidfd: &std::os::fd::OwnedFd, limit: std::time::Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
    let deadline = std::time::Instant::now() + limit;
    let exited = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => break false,
            Ok(_) => break true,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break false,
        }
    };
    // ECHILD when another process is its parent, which then reaps it.
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(pidfd)),
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
    );
    exited
}

/// Kills the process recorded as `recorded` (only if it is still that process) and waits,
/// at most `limit`, until it is gone: a caller that returns "stopped" means it. Returns
/// whether it is gone.
pub fn kill_recorded(recorded: &str, limit: std::time::Duration) -> bool {
    let Some(pid) = pid_of(recorded).and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
    else {
        return true;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return true;
    };
    // The pid may have been reused between the check and the open; the pidfd now pins
    // whichever process it is, so check again before killing it.
    if pid_of(recorded).is_none() {
        return true;
    }
    kill_and_wait(&pidfd, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_process_is_gone_when_kill_recorded_returns() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let recorded = identity(child.id()).unwrap();
        assert!(kill_recorded(&recorded, std::time::Duration::from_secs(5)));
        assert!(!alive(&recorded));
        // Our child, so reaped as well: there is nothing left to wait for.
        assert!(child.try_wait().is_err(), "reaped");
        // Gone already: nothing to do, and no other process is touched.
        assert!(kill_recorded(&recorded, std::time::Duration::from_secs(1)));
    }

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
