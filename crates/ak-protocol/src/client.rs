//! The host-side client of the agent: one connection, many concurrent requests.
//!
//! A background task reads events and routes them by request id to the waiting caller, so
//! several execs and file transfers share one connection without blocking each other's
//! control requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::error::ProtocolError;
use crate::frame::{FrameReader, FrameWriter, MAX_CHUNK_LEN};
use crate::handshake::{Negotiated, client_handshake, read_hello_reply, send_hello};
use crate::message::{
    AgentError, ErrorKind, Event, ExecSpec, ExitStatus, FileStat, PtySize, Reply, Request,
    RequestId,
};

type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// Events buffered per request before the reader waits for the caller to catch up.
const ROUTE_CAPACITY: usize = 64;

/// A connected, handshaken agent.
#[derive(Clone)]
pub struct AgentClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("negotiated", &self.shared.negotiated)
            .finish_non_exhaustive()
    }
}

struct Shared {
    writer: tokio::sync::Mutex<FrameWriter<BoxedWriter>>,
    routes: Mutex<Routes>,
    next_id: AtomicU32,
    negotiated: Negotiated,
    /// Dropped with the last handle on the connection, which tells the reader task to stop
    /// and so closes the connection: the reader owns the read half, and without this it
    /// would wait for the agent, which waits for us (one socket leaked on each side per
    /// client).
    _hangup: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
struct Routes {
    by_id: HashMap<RequestId, mpsc::Sender<Event>>,
    /// Set once the reader stopped; no new request can be routed after that.
    closed: bool,
}

impl AgentClient {
    /// Performs the handshake over `stream` and starts routing events.
    pub async fn connect<S>(stream: S, software: String) -> Result<Self, ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader = FrameReader::new(read_half);
        let mut writer = FrameWriter::new(Box::new(write_half) as BoxedWriter);
        let negotiated = client_handshake(&mut reader, &mut writer, software).await?;
        Ok(Self::start(reader, writer, negotiated, Routes::default()))
    }

    /// Performs the handshake and starts `spec` in one round trip: the exec request goes out
    /// right behind `Hello` instead of waiting for the answer (an exec is encoded the same in
    /// every version this build speaks). Saves a round trip on every `run`.
    pub async fn connect_with_exec<S>(
        stream: S,
        software: String,
        spec: ExecSpec,
    ) -> Result<(Self, ExecHandle), ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        const FIRST: RequestId = 1;
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader = FrameReader::new(read_half);
        let mut writer = FrameWriter::new(Box::new(write_half) as BoxedWriter);
        send_hello(&mut writer, software).await?;
        writer.write(&Request::Exec { id: FIRST, spec }).await?;
        let negotiated = read_hello_reply(&mut reader).await?;
        let (tx, events) = mpsc::channel(ROUTE_CAPACITY);
        let mut routes = Routes::default();
        routes.by_id.insert(FIRST, tx);
        let client = Self::start(reader, writer, negotiated, routes);
        let handle = client.exec_handle(FIRST, events);
        Ok((client, handle))
    }

    /// Starts routing events to `routes` (and to the requests registered later).
    fn start<R>(
        reader: FrameReader<R>,
        writer: FrameWriter<BoxedWriter>,
        negotiated: Negotiated,
        routes: Routes,
    ) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let next_id = routes.by_id.keys().max().map_or(1, |id| id + 1);
        let (hangup, hung_up) = tokio::sync::oneshot::channel();
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(writer),
            routes: Mutex::new(routes),
            next_id: AtomicU32::new(next_id),
            negotiated,
            _hangup: hangup,
        });
        tokio::spawn(route_events(reader, Arc::downgrade(&shared), hung_up));
        AgentClient { shared }
    }

    /// The protocol version and agent software settled by the handshake.
    pub fn negotiated(&self) -> &Negotiated {
        &self.shared.negotiated
    }

    /// True once the connection to the agent has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.routes).closed
    }

    /// Starts a command. Its events arrive through the returned handle.
    pub async fn exec(&self, spec: ExecSpec) -> Result<ExecHandle, ProtocolError> {
        let (id, events) = self.register()?;
        if let Err(e) = self.send(&Request::Exec { id, spec }).await {
            self.unregister(id);
            return Err(e);
        }
        Ok(self.exec_handle(id, events))
    }

    fn exec_handle(&self, id: RequestId, events: mpsc::Receiver<Event>) -> ExecHandle {
        ExecHandle {
            control: ExecControl {
                client: self.clone(),
                id,
            },
            events,
            finished: false,
        }
    }

    /// Round trip to the agent; returns the agent's software version.
    pub async fn ping(&self) -> Result<String, ProtocolError> {
        match self.call(|id| Request::Ping { id }).await? {
            Reply::Pong { agent_version } => Ok(agent_version),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads a whole file, refusing files larger than `max_bytes`.
    pub async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, ProtocolError> {
        let (id, mut events) = self.register()?;
        let request = Request::ReadFile {
            id,
            path: path.to_string(),
            max_bytes,
        };
        if let Err(e) = self.send(&request).await {
            self.unregister(id);
            return Err(e);
        }
        let mut content = Vec::new();
        loop {
            match events.recv().await.ok_or(ProtocolError::Closed)? {
                Event::FileData { data, .. } => {
                    if content.len() as u64 + data.len() as u64 > max_bytes {
                        self.unregister(id);
                        return Err(AgentError::new(
                            ErrorKind::TooLarge,
                            format!("{path} is larger than {max_bytes} bytes"),
                        )
                        .into());
                    }
                    content.extend_from_slice(&data);
                }
                Event::Done { result, .. } => {
                    return match result? {
                        Reply::FileEnd { .. } => Ok(content),
                        other => Err(unexpected(&other)),
                    };
                }
                other => return Err(ProtocolError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Writes a whole file atomically: readers see the old file or the new one, never a part.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), ProtocolError> {
        let (id, mut events) = self.register()?;
        let sent = async {
            self.send(&Request::WriteBegin {
                id,
                path: path.to_string(),
                mode,
            })
            .await?;
            for chunk in data.chunks(MAX_CHUNK_LEN) {
                self.send(&Request::WriteChunk {
                    id,
                    data: ByteBuf::from(chunk.to_vec()),
                })
                .await?;
            }
            self.send(&Request::WriteCommit { id }).await
        }
        .await;
        if let Err(e) = sent {
            self.unregister(id);
            return Err(e);
        }
        match events.recv().await.ok_or(ProtocolError::Closed)? {
            Event::Done { result, .. } => result.map(|_| ()).map_err(Into::into),
            other => Err(ProtocolError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn list_dir(&self, path: &str) -> Result<Vec<FileStat>, ProtocolError> {
        let path = path.to_string();
        match self.call(|id| Request::ListDir { id, path }).await? {
            Reply::Entries(entries) => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn stat(&self, path: &str) -> Result<FileStat, ProtocolError> {
        let path = path.to_string();
        match self.call(|id| Request::Stat { id, path }).await? {
            Reply::Stat(stat) => Ok(stat),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), ProtocolError> {
        let path = path.to_string();
        self.call(|id| Request::Remove {
            id,
            path,
            recursive,
        })
        .await
        .map(|_| ())
    }

    /// Moves `from` to `to` inside the sandbox in one step (`to` must not exist): what
    /// makes a directory copied in appear whole.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ProtocolError> {
        let version = self.negotiated().version;
        if version < 2 {
            return Err(ProtocolError::Unexpected(format!(
                "the agent speaks protocol version {version}, which cannot rename"
            )));
        }
        let (from, to) = (from.to_string(), to.to_string());
        self.call(|id| Request::Rename { id, from, to })
            .await
            .map(|_| ())
    }

    pub async fn mkdir(&self, path: &str, parents: bool, mode: u32) -> Result<(), ProtocolError> {
        let path = path.to_string();
        self.call(|id| Request::Mkdir {
            id,
            path,
            parents,
            mode,
        })
        .await
        .map(|_| ())
    }

    /// Asks the agent to kill every command and exit, which ends the sandbox.
    pub async fn shutdown(&self) -> Result<(), ProtocolError> {
        match self.call(|id| Request::Shutdown { id }).await {
            Ok(_) | Err(ProtocolError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn call(&self, make: impl FnOnce(RequestId) -> Request) -> Result<Reply, ProtocolError> {
        let (id, mut events) = self.register()?;
        if let Err(e) = self.send(&make(id)).await {
            self.unregister(id);
            return Err(e);
        }
        match events.recv().await.ok_or(ProtocolError::Closed)? {
            Event::Done { result, .. } => result.map_err(Into::into),
            other => Err(ProtocolError::Unexpected(format!("{other:?}"))),
        }
    }

    fn register(&self) -> Result<(RequestId, mpsc::Receiver<Event>), ProtocolError> {
        let (tx, rx) = mpsc::channel(ROUTE_CAPACITY);
        let mut routes = lock(&self.shared.routes);
        if routes.closed {
            return Err(ProtocolError::Closed);
        }
        loop {
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 && !routes.by_id.contains_key(&id) {
                routes.by_id.insert(id, tx);
                return Ok((id, rx));
            }
        }
    }

    fn unregister(&self, id: RequestId) {
        lock(&self.shared.routes).by_id.remove(&id);
    }

    async fn send(&self, request: &Request) -> Result<(), ProtocolError> {
        self.shared.writer.lock().await.write(request).await
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    // A panic while holding this lock leaves the map consistent (single inserts/removes).
    routes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unexpected(reply: &Reply) -> ProtocolError {
    ProtocolError::Unexpected(format!("{reply:?}"))
}

/// Reads events until the connection ends, handing each to the request it belongs to.
/// Stops as soon as the last handle on the connection is gone (`hung_up`), closing it.
async fn route_events<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    shared: std::sync::Weak<Shared>,
    mut hung_up: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        // Reading a frame is not cancel-safe, but nobody reads this connection after a
        // hang-up.
        let read = tokio::select! {
            read = reader.read::<Event>() => read,
            _ = &mut hung_up => return,
        };
        let event = match read {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("agent connection failed: {e}");
                break;
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let id = event.id();
        let terminal = matches!(event, Event::Exited { .. } | Event::Done { .. });
        let route = {
            let mut routes = lock(&shared.routes);
            if terminal {
                routes.by_id.remove(&id)
            } else {
                routes.by_id.get(&id).cloned()
            }
        };
        match route {
            // A receiver that went away just means nobody waits for this request any more.
            Some(tx) => {
                let _ = tx.send(event).await;
            }
            None => tracing::debug!(id, "event for a request nobody waits for"),
        }
    }
    if let Some(shared) = shared.upgrade() {
        let mut routes = lock(&shared.routes);
        routes.closed = true;
        routes.by_id.clear();
    }
}

/// What happened to a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Started { pid: u32 },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited { status: ExitStatus, timed_out: bool },
}

/// A running command: its events, and control over it.
#[derive(Debug)]
pub struct ExecHandle {
    control: ExecControl,
    events: mpsc::Receiver<Event>,
    finished: bool,
}

impl ExecHandle {
    /// The next event; `Ok(None)` after `Exited`. A command that could not start yields
    /// its `AgentError`; a lost connection yields `ProtocolError::Closed`.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ProtocolError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let Some(event) = self.events.recv().await else {
                self.finished = true;
                return Err(ProtocolError::Closed);
            };
            return Ok(Some(match event {
                Event::Started { pid, .. } => ExecEvent::Started { pid },
                Event::Stdout { data, .. } => ExecEvent::Stdout(data.into_vec()),
                Event::Stderr { data, .. } => ExecEvent::Stderr(data.into_vec()),
                Event::Exited {
                    status, timed_out, ..
                } => {
                    self.finished = true;
                    ExecEvent::Exited { status, timed_out }
                }
                Event::Done {
                    result: Err(error), ..
                } => {
                    self.finished = true;
                    return Err(error.into());
                }
                other => {
                    tracing::debug!(?other, "ignoring an event that does not belong to an exec");
                    continue;
                }
            }));
        }
    }

    /// A cloneable handle to send stdin, signals and resizes while events are read.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }
}

/// Sends input and control requests to one running command.
#[derive(Debug, Clone)]
pub struct ExecControl {
    client: AgentClient,
    id: RequestId,
}

impl ExecControl {
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ProtocolError> {
        for chunk in data.chunks(MAX_CHUNK_LEN) {
            self.client
                .send(&Request::Stdin {
                    id: self.id,
                    data: ByteBuf::from(chunk.to_vec()),
                })
                .await?;
        }
        Ok(())
    }

    pub async fn close_stdin(&self) -> Result<(), ProtocolError> {
        self.client.send(&Request::CloseStdin { id: self.id }).await
    }

    /// Sends `signal` to the command's whole process group.
    pub async fn signal(&self, signal: i32) -> Result<(), ProtocolError> {
        self.client
            .send(&Request::Signal {
                id: self.id,
                signal,
            })
            .await
    }

    pub async fn resize(&self, size: PtySize) -> Result<(), ProtocolError> {
        self.client
            .send(&Request::Resize { id: self.id, size })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{HelloReply, server_handshake};
    use crate::message::StdinMode;

    fn echo_spec() -> ExecSpec {
        ExecSpec {
            argv: vec!["echo".into(), "hi".into()],
            env: Vec::new(),
            cwd: None,
            user: None,
            stdin: StdinMode::Null,
            timeout_ms: None,
            pty: None,
        }
    }

    #[tokio::test]
    async fn an_exec_sent_behind_hello_runs_and_streams() {
        let (host, agent) = tokio::io::duplex(4096);
        let agent = tokio::spawn(async move {
            let (read_half, write_half) = tokio::io::split(agent);
            let (mut reader, mut writer) =
                (FrameReader::new(read_half), FrameWriter::new(write_half));
            server_handshake(&mut reader, &mut writer, "test-agent/1".into()).await?;
            let request = reader
                .read::<Request>()
                .await?
                .ok_or(ProtocolError::Closed)?;
            let Request::Exec { id, spec } = request else {
                return Err(ProtocolError::Unexpected(format!("{request:?}")));
            };
            writer.write(&Event::Started { id, pid: 7 }).await?;
            let data = ByteBuf::from(spec.argv.join(" ").into_bytes());
            writer.write(&Event::Stdout { id, data }).await?;
            let status = ExitStatus::Code(3);
            writer
                .write(&Event::Exited {
                    id,
                    status,
                    timed_out: false,
                })
                .await?;
            // Later requests still reach the agent on the same connection.
            let ping = reader
                .read::<Request>()
                .await?
                .ok_or(ProtocolError::Closed)?;
            let Request::Ping { id } = ping else {
                return Err(ProtocolError::Unexpected(format!("{ping:?}")));
            };
            let result = Ok(Reply::Pong {
                agent_version: "test-agent/1".into(),
            });
            writer.write(&Event::Done { id, result }).await
        });
        let (client, mut exec) = AgentClient::connect_with_exec(host, "host/1".into(), echo_spec())
            .await
            .expect("connect");
        assert_eq!(client.negotiated().peer_software, "test-agent/1");
        let mut events = Vec::new();
        while let Some(event) = exec.next_event().await.expect("event") {
            events.push(event);
        }
        assert_eq!(
            events,
            [
                ExecEvent::Started { pid: 7 },
                ExecEvent::Stdout(b"echo hi".to_vec()),
                ExecEvent::Exited {
                    status: ExitStatus::Code(3),
                    timed_out: false
                },
            ]
        );
        assert_eq!(client.ping().await.expect("ping"), "test-agent/1");
        agent.await.expect("agent task").expect("agent side");
    }

    #[tokio::test]
    async fn dropping_the_last_handle_closes_the_connection() {
        let (host, agent) = tokio::io::duplex(4096);
        let agent = tokio::spawn(async move {
            let (read_half, write_half) = tokio::io::split(agent);
            let (mut reader, mut writer) =
                (FrameReader::new(read_half), FrameWriter::new(write_half));
            server_handshake(&mut reader, &mut writer, "test-agent/1".into()).await?;
            // The agent waits for requests; the host's hang-up must end that wait.
            let mut requests = 0;
            while reader.read::<Request>().await?.is_some() {
                requests += 1;
            }
            Ok::<_, ProtocolError>(requests)
        });
        let (client, exec) = AgentClient::connect_with_exec(host, "host/1".into(), echo_spec())
            .await
            .expect("connect");
        let control = exec.control();
        drop(exec);
        drop(client);
        // A control handle still holds the connection open.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!agent.is_finished());
        drop(control);
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), agent)
            .await
            .expect("the agent saw the connection close")
            .expect("agent task");
        // The pipelined exec, then the end of the stream.
        assert_eq!(read.expect("agent side"), 1);
    }

    #[tokio::test]
    async fn a_refused_hello_fails_the_pipelined_exec_unread() {
        let (host, agent) = tokio::io::duplex(4096);
        let agent = tokio::spawn(async move {
            let (read_half, write_half) = tokio::io::split(agent);
            let (mut reader, mut writer) =
                (FrameReader::new(read_half), FrameWriter::new(write_half));
            let _hello = reader.read::<crate::handshake::Hello>().await?;
            let refusal = HelloReply::Reject {
                reason: "no common protocol version".into(),
                min_version: 90,
                max_version: 99,
            };
            writer.write(&refusal).await
            // Dropped here: the exec behind the hello is never read.
        });
        let error = AgentClient::connect_with_exec(host, "host/1".into(), echo_spec())
            .await
            .expect_err("a refused handshake must fail");
        assert!(
            matches!(&error, ProtocolError::Refused(reason) if reason.contains("90..=99")),
            "{error:?}"
        );
        agent.await.expect("agent task").expect("agent side");
    }
}
