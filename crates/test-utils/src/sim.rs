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

use cove_server::logic::{Backlog, BacklogStep, Connection, Fanout, Handshakes, PostOutcome};
use cove_server::store::{MemoryStore, NewPost, RelayStore};
use cove_wire::sign::ChannelBinding;
use cove_wire::{ClientFrame, Delivery, DeviceId, ErrorCode, ServerFrame};

/// Frames for connection slots, in the order they are sent.
pub type Frames = Vec<(usize, ServerFrame)>;

/// The relay core behind numbered connection slots.
pub struct Relay {
    store: Arc<dyn RelayStore>,
    /// Handshake validation, as the relay does it (on unless turned off).
    handshakes: Handshakes,
    /// The open connections by slot.
    conns: BTreeMap<usize, Connection>,
    /// The slot of each authenticated device.
    online: HashMap<DeviceId, usize>,
    /// Connections opened so far (each gets its own challenge).
    opened: u64,
    /// The channel binding of the connection last opened in each slot.
    channels: HashMap<usize, ChannelBinding>,
}

/// The relay "certificate hash" of every sim connection's [`ChannelBinding`].
pub const SIM_RELAY_CERTIFICATE: [u8; 32] = [0x5c; 32];

/// The stand-in channel binding of the `opened`-th sim connection.
fn sim_channel(opened: u64) -> ChannelBinding {
    let mut exporter = [0xe0; 32];
    exporter[..8].copy_from_slice(&opened.to_le_bytes());
    ChannelBinding {
        exporter,
        relay_certificate: SIM_RELAY_CERTIFICATE,
    }
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

    /// A relay over `store`, validating handshakes as the relay does by default.
    pub fn with_store(store: Arc<dyn RelayStore>) -> Self {
        Relay::configured(store, true)
    }

    /// A relay over `store` with handshake validation on or off (off only for tests that
    /// post placeholder MLS bytes).
    pub fn configured(store: Arc<dyn RelayStore>, validate_handshakes: bool) -> Self {
        Relay {
            store,
            handshakes: Handshakes::new(validate_handshakes),
            conns: BTreeMap::new(),
            online: HashMap::new(),
            opened: 0,
            channels: HashMap::new(),
        }
    }

    /// Turns handshake validation on or off from now on (a test that then posts placeholder
    /// or bare-openmls bytes, to test a client's own defences, turns it off).
    pub fn set_validate_handshakes(&mut self, on: bool) {
        self.handshakes = Handshakes::new(on);
    }

    /// The store (for set-up and assertions).
    pub fn store(&self) -> &dyn RelayStore {
        self.store.as_ref()
    }

    /// A connection opens in `slot` (closing one still open there): returns its challenge.
    /// Each connection gets a different nonce and a different [`ChannelBinding`] (there is no
    /// TLS here: a fixed value per connection stands in for the exporter, and
    /// [`SIM_RELAY_CERTIFICATE`] for the relay's certificate hash); see [`Relay::channel`].
    pub fn connect(&mut self, slot: usize) -> ServerFrame {
        self.disconnect(slot);
        self.opened += 1;
        let mut nonce = [0x5a; 32];
        nonce[..8].copy_from_slice(&self.opened.to_le_bytes());
        let channel = sim_channel(self.opened);
        self.channels.insert(slot, channel);
        let conn = Connection::new(nonce, channel);
        self.conns.insert(slot, conn);
        ServerFrame::Challenge {
            version: cove_wire::PROTOCOL_VERSION,
            nonce,
        }
    }

    /// The channel binding of the connection last opened in `slot` (what its device signs
    /// with the nonce).
    pub fn channel(&self, slot: usize) -> Option<ChannelBinding> {
        self.channels.get(&slot).copied()
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
        let handled = conn.handle(self.store.as_ref(), &self.handshakes, body, now_ms);
        let answer = handled.answer;
        let mut out = Vec::new();
        if !answer.quiet {
            out.push((
                slot,
                ServerFrame::Response {
                    id,
                    result: answer.reply,
                },
            ));
        }
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
        let PostOutcome { reply, fanout } =
            cove_server::logic::append(self.store.as_ref(), &self.handshakes, post);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cove_wire::{
        ClientFrame, Delivery, Epoch, ErrorCode, Payload, PostKind, Reply, Request, RequestId,
        ServerFrame, Signature,
    };

    use super::{Frames, Relay};
    use crate::{DeviceKeys, random_group_id};

    fn request(id: u32, body: Request) -> ClientFrame {
        ClientFrame::Request {
            id: RequestId(id),
            body,
        }
    }

    fn nonce(challenge: &ServerFrame) -> [u8; 32] {
        match challenge {
            ServerFrame::Challenge { nonce, .. } => *nonce,
            other => panic!("not a challenge: {other:?}"),
        }
    }

    /// Connects `slot` and registers `keys` there; returns the frames after the challenge.
    fn register(relay: &mut Relay, slot: usize, keys: &mut DeviceKeys) -> Frames {
        let challenge = relay.connect(slot);
        let body = Request::Register {
            user: keys.user.clone(),
            key: keys.public_key(),
            signature: keys.sign_challenge(&nonce(&challenge), &relay.channel(slot).unwrap()),
        };
        let frames = relay.handle(slot, request(1, body), 1);
        match &frames[0] {
            (
                s,
                ServerFrame::Response {
                    result: Ok(Reply::Authenticated { device }),
                    ..
                },
            ) if *s == slot => keys.device = Some(*device),
            other => panic!("not authenticated: {other:?}"),
        }
        frames
    }

    fn authenticate(relay: &mut Relay, slot: usize, keys: &DeviceKeys) -> Frames {
        let challenge = relay.connect(slot);
        let body = Request::Authenticate {
            user: keys.user.clone(),
            device: keys.id(),
            signature: keys.sign_challenge(&nonce(&challenge), &relay.channel(slot).unwrap()),
        };
        relay.handle(slot, request(1, body), 1)
    }

    /// Each connection gets its own challenge; the response comes first, then (here empty)
    /// the backlog's end.
    #[test]
    fn registration_answers_then_ends_the_backlog() {
        let mut relay = Relay::new();
        let first = nonce(&relay.connect(0));
        let second = nonce(&relay.connect(1));
        assert_ne!(first, second);
        let mut alice = DeviceKeys::generate("alice");
        let frames = register(&mut relay, 0, &mut alice);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[1], (0, ServerFrame::BacklogDone));
        assert_eq!(relay.device(0), Some(alice.id()));
    }

    /// A bad signature is answered `AuthenticationFailed`, then the connection closes and
    /// later frames get nothing.
    #[test]
    fn a_bad_signature_closes_the_connection() {
        let mut relay = Relay::new();
        relay.connect(0);
        let alice = DeviceKeys::generate("alice");
        let body = Request::Register {
            user: alice.user.clone(),
            key: alice.public_key(),
            signature: Signature([1; 64]),
        };
        let frames = relay.handle(0, request(1, body), 1);
        assert!(
            matches!(&frames[0], (0, ServerFrame::Response { result: Err(e), .. }) if e.code == ErrorCode::AuthenticationFailed),
            "{frames:?}"
        );
        assert_eq!(
            frames[1],
            (
                0,
                ServerFrame::Closing {
                    code: ErrorCode::AuthenticationFailed
                }
            )
        );
        assert_eq!(frames.len(), 2);
        assert!(relay.handle(0, request(2, Request::Ping), 2).is_empty());
    }

    /// A post is answered, then its entry goes to the online members (the poster included)
    /// and not to offline ones; an offline member gets it in its backlog, then
    /// `BacklogDone`.
    #[test]
    fn posts_reach_online_members_and_the_backlog_of_offline_ones() {
        // Placeholder MLS bytes: this is about routing, so handshake validation is off.
        let mut relay = Relay::configured(
            std::sync::Arc::new(cove_server::store::MemoryStore::new()),
            false,
        );
        let mut alice = DeviceKeys::generate("alice");
        let mut bob = DeviceKeys::generate("bob");
        register(&mut relay, 0, &mut alice);
        register(&mut relay, 1, &mut bob);
        let group = random_group_id();
        let create = Request::CreateGroup {
            group,
            group_info: Payload::default(),
            tree: Payload::default(),
        };
        let frames = relay.handle(0, request(2, create), 2);
        assert!(matches!(
            &frames[..],
            [(
                0,
                ServerFrame::Response {
                    result: Ok(Reply::GroupCreated),
                    ..
                }
            )]
        ));
        // Add bob by a commit (the relay does not read the MLS bytes).
        let commit = Request::Post {
            group,
            epoch: Epoch(0),
            kind: PostKind::Commit {
                added: vec![bob.id()].into(),
                removed: Vec::new().into(),
                welcome: Some(Payload(vec![9; 8])),
                group_info: Payload::default(),
            },
            payload: Payload(vec![1; 8]),
        };
        let frames = relay.handle(0, request(3, commit), 3);
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert!(
            matches!(&frames[1], (0, ServerFrame::Deliver(Delivery::Group(e))) if e.seq.0 == 1)
        );
        assert!(
            matches!(&frames[2], (1, ServerFrame::Deliver(Delivery::Inbox(w))) if w.payload.0 == vec![9; 8]),
            "the added device gets the Welcome, not the commit: {frames:?}"
        );
        relay.disconnect(1);
        let post = Request::Post {
            group,
            epoch: Epoch(1),
            kind: PostKind::Application,
            payload: Payload(vec![2; 8]),
        };
        let frames = relay.handle(0, request(4, post.clone()), 4);
        assert!(
            matches!(
                &frames[..],
                [
                    (0, ServerFrame::Response { result: Ok(Reply::Posted { seq }), .. }),
                    (0, ServerFrame::Deliver(Delivery::Group(_)))
                ] if seq.0 == 2
            ),
            "{frames:?}"
        );
        // The same bytes again: answered with the original seq, delivered to nobody.
        let frames = relay.handle(0, request(5, post), 5);
        assert!(
            matches!(
                &frames[..],
                [(0, ServerFrame::Response { result: Ok(Reply::Posted { seq }), .. })] if seq.0 == 2
            ),
            "{frames:?}"
        );
        let frames = authenticate(&mut relay, 1, &bob);
        let kinds: Vec<String> = frames
            .iter()
            .map(|(slot, f)| {
                assert_eq!(*slot, 1);
                match f {
                    ServerFrame::Response { .. } => "response".into(),
                    ServerFrame::Deliver(Delivery::Inbox(_)) => "welcome".into(),
                    ServerFrame::Deliver(Delivery::Group(e)) => format!("entry {}", e.seq.0),
                    ServerFrame::BacklogDone => "done".into(),
                    other => format!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(kinds, ["response", "welcome", "entry 2", "done"]);
    }

    /// The relay core checks the channel binding: each connection has its own, and an
    /// answer signed with another connection's binding is refused `AuthenticationFailed`.
    #[test]
    fn an_answer_signed_for_another_channel_is_refused() {
        let mut relay = Relay::new();
        let mut alice = DeviceKeys::generate("alice");
        register(&mut relay, 0, &mut alice);
        relay.connect(1);
        let challenge = relay.connect(2);
        let (one, two) = (relay.channel(1).unwrap(), relay.channel(2).unwrap());
        assert_ne!(one, two);
        let body = Request::Authenticate {
            user: alice.user.clone(),
            device: alice.id(),
            signature: alice.sign_challenge(&nonce(&challenge), &one),
        };
        let frames = relay.handle(2, request(1, body), 1);
        assert!(
            matches!(&frames[0], (2, ServerFrame::Response { result: Err(e), .. }) if e.code == ErrorCode::AuthenticationFailed),
            "{frames:?}"
        );
        assert_eq!(relay.device(2), None);
    }

    /// A second connection of the same device displaces the first.
    #[test]
    fn a_second_connection_displaces_the_first() {
        let mut relay = Relay::new();
        let mut alice = DeviceKeys::generate("alice");
        register(&mut relay, 0, &mut alice);
        let frames = authenticate(&mut relay, 1, &alice);
        assert!(
            frames.contains(&(
                0,
                ServerFrame::Closing {
                    code: ErrorCode::Displaced
                }
            )),
            "{frames:?}"
        );
        assert_eq!(relay.device(0), None);
        assert_eq!(relay.device(1), Some(alice.id()));
        assert!(relay.handle(0, request(9, Request::Ping), 9).is_empty());
    }
}
