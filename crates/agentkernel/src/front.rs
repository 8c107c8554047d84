//! Where a named-sandbox command does its work: in the daemon when one runs (so one process
//! keeps the registry and the sandboxes' lifecycles), else in this process, through the same
//! service code. Commands that talk to a sandbox's agent (exec, attach, cp) get their
//! connection from the daemon and speak to the agent themselves: their data never passes
//! through the daemon.

use std::os::fd::OwnedFd;
use std::path::Path;

use ak_core::{ExecSpec, SandboxSpec};
use ak_protocol::AgentClient;
use ak_service::{Action, Answer, Caller, CommandSession, SandboxRecord, Service, ServiceError};
use anyhow::anyhow;

use crate::daemon::client::{self, ClientError};
use crate::daemon::{Request, Response, socket_path};
use crate::exit;
use crate::wiring;

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    code: i32,
    error: anyhow::Error,
}

impl Failure {
    /// Prints the failure; returns the exit code.
    pub fn report(self) -> i32 {
        exit::report(&self.error);
        self.code
    }
}

impl From<ServiceError> for Failure {
    fn from(error: ServiceError) -> Self {
        Failure {
            code: exit::code_for(&error),
            error: exit::with_hint(error),
        }
    }
}

pub async fn create(
    name: &str,
    spec: SandboxSpec,
    dir: Option<&Path>,
) -> Result<SandboxRecord, Failure> {
    // The daemon runs elsewhere: a relative directory means this one's.
    let dir = match dir.map(std::path::absolute).transpose() {
        Ok(dir) => dir,
        Err(e) => return Err(usage(anyhow!("--dir: {e}"))),
    };
    let action = Action::Create {
        name: name.to_string(),
        spec: Box::new(spec),
        dir,
    };
    Ok(perform(action).await?.into_record()?)
}

pub async fn start(name: &str) -> Result<SandboxRecord, Failure> {
    let action = Action::Start { name: name.into() };
    Ok(perform(action).await?.into_record()?)
}

pub async fn stop(name: &str) -> Result<SandboxRecord, Failure> {
    let action = Action::Stop { name: name.into() };
    Ok(perform(action).await?.into_record()?)
}

pub async fn pause(name: &str, save: bool) -> Result<SandboxRecord, Failure> {
    let action = Action::Pause {
        name: name.into(),
        save,
    };
    Ok(perform(action).await?.into_record()?)
}

pub async fn resume(name: &str) -> Result<SandboxRecord, Failure> {
    let action = Action::Resume { name: name.into() };
    Ok(perform(action).await?.into_record()?)
}

pub async fn remove(name: &str, force: bool) -> Result<(), Failure> {
    let action = Action::Remove {
        name: name.into(),
        force,
    };
    Ok(perform(action).await?.into_removed()?)
}

pub async fn list() -> Result<Vec<SandboxRecord>, Failure> {
    Ok(perform(Action::List).await?.into_records()?)
}

pub async fn inspect(name: &str) -> Result<SandboxRecord, Failure> {
    let action = Action::Inspect { name: name.into() };
    Ok(perform(action).await?.into_record()?)
}

pub async fn set_allowlist(
    name: &str,
    entries: ak_core::egress::AllowlistEntries,
    extend: bool,
) -> Result<SandboxRecord, Failure> {
    let action = Action::SetAllowlist {
        name: name.into(),
        entries,
        extend,
    };
    Ok(perform(action).await?.into_record()?)
}

pub async fn snapshot_create(
    sandbox: &str,
    snapshot: Option<&str>,
) -> Result<ak_service::SnapshotInfo, Failure> {
    let action = Action::SnapshotCreate {
        sandbox: sandbox.into(),
        snapshot: snapshot.map(str::to_string),
    };
    Ok(perform(action).await?.into_snapshot()?)
}

pub async fn snapshot_list() -> Result<Vec<ak_service::SnapshotInfo>, Failure> {
    Ok(perform(Action::SnapshotList).await?.into_snapshots()?)
}

pub async fn snapshot_inspect(snapshot: &str) -> Result<ak_service::SnapshotInfo, Failure> {
    let action = Action::SnapshotInspect {
        snapshot: snapshot.into(),
    };
    Ok(perform(action).await?.into_snapshot()?)
}

pub async fn snapshot_remove(snapshot: &str) -> Result<(), Failure> {
    let action = Action::SnapshotRemove {
        snapshot: snapshot.into(),
    };
    Ok(perform(action).await?.into_removed()?)
}

pub async fn create_from_snapshot(name: &str, snapshot: &str) -> Result<SandboxRecord, Failure> {
    let action = Action::CreateFromSnapshot {
        name: name.into(),
        snapshot: snapshot.into(),
        start: false,
    };
    Ok(perform(action).await?.into_record()?)
}

pub async fn fork(sandbox: &str, new: &[String]) -> Result<Vec<SandboxRecord>, Failure> {
    let action = Action::Fork {
        sandbox: sandbox.into(),
        new: new.to_vec(),
    };
    Ok(perform(action).await?.into_records()?)
}

/// Performs `action`: by the daemon when one runs, else by this process's service. The
/// same value either way.
pub async fn perform(action: Action) -> Result<Answer, Failure> {
    match ask(&Request::Perform(action.clone()))? {
        Some((Response::Performed(answer), _)) => Ok(answer),
        Some((other, _)) => Err(refused(other)),
        None => Ok(wiring::service().perform(Caller::Local, action).await?),
    }
}

/// Starts `exec` in the running sandbox `name`; `service` records it in the audit log.
pub async fn exec(
    service: &Service,
    name: &str,
    exec: ExecSpec,
) -> Result<CommandSession, Failure> {
    match connection(name)? {
        Some(fd) => Ok(service
            .exec_named_over(Caller::Local, name, transport(fd)?, exec)
            .await?),
        None => Ok(service.exec_named(Caller::Local, name, exec).await?),
    }
}

/// A handshaken client of the running sandbox `name`'s agent (for files).
pub async fn client(service: &Service, name: &str) -> Result<AgentClient, Failure> {
    match connection(name)? {
        Some(fd) => Ok(ak_service::connect_agent(transport(fd)?).await?),
        None => Ok(service.client_named(name).await?),
    }
}

/// The daemon's new connection to `name`'s agent; `None` when no daemon runs.
fn connection(name: &str) -> Result<Option<OwnedFd>, Failure> {
    match ask(&Request::Connect { name: name.into() })? {
        Some((Response::Connected, Some(fd))) => Ok(Some(fd)),
        Some((Response::Connected, None)) => Err(failure(anyhow!(
            "the daemon answered without the sandbox's connection"
        ))),
        Some((other, _)) => Err(refused(other)),
        None => Ok(None),
    }
}

fn transport(fd: OwnedFd) -> Result<Box<dyn ak_core::Transport>, Failure> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(stream))
        .map(|stream| Box::new(stream) as Box<dyn ak_core::Transport>)
        .map_err(|e| failure(anyhow!("the daemon's connection to the sandbox: {e}")))
}

/// The daemon's answer to `request`; `None` when no daemon runs (the work is done here).
fn ask(request: &Request) -> Result<Option<(Response, Option<OwnedFd>)>, Failure> {
    match client::call(&socket_path(), request) {
        Ok(answer) => Ok(Some(answer)),
        Err(ClientError::NotRunning(_)) => Ok(None),
        Err(ClientError::Other(error)) => Err(failure(error)),
    }
}

/// The daemon's error as ours, or an answer that does not fit the request.
fn refused(response: Response) -> Failure {
    match response {
        Response::Error { message, code } => Failure {
            code,
            error: anyhow!(message),
        },
        other => failure(anyhow!("unexpected answer from the daemon: {other:?}")),
    }
}

fn failure(error: anyhow::Error) -> Failure {
    Failure {
        code: exit::SANDBOX_FAILURE,
        error,
    }
}

fn usage(error: anyhow::Error) -> Failure {
    Failure {
        code: exit::USAGE,
        error,
    }
}
