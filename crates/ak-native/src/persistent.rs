//! What persistent sandboxes need beyond ephemeral ones: the listening socket the host
//! creates for the agent, the handle that finds a sandbox again from another process, and
//! recognising, killing and waiting for processes that may not be our children (after a
//! restart the creator is gone), without mistaking a reused pid for them.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ak_core::backend::{Lifetime, SandboxHandle};
use ak_core::{BackendError, BackendKind};
use rustix::process::{Pid, PidfdFlags};
use serde::{Deserialize, Serialize};

use crate::error::NativeError;

/// The agent's listening socket inside the runtime directory.
pub(crate) const SOCKET_FILE: &str = "agent.sock";
/// The persistent agent's stderr.
pub(crate) const AGENT_LOG_FILE: &str = "agent.log";
/// The persistent network helper's stderr.
pub(crate) const NETWORK_LOG_FILE: &str = "network.log";

/// How long a killed process gets to be gone before the release goes on regardless (the
/// cgroup kill then covers what is left).
const KILL_WAIT: Duration = Duration::from_secs(2);
const SOCKET_BACKLOG: i32 = 64;

/// One process, told apart from a later one that reuses its pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessRef {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub start_time: u64,
}

/// What a native handle's `data` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HandleData {
    pub lifetime: Lifetime,
    /// The sandbox's init (the agent).
    pub pid: u32,
    pub start_time: u64,
    pub rundir: PathBuf,
    pub socket: PathBuf,
    pub cgroup: bool,
    /// The outbound network helper, when the sandbox has one.
    pub network: Option<ProcessRef>,
}

impl HandleData {
    pub(crate) fn init(&self) -> ProcessRef {
        ProcessRef {
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    pub(crate) fn to_handle(&self, id: &str) -> SandboxHandle {
        SandboxHandle {
            backend: BackendKind::Native,
            id: id.to_string(),
            // Fails only for a path that is not UTF-8; the empty text is then refused by
            // `parse` rather than taken for some other sandbox.
            data: serde_json::to_string(self).unwrap_or_default(),
        }
    }

    /// Reads and checks a handle. The paths come from a registry file, so they are held to
    /// the shape this backend writes before anything is removed through them.
    pub(crate) fn parse(handle: &SandboxHandle) -> Result<HandleData, BackendError> {
        let refuse = |reason: String| BackendError::Unsupported {
            backend: "native".into(),
            reason,
        };
        if handle.backend != BackendKind::Native {
            return Err(refuse(format!(
                "the handle of sandbox {} belongs to the {} backend",
                handle.id, handle.backend
            )));
        }
        let data: HandleData = serde_json::from_str(&handle.data)
            .map_err(|e| refuse(format!("unreadable handle of sandbox {}: {e}", handle.id)))?;
        let id_ok = !handle.id.is_empty()
            && handle.id != "."
            && handle.id != ".."
            && !handle.id.contains(['/', '\0', '\n']);
        let rundir_ok = data.rundir.is_absolute()
            && data
                .rundir
                .components()
                .all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
            && data.rundir.file_name() == Some(handle.id.as_ref());
        if !id_ok || !rundir_ok || data.socket != data.rundir.join(SOCKET_FILE) {
            return Err(refuse(format!(
                "the handle of sandbox {:?} names unexpected paths ({}, {})",
                handle.id,
                data.rundir.display(),
                data.socket.display()
            )));
        }
        Ok(data)
    }
}

/// Parsed `/proc/PID/stat`: the state letter and the start time.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; it ends at the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (the state), so field 22 is 19 further on.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

/// The start time of `pid` if it runs (zombies and dead processes do not).
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    match stat(pid)? {
        ('Z' | 'X' | 'x', _) => None,
        (_, start_time) => Some(start_time),
    }
}

/// The start time of `pid`, also when it has already exited but is not reaped: for
/// recording a child of ours, which cannot have been reaped and replaced yet.
pub(crate) fn child_start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start_time)| start_time)
}

/// A pidfd for `process` if it still exists (as a zombie too) and is the same process
/// that was recorded, with whether it still runs.
pub(crate) fn open_process(process: ProcessRef) -> Option<(OwnedFd, bool)> {
    let pid = Pid::from_raw(i32::try_from(process.pid).ok()?)?;
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok()?;
    // Read only after opening: had the pid been reused before, the start time read here is
    // the newcomer's and does not match, so the pidfd cannot name the wrong process.
    let (state, start_time) = stat(process.pid)?;
    (start_time == process.start_time).then_some((pidfd, !matches!(state, 'Z' | 'X' | 'x')))
}

/// SIGKILLs the process of `pidfd` and waits (bounded) until it has exited, then reaps it
/// if it is our child.
pub(crate) fn kill_and_wait(pidfd: &OwnedFd) {
    if !ak_core::process::kill_and_wait(pidfd, KILL_WAIT) {
        tracing::warn!("a killed sandbox process is still not gone after {KILL_WAIT:?}");
    }
}

/// Kills `process` if it is still the one recorded, and waits for it.
pub(crate) fn kill_recorded(process: ProcessRef) {
    if let Some((pidfd, _)) = open_process(process) {
        kill_and_wait(&pidfd);
    }
}

/// Creates the agent's listening socket at `path`, reachable by its owner only. The
/// socket is bound, restricted, and only then listens, so nobody can connect to it
/// before it is private.
pub(crate) fn listen_at(path: &Path) -> Result<OwnedFd, NativeError> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fail = |what: &str| NativeError::io(format!("{what} {}", path.display()));
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| fail("create a socket for")(e.into()))?;
    let address = SocketAddrUnix::new(path).map_err(|e| fail("name a socket")(e.into()))?;
    rustix::net::bind(&socket, &address).map_err(|e| fail("bind")(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(fail("restrict"))?;
    rustix::net::listen(&socket, SOCKET_BACKLOG).map_err(|e| fail("listen on")(e.into()))?;
    Ok(socket)
}

/// Opens (creating) a log file only its owner can read.
pub(crate) fn open_log(path: &Path) -> Result<File, NativeError> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(NativeError::io(format!("open {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(rundir: &str, socket: &str) -> HandleData {
        HandleData {
            lifetime: Lifetime::Persistent,
            pid: 1,
            start_time: 2,
            rundir: rundir.into(),
            socket: socket.into(),
            cgroup: true,
            network: None,
        }
    }

    #[test]
    fn handles_round_trip_and_odd_paths_are_refused() {
        let good = data("/run/agentkernel/abc", "/run/agentkernel/abc/agent.sock");
        assert_eq!(HandleData::parse(&good.to_handle("abc")).unwrap(), good);
        for (id, bad) in [
            ("abc", data("/run/agentkernel/abc", "/elsewhere/agent.sock")),
            (
                "abc",
                data(
                    "/run/agentkernel/other",
                    "/run/agentkernel/other/agent.sock",
                ),
            ),
            ("abc", data("relative/abc", "relative/abc/agent.sock")),
            (
                "..",
                data("/run/agentkernel/..", "/run/agentkernel/../agent.sock"),
            ),
            ("abc", data("/run/../abc", "/run/../abc/agent.sock")),
        ] {
            assert!(HandleData::parse(&bad.to_handle(id)).is_err(), "{bad:?}");
        }
        let mut foreign = good.to_handle("abc");
        foreign.backend = BackendKind::Docker;
        assert!(HandleData::parse(&foreign).is_err());
        foreign = good.to_handle("abc");
        foreign.data = "{}".into();
        assert!(HandleData::parse(&foreign).is_err());
    }

    #[test]
    fn our_own_process_is_recognised_and_a_wrong_start_time_is_not() {
        let pid = std::process::id();
        let start_time = start_time(pid).unwrap();
        let (_, running) = open_process(ProcessRef { pid, start_time }).unwrap();
        assert!(running);
        assert!(
            open_process(ProcessRef {
                pid,
                start_time: start_time + 1
            })
            .is_none()
        );
        assert!(start_time_of_missing().is_none());
    }

    fn start_time_of_missing() -> Option<u64> {
        // Above the kernel's pid_max limit (4194304), so never a live process.
        start_time(4_194_305)
    }

    #[test]
    fn a_killed_child_is_gone_and_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let process = ProcessRef {
            pid,
            start_time: start_time(pid).unwrap(),
        };
        kill_recorded(process);
        assert!(
            open_process(process).is_none(),
            "reaped, so not even a zombie"
        );
        assert!(child.wait().is_err(), "already reaped");
        kill_recorded(process);
    }

    #[test]
    fn the_listening_socket_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_FILE);
        let listener = listen_at(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(rustix::net::sockopt::socket_acceptconn(&listener).unwrap());
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }
}
