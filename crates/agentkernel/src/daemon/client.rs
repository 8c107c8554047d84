//! The CLI's side of the daemon socket.

use std::io::{IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, anyhow};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};

use super::{MAX_MESSAGE, Request, Response};

/// The first read of an answer (it carries the passed descriptor, if any).
const FIRST_READ: usize = 4 * 1024;
/// Each further read of a longer answer.
const MORE_READ: usize = 64 * 1024;

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon is running (no socket at {0}); start one with `agentkernel daemon start`")]
    NotRunning(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Connects to the daemon at `path`, refusing a socket that another user owns.
pub fn connect(path: &Path) -> Result<UnixStream, ClientError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => return Err(ClientError::NotRunning(path.display().to_string())),
    };
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(anyhow!(
            "the daemon socket {} is owned by uid {}, not by you (uid {me}); refusing to use it",
            path.display(),
            meta.uid()
        )
        .into());
    }
    UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
            ClientError::NotRunning(path.display().to_string())
        }
        _ => anyhow!("cannot connect to the daemon at {}: {e}", path.display()).into(),
    })
}

/// Sends `request` and reads the answer, with the file descriptor that came along, if any.
pub fn call(path: &Path, request: &Request) -> Result<(Response, Option<OwnedFd>), ClientError> {
    let mut stream = connect(path)?;
    let mut line = serde_json::to_vec(request).context("encode the request")?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .context("send the request to the daemon")?;

    // Answers are mostly a few hundred bytes: a zeroed 64 KiB buffer (and a 64 KiB stack
    // frame, whose probes touch every page) cost every `run` ~30 page faults. Longer
    // answers grow `answer` below.
    let mut buffer = [0u8; FIRST_READ];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut buffer)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )
    .context("read the daemon's answer")?;
    let mut fd = None;
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            fd = fds.next();
        }
    }
    let mut answer = buffer[..received.bytes].to_vec();
    while !answer.ends_with(b"\n") {
        if answer.len() > MAX_MESSAGE {
            return Err(anyhow!("the daemon's answer is larger than {MAX_MESSAGE} bytes").into());
        }
        let start = answer.len();
        answer.resize(start + MORE_READ, 0);
        let n = stream
            .read(&mut answer[start..])
            .context("read the daemon's answer")?;
        answer.truncate(start + n);
        if n == 0 {
            return Err(anyhow!("the daemon closed the connection without answering").into());
        }
    }
    let response = serde_json::from_slice(&answer).context("the daemon's answer is malformed")?;
    Ok((response, fd))
}
