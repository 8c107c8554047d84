//! One command in a fresh sandbox: provision, connect, exec, stream, release.

use std::time::Duration;

use ak_core::backend::SandboxUsage;
use ak_core::{ExecSpec, ExitStatus, Sandbox, SandboxSpec};
use ak_protocol::handshake::software;
use ak_protocol::{AgentClient, ExecControl, ExecEvent, ExecHandle};
use tokio::time::Instant;

use crate::Service;
use crate::error::ServiceError;

/// Time the agent gets to kill a timed-out command itself before the service ends the
/// whole sandbox.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);
/// Linux's SIGKILL, the signal a command ended by the service is reported with.
const SIGKILL: i32 = 9;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: ExitStatus,
    pub timed_out: bool,
    pub usage: SandboxUsage,
}

/// A command running in its own fresh sandbox. Read its events with
/// [`RunSession::next_event`]; send input through [`RunSession::control`]; end with
/// [`RunSession::finish`], which releases the sandbox.
#[derive(Debug)]
pub struct RunSession {
    sandbox: Box<dyn Sandbox>,
    // Kept so the connection outlives the exec handle.
    _client: AgentClient,
    exec: ExecHandle,
    deadline: Option<Instant>,
    ended: Option<(ExitStatus, bool)>,
}

impl Service {
    /// Starts `exec` in a fresh sandbox described by `spec`.
    pub async fn start_run(
        &self,
        spec: &SandboxSpec,
        mut exec: ExecSpec,
    ) -> Result<RunSession, ServiceError> {
        if exec.argv.is_empty() {
            return Err(ServiceError::EmptyCommand);
        }
        let backend = self.backend(spec.backend)?;
        if exec.timeout_ms.is_none() {
            exec.timeout_ms = spec.timeout.map(|t| t.as_millis() as u64);
        }
        let begun = std::time::Instant::now();
        let mut sandbox = backend.create(spec).await?;
        tracing::debug!(elapsed = ?begun.elapsed(), "sandbox created");
        let started = async {
            let transport = sandbox.connect().await?;
            let client = AgentClient::connect(transport, software("agentkernel")).await?;
            let handle = client.exec(exec).await?;
            Ok::<_, ServiceError>((client, handle))
        }
        .await;
        let (client, handle) = match started {
            Ok(started) => {
                tracing::debug!(elapsed = ?begun.elapsed(), "command sent to the agent");
                started
            }
            Err(error) => {
                let _ = sandbox.destroy().await;
                return Err(error);
            }
        };
        Ok(RunSession {
            sandbox,
            _client: client,
            exec: handle,
            deadline: spec.timeout.map(|t| Instant::now() + t + TIMEOUT_GRACE),
            ended: None,
        })
    }
}

impl RunSession {
    /// Input, signals and resizes for the command.
    pub fn control(&self) -> ExecControl {
        self.exec.control()
    }

    /// The next event; `Ok(None)` once the command has ended. A command that outlives the
    /// sandbox's deadline ends as killed and timed out.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ServiceError> {
        if self.ended.is_some() {
            return Ok(None);
        }
        let event = match self.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, self.exec.next_event()).await
            {
                Ok(event) => event?,
                Err(_) => {
                    tracing::warn!("the command outlived its timeout; ending the sandbox");
                    self.sandbox.destroy().await?;
                    Some(ExecEvent::Exited {
                        status: ExitStatus::Signal(SIGKILL),
                        timed_out: true,
                    })
                }
            },
            None => self.exec.next_event().await?,
        };
        if let Some(ExecEvent::Exited { status, timed_out }) = &event {
            self.ended = Some((*status, *timed_out));
        }
        Ok(event)
    }

    /// Releases the sandbox and reports how the command ended.
    pub async fn finish(mut self) -> Result<RunOutcome, ServiceError> {
        let usage = self.sandbox.destroy().await?;
        let (status, timed_out) = self.ended.ok_or_else(|| {
            ServiceError::Protocol(ak_protocol::ProtocolError::Unexpected(
                "the sandbox ended before its command reported an exit".into(),
            ))
        })?;
        Ok(RunOutcome {
            status,
            timed_out,
            usage,
        })
    }
}
