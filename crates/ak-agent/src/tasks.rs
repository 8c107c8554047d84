//! One-shot tasks the host runs inside a microVM's guest through the agent itself
//! (`/proc/1/exe TASK…`: the agent is the guest's init, whatever the image holds). They
//! are not ways of serving, so they are recognised before the serving arguments are.

use std::ffi::OsString;

use ak_protocol::serial::{ControlLineError, WallTime};

/// A task the arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Task {
    /// Flush every file system's cached writes to its device.
    SyncFilesystems,
    /// Set the system clock to this time.
    SetClock(WallTime),
}

/// Why a task's arguments are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadTask {
    #[error("{arg}: {0}", arg = ak_protocol::SET_CLOCK_ARG)]
    Time(ControlLineError),
}

/// The task `args` (after the program name) ask for, if they ask for one.
pub(crate) fn parse(args: &[OsString]) -> Option<Result<Task, BadTask>> {
    let first = args.first()?.to_str()?;
    if first == ak_protocol::SYNC_FILESYSTEMS_ARG && args.len() == 1 {
        return Some(Ok(Task::SyncFilesystems));
    }
    if first == ak_protocol::SET_CLOCK_ARG && args.len() == 2 {
        let raw = args[1].to_string_lossy();
        return Some(raw.parse().map(Task::SetClock).map_err(BadTask::Time));
    }
    None
}

/// Sets the system clock (`CLOCK_REALTIME`) to `time`: after a resume from a pause
/// (`--set-clock`) or a restore (the sync line), the guest's clock is behind the host's.
pub(crate) fn set_clock(time: WallTime) -> std::io::Result<()> {
    let time = libc::timespec {
        // Both fit: a WallTime is before 2100, its nanoseconds below 10^9. (`as _`, the
        // field's own type: the libc crate deprecates naming musl's `time_t`.)
        tv_sec: time.seconds() as _,
        tv_nsec: time.nanoseconds() as libc::c_long,
    };
    // SAFETY: `time` is a valid timespec for the call to read.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `RNDADDENTROPY` (`_IOW('R', 0x03, int[2])`) and `RNDRESEEDCRNG` (`_IO('R', 0x07)`) of
/// `linux/random.h`. Typed `libc::Ioctl`: the request is a `c_ulong` in glibc, a `c_int` in
/// musl (the agent is built against both).
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

/// Credits `seed` to the kernel's pool as entropy (it is the host's randomness) and
/// reseeds the generator from the pool at once, so that what the guest draws next
/// differs from what any other copy of the same memory draws.
pub(crate) fn reseed(seed: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // SAFETY: `info` is a rand_pool_info with `buf_size` bytes after its header, valid
    // for the call; the fd is open.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: an ioctl without argument on an open fd.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Does `task`; the process's exit code.
pub(crate) fn run(task: &Task) -> i32 {
    match task {
        Task::SyncFilesystems => {
            rustix::fs::sync();
            0
        }
        Task::SetClock(time) => match set_clock(*time) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("cannot set the clock: {e}");
                1
            }
        },
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
        let time = "1796453090.632820754";
        assert_eq!(
            parse(&args(&["--set-clock", time])),
            Some(Ok(Task::SetClock(time.parse().unwrap())))
        );
        // The time's own checks are ak-protocol's (serial::WallTime).
        for bad in ["", "1.5", "1000000000.000000000"] {
            assert_eq!(
                parse(&args(&["--set-clock", bad])),
                Some(Err(BadTask::Time(ControlLineError::Time(bad.into())))),
                "{bad}"
            );
        }
        // Anything else is for the serving arguments' parser.
        assert_eq!(parse(&args(&["--vsock", "1024"])), None);
        assert_eq!(parse(&args(&["--reseed", &"ab".repeat(64)])), None);
        assert_eq!(parse(&args(&["--sync-filesystems", "x"])), None);
        assert_eq!(parse(&args(&["--set-clock"])), None);
        assert_eq!(parse(&args(&[])), None);
    }
}
