//! The names of a microVM's virtio-serial ports (`/sys/class/virtio-ports/*/name` in the
//! guest, `name=` of QEMU's `virtserialport`) and the lines on its control port: the
//! agent's channel for VMs that can be saved with their memory (vsock through vhost-user
//! cannot migrate). Here because host and agent both use them.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// The host writes a [`SyncLine`] on this port after it started or restored the VM; the
/// agent answers [`READY`] once it serves the data ports afresh, or [`REFUSED`] and why.
pub const CONTROL_PORT: &str = "ak.control";
/// The agent's answer to a [`SyncLine`]: it serves the data ports, none holding an
/// earlier connection or its bytes (and a restored guest has the time and the seed).
pub const READY: &[u8] = b"ready\n";
/// How the agent's answer to a line it cannot act on starts (`refused REASON\n`): the
/// host fails the start with the reason instead of waiting for a `ready` that never comes.
pub const REFUSED: &str = "refused";
/// The longest line on the control port (a restore's sync line is 155 bytes).
pub const MAX_CONTROL_LINE: usize = 256;
/// The most data ports a VM has (each carries one host connection at a time).
pub const MAX_DATA_PORTS: u32 = 16;
/// How many bytes of host randomness a restore's sync line carries: a full reseed's
/// worth for the guest's generator, and no flood.
pub const SEED_LEN: usize = 64;

/// How a host connection to a data port of a VM that serves many connections starts
/// (not a one-shot VM's, whose port carries one): the host writes [`greeting`] with a
/// nonce of its own and sends nothing more until the agent wrote the same line back,
/// which it does only for a connection it serves afresh. A new connection the guest took
/// for more of the last one on that port (it saw no hang-up between them: see the agent's
/// `serial.rs`), or one that would first get bytes the guest wrote for an earlier one,
/// then gets no echo: the host hangs up, which ends it on both sides, and tries another
/// port, instead of waiting forever for an answer to a handshake the agent dropped.
pub const GREETING_WORD: &str = "port";
/// The longest greeting line either side takes.
pub const MAX_GREETING: usize = 64;

/// The greeting line carrying `nonce` (a word of letters, digits and dashes), newline
/// included.
pub fn greeting(nonce: &str) -> Vec<u8> {
    format!("{GREETING_WORD} {nonce}\n").into_bytes()
}

/// Whether `line` (newline included) is a greeting line.
pub fn is_greeting(line: &[u8]) -> bool {
    line.len() <= MAX_GREETING
        && line
            .strip_suffix(b"\n")
            .and_then(|text| text.strip_prefix(GREETING_WORD.as_bytes()))
            .and_then(|rest| rest.strip_prefix(b" "))
            .is_some_and(|nonce| {
                !nonce.is_empty()
                    && nonce
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            })
}

/// The name of data port `index`.
pub fn data_port(index: u32) -> String {
    format!("ak.{index}")
}

/// The host's line on the control port: every data port's earlier connection is over
/// (none is open at a boot or a restore), whatever the guest saw of its end.
#[derive(Clone, PartialEq, Eq)]
pub enum SyncLine {
    /// After a boot: `sync`.
    Boot,
    /// After a restore from a memory state: `sync SECONDS.NANOSECONDS HEX`. The guest's
    /// clock is the one the state was saved with, and its random number generator the
    /// one every copy of that state has; the agent sets the clock to `time` and credits
    /// `seed` (fresh host randomness) to the kernel's entropy pool before it answers.
    /// On this line rather than in execs after it: each exec is a connection and a
    /// process in the guest, most of a restore's time under emulation. Memory states have
    /// never shipped, so no agent saved in one expects the plain `sync` after a restore.
    Restore {
        time: WallTime,
        seed: [u8; SEED_LEN],
    },
}

/// Not the seed's bytes: they are the guest's randomness to be.
impl fmt::Debug for SyncLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncLine::Boot => f.write_str("Boot"),
            SyncLine::Restore { time, .. } => f
                .debug_struct("Restore")
                .field("time", time)
                .finish_non_exhaustive(),
        }
    }
}

const SYNC_WORD: &str = "sync";

impl SyncLine {
    /// The line as the host writes it, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        match self {
            SyncLine::Boot => format!("{SYNC_WORD}\n").into_bytes(),
            SyncLine::Restore { time, seed } => {
                let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
                format!("{SYNC_WORD} {time} {hex}\n").into_bytes()
            }
        }
    }

    /// The sync line `line` (newline included) says, or why it is none.
    pub fn parse(line: &[u8]) -> Result<SyncLine, ControlLineError> {
        let unknown = || ControlLineError::Unknown(String::from_utf8_lossy(line).into_owned());
        let text = line
            .strip_suffix(b"\n")
            .and_then(|text| std::str::from_utf8(text).ok())
            .ok_or_else(unknown)?;
        let mut words = text.split(' ');
        if words.next() != Some(SYNC_WORD) {
            return Err(unknown());
        }
        match (words.next(), words.next(), words.next()) {
            (None, _, _) => Ok(SyncLine::Boot),
            (Some(time), Some(seed), None) => Ok(SyncLine::Restore {
                time: time.parse()?,
                seed: parse_seed(seed)?,
            }),
            _ => Err(unknown()),
        }
    }
}

fn parse_seed(hex: &str) -> Result<[u8; SEED_LEN], ControlLineError> {
    let bad = || ControlLineError::Seed { len: hex.len() };
    // Hex digits only: `from_str_radix` would take a sign too.
    if hex.len() != SEED_LEN * 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut seed = [0u8; SEED_LEN];
    for (byte, pair) in seed.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
        *byte = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Ok(seed)
}

/// A wall-clock time for a guest's clock (Unix time), written `SECONDS.NANOSECONDS` (nine
/// digits): on a restore's sync line and as `--set-clock`'s argument. Only times from
/// 2020 to 2100 are taken: anything else is a broken host clock or a garbled line, and
/// setting a guest's clock to it would break its TLS and its builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallTime {
    seconds: u64,
    nanoseconds: u32,
}

impl WallTime {
    /// 2020-01-01T00:00:00Z.
    pub const EARLIEST: u64 = 1_577_836_800;
    /// 2100-01-01T00:00:00Z.
    pub const LATEST: u64 = 4_102_444_800;

    /// The time `since_epoch` after the Unix epoch, if in range.
    pub fn new(since_epoch: Duration) -> Result<WallTime, ControlLineError> {
        let seconds = since_epoch.as_secs();
        if !(Self::EARLIEST..Self::LATEST).contains(&seconds) {
            return Err(ControlLineError::Time(format!(
                "{seconds}.{:09}",
                since_epoch.subsec_nanos()
            )));
        }
        Ok(WallTime {
            seconds,
            nanoseconds: since_epoch.subsec_nanos(),
        })
    }

    /// This host's time.
    pub fn now() -> Result<WallTime, ControlLineError> {
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| ControlLineError::Time("before 1970".into()))?;
        WallTime::new(since_epoch)
    }

    /// Whole seconds since the Unix epoch.
    pub fn seconds(&self) -> u64 {
        self.seconds
    }

    /// Nanoseconds past [`WallTime::seconds`].
    pub fn nanoseconds(&self) -> u32 {
        self.nanoseconds
    }
}

impl fmt::Display for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.seconds, self.nanoseconds)
    }
}

impl FromStr for WallTime {
    type Err = ControlLineError;

    fn from_str(raw: &str) -> Result<WallTime, ControlLineError> {
        let bad = || ControlLineError::Time(raw.into());
        let (seconds, nanoseconds) = raw.split_once('.').ok_or_else(bad)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(seconds) || nanoseconds.len() != 9 || !digits(nanoseconds) {
            return Err(bad());
        }
        let seconds: u64 = seconds.parse().map_err(|_| bad())?;
        let nanoseconds: u32 = nanoseconds.parse().map_err(|_| bad())?;
        WallTime::new(Duration::new(seconds, nanoseconds))
    }
}

/// Why a control line or a time is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlLineError {
    #[error("not a sync line: {0:?}")]
    Unknown(String),
    #[error(
        "a time must be SECONDS.NANOSECONDS (9 digits) from {earliest} to {latest} (Unix time), not {0:?}",
        earliest = WallTime::EARLIEST,
        latest = WallTime::LATEST
    )]
    Time(String),
    #[error("a seed must be {SEED_LEN} bytes in hex digits, not {len} characters")]
    Seed { len: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_carry_a_nonce_and_nothing_else() {
        let line = greeting("5f0c-9a");
        assert_eq!(line, b"port 5f0c-9a\n");
        assert!(is_greeting(&line));
        for bad in [
            &b"port \n"[..],
            b"port 5f0c",
            b"port 5f 0c\n",
            b"porta 5f0c\n",
            b"\x00\x00\x00\x10{\"id\":1}\n",
        ] {
            assert!(!is_greeting(bad), "{bad:?}");
        }
        assert!(!is_greeting(&greeting(&"a".repeat(MAX_GREETING))));
    }

    fn time(raw: &str) -> WallTime {
        raw.parse().unwrap()
    }

    #[test]
    fn sync_lines_round_trip() {
        assert_eq!(SyncLine::Boot.to_line(), b"sync\n");
        let mut seed = [0u8; SEED_LEN];
        for (i, byte) in seed.iter_mut().enumerate() {
            *byte = i as u8 * 4;
        }
        let restore = SyncLine::Restore {
            time: time("1796453090.032820754"),
            seed,
        };
        let line = restore.to_line();
        assert!(line.len() <= MAX_CONTROL_LINE, "{}", line.len());
        assert!(line.starts_with(b"sync 1796453090.032820754 0004080c10"));
        for sync in [SyncLine::Boot, restore] {
            assert_eq!(SyncLine::parse(&sync.to_line()), Ok(sync));
        }
    }

    #[test]
    fn bad_sync_lines_are_refused() {
        let seed = "ab".repeat(SEED_LEN);
        let good_time = "1796453090.632820754";
        for bad in [
            "sync",
            "sync \n",
            "sync  \n",
            "synced\n",
            "ready\n",
            "\n",
            "sync 1796453090.632820754\n",
            "sync x y z\n",
            &format!("sync {good_time} {seed} more\n"),
            &format!("sync {good_time}  {seed}\n"),
        ] {
            assert!(
                matches!(
                    SyncLine::parse(bad.as_bytes()),
                    Err(ControlLineError::Unknown(_) | ControlLineError::Time(_))
                ),
                "{bad:?}"
            );
        }
        assert!(SyncLine::parse(b"sync\xff\n").is_err());
        for bad_time in [
            "",
            "1",
            "1.5",
            "-1.000000000",
            "1796453090.0000000000",
            "a.000000000",
            "1796453090.00000000x",
            "1796453090.+00000000",
            // Before 2020, from 2100 on, and past what fits.
            "1000000000.000000000",
            "4102444800.000000000",
            "99999999999999999999999.000000000",
        ] {
            assert_eq!(
                SyncLine::parse(format!("sync {bad_time} {seed}\n").as_bytes()),
                Err(ControlLineError::Time(bad_time.into())),
                "{bad_time:?}"
            );
        }
        for bad_seed in [
            "ab".to_string(),
            "ab".repeat(SEED_LEN + 1),
            "zz".repeat(SEED_LEN),
            "a".repeat(SEED_LEN * 2 - 1),
            "+a".repeat(SEED_LEN),
            "é".repeat(SEED_LEN),
        ] {
            assert_eq!(
                SyncLine::parse(format!("sync {good_time} {bad_seed}\n").as_bytes()),
                Err(ControlLineError::Seed {
                    len: bad_seed.len()
                }),
                "{bad_seed:?}"
            );
        }
    }

    #[test]
    fn wall_times_are_in_range() {
        let now = WallTime::now().unwrap();
        assert_eq!(now.to_string().parse::<WallTime>(), Ok(now));
        assert_eq!(time("1577836800.000000000").seconds(), WallTime::EARLIEST);
        assert_eq!(time("4102444799.999999999").nanoseconds(), 999_999_999);
        assert!(WallTime::new(Duration::from_secs(0)).is_err());
    }

    #[test]
    fn debug_leaves_the_seed_out() {
        let restore = SyncLine::Restore {
            time: time("1796453090.632820754"),
            seed: [0xab; SEED_LEN],
        };
        assert!(!format!("{restore:?}").contains("171"));
        assert!(!format!("{restore:?}").contains("ab"));
    }
}
