//! A command running in a sandbox, as every front end consumes it: events to stream,
//! control to send input and signals, and an end that releases what the session owns.

use std::time::Duration;

use ak_core::backend::SandboxUsage;
use ak_core::{ExecSpec, ExitStatus, Sandbox};
use ak_protocol::handshake::software;
use ak_protocol::{AgentClient, ExecControl, ExecEvent, ExecHandle};
use tokio::time::Instant;

use crate::error::ServiceError;

/// Time the agent gets to kill a timed-out command itself before the service ends the
/// whole sandbox.
pub(crate) const TIMEOUT_GRACE: Duration = Duration::from_secs(2);
/// Linux's SIGKILL, the signal a command ended by the service is reported with.
const SIGKILL: i32 = 9;

/// Handshakes with a sandbox's agent over `transport`, as this software.
pub async fn connect_agent(
    transport: Box<dyn ak_core::Transport>,
) -> Result<AgentClient, ServiceError> {
    Ok(AgentClient::connect(transport, software("agentkernel")).await?)
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: ExitStatus,
    pub timed_out: bool,
    /// What the sandbox used, when the session owned (and so released) it.
    pub usage: SandboxUsage,
}

/// A running command. Read its events with [`CommandSession::next_event`]; send input
/// through [`CommandSession::control`]; end with [`CommandSession::finish`], which
/// releases the sandbox when the session owns it (a one-shot run) and leaves a named one
/// running.
#[derive(Debug)]
pub struct CommandSession {
    owned: Option<Box<dyn Sandbox>>,
    // Kept so the connection outlives the exec handle.
    _client: AgentClient,
    exec: ExecHandle,
    deadline: Option<Instant>,
    ended: Option<(ExitStatus, bool)>,
    /// What the owned sandbox used, once it has been destroyed early (timeout).
    usage: Option<SandboxUsage>,
}

impl CommandSession {
    /// Handshakes over `transport` and starts `exec` in the same round trip. `owned` is the
    /// sandbox to release at the end, if any (destroyed here if the start fails); with it, a
    /// command outliving `exec.timeout_ms` (plus a grace) ends the sandbox.
    pub(crate) async fn start(
        transport: Box<dyn ak_core::Transport>,
        exec: ExecSpec,
        mut owned: Option<Box<dyn Sandbox>>,
    ) -> Result<CommandSession, ServiceError> {
        let deadline = exec
            .timeout_ms
            .filter(|_| owned.is_some())
            .map(|ms| Instant::now() + Duration::from_millis(ms) + TIMEOUT_GRACE);
        let started = if exec.argv.is_empty() {
            Err(ServiceError::EmptyCommand)
        } else {
            AgentClient::connect_with_exec(transport, software("agentkernel"), exec)
                .await
                .map_err(ServiceError::from)
        };
        match started {
            Ok((client, exec)) => Ok(CommandSession {
                owned,
                _client: client,
                exec,
                deadline,
                ended: None,
                usage: None,
            }),
            Err(error) => {
                if let Some(mut sandbox) = owned.take()
                    && let Err(e) = sandbox.destroy().await
                {
                    tracing::warn!("cannot release the sandbox after a failed start: {e}");
                }
                Err(error)
            }
        }
    }

    /// Handshakes over `transport` (a sandbox's agent connection handed over by someone
    /// else, e.g. the daemon's pool) and starts `exec`. The session does not own the sandbox.
    pub async fn over(
        transport: Box<dyn ak_core::Transport>,
        exec: ExecSpec,
    ) -> Result<CommandSession, ServiceError> {
        Self::start(transport, exec, None).await
    }

    /// Input, signals and resizes for the command.
    pub fn control(&self) -> ExecControl {
        self.exec.control()
    }

    /// The next event; `Ok(None)` once the command has ended. A command that outlives its
    /// deadline in an owned sandbox ends as killed and timed out.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ServiceError> {
        if self.ended.is_some() {
            return Ok(None);
        }
        let event = match (self.deadline, self.owned.as_mut()) {
            (Some(deadline), Some(sandbox)) => {
                match tokio::time::timeout_at(deadline, self.exec.next_event()).await {
                    Ok(event) => event?,
                    Err(_) => {
                        tracing::warn!("the command outlived its timeout; ending the sandbox");
                        self.usage = Some(sandbox.destroy().await?);
                        Some(ExecEvent::Exited {
                            status: ExitStatus::Signal(SIGKILL),
                            timed_out: true,
                        })
                    }
                }
            }
            _ => self.exec.next_event().await?,
        };
        if let Some(ExecEvent::Exited { status, timed_out }) = &event {
            self.ended = Some((*status, *timed_out));
        }
        Ok(event)
    }

    /// Releases an owned sandbox and reports how the command ended.
    pub async fn finish(mut self) -> Result<RunOutcome, ServiceError> {
        let usage = match (self.usage.take(), self.owned.as_mut()) {
            (Some(usage), _) => usage,
            (None, Some(sandbox)) => sandbox.destroy().await?,
            (None, None) => SandboxUsage::default(),
        };
        let (status, timed_out) = self.ended.ok_or_else(|| {
            ServiceError::Protocol(ak_protocol::ProtocolError::Unexpected(
                "the connection ended before the command reported an exit".into(),
            ))
        })?;
        Ok(RunOutcome {
            status,
            timed_out,
            usage,
        })
    }
}
