//! The agent's virtio-serial channel (`--serial N`), for microVMs that can be saved with
//! their memory: QEMU's vhost-user vsock device cannot migrate, its virtio-serial ports can.
//! Each port is a byte stream whose host end is a Unix socket QEMU listens on; it carries
//! one host connection at a time. The guest sees the host connect and disconnect only
//! through the port's poll state (`POLLHUP` while nobody is connected, `read` then
//! returning 0): nothing in the stream marks where one connection ends and the next
//! begins, and a hang-up followed at once by a new connection can reach the agent as no
//! change at all.
//!
//! That happens after every restore of a VM saved while a host connection was open: the
//! guest still serves it, QEMU tells it the host left only once the restored VM runs, and
//! the restoring host connects right after. The agent read the new connection's
//! handshake as a frame of the old one, dropped it, and the host waited forever. So the
//! host says where connections start over, on the control port: after it started or
//! restored the VM, before it opens any data port, it writes a [`SyncLine`]; the agent
//! ends whatever connection each data port still serves (nothing more is written to it),
//! drops the bytes that came for it, and only then answers [`serial::READY`]. After a
//! restore the line also carries the host's time and a seed, which the agent applies
//! first (see [`SyncLine::Restore`]).

mod port;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ak_protocol::serial::{self, SyncLine};
use tokio::task::JoinSet;

use crate::agent::Agent;
use port::{Port, PortStream};

/// Where the guest's kernel lists the virtio-serial ports, each with its `name`.
const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How long the ports get to appear (the driver adds them as QEMU announces them, which
/// may be a moment after init started).
const PORTS_LIMIT: Duration = Duration::from_secs(10);

/// Serves the control port and `ports` data ports until a shutdown (`once`: until the
/// first host connection on a data port ended); returns the exit code.
pub(crate) async fn serve_serial(agent: Agent, ports: u32, once: bool) -> i32 {
    let control = match open_port(serial::CONTROL_PORT).await {
        Ok(port) => port,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    let mut data = Vec::new();
    for index in 0..ports {
        match open_port(&serial::data_port(index)).await {
            Ok(port) => data.push(Arc::new(port)),
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        }
    }
    let mut served = JoinSet::new();
    for port in &data {
        served.spawn(serve_port(agent.clone(), port.clone(), once));
    }
    crate::guest::reached("serving the serial ports");
    let code = tokio::select! {
        result = serve_control(&control, &data) => match result {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("the serial control port failed: {e}");
                1
            }
        },
        () = agent.shutdown_requested() => 0,
    };
    served.abort_all();
    code
}

/// The port named `name`, opened once the kernel lists it.
async fn open_port(name: &str) -> Result<Port, String> {
    let path = find_port(name).await?;
    Port::open(&path).map_err(|e| format!("cannot open the serial port {}: {e}", path.display()))
}

/// The device of the port named `name`, once the kernel lists it.
async fn find_port(name: &str) -> Result<PathBuf, String> {
    let deadline = tokio::time::Instant::now() + PORTS_LIMIT;
    loop {
        if let Ok(entries) = std::fs::read_dir(PORTS_DIR) {
            for entry in entries.flatten() {
                let named = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if named.trim_end() == name {
                    return Ok(PathBuf::from("/dev").join(entry.file_name()));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "no virtio-serial port named {name} within {}s",
                PORTS_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Answers each [`SyncLine`] on the control port, whichever host connection it comes
/// on: lines are read across connections, so a hang-up the agent never saw (the boot's
/// connection, ended before a save) changes nothing. A line it cannot act on gets
/// [`serial::REFUSED`] and why, so the host fails at once instead of waiting.
async fn serve_control(control: &Port, data: &[Arc<Port>]) -> std::io::Result<()> {
    let mut pending = Vec::new();
    let mut first = true;
    loop {
        control.wait_for_host().await?;
        let mut buffer = [0u8; serial::MAX_CONTROL_LINE];
        let n = control.read_some(&mut buffer).await?;
        if n == 0 {
            // The host left (mid-line, if ever): the next one starts afresh.
            pending.clear();
            continue;
        }
        pending.extend_from_slice(&buffer[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Err(why) = refresh(&line) {
                tracing::warn!("refusing a line on the serial control port: {why}");
                let answer = format!("{} {why}\n", serial::REFUSED);
                if let Err(e) = control.write_all(answer.as_bytes()).await {
                    tracing::warn!("answering the host's sync on the control port: {e}");
                }
                continue;
            }
            let targets: Vec<u64> = data.iter().map(|port| port.request_reset()).collect();
            for (port, target) in data.iter().zip(targets) {
                port.wait_reset(target).await;
            }
            match control.write_all(serial::READY).await {
                Ok(()) if first => {
                    first = false;
                    crate::guest::reached("ready line written");
                    crate::guest::log_steps();
                }
                Ok(()) => tracing::debug!("the data ports start over (a restore)"),
                Err(e) => tracing::warn!("answering the host's sync on the control port: {e}"),
            }
        }
        if pending.len() > serial::MAX_CONTROL_LINE {
            tracing::warn!("dropping an overlong line on the serial control port");
            pending.clear();
        }
    }
}

/// Acts on sync line `line` before the data ports start over: a restore's sets the clock
/// and reseeds the random number generator (forks must not draw the same numbers, so a
/// failure refuses the sync and so fails the restore). Why not, if it cannot.
fn refresh(line: &[u8]) -> Result<(), String> {
    match SyncLine::parse(line).map_err(|e| e.to_string())? {
        SyncLine::Boot => Ok(()),
        SyncLine::Restore { time, seed } => {
            crate::tasks::set_clock(time).map_err(|e| format!("cannot set the clock: {e}"))?;
            crate::tasks::reseed(&seed)
                .map_err(|e| format!("cannot reseed the random number generator: {e}"))
        }
    }
}

/// Serves one host connection after another on `port`, each begun with the host's
/// greeting, starting over when the control port asks; `once`: serves one connection,
/// which has no greeting, then shuts the agent down (a one-shot VM restored from a
/// template, which ends with its command's connection).
async fn serve_port(agent: Agent, port: Arc<Port>, once: bool) {
    loop {
        port.settle();
        match port.wait_for_host_or_reset().await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!("waiting for the host on a serial port: {e}");
                return;
            }
        }
        let Some(ending) = port.begin() else {
            continue;
        };
        let mut stream = PortStream::new(port.clone(), ending.clone());
        let greeted = once
            || match echo_greeting(&mut stream).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!("a host connection on a serial port began badly: {e}");
                    false
                }
            };
        if greeted {
            agent.serve_connection(stream).await;
        }
        let end = port.finish(&ending);
        if once {
            agent.shutdown();
            return;
        }
        if end.reset || end.hung_up {
            continue;
        }
        // The agent ended it (a bad frame) while the host is still there: what it still
        // sends is not the next connection's, drained until it is gone.
        if let Err(e) = port.drain_until_hangup().await {
            tracing::error!("draining a serial port: {e}");
            return;
        }
    }
}

/// Reads the host's greeting line on a connection just begun and writes it back (see
/// [`serial::GREETING_WORD`]). The host sends nothing after it until the echo, so the
/// line is all there is to read.
async fn echo_greeting(stream: &mut PortStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut line = Vec::with_capacity(serial::MAX_GREETING);
    let mut buffer = [0u8; serial::MAX_GREETING];
    while !line.ends_with(b"\n") {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.extend_from_slice(&buffer[..n]);
        if line.len() > serial::MAX_GREETING {
            break;
        }
    }
    if !serial::is_greeting(&line) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a greeting: {:?}", String::from_utf8_lossy(&line)),
        ));
    }
    stream.write_all(&line).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot's line needs nothing done; a bad one is refused with why, before anything
    /// is set (a restore's good line sets the host's clock: not run here).
    #[test]
    fn sync_lines_are_acted_on_or_refused() {
        assert_eq!(refresh(&SyncLine::Boot.to_line()), Ok(()));
        let seed = "ab".repeat(serial::SEED_LEN);
        for (line, why) in [
            ("sync x\n".to_string(), "not a sync line"),
            (format!("sync 1.000000000 {seed}\n"), "a time must be"),
            (
                "sync 1796453090.632820754 abcd\n".to_string(),
                "a seed must be",
            ),
        ] {
            let refused = refresh(line.as_bytes()).unwrap_err();
            assert!(refused.contains(why), "{line:?}: {refused}");
        }
    }
}
