//! A relay without sockets: the relay core ([`cove_server::logic`]) over a [`RelayStore`]
//! (the in-memory one by default), driven one frame at a time. `cove-core`'s tests run
//! their network of clients through it, so they test against the relay's own rules rather
//! than a copy of them.
//!
//! What it adds to the core is only what the relay's connection layer adds, without I/O:
//! connection slots, the challenge per connection, the backlog pushed right after
//! `Authenticated` and then `BacklogDone`, live delivery of stored entries and Welcomes to
//! the connections of their recipients, a displaced older connection of the same device,
//! and the connection closed after a failed signature. There are no rate limits, no
//! batching, no back-pressure and no TURN server; everything happens in the call that
//! causes it, so a device is live as soon as its backlog has been returned.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cove_server::logic::{Backlog, BacklogStep, Connection, Fanout, PostOutcome};
use cove_server::store::{MemoryStore, NewPost, RelayStore};
use cove_wire::{ClientFrame, Delivery, DeviceId, ErrorCode, ServerFrame};

/// Frames for connection slots, in the order they are sent.
pub type Frames = Vec<(usize, ServerFrame)>;

/// The relay core behind numbered connection slots.
pub struct Relay {
    store: Arc<dyn RelayStore>,
    /// The open connections by slot.
    conns: BTreeMap<usize, Connection>,
    /// The slot of each authenticated device.
    online: HashMap<DeviceId, usize>,
    /// Connections opened so far (each gets its own challenge).
    opened: u64,
}

impl Default for Relay {
    fn default() -> Self {
        Relay::new()
    }
}

impl Relay {
    /// A relay over a fresh in-memory store.
    pub fn new() -> Self {
        Relay::with_store(Arc::new(MemoryStore::new()))
    }

    /// A relay over `store`.
    pub fn with_store(store: Arc<dyn RelayStore>) -> Self {
        Relay {
            store,
            conns: BTreeMap::new(),
            online: HashMap::new(),
            opened: 0,
        }
    }

    /// The store (for set-up and assertions).
    pub fn store(&self) -> &dyn RelayStore {
        self.store.as_ref()
    }

    /// A connection opens in `slot` (closing one still open there): returns its challenge.
    /// Each connection gets a different nonce.
    pub fn connect(&mut self, slot: usize) -> ServerFrame {
        self.disconnect(slot);
        self.opened += 1;
        let mut nonce = [0x5a; 32];
        nonce[..8].copy_from_slice(&self.opened.to_le_bytes());
        let conn = Connection::new(nonce);
        self.conns.insert(slot, conn);
        ServerFrame::Challenge {
            version: cove_wire::PROTOCOL_VERSION,
            nonce,
        }
    }

    /// The connection in `slot` closes.
    pub fn disconnect(&mut self, slot: usize) {
        if let Some(device) = self.conns.remove(&slot).and_then(|c| c.device())
            && self.online.get(&device) == Some(&slot)
        {
            self.online.remove(&device);
        }
    }

    /// The device the connection in `slot` authenticated as.
    pub fn device(&self, slot: usize) -> Option<DeviceId> {
        self.conns.get(&slot).and_then(Connection::device)
    }

    /// Handles one frame from the connection in `slot`: its response first, then (after
    /// authentication) the device's backlog and `BacklogDone`, then what others receive.
    /// A slot without an open connection (never opened, or closed by the relay) gets
    /// nothing.
    pub fn handle(&mut self, slot: usize, frame: ClientFrame, now_ms: u64) -> Frames {
        let ClientFrame::Request { id, body } = frame;
        let Some(conn) = self.conns.get_mut(&slot) else {
            return Vec::new();
        };
        let handled = conn.handle(self.store.as_ref(), body, now_ms);
        let answer = handled.answer;
        let mut out = vec![(
            slot,
            ServerFrame::Response {
                id,
                result: answer.reply,
            },
        )];
        if let Some(code) = answer.close {
            out.push((slot, ServerFrame::Closing { code }));
            self.disconnect(slot);
            return out;
        }
        if let Some(device) = answer.authenticated {
            if let Some(old) = self.online.insert(device, slot)
                && old != slot
            {
                out.push((
                    old,
                    ServerFrame::Closing {
                        code: ErrorCode::Displaced,
                    },
                ));
                self.conns.remove(&old);
            }
            self.push_backlog(slot, device, &mut out);
        }
        if let Some(fanout) = handled.fanout {
            self.fan_out(fanout, &mut out);
        }
        out
    }

    /// Appends `post` as the relay appends a post of `post.sender` (same rules; hostile
    /// tests use it to post bytes no client would): returns the outcome's reply for the
    /// poster and the deliveries to the online recipients.
    pub fn append(
        &mut self,
        post: NewPost,
    ) -> (Result<cove_wire::Reply, cove_wire::ErrorReply>, Frames) {
        let PostOutcome { reply, fanout } = cove_server::logic::append(self.store.as_ref(), post);
        let mut out = Vec::new();
        if let Some(fanout) = fanout {
            self.fan_out(fanout, &mut out);
        }
        (reply, out)
    }

    fn push_backlog(&mut self, slot: usize, device: DeviceId, out: &mut Frames) {
        let mut backlog = Backlog::new(device);
        loop {
            match backlog.step(self.store.as_ref()) {
                Ok(BacklogStep::Deliver(deliveries)) => {
                    out.extend(
                        deliveries
                            .into_iter()
                            .map(|d| (slot, ServerFrame::Deliver(d))),
                    );
                }
                Ok(BacklogStep::Done(_)) => {
                    out.push((slot, ServerFrame::BacklogDone));
                    return;
                }
                Err(_) => {
                    out.push((
                        slot,
                        ServerFrame::Closing {
                            code: ErrorCode::Internal,
                        },
                    ));
                    self.disconnect(slot);
                    return;
                }
            }
        }
    }

    fn fan_out(&self, fanout: Fanout, out: &mut Frames) {
        let Fanout {
            entry,
            recipients,
            welcome,
            welcomes,
        } = fanout;
        for device in &recipients {
            if let Some(&slot) = self.online.get(device) {
                out.push((slot, ServerFrame::Deliver(Delivery::Group(entry.clone()))));
            }
        }
        if let Some(welcome) = welcome {
            for (device, seq) in welcomes {
                if let Some(&slot) = self.online.get(&device) {
                    out.push((
                        slot,
                        ServerFrame::Deliver(Delivery::Inbox(welcome.entry(seq))),
                    ));
                }
            }
        }
    }
}
