//! QEMU's machine protocol (QMP) on each VM's control socket (`-qmp unix:…`): JSON objects,
//! one per line. The server greets, the client leaves negotiation mode with
//! `qmp_capabilities`, then each command is answered by `{"return": …}` or
//! `{"error": …}`, with asynchronous `{"event": …}` lines possibly in between.
//!
//! What the backend asks: `stop` and `cont` (pause and resume the vCPUs; the devices and
//! the guest's memory stay as they are), `query-status`, `query-chardev` (which serial
//! ports have a host connection), and `migrate` to a file (a VM saved with its memory).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::MicrovmError;

/// How long one exchange may take (QEMU answers at once; a hung QEMU is a failure).
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// The longest line accepted from QEMU: its answers to our commands are small.
const MAX_LINE: usize = 1 << 20;

/// A negotiated QMP connection.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    /// Connects to the QMP socket at `socket` and leaves negotiation mode.
    pub async fn connect(socket: &Path) -> Result<Qmp, MicrovmError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(MicrovmError::io(format!(
                "connect to QMP at {}",
                socket.display()
            )))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(MicrovmError::Qmp(format!(
                "expected QEMU's greeting, got {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, MicrovmError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        tokio::time::timeout(ANSWER_LIMIT, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| MicrovmError::Qmp(format!("QEMU did not take `{command}`")))?
            .map_err(MicrovmError::io(format!("send `{command}` over QMP")))?;
        loop {
            let mut message = self.read_message().await?;
            if message.get("event").is_some() {
                continue;
            }
            if let Some(answer) = message.get_mut("return") {
                return Ok(answer.take());
            }
            let reason = message
                .pointer("/error/desc")
                .and_then(Value::as_str)
                .map_or_else(|| message.to_string(), String::from);
            return Err(MicrovmError::Qmp(format!("`{command}`: {reason}")));
        }
    }

    async fn read_message(&mut self) -> Result<Value, MicrovmError> {
        let mut line = String::new();
        let read = tokio::time::timeout(ANSWER_LIMIT, async {
            // Bounded: a line is read in pieces until its newline, and refused past the
            // limit instead of growing without end.
            loop {
                let buffer = self.reader.fill_buf().await?;
                if buffer.is_empty() {
                    return Ok::<_, std::io::Error>(false);
                }
                let (take, done) = match buffer.iter().position(|&b| b == b'\n') {
                    Some(end) => (end + 1, true),
                    None => (buffer.len(), false),
                };
                line.push_str(&String::from_utf8_lossy(&buffer[..take]));
                self.reader.consume(take);
                if line.len() > MAX_LINE {
                    return Err(std::io::Error::other("a QMP line over 1 MiB"));
                }
                if done {
                    return Ok(true);
                }
            }
        })
        .await
        .map_err(|_| MicrovmError::Qmp("QEMU did not answer".into()))?
        .map_err(MicrovmError::io("read from QMP"))?;
        if !read {
            return Err(MicrovmError::Qmp("QEMU closed its QMP connection".into()));
        }
        serde_json::from_str(line.trim_end())
            .map_err(|e| MicrovmError::Qmp(format!("a QMP message that is not JSON ({e}): {line}")))
    }
}

/// Pauses (`stop`) or resumes (`cont`) the VM whose QMP socket is `socket`, and checks
/// QEMU's status says so. Asking for the state it is in already is fine.
pub async fn set_paused(socket: &Path, paused: bool) -> Result<(), MicrovmError> {
    let mut qmp = Qmp::connect(socket).await?;
    qmp.execute(if paused { "stop" } else { "cont" }, None)
        .await?;
    let status = qmp.execute("query-status", None).await?;
    let running = status.get("running").and_then(Value::as_bool);
    if running != Some(!paused) {
        return Err(MicrovmError::Qmp(format!(
            "QEMU's status after {}: {status}",
            if paused { "stop" } else { "cont" }
        )));
    }
    Ok(())
}

/// How long saving a VM's memory state may take (a gigabyte written under load).
const SAVE_LIMIT: Duration = Duration::from_secs(300);
/// Migration's bandwidth cap: QEMU's default (128 MiB/s) is for networks; a local file
/// takes what the disk takes.
const SAVE_BANDWIDTH: u64 = 64 << 30;

/// Whether the VM whose QMP socket is `socket` runs its vCPUs.
pub async fn is_running(socket: &Path) -> Result<bool, MicrovmError> {
    running(&mut Qmp::connect(socket).await?).await
}

async fn running(qmp: &mut Qmp) -> Result<bool, MicrovmError> {
    let status = qmp.execute("query-status", None).await?;
    status
        .get("running")
        .and_then(Value::as_bool)
        .ok_or_else(|| MicrovmError::Qmp(format!("query-status answered {status}")))
}

/// Writes the whole state of the stopped VM whose QMP socket is `socket` (memory,
/// devices, vCPUs) to `state`; QEMU flushes its disks at the end. With `memory_in_file`
/// (a VM whose memory is a shared file, [`crate::GuestMemory::WrittenTo`]) the memory is
/// left out: the file is it.
pub async fn save_state(
    socket: &Path,
    state: &Path,
    memory_in_file: bool,
) -> Result<(), MicrovmError> {
    let mut qmp = Qmp::connect(socket).await?;
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": SAVE_BANDWIDTH })),
    )
    .await?;
    set_memory_in_file(&mut qmp, memory_in_file).await?;
    let target = state.to_string_lossy();
    qmp.execute(
        "migrate",
        Some(json!({ "uri": format!("exec:cat > {}", crate::qemu::shell_quote(&target)) })),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + SAVE_LIMIT;
    loop {
        let progress = qmp.execute("query-migrate", None).await?;
        match progress.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(()),
            Some("failed" | "cancelled") => {
                let reason = progress
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                return Err(MicrovmError::State(format!(
                    "QEMU could not save it to {target}: {reason}"
                )));
            }
            _ if tokio::time::Instant::now() >= deadline => {
                let _ = qmp.execute("migrate_cancel", None).await;
                return Err(MicrovmError::State(format!(
                    "saving it took over {}s",
                    SAVE_LIMIT.as_secs()
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// QEMU's `x-ignore-shared`: a migration leaves out memory mapped shared from a file.
/// Both sides must agree: it adds each memory block's address to the stream. Set either
/// way every time: a VM keeps the capability it loaded its state with (a fork), and its
/// own later save must not carry it.
async fn set_memory_in_file(qmp: &mut Qmp, on: bool) -> Result<(), MicrovmError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": on }] })),
    )
    .await
    .map(drop)
}

/// Loads `state` into a VM started with `-incoming defer` and resolves once it runs.
/// (Failing to load it makes QEMU exit, which the caller watches for.) A VM saved
/// stopped (as ours are, for the copy) loads stopped: it is let go on. `memory_in_file`:
/// the state was saved without the memory, which is a file this VM maps
/// ([`crate::GuestMemory::MappedFrom`]).
pub async fn wait_restored(
    socket: &Path,
    state: &Path,
    memory_in_file: bool,
) -> Result<(), MicrovmError> {
    let mut qmp = loop {
        // The socket appears a moment after QEMU starts.
        match Qmp::connect(socket).await {
            Ok(qmp) => break qmp,
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    };
    set_memory_in_file(&mut qmp, memory_in_file).await?;
    let source = crate::qemu::shell_quote(&state.to_string_lossy());
    qmp.execute(
        "migrate-incoming",
        Some(json!({ "uri": format!("exec:cat {source}") })),
    )
    .await?;
    loop {
        let status = qmp.execute("query-status", None).await?;
        if status.get("running").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        if status.get("status").and_then(Value::as_str) != Some("inmigrate") {
            qmp.execute("cont", None).await?;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Asks the VM's QEMU to exit.
pub async fn quit(socket: &Path) -> Result<(), MicrovmError> {
    let mut qmp = Qmp::connect(socket).await?;
    qmp.execute("quit", None).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A QMP server that answers as QEMU 7.2 does, with an event before each answer, and
    /// records the commands it got.
    async fn fake_qemu(
        socket: &Path,
        paused_after_stop: bool,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": [\"oob\"]}}\r\n")
                .await
                .unwrap();
            let mut commands = Vec::new();
            let mut running = true;
            while let Ok(Some(line)) = lines.next_line().await {
                let request: Value = serde_json::from_str(&line).unwrap();
                let command = request["execute"].as_str().unwrap().to_string();
                let answer = match command.as_str() {
                    "stop" => {
                        running = !paused_after_stop;
                        json!({"return": {}})
                    }
                    "cont" => {
                        running = true;
                        json!({"return": {}})
                    }
                    "query-status" => {
                        json!({"return": {"status": if running {"running"} else {"paused"}, "running": running}})
                    }
                    "qmp_capabilities" => json!({"return": {}}),
                    _ => {
                        json!({"error": {"class": "CommandNotFound", "desc": format!("The command {command} has not been found")}})
                    }
                };
                commands.push(command);
                write
                    .write_all(b"{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1}}\r\n")
                    .await
                    .unwrap();
                write
                    .write_all(format!("{answer}\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            commands
        })
    }

    #[tokio::test]
    async fn stop_and_cont_are_negotiated_sent_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let server = fake_qemu(&socket, true).await;
        set_paused(&socket, true).await.unwrap();
        assert_eq!(
            server.await.unwrap(),
            ["qmp_capabilities", "stop", "query-status"]
        );
    }

    #[tokio::test]
    async fn errors_and_unconfirmed_states_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        // A QEMU that says it stopped but still runs.
        let _server = fake_qemu(&socket, false).await;
        let error = set_paused(&socket, true).await.unwrap_err().to_string();
        assert!(error.contains("status after stop"), "{error}");

        let socket = dir.path().join("qmp2.sock");
        let _server = fake_qemu(&socket, true).await;
        let mut qmp = Qmp::connect(&socket).await.unwrap();
        let error = qmp.execute("no-such", None).await.unwrap_err().to_string();
        assert!(error.contains("has not been found"), "{error}");

        let missing = set_paused(&dir.path().join("none.sock"), true).await;
        assert!(missing.unwrap_err().to_string().contains("connect to QMP"));
    }

    #[tokio::test]
    async fn a_peer_that_is_not_qemu_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"not json\n").await.unwrap();
        });
        let error = Qmp::connect(&socket).await.unwrap_err().to_string();
        assert!(error.contains("not JSON"), "{error}");
    }
}
