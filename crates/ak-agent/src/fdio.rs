//! Asynchronous reads and writes on a raw pipe or pty master fd, through tokio's reactor.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::OFlags;
use rustix::io::Errno;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A non-blocking pipe end or pty master registered with the runtime.
#[derive(Debug)]
pub(crate) struct FdStream {
    inner: AsyncFd<OwnedFd>,
}

impl FdStream {
    /// Registers `fd` for reading or writing (one direction per fd: a pty master used both
    /// ways is registered twice, through two `dup`s).
    pub(crate) fn new(fd: OwnedFd, interest: Interest) -> io::Result<FdStream> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        // SAFETY: the `OwnedFd` is open and owned by the `AsyncFd` from here on; it is
        // never replaced (no `get_mut`), so it stays the same open file until the `AsyncFd`
        // is dropped, and its `as_raw_fd` always returns that fd.
        let inner = unsafe { AsyncFd::register_with_interest(fd, interest) }?;
        Ok(FdStream { inner })
    }

    /// Reads what is available, waiting until something is; `Ok(0)` at end of file.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.try_io(|fd| retry_intr(|| rustix::io::read(fd.get_ref(), &mut *buf))) {
                Ok(Ok(n)) => return Ok(n),
                // A pty master reads EIO once no process has the terminal open any more:
                // that is its end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::IO.raw_os_error()) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `data`, waiting for room as needed.
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.inner.writable().await?;
            match guard.try_io(|fd| retry_intr(|| rustix::io::write(fd.get_ref(), data))) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// How many bytes can be read right now without waiting (`FIONREAD`).
    pub(crate) fn available(&self) -> usize {
        match rustix::io::ioctl_fionread(self.inner.get_ref()) {
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Err(errno) => {
                tracing::debug!("FIONREAD failed: {errno}");
                0
            }
        }
    }
}

fn retry_intr<T>(mut call: impl FnMut() -> Result<T, Errno>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::INTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}
