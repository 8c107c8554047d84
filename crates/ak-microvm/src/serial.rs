//! The host's side of a VM's virtio-serial channel (see the agent's `serial.rs`): QEMU
//! listens on one Unix socket per port in the VM's directory and takes one connection per
//! port at a time; a second connection to a busy port waits, unaccepted, until the first
//! ends. So a host process picks a port nobody is connected to, as QEMU itself reports
//! (`query-chardev`), under a lock file that keeps other host processes (the daemon, CLIs)
//! from picking the same one before QEMU has accepted. Each connection then begins with a
//! greeting the agent echoes (see [`serial::GREETING_WORD`]).

use std::time::Duration;

use ak_core::watch::SocketWatch;
use ak_protocol::serial::{self, SyncLine, WallTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::MicrovmError;
use crate::qmp::Qmp;
use crate::vm::Layout;

/// How many data ports a named VM's agent serves: how many host connections (commands,
/// file transfers, shells) it takes at once before the next one waits for a free port.
pub const DATA_PORTS: u32 = 8;
/// How long a connection waits for a free port before it fails.
const BUSY_LIMIT: Duration = Duration::from_secs(60);
/// How long QEMU gets to accept the connection to a free port.
const ACCEPT_LIMIT: Duration = Duration::from_secs(5);
/// How long the agent gets to echo a connection's greeting before the host hangs up and
/// tries another port: an answer takes milliseconds, and seconds under emulation on a
/// busy host.
const GREETING_LIMIT: Duration = Duration::from_secs(15);

/// Tells the agent on the control port that every data port starts over and waits for
/// its ready line; the VM's QEMU has just been started (its sockets appear a moment
/// later) or `restored` (then the line carries the host's time and a fresh seed for the
/// guest: [`SyncLine::Restore`]). No data port may be connected meanwhile: the agent ends
/// what each still serves, whatever it saw of the end (see the agent's `serial.rs`).
pub async fn wait_ready(layout: &Layout, restored: bool) -> Result<(), MicrovmError> {
    let socket = layout.serial_socket(serial::CONTROL_PORT);
    let watch = SocketWatch::new(&layout.dir)
        .map_err(MicrovmError::io(format!("watch {}", layout.dir.display())))?;
    watch
        .wait_for(&socket, Duration::from_secs(30))
        .await
        .map_err(MicrovmError::io(format!("wait for {}", socket.display())))?;
    // QEMU binds the socket before it listens on it: refused for a moment.
    let mut tries = 0;
    let mut stream = loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 1000 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => {
                return Err(MicrovmError::io(format!("connect to {}", socket.display()))(e));
            }
        }
    };
    // The time taken last: the guest's clock is off by how long the line takes to land.
    let sync = if restored {
        let mut seed = [0u8; serial::SEED_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut seed))
            .map_err(MicrovmError::io("read the host's randomness"))?;
        let time =
            WallTime::now().map_err(|e| MicrovmError::Serial(format!("the host's clock: {e}")))?;
        SyncLine::Restore { time, seed }
    } else {
        SyncLine::Boot
    };
    stream
        .write_all(&sync.to_line())
        .await
        .map_err(MicrovmError::io("write to the agent's control port"))?;
    let mut line = Vec::new();
    BufReader::new(stream)
        .take(serial::MAX_CONTROL_LINE as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(MicrovmError::io("read the agent's ready line"))?;
    if line == serial::READY {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&line);
    Err(MicrovmError::Serial(
        match line.strip_prefix(serial::REFUSED).map(str::trim) {
            Some(why) => format!("the agent refused the host's sync: {why}"),
            None => format!("the agent's control port said {line:?}, not that it is ready"),
        },
    ))
}

/// Connects to each of the `ports` data ports of a restored VM once and hangs up, after
/// [`wait_ready`]. A port whose host was slow to read when the VM was saved comes back
/// throttled: QEMU retries the guest's pending bytes on a port with no host, fails,
/// and waits for the host to take more, which no later connection makes it do; the next
/// connection to that port never got an answer (a test holding one unread stream open
/// over the save hung so). A hang-up drops those bytes and lifts the throttle
/// (`virtio_serial_close`); the agent, reset by [`wait_ready`], writes nothing there
/// meanwhile.
pub async fn clear_ports(layout: &Layout, ports: u32) -> Result<(), MicrovmError> {
    let _lock = lock_ports(layout).await?;
    let mut qmp = Qmp::connect(&layout.qmp_socket()).await?;
    let names: Vec<String> = (0..ports).map(serial::data_port).collect();
    let mut streams = Vec::new();
    for name in &names {
        let socket = layout.serial_socket(name);
        streams.push(
            UnixStream::connect(&socket)
                .await
                .map_err(MicrovmError::io(format!("connect to {}", socket.display())))?,
        );
    }
    // Each taken, then each let go, by QEMU's account: a later connection must not queue
    // behind one of these (taken the moment this one ends, the guest could see the two
    // as one).
    wait_ports(&mut qmp, &names, false).await?;
    drop(streams);
    wait_ports(&mut qmp, &names, true).await
}

/// Waits until QEMU reports each of `names` free (`true`) or taken.
async fn wait_ports(qmp: &mut Qmp, names: &[String], free: bool) -> Result<(), MicrovmError> {
    let deadline = tokio::time::Instant::now() + ACCEPT_LIMIT;
    loop {
        let now_free = free_ports(qmp).await?;
        if names.iter().all(|name| now_free.contains(name) == free) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MicrovmError::Serial(format!(
                "QEMU did not {} the agent's ports within {}s",
                if free { "let go of" } else { "take" },
                ACCEPT_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Connects to the first data port of a VM that no other host process knows yet (a
/// one-shot VM just restored from a template): no lock, no QEMU query.
pub async fn connect_first(layout: &Layout) -> Result<UnixStream, MicrovmError> {
    let socket = layout.serial_socket(&serial::data_port(0));
    UnixStream::connect(&socket)
        .await
        .map_err(MicrovmError::io(format!("connect to {}", socket.display())))
}

/// Connects to a free data port of the VM in `layout` (one of `ports`) whose agent
/// echoed the connection's greeting; a port that does not is hung up on and the next
/// one tried, each port once at most.
pub async fn connect(layout: &Layout, ports: u32) -> Result<UnixStream, MicrovmError> {
    connect_within(layout, ports, GREETING_LIMIT).await
}

/// [`connect`], waiting `greeting_limit` for each port's echo.
async fn connect_within(
    layout: &Layout,
    ports: u32,
    greeting_limit: Duration,
) -> Result<UnixStream, MicrovmError> {
    let deadline = tokio::time::Instant::now() + BUSY_LIMIT;
    let mut unanswered = Vec::new();
    loop {
        let mut lock = lock_ports(layout).await?;
        let mut qmp = Qmp::connect(&layout.qmp_socket()).await?;
        let free = free_ports(&mut qmp).await?;
        // In turn from the port after the last one taken, never the one just let go
        // first: the guest sees a connection end only once QEMU's word of it reached
        // it, and a new connection to the same port before that would be read as more
        // of the old one.
        let next = read_next(&mut lock, ports);
        if let Some(index) = (0..ports)
            .map(|i| (next + i) % ports)
            .find(|i| free.contains(&serial::data_port(*i)))
        {
            let name = serial::data_port(index);
            write_next(&mut lock, (index + 1) % ports);
            let socket = layout.serial_socket(&name);
            let stream = UnixStream::connect(&socket)
                .await
                .map_err(MicrovmError::io(format!("connect to {}", socket.display())))?;
            // Held until QEMU has taken it: until then the port still looks free.
            let accepted = tokio::time::Instant::now() + ACCEPT_LIMIT;
            while free_ports(&mut qmp).await?.contains(&name) {
                if tokio::time::Instant::now() >= accepted {
                    return Err(MicrovmError::Serial(format!(
                        "QEMU did not take the connection to port {name}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(lock);
            match greet(stream, greeting_limit).await {
                Ok(stream) => return Ok(stream),
                Err(why) => {
                    tracing::warn!(port = %name, "the agent did not begin a connection: {why}; trying another port");
                    unanswered.push(format!("{name}: {why}"));
                    if unanswered.len() >= ports as usize {
                        return Err(MicrovmError::Serial(format!(
                            "no port of the VM's agent answered a new connection ({})",
                            unanswered.join("; ")
                        )));
                    }
                    continue;
                }
            }
        }
        drop((lock, qmp));
        if tokio::time::Instant::now() >= deadline {
            return Err(MicrovmError::Serial(format!(
                "all {ports} agent ports of the VM stayed busy for {}s (each carries one \
                 command, file transfer or shell at a time)",
                BUSY_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a greeting with a fresh nonce on `stream` and waits for the agent to write it
/// back within `limit` (see [`serial::GREETING_WORD`]); why not, if it does not.
async fn greet(mut stream: UnixStream, limit: Duration) -> Result<UnixStream, String> {
    let line = serial::greeting(&ak_core::random::uuid_v4().simple().to_string());
    let exchange = async {
        stream.write_all(&line).await?;
        let mut echo = vec![0u8; line.len()];
        stream.read_exact(&mut echo).await?;
        Ok::<_, std::io::Error>(echo)
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(echo)) if echo == line => Ok(stream),
        Ok(Ok(echo)) => Err(format!(
            "it answered {:?}, not the greeting",
            String::from_utf8_lossy(&echo)
        )),
        Ok(Err(e)) => Err(format!("the greeting failed: {e}")),
        Err(_) => Err(format!("no echo of the greeting within {limit:?}")),
    }
}

/// The serial ports nobody is connected to, by QEMU's account: a listening socket
/// chardev's `filename` starts with `disconnected:` until it has accepted a client.
async fn free_ports(qmp: &mut Qmp) -> Result<Vec<String>, MicrovmError> {
    let chardevs = qmp.execute("query-chardev", None).await?;
    let list = chardevs
        .as_array()
        .ok_or_else(|| MicrovmError::Qmp(format!("query-chardev answered {chardevs}")))?;
    Ok(list
        .iter()
        .filter(|dev| {
            dev.get("filename")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|name| name.starts_with("disconnected:"))
        })
        .filter_map(|dev| dev.get("label")?.as_str().map(String::from))
        .collect())
}

/// The port to try first, kept in the lock file (by every host process in turn).
fn read_next(lock: &mut std::fs::File, ports: u32) -> u32 {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = lock.rewind().and_then(|()| lock.read_to_string(&mut text));
    text.trim().parse::<u32>().unwrap_or(0) % ports.max(1)
}

fn write_next(lock: &mut std::fs::File, next: u32) {
    use std::io::{Seek, Write};
    let written = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(next.to_string().as_bytes()));
    if let Err(e) = written {
        tracing::debug!("recording the next serial port: {e}");
    }
}

/// Takes the VM's port lock (a `flock` on a file in its directory), waiting off the
/// runtime's threads; released when the returned file is dropped.
async fn lock_ports(layout: &Layout) -> Result<std::fs::File, MicrovmError> {
    let path = layout.ports_lock();
    tokio::task::spawn_blocking(move || crate::lock_exclusive(&path))
        .await
        .map_err(|e| MicrovmError::Serial(format!("locking the ports: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next port to try is kept in the lock file from one host process to the next
    /// (a lock file opened without read access once made every connection take the
    /// first port, so a new connection could follow the end of the last one on the same
    /// port before the guest saw that end).
    #[test]
    fn the_next_port_goes_round_through_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ports.lock");
        let mut taken = Vec::new();
        for _ in 0..10 {
            let mut lock = crate::lock_exclusive(&path).unwrap();
            let next = read_next(&mut lock, 8);
            taken.push(next);
            write_next(&mut lock, (next + 1) % 8);
        }
        assert_eq!(taken, [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]);
    }

    /// A stand-in for QEMU and the agent: QMP answers `query-chardev` from which ports
    /// have a client; the agent on each port in `echoing` echoes the greeting and then
    /// writes the port's name, the others take the connection and say nothing.
    fn fake_vm(dir: &std::path::Path, ports: u32, echoing: &[u32]) -> Layout {
        use std::collections::HashSet;
        use std::sync::{Arc, Mutex};
        use tokio::net::UnixListener;
        let layout = Layout {
            dir: dir.to_path_buf(),
        };
        let connected = Arc::new(Mutex::new(HashSet::<String>::new()));
        let qmp = UnixListener::bind(layout.qmp_socket()).unwrap();
        let chardevs = connected.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = qmp.accept().await {
                let chardevs = chardevs.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"{\"QMP\": {}}\r\n").await.unwrap();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let answer = if line.contains("query-chardev") {
                            let taken = chardevs.lock().unwrap().clone();
                            let list: Vec<_> = (0..ports)
                                .map(serial::data_port)
                                .map(|label| {
                                    let state = if taken.contains(&label) {
                                        "unix:"
                                    } else {
                                        "disconnected:"
                                    };
                                    serde_json::json!({"label": label, "filename": state})
                                })
                                .collect();
                            serde_json::json!({ "return": list })
                        } else {
                            serde_json::json!({"return": {}})
                        };
                        let _ = write.write_all(format!("{answer}\r\n").as_bytes()).await;
                    }
                });
            }
        });
        for index in 0..ports {
            let name = serial::data_port(index);
            let listener = UnixListener::bind(layout.serial_socket(&name)).unwrap();
            let echoes = echoing.contains(&index);
            let connected = connected.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    connected.lock().unwrap().insert(name.clone());
                    let mut line = Vec::new();
                    let mut byte = [0u8; 1];
                    while stream.read_exact(&mut byte).await.is_ok() {
                        line.push(byte[0]);
                        if byte[0] == b'\n' {
                            break;
                        }
                    }
                    if echoes && serial::is_greeting(&line) {
                        stream.write_all(&line).await.unwrap();
                        stream.write_all(name.as_bytes()).await.unwrap();
                    }
                    // Held until the host hangs up, as QEMU holds a port.
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest).await;
                    connected.lock().unwrap().remove(&name);
                }
            });
        }
        layout
    }

    /// A port whose agent does not echo the greeting (it took the connection for more of
    /// an earlier one) is hung up on, and the next port serves the connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_port_that_does_not_echo_the_greeting_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let layout = fake_vm(dir.path(), 3, &[1, 2]);
        let limit = Duration::from_millis(200);
        let mut stream = connect_within(&layout, 3, limit).await.unwrap();
        let mut name = [0u8; 4];
        stream.read_exact(&mut name).await.unwrap();
        assert_eq!(&name, b"ak.1");
        // Taken in turn after the one that answered.
        let mut stream = connect_within(&layout, 3, limit).await.unwrap();
        stream.read_exact(&mut name).await.unwrap();
        assert_eq!(&name, b"ak.2");
    }

    /// When no port echoes, the connection fails saying which ports did not answer,
    /// after trying each once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_echo_on_any_port_is_an_error_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let layout = fake_vm(dir.path(), 2, &[]);
        let error = connect_within(&layout, 2, Duration::from_millis(100))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no port of the VM's agent answered"),
            "{error}"
        );
        assert!(
            error.contains("ak.0: no echo") && error.contains("ak.1: no echo"),
            "{error}"
        );
    }
}
