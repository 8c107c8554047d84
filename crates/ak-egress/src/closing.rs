//! A sandbox's TCP stream whose shutdown is seen through. `ipstack` (1.0.1) sends the
//! sandbox its FIN from `poll_shutdown` only when none of the stream's data is in flight,
//! and nothing wakes a shutdown that found some in flight: when a server closes right
//! after its answer (HTTP/1.0, most one-shot protocols), the sandbox never learns it and a
//! client that reads to the end waits forever. Polling the shutdown again every few
//! milliseconds until it completes gives the sandbox its FIN once its ACKs are in.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often a pending shutdown is polled again.
const RETRY: Duration = Duration::from_millis(5);

/// `inner` with a shutdown that is polled until it completes.
#[derive(Debug)]
pub struct Closing<S> {
    inner: S,
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Closing<S> {
    pub fn new(inner: S) -> Closing<S> {
        Closing { inner, retry: None }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Closing<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Closing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Poll::Ready(result) = Pin::new(&mut this.inner).poll_shutdown(cx) {
                this.retry = None;
                return Poll::Ready(result);
            }
            let retry = this
                .retry
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(RETRY)));
            match retry.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Time to ask again (and to arm a new timer if it is still pending).
                Poll::Ready(()) => this.retry = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A stream whose shutdown completes only on its third poll, waking no one: as
    /// ipstack's does while data is in flight.
    struct Stubborn {
        polls: usize,
    }

    impl AsyncRead for Stubborn {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Stubborn {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.polls += 1;
            if this.polls >= 3 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn a_shutdown_that_wakes_no_one_completes() {
        let mut stream = Closing::new(Stubborn { polls: 0 });
        tokio::time::timeout(Duration::from_secs(2), stream.shutdown())
            .await
            .expect("the shutdown was polled again")
            .unwrap();
        assert_eq!(stream.inner.polls, 3);
    }
}
