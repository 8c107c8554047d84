//! The agent's virtio-serial channel (`--serial N`), for microVMs that can be saved with
//! their memory: QEMU's vhost-user vsock device cannot migrate, its virtio-serial ports can.
//! Each port is a byte stream whose host end is a Unix socket QEMU listens on; it carries
//! one host connection at a time. The guest sees the host connect and disconnect through
//! the port's poll state (`POLLHUP` while nobody is connected, `read` then returning 0),
//! also after a restore, where every host connection of the saved VM is gone.
//!
//! The control port only says the agent is ready (the host waits for that line after
//! starting the VM); each data port serves one host connection after another.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ak_protocol::serial;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::task::JoinSet;

use crate::agent::Agent;

/// Where the guest's kernel lists the virtio-serial ports, each with its `name`.
const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How long the ports get to appear (the driver adds them as QEMU announces them, which
/// may be a moment after init started).
const PORTS_LIMIT: Duration = Duration::from_secs(10);
/// A re-check of a port's host connection, should a wake-up ever be missed: cheap, and
/// bounds how long a host connection could wait.
const RECHECK: Duration = Duration::from_millis(500);

/// Serves the control port and `ports` data ports until a shutdown; returns the exit code.
pub(crate) async fn serve_serial(agent: Agent, ports: u32) -> i32 {
    let control = match find_port(serial::CONTROL_PORT).await {
        Ok(path) => path,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    let mut served = JoinSet::new();
    for index in 0..ports {
        let name = serial::data_port(index);
        let path = match find_port(&name).await {
            Ok(path) => path,
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        };
        let port = match Port::open(&path) {
            Ok(port) => Arc::new(port),
            Err(e) => {
                tracing::error!("cannot open the serial port {}: {e}", path.display());
                return 1;
            }
        };
        served.spawn(serve_port(agent.clone(), port));
    }
    crate::guest::reached("serving the serial ports");
    // A blocking write: it completes once the host connects to the control port, which
    // it does right after starting the VM. The port stays open for the agent's life.
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).open(&control)?;
        file.write_all(serial::READY)?;
        Ok::<_, std::io::Error>(file)
    });
    let _control = match ready.await {
        Ok(Ok(file)) => {
            crate::guest::reached("ready line written");
            crate::guest::log_steps();
            file
        }
        Ok(Err(e)) => {
            tracing::error!(
                "cannot tell the host on the control port that the agent is ready: {e}"
            );
            return 1;
        }
        Err(e) => {
            tracing::error!("the control port's writer failed: {e}");
            return 1;
        }
    };
    agent.shutdown_requested().await;
    served.abort_all();
    0
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

/// Serves one host connection after another on `port`.
async fn serve_port(agent: Agent, port: Arc<Port>) {
    loop {
        if let Err(e) = port.wait_for_host().await {
            tracing::error!("waiting for the host on a serial port: {e}");
            return;
        }
        agent
            .serve_connection(PortStream { port: port.clone() })
            .await;
        // What the host still sent on a connection the agent ended (a bad frame) is not
        // the next connection's: drained until the host is gone.
        if let Err(e) = port.drain_until_hangup().await {
            tracing::error!("draining a serial port: {e}");
            return;
        }
    }
}

/// One open port, non-blocking. Its changes (data came, room to write, the host
/// connected or left) are watched through epoll instances of its own, edge-triggered,
/// each registered with the runtime: tokio's own registration of the port would keep the
/// hang-up it sees while no host is connected as a readiness that never clears, and spin.
#[derive(Debug)]
struct Port {
    fd: OwnedFd,
    /// Waited on by the reader (and while waiting for a host).
    reads: Edges,
    /// Waited on by the writer.
    writes: Edges,
}

impl Port {
    fn open(path: &std::path::Path) -> std::io::Result<Port> {
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
        })
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
    async fn wait_for_host(&self) -> std::io::Result<()> {
        while !self.host_connected()? {
            let _ =
                tokio::time::timeout(RECHECK, std::future::poll_fn(|cx| self.reads.poll_edge(cx)))
                    .await;
        }
        Ok(())
    }

    /// Reads and drops what comes until the host end is gone.
    async fn drain_until_hangup(&self) -> std::io::Result<()> {
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

/// One host connection on a port: ends (reads end of file) when the host disconnects;
/// writing to a host that is gone fails instead of waiting for the next connection, which
/// must never get this one's bytes.
#[derive(Debug)]
struct PortStream {
    port: Arc<Port>,
}

impl AsyncRead for PortStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            match read(&self.port.fd, buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready!(self.port.reads.poll_edge(cx))?;
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
        loop {
            match rustix::io::write(self.port.fd.as_fd(), data) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(rustix::io::Errno::AGAIN) => {
                    if !self.port.host_connected()? {
                        return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
                    }
                    ready!(self.port.writes.poll_edge(cx))?;
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
