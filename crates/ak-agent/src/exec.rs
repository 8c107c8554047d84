//! Running execs on one connection: start, stdin, signals, resizes, timeouts, and the one
//! `Exited` event after all of a command's output.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ak_protocol::{AgentError, ErrorKind, Event, ExecSpec, ExitStatus, PtySize, RequestId};
use rustix::process::{Pid, Signal};
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::agent::{Shared, kill_group};
use crate::fdio::FdStream;
use crate::outbox::Outbox;
use crate::output::{Stream, pump};
use crate::reaper::ExitWaiter;

/// How long output may stay open after the command exited, held by a background process
/// the command started, before `Exited` is sent anyway.
const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// End-of-transmission (Ctrl-D): what closing stdin means on a terminal.
const EOT: u8 = 0x04;

/// The execs of one connection that have not finished yet, by request id.
#[derive(Debug, Default)]
pub(crate) struct Execs {
    running: Mutex<HashMap<RequestId, Running>>,
}

#[derive(Debug)]
struct Running {
    pgid: Pid,
    /// Feeds the command's stdin (pipe or pty); `None` once closed or for `StdinMode::Null`.
    stdin: Option<mpsc::UnboundedSender<Input>>,
    pty_master: Option<Arc<OwnedFd>>,
}

#[derive(Debug)]
enum Input {
    Data(Vec<u8>),
    /// End of input: the pipe is closed; a terminal gets Ctrl-D, as from a keyboard.
    Close,
}

impl Execs {
    /// Starts `spec` for request `id` and the task that reports on it.
    ///
    /// The command is started and registered before this returns, so that a `Stdin` or
    /// `Signal` sent right after the `Exec` already finds it.
    pub(crate) fn start(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        outbox: &Outbox,
        id: RequestId,
        spec: &ExecSpec,
    ) -> Result<(), AgentError> {
        let mut running = self.lock();
        if running.contains_key(&id) {
            return Err(AgentError::new(
                ErrorKind::BadRequest,
                format!("request id {id} is already used by a running command"),
            ));
        }
        let spawned = crate::spawn::spawn(shared, spec)?;
        let pgid = spawned.pid;
        shared.groups.insert(pgid);
        // Started goes out before any output event of this command.
        let _ = outbox.send(&Event::Started {
            id,
            pid: pgid.as_raw_nonzero().get().unsigned_abs(),
        });

        let io = match CommandIo::new(
            spawned.stdin,
            spawned.stdout,
            spawned.stderr,
            spawned.pty_master,
        ) {
            Ok(io) => io,
            Err(e) => {
                // Without its pipes the command cannot be reported on: stop it. Its exit
                // is still collected by the task below.
                tracing::error!(id, "cannot watch the command's pipes: {e}");
                kill_group(pgid, Signal::KILL);
                CommandIo::default()
            }
        };
        let (stdin_tx, feeder) = match io.input {
            Some(target) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let pty = io.pty_master.is_some();
                (
                    Some(tx),
                    Some(tokio::spawn(feed_stdin(target, rx, pty, id))),
                )
            }
            None => (None, None),
        };
        running.insert(
            id,
            Running {
                pgid,
                stdin: stdin_tx,
                pty_master: io.pty_master,
            },
        );
        drop(running);

        let report = Report {
            execs: self.clone(),
            shared: shared.clone(),
            outbox: outbox.clone(),
            id,
            pgid,
            timeout: spec.timeout_ms.map(Duration::from_millis),
        };
        tokio::spawn(report.run(spawned.exit, io.stdout, io.stderr, feeder));
        Ok(())
    }

    /// Queues input for the command. Never waits: a command that does not read its stdin
    /// must not stall the connection. The host is the only producer and is trusted.
    pub(crate) fn write_stdin(&self, id: RequestId, data: Vec<u8>) {
        self.send_input(id, Input::Data(data));
    }

    pub(crate) fn close_stdin(&self, id: RequestId) {
        self.send_input(id, Input::Close);
        // A pipe is closed for good; a terminal stays open for more input after Ctrl-D.
        if let Some(running) = self.lock().get_mut(&id)
            && running.pty_master.is_none()
        {
            running.stdin = None;
        }
    }

    fn send_input(&self, id: RequestId, input: Input) {
        let running = self.lock();
        match running.get(&id).map(|r| r.stdin.as_ref()) {
            Some(Some(stdin)) => {
                // Fails only once the command ended; its input no longer matters.
                let _ = stdin.send(input);
            }
            Some(None) => tracing::debug!(id, "stdin is not open for this command; input dropped"),
            None => tracing::debug!(id, "stdin for no running command; ignored"),
        }
    }

    /// Sends a signal to the command's whole process group.
    pub(crate) fn signal(&self, id: RequestId, signal: i32) {
        let Some(pgid) = self.lock().get(&id).map(|r| r.pgid) else {
            tracing::debug!(id, signal, "signal for no running command; ignored");
            return;
        };
        match Signal::from_named_raw(signal) {
            Some(signal) => kill_group(pgid, signal),
            None => tracing::warn!(id, signal, "unsupported signal number; ignored"),
        }
    }

    pub(crate) fn resize(&self, id: RequestId, size: PtySize) {
        let master = match self.lock().get(&id) {
            Some(running) => running.pty_master.clone(),
            None => {
                tracing::debug!(id, "resize for no running command; ignored");
                return;
            }
        };
        match master {
            Some(master) => {
                if let Err(e) = crate::pty::resize(&*master, size) {
                    tracing::warn!(id, "cannot resize the terminal: {e}");
                }
            }
            None => tracing::debug!(id, "resize for a command without a pty; ignored"),
        }
    }

    /// Kills every command of this connection (the connection is going away).
    pub(crate) fn kill_all(&self) {
        for running in self.lock().values() {
            kill_group(running.pgid, Signal::KILL);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RequestId, Running>> {
        // The map stays consistent even if a holder panicked (single inserts/removes).
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The agent's ends of a command's stdio, registered with the runtime.
#[derive(Default)]
struct CommandIo {
    input: Option<FdStream>,
    stdout: Option<FdStream>,
    stderr: Option<FdStream>,
    pty_master: Option<Arc<OwnedFd>>,
}

impl CommandIo {
    fn new(
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        pty_master: Option<OwnedFd>,
    ) -> std::io::Result<CommandIo> {
        let stream =
            |fd: Option<OwnedFd>, interest| fd.map(|fd| FdStream::new(fd, interest)).transpose();
        match pty_master {
            // One terminal for everything: its output is reported as stdout. Reading and
            // writing use separate dups, since one fd can be registered only once.
            Some(master) => Ok(CommandIo {
                input: Some(FdStream::new(master.try_clone()?, Interest::WRITABLE)?),
                stdout: Some(FdStream::new(master.try_clone()?, Interest::READABLE)?),
                stderr: None,
                pty_master: Some(Arc::new(master)),
            }),
            None => Ok(CommandIo {
                input: stream(stdin, Interest::WRITABLE)?,
                stdout: stream(stdout, Interest::READABLE)?,
                stderr: stream(stderr, Interest::READABLE)?,
                pty_master: None,
            }),
        }
    }
}

/// Writes queued input to the command until stdin is closed or the command stops reading.
async fn feed_stdin(
    target: FdStream,
    mut queue: mpsc::UnboundedReceiver<Input>,
    pty: bool,
    id: RequestId,
) {
    while let Some(input) = queue.recv().await {
        let data = match &input {
            Input::Data(data) => data.as_slice(),
            Input::Close if pty => &[EOT][..],
            // Returning drops the pipe's write end: the command reads end-of-file.
            Input::Close => return,
        };
        if let Err(e) = target.write_all(data).await {
            tracing::debug!(id, "the command's stdin is closed: {e}");
            return;
        }
    }
}

/// Everything the reporting task of one exec needs.
struct Report {
    execs: Arc<Execs>,
    shared: Arc<Shared>,
    outbox: Outbox,
    id: RequestId,
    pgid: Pid,
    timeout: Option<Duration>,
}

impl Report {
    /// Forwards output, enforces the timeout, and sends `Exited` once the command has been
    /// reaped and its output has ended (or the grace period after the exit has passed).
    async fn run(
        self,
        mut exit: ExitWaiter,
        stdout: Option<FdStream>,
        stderr: Option<FdStream>,
        feeder: Option<tokio::task::JoinHandle<()>>,
    ) {
        let (exit_tx, exit_rx) = watch::channel(None);
        let wait = async {
            let ended = self.wait_exit(&mut exit).await;
            exit_tx.send_replace(Some(Instant::now() + OUTPUT_GRACE));
            ended
        };
        let ((status, timed_out), (), ()) = tokio::join!(
            wait,
            pump(
                stdout,
                self.outbox.clone(),
                self.id,
                Stream::Stdout,
                exit_rx.clone()
            ),
            pump(
                stderr,
                self.outbox.clone(),
                self.id,
                Stream::Stderr,
                exit_rx
            ),
        );
        if let Some(feeder) = feeder {
            // Input for a command that has ended has nowhere to go.
            feeder.abort();
        }
        self.execs.lock().remove(&self.id);
        self.shared.groups.remove(self.pgid);
        let _ = self.outbox.send(&Event::Exited {
            id: self.id,
            status,
            timed_out,
        });
    }

    async fn wait_exit(&self, exit: &mut ExitWaiter) -> (ExitStatus, bool) {
        let Some(limit) = self.timeout else {
            return (exit.wait().await, false);
        };
        if let Ok(status) = tokio::time::timeout(limit, exit.wait()).await {
            return (status, false);
        }
        tracing::debug!(
            id = self.id,
            "command timed out after {limit:?}; killing its process group"
        );
        kill_group(self.pgid, Signal::KILL);
        (exit.wait().await, true)
    }
}
