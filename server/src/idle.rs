//! A write idle timeout on a connection's byte stream: while the HTTP layer owns it, a
//! write (or flush) that makes no progress for the configured time fails with `TimedOut`,
//! which ends the HTTP connection. That is how a response body to a client that stopped
//! reading (a stalled blob download) is cut off and its memory freed. A WebSocket has its
//! own bounds (a bounded outgoing queue, `SlowReader`, pings), so the timeout is switched
//! off once a connection is upgraded.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tracing::debug;

/// A stream whose writes time out after `idle` without progress, while armed.
pub(crate) struct WriteIdle<S> {
    inner: S,
    idle: Duration,
    /// Started at the first write that could not proceed; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    armed: Arc<AtomicBool>,
}

impl<S> WriteIdle<S> {
    /// Wraps `inner`, armed; the returned switch disarms it (store `false`).
    pub(crate) fn new(inner: S, idle: Duration) -> (Self, Arc<AtomicBool>) {
        let armed = Arc::new(AtomicBool::new(true));
        let stream = WriteIdle {
            inner,
            idle,
            stalled: None,
            armed: Arc::clone(&armed),
        };
        (stream, armed)
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() || !self.armed.load(Ordering::Relaxed) {
            self.stalled = None;
            return polled;
        }
        let idle = self.idle;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = None;
        debug!(
            idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            "HTTP write idle: the client reads nothing; closing"
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no write progress within the HTTP body idle timeout",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteIdle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteIdle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, polled)
    }
}
