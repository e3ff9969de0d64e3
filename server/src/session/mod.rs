//! One WebSocket connection: challenge, authentication, requests, backlog and live delivery.
//!
//! The module is split by job; each part depends only on the ones below it:
//! - [`run`] (this file): the connection: challenge, the read loop, teardown;
//! - `requests`: one request: rate limits, the core's routing, where the work runs (blocking
//!   pool, pipeline, ack lane), the answer (starts the backlog on authentication);
//! - `state`: the per-connection `Session` state (around the core's [`Connection`]);
//! - `backlog`: the backlog task, stepping the core's [`crate::logic::Backlog`];
//! - `writer`: the connection's writer task.
//!
//! Below those: [`crate::logic`] (the relay core: every decision, without I/O),
//! [`crate::reply`] (response frames, store error mapping), [`crate::shared`] (what every
//! connection shares), [`crate::pipeline`] and [`crate::hub`].
//!
//! Three tasks serve a connection:
//! - the **reader** (this module's [`run`]) decodes frames and answers requests in order;
//!   posts go to the [`crate::pipeline`] and are answered by the writer thread once durable;
//! - the **writer** drains the connection's bounded queue ([`Outbox`]), feeding every frame
//!   it finds and flushing once (coalesced writes), sends pings, and writes `Closing` frames;
//! - the **backlog** task, started on authentication, pushes the device's inbox and every
//!   group log from its cursors, then `BacklogDone`, then makes the device live in the hub.

mod backlog;
mod requests;
mod state;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use cove_wire::sign::ChannelBinding;
use cove_wire::{ClientFrame, DecodeError, ErrorCode};
use futures_util::{FutureExt, StreamExt};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, error};

use crate::hub::{CloseReason, Outbox, TokenBucket};
use crate::logic::Connection;
use crate::reply::encode_frame;
use crate::shared::{Shared, stopped};

use self::state::Session;
use self::writer::write_loop;

/// Requests an unauthenticated connection may send per second (and as a burst).
const PREAUTH_RATE: f64 = 5.0;
const PREAUTH_BURST: f64 = 10.0;

/// Reads a live device's backlog again and makes it live once more (cluster mode: the hub
/// found a gap, see [`crate::hub`]); no second `BacklogDone`.
pub(crate) async fn resync(shared: Arc<Shared>, outbox: Arc<Outbox>, device: cove_wire::DeviceId) {
    backlog::push_backlog(shared, outbox, device, false).await;
}

/// Serves one upgraded WebSocket until it closes. `channel` binds its challenge to the TLS
/// connection it runs on.
pub(crate) async fn run<S>(
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    channel: ChannelBinding,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_id = shared.hub.next_conn_id();
    let limits = &shared.limits;
    let (sink, mut stream) = ws.split();
    let (outbox, receiver) = Outbox::new(
        conn_id,
        limits.outgoing_queue_frames,
        limits.outgoing_queue_bytes,
    );
    let close_rx = receiver.close.clone();
    let writer = tokio::spawn(write_loop(
        sink,
        receiver,
        limits.ping_interval(),
        limits.close_grace(),
    ));
    debug!(conn = conn_id, %peer, "websocket open");

    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let conn = Connection::new(nonce, channel);
    if let Some(frame) = conn.challenge().as_ref().and_then(encode_frame) {
        outbox.push(frame);
    }
    let mut session = Session {
        shared: Arc::clone(&shared),
        outbox: Arc::clone(&outbox),
        conn,
        account: crate::logic::AccountSession::default(),
        preauth: TokenBucket::new(PREAUTH_RATE, PREAUTH_BURST, Instant::now()),
        peer: peer.ip(),
        backlog: None,
        start_backlog: false,
        close_after_answer: None,
        acks_in_lane: Arc::new(AtomicUsize::new(0)),
        posts: Vec::new(),
    };
    let mut closing = close_rx;
    let mut shutdown = shared.shutdown.clone();
    let idle = limits.idle_timeout();
    // One timer for the whole connection, registered once: first the deadline to
    // authenticate (the handshake timeout), then the idle check. It is pushed back only when
    // it fires and messages arrived meanwhile, so a silent connection is closed after one to
    // two idle periods and an active one costs no timer work per message.
    let timer = tokio::time::sleep(limits.handshake_timeout());
    tokio::pin!(timer);
    let mut heard = false;
    loop {
        // Cheap checks first; the select polls the close and shutdown signals (which takes
        // locks) only when no message is ready.
        if closing.has_changed().unwrap_or(true) {
            break;
        }
        if *shutdown.borrow() {
            outbox.close(CloseReason::Code(ErrorCode::Unavailable));
            break;
        }
        // Posts decoded from what the socket had ready are gathered; once no further frame
        // is ready they go to the pipeline as one job (one wake-up of the post writer, one
        // store batch, one fan-out for the burst).
        let ready = if session.posts.is_empty() {
            None
        } else {
            match stream.next().now_or_never() {
                Some(next) => Some(next),
                None => {
                    session.submit_posts();
                    None
                }
            }
        };
        let next = if let Some(next) = ready {
            Ok(next)
        } else {
            tokio::select! {
            biased;
            next = stream.next() => Ok(next),
            () = &mut timer => Err(()),
            _ = closing.changed() => break,
            () = stopped(&mut shutdown) => {
                outbox.close(CloseReason::Code(ErrorCode::Unavailable));
                break;
            }
            }
        };
        if next.is_err() && session.conn.device().is_some() && std::mem::take(&mut heard) {
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
            continue;
        }
        // Nor is one in the middle of a password login, change or reset: the client runs
        // Argon2id between the steps. It is closed once a whole idle period passes in
        // silence, like an authenticated one.
        if next.is_err()
            && session.conn.device().is_none()
            && session.account.in_progress()
            && std::mem::take(&mut heard)
        {
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
            continue;
        }
        // A new machine linking by a code stays unauthenticated while in its link slot
        // (bounded by the slot's lifetime); it is not closed for not authenticating.
        if next.is_err() && session.conn.device().is_none() && shared.links.is_linked(conn_id) {
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
            continue;
        }
        heard = true;
        let message = match next {
            Err(_) if session.conn.device().is_none() => {
                debug!(conn = conn_id, "no authentication in time");
                outbox.close(CloseReason::Code(ErrorCode::Unauthenticated));
                break;
            }
            Err(_) => {
                debug!(conn = conn_id, "idle timeout");
                outbox.close(CloseReason::Code(ErrorCode::IdleTimeout));
                break;
            }
            Ok(None) => {
                outbox.close(CloseReason::Quiet);
                break;
            }
            Ok(Some(Err(e))) => {
                let reason = match &e {
                    WsError::Capacity(_) => CloseReason::Code(ErrorCode::TooLarge),
                    WsError::Protocol(_) | WsError::Utf8(_) => {
                        CloseReason::Code(ErrorCode::Malformed)
                    }
                    _ => CloseReason::Quiet,
                };
                debug!(conn = conn_id, error = %e, "websocket read failed");
                outbox.close(reason);
                break;
            }
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Binary(bytes) => match cove_wire::decode::<ClientFrame>(&bytes) {
                Ok(ClientFrame::Request { id, body }) => {
                    let was_authenticated = session.conn.device().is_some();
                    session.request(id, body, bytes.len()).await;
                    if !was_authenticated && session.conn.device().is_some() {
                        // From now on the timer checks for idleness.
                        timer.as_mut().reset(tokio::time::Instant::now() + idle);
                        heard = false;
                    }
                }
                Err(e) => {
                    debug!(conn = conn_id, error = %e, len = bytes.len(), "undecodable frame");
                    let code = match e {
                        DecodeError::TooLarge(_) => ErrorCode::TooLarge,
                        _ => ErrorCode::Malformed,
                    };
                    outbox.close(CloseReason::Code(code));
                    break;
                }
            },
            Message::Text(_) => {
                debug!(conn = conn_id, "text message refused");
                outbox.close(CloseReason::Code(ErrorCode::Malformed));
                break;
            }
            Message::Close(_) => {
                outbox.close(CloseReason::Quiet);
                break;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    // Posts read before the connection ended are stored as before; their replies may not
    // reach the device any more.
    session.submit_posts();
    shared.links.close(conn_id);
    if let Some(backlog) = session.backlog.take() {
        backlog.abort();
    }
    if let Some(device) = session.conn.device() {
        shared.hub.unregister(device, conn_id);
    }
    drop(session);
    drop(outbox);
    if let Err(e) = writer.await {
        error!(conn = conn_id, error = %e, "connection writer failed");
    }
    debug!(conn = conn_id, "websocket closed");
}
