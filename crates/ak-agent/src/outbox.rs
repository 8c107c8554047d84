//! The outgoing side of a connection: one queue of encoded frames and the task that writes
//! them to the socket.
//!
//! Replies never wait: the connection's request loop queues them and goes on reading, so a
//! host that is slow to read one command's output still gets its control requests served.
//! Bulk data (command output, file contents) waits for room in a per-connection byte
//! budget instead, so a command that writes faster than the host reads is slowed down
//! through its pipe rather than growing the agent's memory.

use std::sync::Arc;

use ak_protocol::frame::encode_frame;
use ak_protocol::{AgentError, ErrorKind, Event, FrameWriter, ProtocolError, Reply, RequestId};
use tokio::io::AsyncWrite;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Bytes of bulk data queued but not yet written, per connection.
const DATA_BUDGET: usize = 4 * 1024 * 1024;

/// The connection is gone; nothing more can be sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection to the host is closed")]
pub(crate) struct Closed;

enum Outgoing {
    /// An encoded frame, holding its share of the data budget until it is written.
    Frame(Vec<u8>, Option<OwnedSemaphorePermit>),
    /// Everything queued before this is written; then the socket is shut down.
    Close,
}

/// Queues events for one connection. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox {
    queue: mpsc::UnboundedSender<Outgoing>,
    budget: Arc<Semaphore>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("budget_left", &self.budget.available_permits())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Starts the writer task for `writer`.
    pub(crate) fn start<W>(writer: FrameWriter<W>) -> (Outbox, JoinHandle<()>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(DATA_BUDGET));
        let task = tokio::spawn(write_frames(writer, rx, budget.clone()));
        (Outbox { queue, budget }, task)
    }

    /// Queues a small event at once.
    pub(crate) fn send(&self, event: &Event) -> Result<(), Closed> {
        match encode_frame(event) {
            Ok(frame) => self.push(Outgoing::Frame(frame, None)),
            Err(e) => {
                tracing::error!(id = event.id(), "cannot encode an event: {e}");
                Ok(())
            }
        }
    }

    /// Queues the final answer to a request. An answer too large for one frame (a huge
    /// directory listing) becomes a `TooLarge` error, so the request is still answered.
    pub(crate) fn reply(&self, id: RequestId, result: Result<Reply, AgentError>) {
        let event = Event::Done { id, result };
        let frame = match encode_frame(&event) {
            Err(ProtocolError::FrameTooLarge { len, max }) => encode_frame(&Event::Done {
                id,
                result: Err(AgentError::new(
                    ErrorKind::TooLarge,
                    format!("the reply of {len} bytes exceeds the protocol's frame limit of {max}"),
                )),
            }),
            other => other,
        };
        match frame {
            Ok(frame) => {
                // A closed connection has nobody left to answer.
                let _ = self.push(Outgoing::Frame(frame, None));
            }
            Err(e) => tracing::error!(id, "cannot encode a reply: {e}"),
        }
    }

    /// Queues an event carrying bulk data, first waiting until the data fits the budget.
    /// Events queued through here keep their order with each other.
    pub(crate) async fn send_data(&self, event: Event) -> Result<(), Closed> {
        let len = match &event {
            Event::Stdout { data, .. }
            | Event::Stderr { data, .. }
            | Event::FileData { data, .. } => data.len(),
            _ => 0,
        };
        // Never more than the whole budget, or the wait could not end.
        let cost = u32::try_from(len.clamp(1, DATA_BUDGET)).map_err(|_| Closed)?;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        match encode_frame(&event) {
            Ok(frame) => self.push(Outgoing::Frame(frame, Some(permit))),
            Err(e) => {
                tracing::error!(id = event.id(), "cannot encode an event: {e}");
                Ok(())
            }
        }
    }

    /// Asks the writer to finish what is queued and shut the socket down.
    pub(crate) fn close(&self) {
        let _ = self.push(Outgoing::Close);
    }

    fn push(&self, item: Outgoing) -> Result<(), Closed> {
        self.queue.send(item).map_err(|_| Closed)
    }
}

async fn write_frames<W>(
    mut writer: FrameWriter<W>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    budget: Arc<Semaphore>,
) where
    W: AsyncWrite + Unpin,
{
    while let Some(item) = queue.recv().await {
        match item {
            Outgoing::Frame(frame, permit) => {
                if let Err(e) = writer.write_raw(&frame).await {
                    tracing::debug!("cannot write to the host: {e}");
                    break;
                }
                drop(permit);
            }
            Outgoing::Close => {
                if let Err(e) = writer.shutdown().await {
                    tracing::debug!("cannot shut the connection down: {e}");
                }
                break;
            }
        }
    }
    // Wakes every sender waiting for budget: their data has nowhere to go any more.
    budget.close();
}
