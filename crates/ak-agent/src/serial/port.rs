//! One virtio-serial port of the agent: non-blocking reads and writes watched through
//! epoll, the host's presence from its poll state, and the ending of the connection it
//! serves when the control port says every connection starts over.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::sync::{Notify, watch};

/// A re-check of a port (its host connection, or data to read and room to write while a
/// connection waits for them), should a wake-up ever be missed: cheap, and bounds how
/// long a host connection could wait.
const RECHECK: Duration = Duration::from_millis(500);

/// One open port, non-blocking. Its changes (data came, room to write, the host
/// connected or left) are watched through epoll instances of its own, edge-triggered,
/// each registered with the runtime: tokio's own registration of the port would keep the
/// hang-up it sees while no host is connected as a readiness that never clears, and spin.
#[derive(Debug)]
pub(super) struct Port {
    fd: OwnedFd,
    /// Waited on by the reader (and while waiting for a host).
    reads: Edges,
    /// Waited on by the writer.
    writes: Edges,
    resets: Mutex<Resets>,
    /// Wakes the port's task when a reset is asked while it waits for a host or drains.
    reset_asked: Notify,
    /// The last reset the port's task carried out.
    reset_done: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Resets {
    /// How many resets were asked.
    asked: u64,
    /// The connection being served, ended by the next reset.
    serving: Option<Arc<Ending>>,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct End {
    /// A reset ended it.
    pub reset: bool,
    /// The agent read the host's hang-up.
    pub hung_up: bool,
}

impl Port {
    pub(super) fn open(path: &Path) -> std::io::Result<Port> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let fd = OwnedFd::from(file);
        Ok(Port {
            reads: Edges::watch(&fd)?,
            writes: Edges::watch(&fd)?,
            fd,
            resets: Mutex::default(),
            reset_asked: Notify::new(),
            reset_done: watch::Sender::new(0),
        })
    }

    fn resets(&self) -> MutexGuard<'_, Resets> {
        // Two plain fields, consistent even if a holder panicked.
        self.resets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the port's task to end the connection it serves (if any) and drop what came
    /// for it; returns the reset's number for [`Port::wait_reset`].
    pub(super) fn request_reset(&self) -> u64 {
        let asked = {
            let mut resets = self.resets();
            resets.asked += 1;
            if let Some(serving) = &resets.serving {
                serving.end();
            }
            resets.asked
        };
        self.reset_asked.notify_one();
        asked
    }

    /// Resolves once the port's task carried out reset `target`.
    pub(super) async fn wait_reset(&self, target: u64) {
        let _ = self
            .reset_done
            .subscribe()
            .wait_for(|done| *done >= target)
            .await;
    }

    /// Carries out the resets asked since the last one: no connection is served here, so
    /// what is waiting to be read came for an ended one and is dropped.
    pub(super) fn settle(&self) {
        let asked = self.resets().asked;
        if *self.reset_done.borrow() < asked {
            self.discard_pending();
            self.reset_done.send_replace(asked);
        }
    }

    /// Starts serving a connection, unless a reset is pending (then `None`).
    pub(super) fn begin(&self) -> Option<Arc<Ending>> {
        let mut resets = self.resets();
        if resets.asked != *self.reset_done.borrow() {
            return None;
        }
        let ending = Arc::new(Ending::default());
        resets.serving = Some(ending.clone());
        Some(ending)
    }

    /// The connection `ending` is no longer served; how it ended.
    pub(super) fn finish(&self, ending: &Ending) -> End {
        self.resets().serving = None;
        let state = ending.state();
        End {
            reset: state.ended,
            hung_up: state.hung_up,
        }
    }

    /// Whether a host end is connected: the port polls `POLLHUP` while none is.
    fn host_connected(&self) -> std::io::Result<bool> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout.
        if unsafe { libc::poll(&mut poll, 1, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(poll.revents & libc::POLLHUP == 0)
    }

    /// Resolves once a host end is connected (the driver wakes the port's waiters when
    /// it connects), re-checking now and then should a wake-up ever be missed.
    pub(super) async fn wait_for_host(&self) -> std::io::Result<()> {
        while !self.host_connected()? {
            let _ =
                tokio::time::timeout(RECHECK, std::future::poll_fn(|cx| self.reads.poll_edge(cx)))
                    .await;
        }
        Ok(())
    }

    /// [`Port::wait_for_host`], `false` when a reset was asked meanwhile.
    pub(super) async fn wait_for_host_or_reset(&self) -> std::io::Result<bool> {
        tokio::select! {
            waited = self.wait_for_host() => waited.map(|()| true),
            () = self.reset_asked.notified() => Ok(false),
        }
    }

    /// Reads what is there, waiting for something or the host's hang-up (0).
    pub(super) async fn read_some(&self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match read(&self.fd, buffer) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| self.reads.poll_edge(cx)).await?;
                }
                done => return done,
            }
        }
    }

    /// Writes all of `data` to the host connected now; fails once it is gone.
    pub(super) async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            match rustix::io::write(self.fd.as_fd(), data) {
                Ok(n) => data = &data[n..],
                Err(rustix::io::Errno::AGAIN) => {
                    if !self.host_connected()? {
                        return Err(std::io::ErrorKind::BrokenPipe.into());
                    }
                    std::future::poll_fn(|cx| self.writes.poll_edge(cx)).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads and drops what comes until the host end is gone or a reset is asked.
    pub(super) async fn drain_until_hangup(&self) -> std::io::Result<()> {
        let drained = async {
            let mut buffer = [0u8; 4096];
            while self.host_connected()? {
                match read(&self.fd, &mut buffer) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let _ = tokio::time::timeout(
                            RECHECK,
                            std::future::poll_fn(|cx| self.reads.poll_edge(cx)),
                        )
                        .await;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        tokio::select! {
            drained = drained => drained,
            () = self.reset_asked.notified() => Ok(()),
        }
    }

    /// Reads and drops what is waiting, without waiting for more.
    fn discard_pending(&self) {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = read(&self.fd, &mut buffer) {
            if n == 0 {
                break;
            }
        }
    }
}

/// The end of one served connection: set by a reset (reads then see its end, writes
/// fail) or by the host's hang-up the reader saw.
#[derive(Debug, Default)]
pub(super) struct Ending {
    state: Mutex<EndingState>,
}

#[derive(Debug, Default)]
struct EndingState {
    ended: bool,
    hung_up: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Ending {
    fn state(&self) -> MutexGuard<'_, EndingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn end(&self) {
        let mut state = self.state();
        state.ended = true;
        for waker in [state.reader.take(), state.writer.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }

    /// Whether the connection ended; if not, `waker` is woken when it does.
    fn ended_or_wake(&self, waker: &Waker, reader: bool) -> bool {
        let mut state = self.state();
        if !state.ended {
            let slot = if reader {
                &mut state.reader
            } else {
                &mut state.writer
            };
            *slot = Some(waker.clone());
        }
        state.ended
    }
}

/// An edge-triggered epoll instance watching one port, registered with the runtime: it
/// is readable once something changed on the port since it was last drained.
#[derive(Debug)]
struct Edges {
    epoll: AsyncFd<OwnedFd>,
}

impl Edges {
    fn watch(port: &OwnedFd) -> std::io::Result<Edges> {
        // SAFETY: plain system calls on descriptors this function owns or borrows; the
        // new descriptor is owned at once.
        let epoll = unsafe {
            let raw = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if raw < 0 {
                return Err(std::io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(raw)
        };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `event` is valid for the call.
        if unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                port.as_raw_fd(),
                &mut event,
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the `OwnedFd` is open and owned by the `AsyncFd` from here on; it is
        // never replaced, so it stays the same open file until the `AsyncFd` is dropped.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }?;
        Ok(Edges { epoll })
    }

    /// Ready once the port changed since the last call returned ready.
    fn poll_edge(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut guard = ready!(self.epoll.poll_read_ready(cx))?;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        loop {
            // SAFETY: `events` is valid for 4 entries; a zero timeout never blocks.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 4, 0) };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Poll::Ready(Err(error));
            }
            if n < 4 {
                break;
            }
        }
        // Cleared unless a new change came meanwhile (the runtime counts them).
        guard.clear_ready();
        Poll::Ready(Ok(()))
    }
}

fn read(fd: &OwnedFd, buffer: &mut [u8]) -> std::io::Result<usize> {
    rustix::io::read(fd.as_fd(), buffer).map_err(std::io::Error::from)
}

/// One host connection on a port: ends (reads end of file) when the host disconnects or
/// a reset ends it; writing to a host that is gone, or after a reset, fails instead of
/// waiting for the next connection, which must never get this one's bytes.
#[derive(Debug)]
pub(super) struct PortStream {
    port: Arc<Port>,
    ending: Arc<Ending>,
    /// When a waiting read looks again without a wake-up (see [`RECHECK`]).
    read_recheck: Recheck,
    /// When a waiting write looks again without a wake-up.
    write_recheck: Recheck,
}

impl PortStream {
    pub(super) fn new(port: Arc<Port>, ending: Arc<Ending>) -> PortStream {
        PortStream {
            port,
            ending,
            read_recheck: Recheck::default(),
            write_recheck: Recheck::default(),
        }
    }
}

/// Waits for a port's next change, or [`RECHECK`] at most. A connection in the middle of
/// a file transfer once waited for good with its data delivered to the guest and nothing
/// answered (a named VM under load), as a lost wake-up would leave it (see "Connections
/// that waited for good" in docs/architecture.md). The caller tries again either way; a
/// try that finds what no wake-up announced says so in the guest's log.
#[derive(Debug, Default)]
struct Recheck {
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last wait ended by the timer, not a wake-up.
    timed_out: bool,
}

impl Recheck {
    /// Called after a try that found nothing: so a try after a timed-out wait did too.
    fn poll_wait(&mut self, edges: &Edges, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.timed_out = false;
        if let Poll::Ready(result) = edges.poll_edge(cx) {
            self.timer = None;
            return Poll::Ready(result);
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(RECHECK)));
        ready!(timer.as_mut().poll(cx));
        self.timer = None;
        self.timed_out = true;
        Poll::Ready(Ok(()))
    }

    /// The try after a wait succeeded: notes it if the wait had timed out.
    fn found(&mut self, what: &str) {
        if std::mem::take(&mut self.timed_out) {
            tracing::warn!("a serial port had {what} that no wake-up announced");
        }
    }
}

impl AsyncRead for PortStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = self.get_mut();
        loop {
            if this.ending.ended_or_wake(cx.waker(), true) {
                return Poll::Ready(Ok(()));
            }
            match read(&this.port.fd, buf.initialize_unfilled()) {
                Ok(0) => {
                    this.ending.state().hung_up = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    this.read_recheck.found("data");
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready!(this.read_recheck.poll_wait(&this.port.reads, cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for PortStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.ending.ended_or_wake(cx.waker(), false) {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            match rustix::io::write(this.port.fd.as_fd(), data) {
                Ok(n) => {
                    this.write_recheck.found("room to write");
                    return Poll::Ready(Ok(n));
                }
                Err(rustix::io::Errno::AGAIN) => {
                    if !this.port.host_connected()? {
                        return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
                    }
                    ready!(this.write_recheck.poll_wait(&this.port.writes, cx))?;
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
