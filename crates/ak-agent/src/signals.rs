//! PID 1's signal duties: pass SIGTERM, SIGINT and SIGHUP on to the commands, and end the
//! sandbox gracefully on SIGTERM.
//!
//! The kernel does not apply default actions to signals sent to a namespace's init, so
//! without these handlers `docker stop`-style termination would be ignored.

use std::time::Duration;

use rustix::process::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::agent::Agent;

/// How long the commands get to exit after SIGTERM before they are killed.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Installs the handlers (at once, so no signal is missed) and the task that serves them.
pub(crate) fn forward_signals(agent: Agent) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        let mut terminating = false;
        loop {
            let received = tokio::select! {
                Some(()) = term.recv() => Signal::TERM,
                Some(()) = int.recv() => Signal::INT,
                Some(()) = hup.recv() => Signal::HUP,
                else => break,
            };
            tracing::info!(
                signal = received.as_raw(),
                "passing the signal on to every command"
            );
            agent.signal_all(received);
            if received == Signal::TERM && !terminating {
                terminating = true;
                tokio::spawn(end_after_grace(agent.clone()));
            }
        }
    });
    Ok(())
}

/// Shuts the agent down once every command has ended, or after the grace period.
async fn end_after_grace(agent: Agent) {
    if tokio::time::timeout(TERM_GRACE, agent.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("commands still running {TERM_GRACE:?} after SIGTERM; killing them");
    }
    agent.shutdown();
}
