//! Starting one command: argv, environment, working directory, user, stdio or pty.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use ak_protocol::{AgentError, ErrorKind, ExecSpec, StdinMode};
use rustix::fs::{Mode, OFlags};
use rustix::process::{Gid, Pid, Uid};

use crate::agent::Shared;
use crate::direct_spawn::{self, DirectSpawn};
use crate::reaper::ExitWaiter;
use crate::users::{self, User};

/// Used when neither the agent (as PID 1, often started with an empty environment) nor the
/// request provides `PATH`; the same default container runtimes use.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Used for PTY execs unless the request or the agent's environment names a terminal.
const DEFAULT_TERM: &str = "xterm-256color";

/// A started command and the agent's ends of its stdio.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: Pid,
    pub(crate) exit: ExitWaiter,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
    /// For PTY execs, the master; output, input and resizes all go through it.
    pub(crate) pty_master: Option<OwnedFd>,
}

/// Starts `spec` as the leader of a new session (and so of a new process group).
pub(crate) fn spawn(shared: &Shared, spec: &ExecSpec) -> Result<Spawned, AgentError> {
    let Some(program) = spec.argv.first() else {
        return Err(AgentError::new(
            ErrorKind::BadRequest,
            "the command line (argv) is empty",
        ));
    };
    let cwd = shared
        .root
        .host_path(Path::new(spec.cwd.as_deref().unwrap_or(".")));
    check_cwd(&cwd, spec.cwd.as_deref())?;
    let user = match &spec.user {
        Some(name) => Some(resolve_user(shared, name)?),
        None => None,
    };
    let env = environment(spec, user.as_ref());
    let switch = ids_to_switch(user.as_ref());

    // Most commands need neither a terminal nor another user, and are found on the agent's
    // own PATH (what posix_spawnp searches): they start without a fork.
    let found_on_agent_path = program.contains('/')
        || (!requested_env(spec, "PATH") && std::env::var_os("PATH").is_some());
    if spec.pty.is_none() && switch.is_none() && found_on_agent_path {
        let request = DirectSpawn {
            program,
            argv: &spec.argv,
            env: &env,
            cwd: &cwd,
            stdin: spec.stdin,
        };
        let started = retry_while_busy(|| {
            with_oom_preference(|| {
                shared.children.register(|| {
                    direct_spawn::spawn(&request).map(|started| (started.pid, started))
                })
            })
        });
        match started {
            Ok((ends, exit)) => {
                let pid = Pid::from_raw(ends.pid)
                    .ok_or_else(|| spawn_failed(format!("posix_spawn gave pid {}", ends.pid)))?;
                return Ok(Spawned {
                    pid,
                    exit,
                    stdin: ends.stdin,
                    stdout: Some(ends.stdout),
                    stderr: Some(ends.stderr),
                    pty_master: None,
                });
            }
            // A file without `#!` is a shell script to execvp (and so to a shell user):
            // the forking path below runs it with /bin/sh.
            Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {}
            Err(e) => return Err(spawn_error(program, &e)),
        }
    }

    let start = |script: Option<&Path>| {
        let mut command = match script {
            None => Command::new(program),
            Some(file) => {
                let mut command = Command::new(SHELL);
                command.arg(file);
                command
            }
        };
        command.args(&spec.argv[1..]);
        command.current_dir(&cwd);
        command
            .env_clear()
            .envs(env.iter().map(|(name, value)| (name, value)));
        let pty_master = set_stdio(&mut command, spec)?;
        set_up_child(&mut command, switch, pty_master.is_some());
        let started =
            retry_while_busy(|| with_oom_preference(|| shared.children.spawn(&mut command)));
        Ok::<_, AgentError>((started, pty_master, command))
    };
    let (mut started, mut pty_master, mut command) = start(None)?;
    // A file without `#!` is a shell script: POSIX's execvp runs it with the shell, glibc's
    // does, musl's does not (the agent is also built against musl), so it is done here, as
    // glibc does it: `/bin/sh FILE ARGS…` with the file found on the command's PATH.
    if matches!(&started, Err(e) if e.raw_os_error() == Some(libc::ENOEXEC))
        && let Some(file) = script_file(program, &env, &cwd)
    {
        (started, pty_master, command) = start(Some(&file))?;
    }
    let (mut child, exit) = started.map_err(|e| spawn_error(program, &e))?;
    // The command holds the parent's copies of the pty slave: they must be closed now, or
    // reading the master would never see the end of the command's output.
    drop(command);
    Ok(Spawned {
        pid: Pid::from_child(&child),
        exit,
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        pty_master,
    })
}

/// The shell that runs a script without `#!` (execvp's `_PATH_BSHELL`).
const SHELL: &str = "/bin/sh";

/// The file the kernel refused as a script without `#!`: `program` itself when it names a
/// path, else the first executable file of that name on the command's `PATH` (searched as
/// execvp did; relative entries are relative to the command's working directory `cwd`).
fn script_file(
    program: &str,
    env: &[(OsString, OsString)],
    cwd: &Path,
) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        return Some(program.into());
    }
    let path = env.iter().find(|(name, _)| name == "PATH")?;
    std::env::split_paths(&path.1)
        .map(|dir| dir.join(program))
        .find(|file| {
            let seen = cwd.join(file);
            seen.is_file() && rustix::fs::access(&seen, rustix::fs::Access::EXEC_OK).is_ok()
        })
}

/// The command's whole environment: the agent's, the request's variables on top, and
/// defaults for what a command expects to find.
fn environment(spec: &ExecSpec, user: Option<&User>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    // Later values win, as they would in a shell (also when the request names one twice).
    for (key, value) in &spec.env {
        env.retain(|(name, _)| name != key.as_str());
        env.push((key.into(), value.into()));
    }
    let mut default = |name: &str, value: &str| {
        if !env.iter().any(|(key, _)| key == name) {
            env.push((name.into(), value.into()));
        }
    };
    default("PATH", DEFAULT_PATH);
    if spec.pty.is_some() {
        default("TERM", DEFAULT_TERM);
    }
    // The agent's own HOME and USER belong to the agent's user, not the requested one.
    if let Some(user) = user {
        for (name, value) in [("HOME", &user.home), ("USER", &user.name)] {
            if let (Some(value), false) = (value, requested_env(spec, name)) {
                env.retain(|(key, _)| key != name);
                env.push((name.into(), OsString::from(value)));
            }
        }
    }
    env
}

/// Connects stdin, stdout and stderr: pipes (stdin per the request), or all three to a new
/// pty, whose master is returned.
fn set_stdio(command: &mut Command, spec: &ExecSpec) -> Result<Option<OwnedFd>, AgentError> {
    let Some(size) = spec.pty else {
        command
            .stdin(match spec.stdin {
                StdinMode::Null => Stdio::null(),
                StdinMode::Pipe => Stdio::piped(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        return Ok(None);
    };
    let pty_error = |e: std::io::Error| spawn_failed(format!("cannot open a pty: {e}"));
    let pty = crate::pty::open(size).map_err(pty_error)?;
    command
        .stdin(Stdio::from(pty.slave.try_clone().map_err(pty_error)?))
        .stdout(Stdio::from(pty.slave.try_clone().map_err(pty_error)?))
        .stderr(Stdio::from(pty.slave));
    Ok(Some(pty.master))
}

/// The ids to switch to for `user`; none when the agent already runs as them, which needs
/// no privilege: a sandbox's root without CAP_SETGID (the restrictive profile) can still
/// ask for root.
fn ids_to_switch(user: Option<&User>) -> Option<(Uid, Gid)> {
    let current = (rustix::process::geteuid(), rustix::process::getegid());
    user.map(|user| (Uid::from_raw(user.uid), Gid::from_raw(user.gid)))
        .filter(|ids| *ids != current)
}

/// Installs what runs in the child between fork and exec: a new session (so that the
/// whole command tree can be signalled as one process group), the controlling terminal,
/// and the user switch.
fn set_up_child(command: &mut Command, ids: Option<(Uid, Gid)>, pty: bool) {
    let as_root = rustix::process::geteuid().is_root();
    let hook = move || -> std::io::Result<()> {
        rustix::process::setsid()?;
        if pty {
            // stdin is the pty slave by now (std sets up stdio before this hook runs).
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
        }
        if let Some((uid, gid)) = ids {
            // Supplementary groups can only be changed by root; an unprivileged agent can
            // still "switch" to its own ids, which the caller has checked.
            if as_root {
                rustix::thread::set_thread_groups(&[gid])?;
            }
            // Group before user: after the uid change the right to change groups is gone.
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child, where only async-signal-safe operations
    // are allowed. It makes raw system calls through rustix (no allocation, no locks) and
    // touches only values it owns. The `set_thread_*` calls affect the calling thread only,
    // which in the freshly forked child is the only thread.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Where the agent's own OOM score adjustment is (in its /proc: the sandbox's).
const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// Starts a command (through `spawn`) so that it, and everything it starts, is the OOM
/// killer's choice before the agent: when a sandbox reaches its memory limit the kernel may
/// otherwise pick the agent (seen in containers: a second OOM right after the hog was
/// killed took the agent, and with it the command's exit status). A child inherits its
/// adjustment when it is created, so the agent raises its own to the maximum around the
/// spawn and lowers it back after; raising needs no privilege, and going back down to the
/// value it started with needs none either. The lock keeps concurrent spawns from lowering
/// it under each other. Best effort: where the agent cannot write it (a landlocked /proc),
/// nothing changes.
fn with_oom_preference<T>(spawn: impl FnOnce() -> T) -> T {
    static TOGGLE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let Some(adjustment) = OomAdjustment::get() else {
        return spawn();
    };
    let _held = TOGGLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let raised = adjustment.set(b"1000").is_ok();
    let spawned = spawn();
    if raised && let Err(e) = adjustment.set(adjustment.own.as_bytes()) {
        tracing::warn!("cannot restore the agent's OOM score adjustment: {e}");
    }
    spawned
}

/// The agent's OOM score adjustment file, kept open, and the value it started with.
struct OomAdjustment {
    file: std::fs::File,
    own: String,
}

impl OomAdjustment {
    /// Found out once per agent: [`prepare_oom_preference`] does it before the agent
    /// serves, so a command's start pays two writes, not opening and probing the file
    /// (eight system calls more, on a pooled `run`'s path).
    fn get() -> Option<&'static OomAdjustment> {
        static ADJUSTMENT: std::sync::OnceLock<Option<OomAdjustment>> = std::sync::OnceLock::new();
        ADJUSTMENT.get_or_init(Self::open).as_ref()
    }

    /// `None` when the file cannot be written (writing the value it has changes nothing,
    /// so a sandbox whose /proc refuses it pays nothing per spawn).
    fn open() -> Option<OomAdjustment> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(OOM_SCORE_ADJ)
            .ok()?;
        let mut value = [0u8; 16];
        let read = file.read_at(&mut value, 0).ok()?;
        let own = std::str::from_utf8(&value[..read]).ok()?.trim().to_string();
        let adjustment = OomAdjustment { file, own };
        adjustment.set(adjustment.own.as_bytes()).ok()?;
        Some(adjustment)
    }

    fn set(&self, value: &[u8]) -> std::io::Result<()> {
        self.file.write_at(value, 0).map(drop)
    }
}

/// Opens the OOM score adjustment ahead of the first command (see [`OomAdjustment::get`]).
pub(crate) fn prepare_oom_preference() {
    OomAdjustment::get();
}

fn resolve_user(shared: &Shared, name: &str) -> Result<User, AgentError> {
    let passwd = read_passwd(shared);
    let user = users::resolve(name, &passwd).map_err(|e| spawn_failed(e.to_string()))?;
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    let same_ids = uid.as_raw() == user.uid && gid.as_raw() == user.gid;
    if !uid.is_root() && !same_ids {
        return Err(spawn_failed(format!(
            "cannot run as user {name:?}: the agent runs as uid {} and cannot switch users",
            uid.as_raw()
        )));
    }
    Ok(user)
}

/// The sandbox's `/etc/passwd`, read through the root; empty if there is none.
fn read_passwd(shared: &Shared) -> String {
    let path = crate::paths::SandboxPath::root().join("etc").join("passwd");
    let Ok(fd) = shared.root.open_at(&path, OFlags::RDONLY, Mode::empty()) else {
        return String::new();
    };
    let mut content = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut content) {
        tracing::warn!("cannot read /etc/passwd: {e}");
    }
    content
}

/// How often, and how far apart, a spawn is retried while its program is busy.
const BUSY_RETRIES: u32 = 20;
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Runs `spawn` again while the program is "busy" (ETXTBSY), for a moment. A file just
/// written by this agent (a `write_file`, then an `exec` of it) stays open for writing in
/// any child another connection forked at that instant, until that child's exec closes
/// it: the kernel then refuses to execute the file. The window is a fork's length, so a
/// short wait ends it; a file someone really keeps open for writing still fails.
fn retry_while_busy<T>(mut spawn: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut attempts = 0;
    loop {
        match spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < BUSY_RETRIES => {
                attempts += 1;
                std::thread::sleep(BUSY_PAUSE);
            }
            other => return other,
        }
    }
}

/// Checked before the fork: a missing directory would otherwise fail the exec with the
/// same `ENOENT` as a missing program. A working directory that is missing or no directory
/// is a mistake in the request (the command never started), not the command's failure,
/// so hosts report it as an error rather than as the command's output.
fn check_cwd(cwd: &Path, requested: Option<&str>) -> Result<(), AgentError> {
    let shown = requested.map_or_else(|| cwd.display().to_string(), str::to_string);
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(AgentError::new(
            ErrorKind::NotADirectory,
            format!("working directory {shown} is not a directory"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AgentError::new(
            ErrorKind::InvalidPath,
            format!("working directory {shown} does not exist"),
        )),
        Err(e) => Err(spawn_failed(format!("working directory {shown}: {e}"))),
    }
}

fn requested_env(spec: &ExecSpec, name: &str) -> bool {
    spec.env.iter().any(|(key, _)| key == name)
}

fn spawn_failed(message: String) -> AgentError {
    AgentError::new(ErrorKind::SpawnFailed, message)
}

/// A message a person can act on, for the usual reasons a command does not start. A missing
/// program is `NotFound` and one that cannot be executed `PermissionDenied`, so hosts can
/// report them the shell's way (127 and 126).
fn spawn_error(program: &str, error: &std::io::Error) -> AgentError {
    let kind = match error.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::SpawnFailed,
    };
    let message = match error.kind() {
        std::io::ErrorKind::NotFound if program.contains('/') => {
            format!("no such file or directory: {program}")
        }
        std::io::ErrorKind::NotFound => format!("command not found: {program}"),
        std::io::ErrorKind::PermissionDenied => format!("permission denied: {program}"),
        _ if error.raw_os_error() == Some(libc::ENOEXEC) => {
            format!("exec format error (not a valid executable): {program}")
        }
        _ => format!("cannot start {program}: {error}"),
    };
    AgentError::new(kind, message)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_busy_program_is_retried_for_a_moment_only() {
        let busy = || std::io::Error::from_raw_os_error(libc::ETXTBSY);
        let mut calls = 0;
        let started = retry_while_busy(|| {
            calls += 1;
            if calls < 3 { Err(busy()) } else { Ok(calls) }
        });
        assert_eq!(started.unwrap(), 3);
        let mut calls = 0;
        let never = retry_while_busy::<()>(|| {
            calls += 1;
            Err(busy())
        });
        assert_eq!(never.unwrap_err().raw_os_error(), Some(libc::ETXTBSY));
        assert_eq!(calls, BUSY_RETRIES + 1);
        let mut calls = 0;
        let other = retry_while_busy::<()>(|| {
            calls += 1;
            Err(std::io::Error::from_raw_os_error(libc::ENOENT))
        });
        assert!(other.is_err());
        assert_eq!(calls, 1, "other errors are not retried");
    }

    use super::*;

    #[test]
    fn spawn_error_messages() {
        let not_found = std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = spawn_error("foo", &not_found);
        assert_eq!(
            (err.kind, err.message.as_str()),
            (ErrorKind::NotFound, "command not found: foo")
        );
        assert_eq!(
            spawn_error("./foo", &not_found).message,
            "no such file or directory: ./foo"
        );
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = spawn_error("./x", &denied);
        assert_eq!(
            (err.kind, err.message.as_str()),
            (ErrorKind::PermissionDenied, "permission denied: ./x")
        );
    }
}
