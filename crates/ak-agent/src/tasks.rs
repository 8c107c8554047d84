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
    /// Mix these bytes (fresh host randomness) into the kernel's entropy pool and
    /// reseed its generator: a VM restored from a memory state would otherwise draw the
    /// same numbers as every other copy restored from it.
    Reseed(Vec<u8>),
}

/// The least and most randomness `--reseed` takes, in bytes (hex-encoded on the command
/// line): a full reseed's worth, and no flood.
const SEED_BYTES: std::ops::RangeInclusive<usize> = 32..=512;

/// Why a task's arguments are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadTask {
    #[error(
        "{} needs SECONDS.NANOSECONDS (9 digits), not {raw:?}",
        ak_protocol::SET_CLOCK_ARG
    )]
    Time { raw: String },
    #[error(
        "{} needs {}-{} bytes of randomness in hex digits",
        ak_protocol::RESEED_ARG,
        SEED_BYTES.start(),
        SEED_BYTES.end()
    )]
    Seed,
}

/// The task `args` (after the program name) ask for, if they ask for one.
pub(crate) fn parse(args: &[OsString]) -> Option<Result<Task, BadTask>> {
    let first = args.first()?.to_str()?;
    if first == ak_protocol::SYNC_FILESYSTEMS_ARG && args.len() == 1 {
        return Some(Ok(Task::SyncFilesystems));
    }
    if first == ak_protocol::SET_CLOCK_ARG && args.len() == 2 {
        let raw = args[1].to_string_lossy().into_owned();
        return Some(parse_time(&raw).ok_or(BadTask::Time { raw }));
    }
    if first == ak_protocol::RESEED_ARG && args.len() == 2 {
        let raw = args[1].to_string_lossy();
        return Some(parse_seed(&raw).map(Task::Reseed).ok_or(BadTask::Seed));
    }
    None
}

fn parse_seed(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !SEED_BYTES.contains(&(hex.len() / 2)) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `RNDADDENTROPY` (`_IOW('R', 0x03, int[2])`) and `RNDRESEEDCRNG` (`_IO('R', 0x07)`) of
/// `linux/random.h`. Typed `libc::Ioctl`: the request is a `c_ulong` in glibc, a `c_int` in
/// musl (the agent is built against both).
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

/// Credits `seed` to the kernel's pool as entropy (it is the host's randomness) and
/// reseeds the generator from the pool at once, so that what the guest draws next
/// differs from what any other copy of the same memory draws.
fn reseed(seed: &[u8]) -> std::io::Result<()> {
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
        Task::Reseed(seed) => match reseed(seed) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("cannot reseed the random number generator: {e}");
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
                Some(Err(BadTask::Time { raw: bad.into() })),
                "{bad}"
            );
        }
        let seed = "ab".repeat(32);
        assert_eq!(
            parse(&args(&["--reseed", &seed])),
            Some(Ok(Task::Reseed(vec![0xab; 32])))
        );
        for bad in [
            "",
            "ab",
            &"ab".repeat(513),
            &"zz".repeat(32),
            &"a".repeat(65),
        ] {
            assert_eq!(
                parse(&args(&["--reseed", bad])),
                Some(Err(BadTask::Seed)),
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
