//! The link rendezvous of the running relay: the sans-IO [`Rendezvous`] behind a lock, with
//! each slotted connection's outbox, so that opening, joining, sending and closing push the
//! frames the other side must see (`LinkPeerJoined`, `LinkMessage`, `LinkClosed`).
//!
//! Connections are identified by their hub connection id. A connection's slot is closed
//! when the connection ends ([`Links::close`]); expired slots are swept by a task of the
//! relay ([`sweep_loop`]) and on every open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cove_wire::{ErrorCode, ErrorReply, LinkCloseReason, Payload, ServerFrame};
use tokio::sync::watch;

use crate::hub::Outbox;
use crate::rendezvous::{Rendezvous, RendezvousError};
use crate::reply::encode_frame;

/// The relay's link slots and the outboxes of the connections in them.
pub(crate) struct Links {
    inner: Mutex<Inner>,
    lifetime_ms: u64,
}

struct Inner {
    rendezvous: Rendezvous<u64>,
    outboxes: HashMap<u64, Arc<Outbox>>,
}

impl Links {
    /// No slots; each lives `lifetime_ms` from its opening.
    pub(crate) fn new(lifetime_ms: u64) -> Self {
        Links {
            inner: Mutex::new(Inner {
                rendezvous: Rendezvous::with_lifetime(lifetime_ms),
                outboxes: HashMap::new(),
            }),
            lifetime_ms,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned lock still holds usable state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `OpenLink`: opens a slot for `outbox`'s connection; returns its number.
    pub(crate) fn open(&self, outbox: &Arc<Outbox>) -> Result<u32, ErrorReply> {
        let mut inner = self.lock();
        let now = now_ms();
        let told = inner.rendezvous.sweep(now);
        inner.tell_closed(&told, LinkCloseReason::Expired);
        let nameplate = inner
            .rendezvous
            .open(outbox.conn_id, now, &mut rand::thread_rng())
            .map_err(|e| error_reply(&e))?;
        inner.outboxes.insert(outbox.conn_id, Arc::clone(outbox));
        Ok(nameplate)
    }

    /// `JoinLink`: joins slot `nameplate`; the host hears `LinkPeerJoined`.
    pub(crate) fn join(&self, outbox: &Arc<Outbox>, nameplate: u32) -> Result<(), ErrorReply> {
        let mut inner = self.lock();
        let host = inner
            .rendezvous
            .join(outbox.conn_id, nameplate, now_ms())
            .map_err(|e| error_reply(&e))?;
        inner.outboxes.insert(outbox.conn_id, Arc::clone(outbox));
        inner.push(host, &ServerFrame::LinkPeerJoined);
        Ok(())
    }

    /// `LinkSend`: forwards `bytes` to the other device of the connection's slot.
    pub(crate) fn send(&self, conn: u64, bytes: Payload) -> Result<(), ErrorReply> {
        let mut inner = self.lock();
        let peer = inner
            .rendezvous
            .send(conn, bytes.len(), now_ms())
            .map_err(|e| error_reply(&e))?;
        inner.push(peer, &ServerFrame::LinkMessage { bytes });
        Ok(())
    }

    /// Closes the connection's slot (it ended); the other side hears `LinkClosed`.
    pub(crate) fn close(&self, conn: u64) {
        let mut inner = self.lock();
        if let Some(peer) = inner.rendezvous.close(conn) {
            inner.tell_closed(&[peer], LinkCloseReason::PeerLeft);
        }
        inner.outboxes.remove(&conn);
    }

    /// Whether the connection is in a slot (as host or joiner).
    pub(crate) fn is_linked(&self, conn: u64) -> bool {
        self.lock().outboxes.contains_key(&conn)
    }

    /// Drops expired slots and tells their connections.
    fn sweep(&self) {
        let mut inner = self.lock();
        let told = inner.rendezvous.sweep(now_ms());
        inner.tell_closed(&told, LinkCloseReason::Expired);
    }
}

impl Inner {
    fn push(&self, conn: u64, frame: &ServerFrame) {
        if let (Some(outbox), Some(bytes)) = (self.outboxes.get(&conn), encode_frame(frame)) {
            outbox.push(bytes);
        }
    }

    fn tell_closed(&mut self, conns: &[u64], reason: LinkCloseReason) {
        let frame: Option<Bytes> = encode_frame(&ServerFrame::LinkClosed { reason });
        for conn in conns {
            if let (Some(outbox), Some(frame)) = (self.outboxes.remove(conn), frame.clone()) {
                outbox.push(frame);
            }
        }
    }
}

/// Sweeps expired slots until shutdown, a few times per slot lifetime (at most every 5 s).
pub(crate) async fn sweep_loop(links: Arc<Links>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_millis((links.lifetime_ms / 4).clamp(10, 5_000));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => links.sweep(),
            () = crate::shared::stopped(&mut shutdown) => return,
        }
    }
}

/// The error reply for a refused rendezvous request, with the enum's message.
fn error_reply(e: &RendezvousError) -> ErrorReply {
    let code = match e {
        RendezvousError::NoSuchSlot => ErrorCode::LinkNotFound,
        RendezvousError::Taken => ErrorCode::LinkTaken,
        RendezvousError::Expired => ErrorCode::LinkExpired,
        RendezvousError::NotLinked | RendezvousError::AlreadyOpen | RendezvousError::TooMany => {
            ErrorCode::InvalidRequest
        }
        RendezvousError::Busy => ErrorCode::Unavailable,
        RendezvousError::TooLarge => ErrorCode::TooLarge,
    };
    ErrorReply::new(code, e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
