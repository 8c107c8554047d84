//! Forwarding a command's output to the host as it arrives.
//!
//! A command's pipe can stay open after the command exits, when a background process it
//! started inherited it. The pump then stops waiting for end-of-file shortly after the exit
//! (the grace period), but never drops what the command itself wrote: the bytes already in
//! the pipe when the exit was seen are always forwarded, however slowly the host reads.

use ak_protocol::{Event, RequestId};
use serde_bytes::ByteBuf;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fdio::FdStream;
use crate::outbox::Outbox;

/// The most read from a pipe at once, and so the largest output event (well under
/// `ak_protocol::MAX_CHUNK_LEN`).
const READ_CHUNK: usize = 64 * 1024;
const _: () = assert!(READ_CHUNK <= ak_protocol::MAX_CHUNK_LEN);
/// The buffer a pump starts with. Most commands write a few lines: two 64 KiB buffers per
/// exec, zeroed and faulted in page by page, cost more than the command's output; the
/// buffer doubles whenever a read fills it, up to [`READ_CHUNK`].
const FIRST_CHUNK: usize = 4 * 1024;

/// Which output event a pump produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Tells the pumps when the command exited: `Some(end of the grace period)`.
pub(crate) type ExitNotice = watch::Receiver<Option<Instant>>;

/// Forwards `source` as `stream` events for `id` until end-of-file, or until the grace
/// period after the command's exit has passed and the owed bytes are sent.
pub(crate) async fn pump(
    source: Option<FdStream>,
    outbox: Outbox,
    id: RequestId,
    stream: Stream,
    mut exited: ExitNotice,
) {
    let Some(source) = source else {
        return;
    };
    let mut buf = vec![0u8; FIRST_CHUNK];
    // Bytes that were in the pipe when the exit was seen: the command's own last output.
    let mut owed: Option<usize> = None;
    loop {
        let grace_end = *exited.borrow_and_update();
        let read = match grace_end {
            None => {
                tokio::select! {
                    read = source.read(&mut buf) => read,
                    changed = exited.changed() => {
                        if changed.is_err() {
                            // The exec task is gone; so is anyone to report to.
                            return;
                        }
                        continue;
                    }
                }
            }
            Some(deadline) => {
                let owed = *owed.get_or_insert_with(|| source.available());
                if owed > 0 {
                    source.read(&mut buf).await
                } else if Instant::now() >= deadline {
                    // Checked before reading, so that a background process that writes
                    // without pause cannot keep the exec open.
                    tracing::debug!(
                        id,
                        ?stream,
                        "output still open after the command exited; not waiting for its end"
                    );
                    return;
                } else {
                    match tokio::time::timeout_at(deadline, source.read(&mut buf)).await {
                        Ok(read) => read,
                        Err(_elapsed) => {
                            tracing::debug!(
                                id,
                                ?stream,
                                "output still open after the command exited; not waiting for its end"
                            );
                            return;
                        }
                    }
                }
            }
        };
        let n = match read {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(id, ?stream, "cannot read the command's output: {e}");
                return;
            }
        };
        if let Some(owed) = owed.as_mut() {
            *owed = owed.saturating_sub(n);
        }
        let data = ByteBuf::from(buf[..n].to_vec());
        if n == buf.len() && buf.len() < READ_CHUNK {
            buf.resize(buf.len() * 2, 0);
        }
        let event = match stream {
            Stream::Stdout => Event::Stdout { id, data },
            Stream::Stderr => Event::Stderr { id, data },
        };
        if outbox.send_data(event).await.is_err() {
            return;
        }
    }
}
