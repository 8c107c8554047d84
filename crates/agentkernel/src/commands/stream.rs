//! Streaming a running command to this terminal: its output to our stdout and stderr as
//! it arrives, our stdin and signals to it, and its exit status as our exit code. Shared by
//! `run` and `exec`.

use std::io::Write;

use ak_core::{ExitStatus, StdinMode};
use ak_protocol::{ExecControl, ExecEvent};
use ak_service::{CommandSession, ServiceError};
use anyhow::anyhow;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};

use super::terminal;
use crate::exit;

/// Signals the CLI receives and passes on to the command.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The stdin mode for a command run from this terminal: with /dev/null as our stdin there
/// is nothing to forward, so the command gets /dev/null too and no reader thread or
/// messages are spent on it.
pub fn stdin_mode() -> StdinMode {
    if stdin_is_null() {
        StdinMode::Null
    } else {
        StdinMode::Pipe
    }
}

/// How to connect a command to this terminal.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub stdin: StdinMode,
    /// The sandbox's memory limit, named when the sandbox ran out of memory.
    pub memory_limit: Option<u64>,
    /// The command runs on a terminal: our terminal goes raw (keys, Ctrl-C included, pass
    /// through as bytes) and size changes follow.
    pub tty: bool,
}

/// Streams `session` until the command ends and returns the exit code for this process.
pub async fn stream(mut session: CommandSession, options: Options) -> i32 {
    let stdin = options.stdin;
    let _raw = options.tty.then(terminal::RawMode::enter).flatten();
    let control = session.control();
    let stdin_task =
        (stdin == StdinMode::Pipe).then(|| tokio::spawn(forward_stdin(control.clone())));
    let signal_task = if options.tty {
        tokio::spawn(terminal::forward_resizes(control))
    } else {
        tokio::spawn(forward_signals(control))
    };

    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let streamed = loop {
        match session.next_event().await {
            Ok(Some(ExecEvent::Stdout(data))) => {
                // A closed stdout (e.g. `| head`) must not stop the command's accounting.
                let _ = stdout.write_all(&data).and_then(|()| stdout.flush());
            }
            Ok(Some(ExecEvent::Stderr(data))) => {
                let _ = stderr.write_all(&data).and_then(|()| stderr.flush());
            }
            Ok(Some(ExecEvent::Started { .. })) => {}
            Ok(Some(ExecEvent::Exited { .. })) | Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    if let Some(task) = stdin_task {
        task.abort();
    }
    signal_task.abort();
    if let Err(error) = streamed {
        let _ = session.finish().await;
        return fail_start(error);
    }

    match session.finish().await {
        Ok(outcome) => {
            if let Some(peak) = outcome.usage.peak_memory_bytes {
                tracing::info!("sandbox peak memory: {} KiB", peak / 1024);
            }
            if outcome.usage.oom_killed {
                let limit = options
                    .memory_limit
                    .map_or(String::new(), |l| format!(" (limit {l} bytes)"));
                exit::report(&anyhow!(
                    "the sandbox ran out of memory{limit}; raise it with --memory"
                ));
            }
            if outcome.timed_out {
                exit::report(&anyhow!("the command timed out and was killed"));
                return exit::TIMED_OUT;
            }
            match outcome.status {
                ExitStatus::Code(code) => code,
                ExitStatus::Signal(signal) => 128 + signal,
            }
        }
        Err(error) => {
            exit::report(&error.into());
            exit::SANDBOX_FAILURE
        }
    }
}

/// Reports a run that failed before or while its command ran; returns its exit code.
pub fn fail_start(error: ServiceError) -> i32 {
    let code = exit::code_for(&error);
    exit::report(&error.into());
    code
}

/// Whether our standard input is `/dev/null` (character device 1:3).
fn stdin_is_null() -> bool {
    let Ok(stat) = rustix::fs::fstat(rustix::stdio::stdin()) else {
        return false;
    };
    let is_char =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::CharacterDevice;
    is_char && rustix::fs::major(stat.st_rdev) == 1 && rustix::fs::minor(stat.st_rdev) == 3
}

/// Copies our stdin to the command until end of file.
async fn forward_stdin(control: ExecControl) {
    let mut stdin = tokio::io::stdin();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if control.write_stdin(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = control.close_stdin().await;
}

/// Passes Ctrl-C and termination signals on to the command's process group.
async fn forward_signals(control: ExecControl) {
    let mut streams = Vec::new();
    for number in FORWARDED {
        match signal(SignalKind::from_raw(number)) {
            Ok(stream) => streams.push((number, stream)),
            Err(e) => tracing::warn!("cannot forward signal {number}: {e}"),
        }
    }
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    for (number, mut stream) in streams {
        let sender = sender.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if sender.send(number).is_err() {
                    break;
                }
            }
        });
    }
    while let Some(number) = receiver.recv().await {
        let _ = control.signal(number).await;
    }
}
