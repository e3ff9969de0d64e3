//! The writer task: drains the connection's queue into the socket, coalescing writes.

use bytes::Bytes;
use cove_wire::{ErrorCode, ServerFrame};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::debug;

use crate::hub::{CloseReason, OutboxReceiver, Queued};
use crate::reply::encode_frame;

/// Most queue entries the writer takes before it flushes.
const COALESCE_FRAMES: usize = 512;

/// Drains the outgoing queue into the socket, coalescing writes; pings; closes.
pub(super) async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    receiver: OutboxReceiver,
    ping_interval: std::time::Duration,
    grace: std::time::Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let OutboxReceiver {
        frames: mut queue,
        bytes,
        mut close,
    } = receiver;
    // The hot path is one wake-up per batch of queued frames: a channel receive, the writes
    // and one flush. The idle wait is only the queue and a timer registered once (a close
    // request wakes it through the queue, see `Outbox::close`); the close flag and the ping
    // deadline are checked with an uncontended read lock and an atomic load.
    let ping = tokio::time::sleep(ping_interval);
    tokio::pin!(ping);
    let reason = loop {
        let requested = *close.borrow();
        if let Some(reason) = requested {
            break reason;
        }
        if ping.is_elapsed() {
            ping.as_mut()
                .reset(tokio::time::Instant::now() + ping_interval);
            if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                break CloseReason::Quiet;
            }
        }
        tokio::select! {
            biased;
            queued = queue.recv() => {
                let Some(queued) = queued else {
                    // The connection is over; a close reason set before still counts.
                    break (*close.borrow()).unwrap_or(CloseReason::Quiet);
                };
                if matches!(&queued, Queued::One(frame) if frame.is_empty()) {
                    continue;
                }
                let io = async {
                    // Give the byte budget back once per batch (one semaphore release).
                    let mut taken = 0;
                    let mut queued = queued;
                    let mut entries = 0;
                    loop {
                        match queued {
                            Queued::One(frame) if frame.is_empty() => break,
                            Queued::One(frame) => {
                                taken += frame.len();
                                sink.feed(Message::Binary(frame)).await?;
                            }
                            Queued::Run(frames) => {
                                for frame in frames.iter() {
                                    taken += frame.len();
                                    sink.feed(Message::Binary(frame.clone())).await?;
                                }
                            }
                        }
                        entries += 1;
                        if entries >= COALESCE_FRAMES {
                            break;
                        }
                        match queue.try_recv() {
                            Ok(more) => queued = more,
                            Err(_) => break,
                        }
                    }
                    bytes.add_permits(taken);
                    sink.flush().await
                };
                tokio::select! {
                    biased;
                    r = io => if r.is_err() { break CloseReason::Quiet },
                    // A reader that stopped reading blocks the write: closing interrupts it.
                    _ = close.changed() => {}
                }
            }
            () = &mut ping => {}
        }
    };
    let finish = async {
        if let CloseReason::Code(code) = reason {
            if code != ErrorCode::SlowReader {
                // Frames already queued (e.g. the reply explaining the close) go first.
                while let Ok(queued) = queue.try_recv() {
                    match queued {
                        Queued::One(frame) => {
                            if !frame.is_empty() {
                                sink.feed(Message::Binary(frame)).await?;
                            }
                        }
                        Queued::Run(frames) => {
                            for frame in frames.iter() {
                                sink.feed(Message::Binary(frame.clone())).await?;
                            }
                        }
                    }
                }
            }
            if let Some(frame) = encode_frame(&ServerFrame::Closing { code }) {
                sink.feed(Message::Binary(frame)).await?;
            }
            let close = CloseFrame {
                code: close_code(code),
                reason: "".into(),
            };
            sink.send(Message::Close(Some(close))).await?;
        } else {
            sink.close().await?;
        }
        Ok::<(), WsError>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(grace, finish).await {
        debug!(error = %e, "closing handshake failed");
    }
}

pub(super) fn close_code(code: ErrorCode) -> CloseCode {
    match code {
        ErrorCode::TooLarge => CloseCode::Size,
        ErrorCode::Malformed => CloseCode::Protocol,
        ErrorCode::Unavailable | ErrorCode::IdleTimeout => CloseCode::Away,
        ErrorCode::Internal => CloseCode::Error,
        ErrorCode::Displaced => CloseCode::Normal,
        _ => CloseCode::Policy,
    }
}
