//! Command-line parsing, by hand: the agent starts on every sandbox run and must stay small.

use std::ffi::OsString;
use std::path::PathBuf;

/// Printed with every argument error.
pub(crate) const USAGE: &str = "usage: ak-agent (--fd N | --listen PATH | --listen-once PATH | --listen-fd N) [--hold-fd N] [--workdir DIR]";

/// Where the host's connections come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One already connected Unix stream socket, inherited as this file descriptor.
    Fd(i32),
    /// A Unix socket listener to create at this path; every connection is served.
    Listen(PathBuf),
    /// A Unix socket listener to create at this path for exactly one connection (a
    /// container's one-shot sandbox): the agent ends when that connection closes.
    ListenOnce(PathBuf),
    /// A listening Unix socket the host created, inherited as this file descriptor; every
    /// connection is served.
    ListenFd(i32),
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Args {
    pub(crate) mode: Mode,
    /// An inherited descriptor kept open (never used) for the agent's whole life: the host
    /// holds a lock through it that tells it the sandbox still runs.
    pub(crate) hold_fd: Option<i32>,
    pub(crate) workdir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ArgsError {
    #[error("help requested")]
    Help,
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} given more than once")]
    Repeated(&'static str),
    #[error("{0} needs a non-negative file descriptor number, not {1:?}")]
    BadFd(&'static str, String),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("only one of --fd, --listen, --listen-once and --listen-fd can be used")]
    ConflictingModes,
    #[error("one of --fd N, --listen PATH, --listen-once PATH or --listen-fd N is required")]
    NoMode,
}

/// Parses the arguments after the program name.
pub(crate) fn parse<I>(args: I) -> Result<Args, ArgsError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut args = args.into_iter();
    let mut fd = None;
    let mut listen = None;
    let mut listen_once = None;
    let mut listen_fd = None;
    let mut hold_fd = None;
    let mut workdir = None;
    while let Some(arg) = args.next() {
        let text = arg
            .to_str()
            .ok_or_else(|| ArgsError::Unknown(arg.to_string_lossy().into_owned()))?;
        // Both `--opt value` and `--opt=value` are accepted.
        let (name, inline) = match text.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(OsString::from(value))),
            _ => (text, None),
        };
        let mut value = |option: &'static str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(ArgsError::MissingValue(option))
        };
        match name {
            "-h" | "--help" => return Err(ArgsError::Help),
            "--fd" => set_once(&mut fd, fd_number(value("--fd")?, "--fd")?, "--fd")?,
            "--listen-fd" => set_once(
                &mut listen_fd,
                fd_number(value("--listen-fd")?, "--listen-fd")?,
                "--listen-fd",
            )?,
            "--hold-fd" => set_once(
                &mut hold_fd,
                fd_number(value("--hold-fd")?, "--hold-fd")?,
                "--hold-fd",
            )?,
            "--listen" => set_once(&mut listen, PathBuf::from(value("--listen")?), "--listen")?,
            "--listen-once" => set_once(
                &mut listen_once,
                PathBuf::from(value("--listen-once")?),
                "--listen-once",
            )?,
            "--workdir" => {
                set_once(
                    &mut workdir,
                    PathBuf::from(value("--workdir")?),
                    "--workdir",
                )?;
            }
            _ => return Err(ArgsError::Unknown(text.to_string())),
        }
    }
    let mode = match (fd, listen, listen_once, listen_fd) {
        (Some(fd), None, None, None) => Mode::Fd(fd),
        (None, Some(path), None, None) => Mode::Listen(path),
        (None, None, Some(path), None) => Mode::ListenOnce(path),
        (None, None, None, Some(fd)) => Mode::ListenFd(fd),
        (None, None, None, None) => return Err(ArgsError::NoMode),
        _ => return Err(ArgsError::ConflictingModes),
    };
    Ok(Args {
        mode,
        hold_fd,
        workdir,
    })
}

fn fd_number(raw: OsString, option: &'static str) -> Result<i32, ArgsError> {
    let raw = raw.to_str().ok_or(ArgsError::NotUtf8(option))?;
    raw.parse::<i32>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ArgsError::BadFd(option, raw.to_string()))
}

fn set_once<T>(slot: &mut Option<T>, value: T, option: &'static str) -> Result<(), ArgsError> {
    if slot.replace(value).is_some() {
        return Err(ArgsError::Repeated(option));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Args, ArgsError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn fd_mode() {
        let args = parse_strs(&["--fd", "3"]).unwrap();
        assert_eq!(args.mode, Mode::Fd(3));
        assert_eq!(args.hold_fd, None);
        assert_eq!(args.workdir, None);
    }

    #[test]
    fn listen_fd_mode_with_a_held_fd() {
        let args = parse_strs(&["--listen-fd", "3", "--hold-fd=4", "--workdir", "/w"]).unwrap();
        assert_eq!(args.mode, Mode::ListenFd(3));
        assert_eq!(args.hold_fd, Some(4));
        assert_eq!(args.workdir, Some("/w".into()));
        assert_eq!(
            parse_strs(&["--listen-fd", "3", "--hold-fd", "4", "--hold-fd", "5"]),
            Err(ArgsError::Repeated("--hold-fd"))
        );
    }

    #[test]
    fn listen_mode_with_workdir_in_both_spellings() {
        let args = parse_strs(&["--listen=/run/ak.sock", "--workdir", "/work"]).unwrap();
        assert_eq!(args.mode, Mode::Listen("/run/ak.sock".into()));
        assert_eq!(args.workdir, Some("/work".into()));
        let args = parse_strs(&["--workdir=/w", "--listen", "/s"]).unwrap();
        assert_eq!(args.mode, Mode::Listen("/s".into()));
        assert_eq!(args.workdir, Some("/w".into()));
    }

    #[test]
    fn listen_once_mode() {
        let args = parse_strs(&["--listen-once", "/s/agent.sock"]).unwrap();
        assert_eq!(args.mode, Mode::ListenOnce("/s/agent.sock".into()));
        assert_eq!(
            parse_strs(&["--listen-once", "/a", "--listen", "/b"]),
            Err(ArgsError::ConflictingModes)
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert_eq!(parse_strs(&[]), Err(ArgsError::NoMode));
        assert_eq!(
            parse_strs(&["--fd", "3", "--listen", "/s"]),
            Err(ArgsError::ConflictingModes)
        );
        assert_eq!(
            parse_strs(&["--listen-fd", "3", "--listen", "/s"]),
            Err(ArgsError::ConflictingModes)
        );
        assert_eq!(parse_strs(&["--hold-fd", "4"]), Err(ArgsError::NoMode));
        assert_eq!(
            parse_strs(&["--listen-fd", "3", "--hold-fd", "x"]),
            Err(ArgsError::BadFd("--hold-fd", "x".into()))
        );
        assert_eq!(parse_strs(&["--fd"]), Err(ArgsError::MissingValue("--fd")));
        assert_eq!(
            parse_strs(&["--fd", "-1"]),
            Err(ArgsError::BadFd("--fd", "-1".into()))
        );
        assert_eq!(
            parse_strs(&["--fd", "x"]),
            Err(ArgsError::BadFd("--fd", "x".into()))
        );
        assert_eq!(
            parse_strs(&["--fd", "3", "--fd", "4"]),
            Err(ArgsError::Repeated("--fd"))
        );
        assert_eq!(
            parse_strs(&["--fd", "3", "--verbose"]),
            Err(ArgsError::Unknown("--verbose".into()))
        );
        assert_eq!(
            parse_strs(&["--workdir"]),
            Err(ArgsError::MissingValue("--workdir"))
        );
        assert_eq!(parse_strs(&["-h"]), Err(ArgsError::Help));
    }

    #[test]
    fn non_utf8_paths_are_kept() {
        use std::os::unix::ffi::OsStringExt;
        let path = OsString::from_vec(b"/tmp/\xff.sock".to_vec());
        let args = parse([OsString::from("--listen"), path.clone()]).unwrap();
        assert_eq!(args.mode, Mode::Listen(PathBuf::from(path)));
    }
}
