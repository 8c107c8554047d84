//! The host's side of the guest's vsock, shared by both drivers: Firecracker's hybrid
//! vsock and `vhost-device-vsock` expose it as one Unix socket, where a host connection
//! writes `CONNECT <port>\n` and reads `OK <host port>\n`; the guest's own connections to
//! the host's port P arrive at `<that socket>_P`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::MicrovmError;

/// The port a persistent VM's agent listens on inside the guest.
pub const AGENT_PORT: u32 = 1024;
/// The host port the agent connects to once it is ready: a persistent VM's agent then
/// listens on [`AGENT_PORT`]; a one-shot VM's agent serves the host on this connection.
pub const READY_PORT: u32 = 1025;
/// The longest reply line accepted from the vsock device.
const MAX_REPLY: usize = 64;
/// How long the device gets to answer `CONNECT`.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Where the guest's connections to host `port` arrive, for the device socket `uds`.
pub fn host_port_socket(uds: &Path, port: u32) -> PathBuf {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Connects to guest `port` through the device socket `uds`.
pub async fn connect(uds: &Path, port: u32) -> Result<UnixStream, MicrovmError> {
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|e| MicrovmError::Vsock(format!("connect to {}: {e}", uds.display())))?;
    tokio::time::timeout(HANDSHAKE_LIMIT, handshake(&mut stream, port))
        .await
        .map_err(|_| MicrovmError::Vsock(format!("no answer to CONNECT {port}")))??;
    Ok(stream)
}

async fn handshake(stream: &mut UnixStream, port: u32) -> Result<(), MicrovmError> {
    let failed = |what: String| MicrovmError::Vsock(format!("CONNECT {port}: {what}"));
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| failed(e.to_string()))?;
    // One byte at a time: whatever follows the line is the agent's, not ours to buffer.
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if n == 0 {
            return Err(failed(
                "refused (nothing listens on that port in the guest)".into(),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY {
            return Err(failed("reply line too long".into()));
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.split_once(' ') {
        Some(("OK", host_port)) if host_port.trim().parse::<u32>().is_ok() => Ok(()),
        _ => Err(failed(format!("unexpected reply {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// A stand-in for the device: answers each CONNECT as `reply` says.
    async fn device(dir: &Path, reply: &'static [u8]) -> PathBuf {
        let uds = dir.join("vsock.sock");
        let listener = tokio::net::UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    assert_eq!(line, "CONNECT 1024\n");
                    stream.get_mut().write_all(reply).await.unwrap();
                    // Keep the stream open a moment for the client's read.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                });
            }
        });
        uds
    }

    #[tokio::test]
    async fn the_handshake_leaves_the_agent_bytes_unread() {
        let dir = tempfile::tempdir().unwrap();
        let uds = device(dir.path(), b"OK 1073741824\nagent").await;
        let mut stream = connect(&uds, AGENT_PORT).await.unwrap();
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"agent");
    }

    #[tokio::test]
    async fn refusals_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let uds = device(dir.path(), b"").await;
        let error = connect(&uds, AGENT_PORT).await.unwrap_err().to_string();
        assert!(error.contains("refused"), "{error}");
        let other = tempfile::tempdir().unwrap();
        let uds = device(other.path(), b"NO\n").await;
        let error = connect(&uds, AGENT_PORT).await.unwrap_err().to_string();
        assert!(error.contains("unexpected reply"), "{error}");
        let error = connect(&other.path().join("none"), AGENT_PORT)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("connect to"), "{error}");
    }

    #[test]
    fn guest_connections_arrive_beside_the_device_socket() {
        assert_eq!(
            host_port_socket(Path::new("/run/x/vsock.sock"), READY_PORT),
            PathBuf::from("/run/x/vsock.sock_1025")
        );
    }
}
