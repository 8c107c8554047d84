//! Naming a host process so that it stays the same process across pid reuse: how
//! backends record the processes a sandbox owns (its creator, its hypervisor).

/// `pid:start-time` of process `pid`: unique across pid reuse.
pub fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (start time); fields counted after the `(comm)`, which may hold spaces.
    let start = stat.get(stat.rfind(')')? + 2..)?.split(' ').nth(19)?;
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
    }
}
