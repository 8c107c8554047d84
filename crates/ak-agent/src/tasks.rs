//! One-shot tasks the host runs inside a microVM's guest through the agent itself
//! (`/proc/1/exe TASK…`: the agent is the guest's init, whatever the image holds). They
//! are not ways of serving, so they are recognised before the serving arguments are.

use std::ffi::OsString;

/// A task the arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Task {
    /// Flush every file system's cached writes to its device.
    SyncFilesystems,
    /// Set the system clock to this Unix time.
    SetClock { seconds: i64, nanoseconds: i64 },
}

/// Why a task's arguments are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} needs SECONDS.NANOSECONDS (9 digits), not {raw:?}",
    ak_protocol::SET_CLOCK_ARG
)]
pub(crate) struct BadTime {
    raw: String,
}

/// The task `args` (after the program name) ask for, if they ask for one.
pub(crate) fn parse(args: &[OsString]) -> Option<Result<Task, BadTime>> {
    let first = args.first()?.to_str()?;
    if first == ak_protocol::SYNC_FILESYSTEMS_ARG && args.len() == 1 {
        return Some(Ok(Task::SyncFilesystems));
    }
    if first == ak_protocol::SET_CLOCK_ARG && args.len() == 2 {
        let raw = args[1].to_string_lossy().into_owned();
        return Some(parse_time(&raw).ok_or(BadTime { raw }));
    }
    None
}

fn parse_time(raw: &str) -> Option<Task> {
    let (seconds, nanoseconds) = raw.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(seconds) || nanoseconds.len() != 9 || !digits(nanoseconds) {
        return None;
    }
    Some(Task::SetClock {
        seconds: seconds.parse().ok()?,
        nanoseconds: nanoseconds.parse().ok()?,
    })
}

/// Does `task`; the process's exit code.
pub(crate) fn run(task: &Task) -> i32 {
    match task {
        Task::SyncFilesystems => {
            rustix::fs::sync();
            0
        }
        Task::SetClock {
            seconds,
            nanoseconds,
        } => {
            let time = libc::timespec {
                tv_sec: *seconds,
                tv_nsec: *nanoseconds,
            };
            // SAFETY: `time` is a valid timespec for the call to read.
            if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } == 0 {
                0
            } else {
                tracing::error!("cannot set the clock: {}", std::io::Error::last_os_error());
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn tasks_are_recognised_and_bad_times_refused() {
        assert_eq!(
            parse(&args(&["--sync-filesystems"])),
            Some(Ok(Task::SyncFilesystems))
        );
        assert_eq!(
            parse(&args(&["--set-clock", "1796453090.632820754"])),
            Some(Ok(Task::SetClock {
                seconds: 1_796_453_090,
                nanoseconds: 632_820_754
            }))
        );
        for bad in [
            "",
            "1",
            "1.5",
            "-1.000000000",
            "1.0000000000",
            "a.000000000",
            "1.00000000x",
        ] {
            assert_eq!(
                parse(&args(&["--set-clock", bad])),
                Some(Err(BadTime { raw: bad.into() })),
                "{bad}"
            );
        }
        // Anything else is for the serving arguments' parser.
        assert_eq!(parse(&args(&["--vsock", "1024"])), None);
        assert_eq!(parse(&args(&["--sync-filesystems", "x"])), None);
        assert_eq!(parse(&args(&["--set-clock"])), None);
        assert_eq!(parse(&args(&[])), None);
    }
}
