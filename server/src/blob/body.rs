//! Response bodies: fixed, empty, and streamed from a blob reader.

use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

use super::BlobBody;

/// A body with fixed content.
pub(crate) fn full(text: impl Into<Bytes>) -> BlobBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub(crate) fn empty() -> BlobBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A blob reader, and what one chunk read returns with it.
type Reader = Box<dyn Read + Send>;
type Chunk = (Reader, std::io::Result<BytesMut>);

/// Exactly `remaining` bytes of a blob reader, one chunk at a time.
///
/// Each read runs on the blocking pool for just that read (the way `tokio::fs::File`
/// works), and the next one starts only when hyper took the previous chunk (one chunk of
/// read-ahead, so disk and network overlap): no thread ever waits on the client. A client
/// that stops reading therefore holds no thread, and two chunks at most (the one hyper is
/// sending and the one read ahead); dropping the body (the connection went) frees them (a
/// read in flight finishes and is dropped).
pub(crate) struct ReaderBody {
    state: State,
    remaining: u64,
    chunk: usize,
    /// The service's count of bytes sent, added to per chunk.
    sent: Arc<AtomicU64>,
}

enum State {
    /// Between reads (in a mutex only so the body is `Sync`, as hyper's boxed body must be;
    /// it is never locked while shared).
    Idle(Mutex<Reader>),
    Reading(JoinHandle<Chunk>),
    Done,
}

impl ReaderBody {
    /// Streams `len` bytes of `reader` in chunks of at most `chunk` bytes.
    pub(crate) fn new(reader: Reader, len: u64, chunk: usize, sent: Arc<AtomicU64>) -> Self {
        ReaderBody {
            state: State::Idle(Mutex::new(reader)),
            remaining: len,
            chunk: chunk.max(1),
            sent,
        }
    }

    /// Reads the next chunk on the blocking pool.
    fn read_next(&self, mut reader: Reader) -> JoinHandle<Chunk> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(self.chunk)
            .min(self.chunk);
        tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(want);
            let read = reader.read(&mut buf).map(|n| {
                buf.truncate(n);
                buf
            });
            (reader, read)
        })
    }
}

impl Body for ReaderBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Done => return Poll::Ready(None),
                State::Idle(_) if this.remaining == 0 => return Poll::Ready(None),
                State::Idle(reader) => {
                    let reader = reader.into_inner().unwrap_or_else(|p| p.into_inner());
                    this.state = State::Reading(this.read_next(reader));
                }
                State::Reading(mut task) => {
                    let joined = match Pin::new(&mut task).poll(cx) {
                        Poll::Pending => {
                            this.state = State::Reading(task);
                            return Poll::Pending;
                        }
                        Poll::Ready(joined) => joined,
                    };
                    let (reader, read) = match joined {
                        Ok(chunk) => chunk,
                        Err(e) => return Poll::Ready(Some(Err(std::io::Error::other(e)))),
                    };
                    let buf = match read {
                        Ok(buf) if buf.is_empty() => {
                            return Poll::Ready(Some(Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "blob shorter than recorded",
                            ))));
                        }
                        Ok(buf) => buf,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    };
                    this.remaining = this.remaining.saturating_sub(buf.len() as u64);
                    this.sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    // Read ahead one chunk while the connection sends this one.
                    this.state = match this.remaining {
                        0 => State::Done,
                        _ => State::Reading(this.read_next(reader)),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) || self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
