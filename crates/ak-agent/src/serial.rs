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
//! restored the VM, before it opens any data port, it writes [`serial::SYNC`]; the agent
//! ends whatever connection each data port still serves (nothing more is written to it),
//! drops the bytes that came for it, and only then answers [`serial::READY`].

mod port;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ak_protocol::serial;
use tokio::task::JoinSet;

use crate::agent::Agent;
use port::{Port, PortStream};

/// Where the guest's kernel lists the virtio-serial ports, each with its `name`.
const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How long the ports get to appear (the driver adds them as QEMU announces them, which
/// may be a moment after init started).
const PORTS_LIMIT: Duration = Duration::from_secs(10);
/// The longest line the host sends on the control port.
const MAX_CONTROL_LINE: usize = 64;

/// Serves the control port and `ports` data ports until a shutdown; returns the exit code.
pub(crate) async fn serve_serial(agent: Agent, ports: u32) -> i32 {
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
        served.spawn(serve_port(agent.clone(), port.clone()));
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

/// Answers each [`serial::SYNC`] line on the control port, whichever host connection it
/// comes on: lines are read across connections, so a hang-up the agent never saw (the
/// boot's connection, ended before a save) changes nothing.
async fn serve_control(control: &Port, data: &[Arc<Port>]) -> std::io::Result<()> {
    let mut pending = Vec::new();
    let mut first = true;
    loop {
        control.wait_for_host().await?;
        let mut buffer = [0u8; MAX_CONTROL_LINE];
        let n = control.read_some(&mut buffer).await?;
        if n == 0 {
            // The host left (mid-line, if ever): the next one starts afresh.
            pending.clear();
            continue;
        }
        pending.extend_from_slice(&buffer[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line != serial::SYNC {
                tracing::warn!(
                    "an unknown line on the serial control port: {:?}",
                    String::from_utf8_lossy(&line)
                );
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
        if pending.len() > MAX_CONTROL_LINE {
            tracing::warn!("dropping an overlong line on the serial control port");
            pending.clear();
        }
    }
}

/// Serves one host connection after another on `port`, starting over when the control
/// port asks.
async fn serve_port(agent: Agent, port: Arc<Port>) {
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
        agent
            .serve_connection(PortStream::new(port.clone(), ending.clone()))
            .await;
        let end = port.finish(&ending);
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
