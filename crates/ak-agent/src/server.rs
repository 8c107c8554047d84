//! One host connection: handshake, the request loop, and cleanup when it ends.

use std::sync::Arc;
use std::time::Duration;

use ak_protocol::handshake::{server_handshake, software};
use ak_protocol::{FrameReader, FrameWriter, Reply, Request, RequestId};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::agent::Shared;
use crate::exec::Execs;
use crate::files;
use crate::outbox::Outbox;
use crate::write::Writes;

/// How long a closing connection may take to write out what is still queued (such as the
/// reply to `Shutdown`) to a host that does not read.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the request loop goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The state of one connection; owned by its request loop.
struct Connection {
    shared: Arc<Shared>,
    outbox: Outbox,
    execs: Arc<Execs>,
    writes: Writes,
}

pub(crate) async fn serve<S>(shared: Arc<Shared>, stream: S)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read_half);
    let mut writer = FrameWriter::new(write_half);
    match server_handshake(&mut reader, &mut writer, software("ak-agent")).await {
        Ok(negotiated) => tracing::debug!(
            version = negotiated.version,
            peer = %negotiated.peer_software,
            "host connected"
        ),
        Err(e) => {
            tracing::warn!("handshake with the host failed: {e}");
            return;
        }
    }
    let (outbox, mut writer_task) = Outbox::start(writer);
    let mut connection = Connection {
        shared: shared.clone(),
        outbox,
        execs: Arc::new(Execs::default()),
        writes: Writes::default(),
    };
    let mut shutdown = shared.shutdown_receiver();
    loop {
        // Reading a frame is not cancel-safe, but a shutdown ends the connection anyway.
        let request = tokio::select! {
            request = reader.read::<Request>() => request,
            _ = shutdown.wait_for(|requested| *requested) => break,
        };
        match request {
            Ok(Some(request)) => {
                if connection.handle(request) == Flow::Stop {
                    break;
                }
            }
            Ok(None) => {
                tracing::debug!("the host closed the connection");
                break;
            }
            Err(e) => {
                tracing::warn!("closing the connection after a bad frame from the host: {e}");
                break;
            }
        }
    }
    connection.execs.kill_all();
    // Dropping the pending writes removes their temporary files.
    drop(connection.writes);
    connection.outbox.close();
    if tokio::time::timeout(FLUSH_TIMEOUT, &mut writer_task)
        .await
        .is_err()
    {
        tracing::debug!("the host did not take the last events in time");
        writer_task.abort();
    }
}

impl Connection {
    fn handle(&mut self, request: Request) -> Flow {
        match request {
            Request::Exec { id, spec } => {
                if let Err(e) = self.execs.start(&self.shared, &self.outbox, id, &spec) {
                    self.outbox.reply(id, Err(e));
                }
            }
            // Control requests have no reply on success; see `Execs` for failures.
            Request::Stdin { id, data } => self.execs.write_stdin(id, data.into_vec()),
            Request::CloseStdin { id } => self.execs.close_stdin(id),
            Request::Signal { id, signal } => self.execs.signal(id, signal),
            Request::Resize { id, size } => self.execs.resize(id, size),
            Request::ReadFile {
                id,
                path,
                max_bytes,
            } => match files::open_for_read(&self.shared.root, &path, max_bytes) {
                // Streamed by its own task: a large file must not hold up other requests.
                Ok((file, display)) => {
                    tokio::spawn(files::send_file(
                        self.outbox.clone(),
                        id,
                        file,
                        display,
                        max_bytes,
                    ));
                }
                Err(e) => self.outbox.reply(id, Err(e)),
            },
            Request::WriteBegin { id, path, mode } => {
                let outcome = self.writes.begin(&self.shared.root, id, &path, mode);
                self.answer_write(id, outcome);
            }
            Request::WriteChunk { id, data } => {
                let outcome = self.writes.chunk(id, &data);
                self.answer_write(id, outcome);
            }
            Request::WriteCommit { id } => {
                let outcome = self.writes.commit(id);
                self.answer_write(id, outcome);
            }
            Request::ListDir { id, path } => {
                let result = files::list_dir(&self.shared.root, &path).map(Reply::Entries);
                self.outbox.reply(id, result);
            }
            Request::Stat { id, path } => {
                let result = files::stat(&self.shared.root, &path).map(Reply::Stat);
                self.outbox.reply(id, result);
            }
            Request::Remove {
                id,
                path,
                recursive,
            } => {
                let result = files::remove(&self.shared.root, &path, recursive).map(|()| Reply::Ok);
                self.outbox.reply(id, result);
            }
            Request::Mkdir {
                id,
                path,
                parents,
                mode,
            } => {
                let result =
                    files::mkdir(&self.shared.root, &path, parents, mode).map(|()| Reply::Ok);
                self.outbox.reply(id, result);
            }
            Request::Ping { id } => {
                let version = env!("CARGO_PKG_VERSION").to_string();
                self.outbox.reply(
                    id,
                    Ok(Reply::Pong {
                        agent_version: version,
                    }),
                );
            }
            Request::Rename { id, from, to } => {
                let result = files::rename(&self.shared.root, &from, &to).map(|()| Reply::Ok);
                self.outbox.reply(id, result);
            }
            Request::Shutdown { id } => {
                tracing::info!("shutdown requested by the host");
                // Queued before the connection closes, so the host gets it.
                self.outbox.reply(id, Ok(Reply::Ok));
                self.shared.request_shutdown();
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn answer_write(&self, id: RequestId, outcome: crate::write::Outcome) {
        if let Some(result) = outcome {
            self.outbox.reply(id, result.map(|()| Reply::Ok));
        }
    }
}
