//! A command running in a sandbox, as every front end consumes it: events to stream,
//! control to send input and signals, and an end that releases what the session owns.

use std::sync::Arc;
use std::time::Duration;

use ak_core::backend::SandboxUsage;
use ak_core::{ExecSpec, ExitStatus, Sandbox};
use ak_protocol::handshake::software;
use ak_protocol::{AgentClient, ExecControl, ExecEvent, ExecHandle};
use tokio::time::Instant;

use crate::error::ServiceError;
use crate::output::{ByteBudget, Capture};
use crate::pool::Slot;

/// A one-shot sandbox a session owns: released when the session finishes, and also when
/// it is dropped half-way (a client that went away), so a one-shot sandbox never outlives
/// its command. A sandbox being built is owned so too until its caller takes it
/// ([`Owned::into_sandbox`]), so a build whose caller went away releases what it built.
#[derive(Debug)]
pub(crate) struct Owned {
    sandbox: Option<Box<dyn Sandbox>>,
    /// The pool room it takes, when it came from a pool: given back once it is released.
    slot: Option<Slot>,
    offload: bool,
}

impl Owned {
    pub(crate) fn new(sandbox: Box<dyn Sandbox>, slot: Option<Slot>, offload: bool) -> Owned {
        Owned {
            sandbox: Some(sandbox),
            slot,
            offload,
        }
    }

    /// The sandbox, no longer released when this is dropped: its new owner releases it.
    pub(crate) fn into_sandbox(mut self) -> Box<dyn Sandbox> {
        self.sandbox
            .take()
            .expect("an owned sandbox is only taken out when it is consumed")
    }

    /// A connection to the sandbox's agent.
    pub(crate) async fn connect(&mut self) -> Result<Box<dyn ak_core::Transport>, ServiceError> {
        match self.sandbox.as_mut() {
            Some(sandbox) => Ok(sandbox.connect().await?),
            None => Err(ServiceError::State(
                "the sandbox was already released".into(),
            )),
        }
    }

    /// Destroys the sandbox (on a blocking thread when the service offloads) and reports
    /// what it used.
    async fn release(&mut self) -> Result<SandboxUsage, ServiceError> {
        let Some(mut sandbox) = self.sandbox.take() else {
            return Ok(SandboxUsage::default());
        };
        let usage =
            crate::run_blocking(self.offload, async move { sandbox.destroy().await }).await??;
        drop(self.slot.take());
        Ok(usage)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // A long-lived host releases it in the background. Elsewhere (a one-shot CLI, which
        // exits without running its remaining tasks) the sandbox is dropped here, and its
        // own drop releases an ephemeral sandbox at once.
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|runtime| {
                runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            });
        let (Some(mut sandbox), Some(runtime)) = (self.sandbox.take(), runtime) else {
            return;
        };
        let slot = self.slot.take();
        runtime.spawn(async move {
            if let Err(e) = sandbox.destroy().await {
                tracing::warn!(id = sandbox.id(), "releasing an abandoned sandbox: {e}");
            }
            drop(slot);
        });
    }
}

/// A finished command's output and how it ended, as [`CommandSession::collect`] gathers it.
#[derive(Debug)]
pub struct Collected {
    pub stdout: Capture,
    pub stderr: Capture,
    /// The shell's exit code: the command's own, 128+N for a signal, 124 for a timeout,
    /// 127/126 for a command that could not be started.
    pub exit_code: i32,
    pub timed_out: bool,
}

impl Collected {
    pub fn truncated(&self) -> bool {
        self.stdout.truncated() || self.stderr.truncated()
    }
}

/// Exit code of a command that ran past its timeout (as `timeout(1)` and the CLI).
pub const TIMED_OUT_CODE: i32 = 124;

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
    owned: Option<Owned>,
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
        mut owned: Option<Owned>,
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
                if let Some(mut owned) = owned.take()
                    && let Err(e) = owned.release().await
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
            (Some(deadline), Some(owned)) => {
                match tokio::time::timeout_at(deadline, self.exec.next_event()).await {
                    Ok(event) => event?,
                    Err(_) => {
                        tracing::warn!("the command outlived its timeout; ending the sandbox");
                        self.usage = Some(owned.release().await?);
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
    pub async fn finish(self) -> Result<RunOutcome, ServiceError> {
        let CommandSession {
            mut owned,
            _client: client,
            exec,
            ended,
            usage,
            ..
        } = self;
        // The connection closes first: a one-shot sandbox's agent then ends by itself, and
        // a backend whose sandbox ends with its agent (gVisor's foreground runsc) has
        // nothing left to kill.
        drop(exec);
        drop(client);
        let usage = match (usage, owned.as_mut()) {
            (Some(usage), _) => usage,
            (None, Some(owned)) => owned.release().await?,
            (None, None) => SandboxUsage::default(),
        };
        let (status, timed_out) = ended.ok_or_else(|| {
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

impl CommandSession {
    /// Runs the command to its end and gathers its output into captures drawing on
    /// `budgets`. A command that could not be started (not found, not executable) is
    /// reported as a shell would: exit code 127 or 126 and the reason on stderr.
    pub async fn collect(self, budgets: Vec<Arc<ByteBudget>>) -> Result<Collected, ServiceError> {
        let collected = self
            .collect_until(budgets, |_| {}, std::future::pending())
            .await?;
        collected.ok_or_else(|| ServiceError::State("the collection was cancelled".into()))
    }

    /// As [`CommandSession::collect`], telling `on_output` the size of each piece of
    /// output as it arrives, and giving up when `cancelled` completes first: then the
    /// command is ended ([`CommandSession::cancel`]) before this returns `Ok(None)`.
    pub async fn collect_until(
        mut self,
        budgets: Vec<Arc<ByteBudget>>,
        mut on_output: impl FnMut(usize),
        cancelled: impl Future<Output = ()>,
    ) -> Result<Option<Collected>, ServiceError> {
        let mut stdout = Capture::new(budgets.clone());
        let mut stderr = Capture::new(budgets);
        let mut cancelled = std::pin::pin!(cancelled);
        loop {
            let event = tokio::select! {
                biased;
                () = &mut cancelled => {
                    self.cancel().await?;
                    return Ok(None);
                }
                event = self.next_event() => event,
            };
            match event {
                Ok(Some(ExecEvent::Stdout(data))) => {
                    on_output(data.len());
                    stdout.push(&data);
                }
                Ok(Some(ExecEvent::Stderr(data))) => {
                    on_output(data.len());
                    stderr.push(&data);
                }
                Ok(Some(ExecEvent::Started { .. })) => {}
                Ok(Some(ExecEvent::Exited { .. }) | None) => break,
                Err(error) => {
                    let code = error.spawn_failure_code();
                    let _ = self.finish().await;
                    let Some(exit_code) = code else {
                        return Err(error);
                    };
                    stderr.push(format!("{error}\n").as_bytes());
                    return Ok(Some(Collected {
                        stdout,
                        stderr,
                        exit_code,
                        timed_out: false,
                    }));
                }
            }
        }
        let outcome = self.finish().await?;
        Ok(Some(Collected {
            stdout,
            stderr,
            exit_code: outcome.exit_code(),
            timed_out: outcome.timed_out,
        }))
    }

    /// Ends the command before it finished (its caller gave up): its process group is
    /// killed, and the sandbox released when the session owns it (a one-shot run). The
    /// connection closes as the session drops, which ends anything the kill missed.
    pub async fn cancel(mut self) -> Result<(), ServiceError> {
        if self.ended.is_none()
            && let Err(e) = self.exec.control().signal(SIGKILL).await
        {
            // The connection may be gone already; closing it below ends the command too.
            tracing::debug!("killing a cancelled command: {e}");
        }
        if self.usage.is_none()
            && let Some(owned) = self.owned.as_mut()
        {
            owned.release().await?;
        }
        Ok(())
    }
}

impl RunOutcome {
    /// The shell's exit code for this end: 124 for a timeout, else the command's own (or
    /// 128+N for a signal).
    pub fn exit_code(&self) -> i32 {
        if self.timed_out {
            TIMED_OUT_CODE
        } else {
            self.status.shell_code()
        }
    }
}
