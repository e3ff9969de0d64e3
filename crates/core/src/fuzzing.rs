//! Fuzz entry points: the functions the targets in `fuzz/fuzz_targets/` call, and that this
//! crate's tests replay over the checked-in corpora in `fuzz/corpus/<target>/` (see
//! `fuzz/README.md`). Not an API: each function panics when the code under test breaks a
//! property it promises (that is how a fuzzer reports it), never for any input alone.
//!
//! - [`content_envelope`]: the envelope decoder of [`crate::content`];
//! - [`attachment_decrypt`]: the attachment [`Decryptor`] under [`FUZZ_FILE_KEY`];
//! - [`backup_segment`]: a history-backup index entry and segment under
//!   [`FUZZ_BACKUP_KEY`];
//! - [`drive_state`]: a drive tree state ([`crate::drive::Tree::decode_state`]);
//! - [`MlsIngest`]: a group-log entry or an inbox Welcome fed to a [`Client`] that is a member
//!   of a group.

use cove_store::{MemoryStore, StoreError};
use cove_wire::sign::ChannelBinding;
use cove_wire::{
    ClientFrame, Delivery, DeviceId, EntryKind, Epoch, GroupEntry, GroupId, InboxEntry, InboxKind,
    Payload, PostKind, Reply, Request, Seq, ServerFrame, UserName,
};

use crate::attachment::{Decryptor, Encryptor, Expected, FileKey, HEADER_LEN, Header};
use crate::content::{Decoded, Envelope, KNOWN_CONTENT_KINDS};
use crate::{Client, CommandError, Event, HandleError, OpenError, Output};

/// Decodes `data` as an application-message envelope. A decoded envelope must encode and
/// decode back to itself.
pub fn content_envelope(data: &[u8]) {
    // The lenient decoder agrees with the strict one on known kinds, and calls only kinds
    // beyond the known ones unsupported.
    match Envelope::decode_lenient(data) {
        Ok(Decoded::Known(e)) => assert_eq!(Envelope::decode(data).ok(), Some(e)),
        Ok(Decoded::Unsupported { kind, .. }) => assert!(
            kind >= KNOWN_CONTENT_KINDS && Envelope::decode(data).is_err(),
            "a known kind ({kind}) decoded as unsupported"
        ),
        Err(_) => assert!(Envelope::decode(data).is_err()),
    }
    let Ok(envelope) = Envelope::decode(data) else {
        return;
    };
    let again = envelope.encode().map(|bytes| Envelope::decode(&bytes));
    assert!(
        matches!(&again, Ok(Ok(e)) if *e == envelope),
        "a decoded envelope does not round-trip: {envelope:?} -> {again:?}"
    );
}

/// Decodes `data` as a drive tree state (what a [`crate::drive::DriveOp::Snapshot`] carries,
/// from another member). A state that decodes must encode to bytes that decode to itself,
/// and every live entry must resolve by its path and be listed by its folder.
pub fn drive_state(data: &[u8]) {
    use crate::drive::{ROOT, Tree};
    let Ok(tree) = Tree::decode_state(data) else {
        return;
    };
    let again = Tree::decode_state(&tree.encode_state());
    assert!(
        again.as_ref() == Ok(&tree),
        "a decoded drive state does not round-trip"
    );
    let Ok(entries) = tree.walk(&ROOT) else {
        panic!("a decoded drive state has no root folder");
    };
    for entry in &entries {
        assert_eq!(
            tree.resolve(&entry.path),
            Ok(entry.id),
            "an entry does not resolve"
        );
    }
    let _ = (tree.trash(), tree.usage(), tree.links());
}

/// The backup key every [`backup_segment`] input is opened with (for user
/// [`FUZZ_BACKUP_USER`]).
pub const FUZZ_BACKUP_KEY: [u8; 32] = [0x24; 32];
/// The user every [`backup_segment`] input is opened for.
pub const FUZZ_BACKUP_USER: &str = "alice";

/// Opens a history-backup segment. Layout: byte 0 is the length `n` of the index entry in
/// bytes 1..1+n, the rest is the sealed segment. An entry that does not decode is replaced
/// by device 1, counter 0. A segment that opens must be this user's and the entry's, within
/// the bounds, and seal again to bytes that open to itself.
pub fn backup_segment(data: &[u8]) {
    use crate::backup::{self, BackupKey, SegmentEntry, SegmentId};
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Some((entry, sealed)) = rest.split_at_checked(usize::from(n)) else {
        return;
    };
    let entry = SegmentEntry::decode(entry).unwrap_or(SegmentEntry {
        version: backup::BACKUP_VERSION,
        id: SegmentId {
            device: DeviceId(1),
            counter: 0,
        },
    });
    let Ok(user) = UserName::new(FUZZ_BACKUP_USER) else {
        return;
    };
    let key = BackupKey::new(FUZZ_BACKUP_KEY.into());
    let Ok(segment) = backup::open(&key, &user, &entry, sealed) else {
        return;
    };
    assert!(segment.user == user && segment.id == entry.id);
    assert!(segment.messages.len() <= backup::MAX_SEGMENT_MESSAGES);
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed([9; 32]);
    let again = backup::seal(&key, &segment, &mut rng)
        .map(|bytes| backup::open(&key, &user, &entry, &bytes));
    assert!(
        matches!(&again, Ok(Ok(s)) if *s == segment),
        "an opened segment does not seal back to itself"
    );
}

/// The key every [`attachment_decrypt`] input is decrypted with.
pub const FUZZ_FILE_KEY: [u8; 32] = [0x42; 32];

/// Decrypts `data` under [`FUZZ_FILE_KEY`]. Layout: byte 0 holds flags (bit 0: expect the
/// plaintext size in bytes 3..5 (u16 BE); bit 1: expect the chunk size of the blob's header;
/// bit 2: hash elsewhere), bytes 1..3 the size (u16 BE, at least 1) of the pieces the blob is
/// pushed in; the rest is the blob. A blob that decrypts must be exactly what the encryptor
/// makes of the released plaintext with the blob's own header.
pub fn attachment_decrypt(data: &[u8]) {
    let [flags, p0, p1, s0, s1, ..] = *data else {
        return;
    };
    let Some(blob) = data.get(5..) else {
        return;
    };
    let piece = usize::from(u16::from_be_bytes([p0, p1])).max(1);
    let mut expected = Expected::default();
    if flags & 1 != 0 {
        expected.size = Some(u64::from(u16::from_be_bytes([s0, s1])));
    }
    let header = blob
        .get(..HEADER_LEN)
        .and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok())
        .map(Header::decode);
    if flags & 2 != 0
        && let Some(Ok(h)) = header
    {
        expected.chunk_size = Some(h.chunk_size);
    }
    let key = FileKey::from_bytes(FUZZ_FILE_KEY);
    let mut decryptor = Decryptor::new(&key, expected);
    if flags & 4 != 0 {
        decryptor = decryptor.hash_elsewhere();
    }
    let mut plain = Vec::new();
    for chunk in blob.chunks(piece) {
        if decryptor.push(chunk, &mut plain).is_err() {
            return;
        }
    }
    let Ok(opened) = decryptor.finish(&mut plain) else {
        return;
    };
    assert_eq!(opened.plaintext_len, plain.len() as u64);
    assert_eq!(opened.ciphertext_len, blob.len() as u64);
    // It decrypted, so the header is valid: sealing the plaintext again under it gives the
    // same blob (nothing in a blob is unauthenticated).
    let Some(Ok(h)) = header else {
        panic!("a blob without a valid header decrypted");
    };
    let resealed =
        Encryptor::with_nonce_prefix(&key, h.nonce_prefix, h.chunk_size).and_then(|mut enc| {
            let mut out = Vec::new();
            enc.push(&plain, &mut out)?;
            enc.finish(&mut out)?;
            Ok(out)
        });
    assert!(
        matches!(&resealed, Ok(b) if b == blob),
        "a decrypted blob differs from the blob its plaintext encrypts to"
    );
}

/// The relay a fixture is built against: in tests and fuzz targets the relay core of
/// `cove-server` (`cove_test_utils::sim::Relay`), wrapped by the caller (this crate never
/// links the relay).
pub trait FixtureRelay {
    /// A connection opens in `slot`: its `Challenge`.
    fn connect(&mut self, slot: usize) -> ServerFrame;
    /// The channel binding of the connection last opened in `slot`.
    fn channel(&self, slot: usize) -> Option<ChannelBinding>;
    /// One frame from the connection in `slot`: the frames the relay sends, by slot.
    fn handle(&mut self, slot: usize, frame: ClientFrame, now_ms: u64)
    -> Vec<(usize, ServerFrame)>;
}

/// Why [`MlsIngest::build`] failed (a bug in the core or the relay, not fuzz input).
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Opening a client failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A command was refused.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A frame could not be handled.
    #[error(transparent)]
    Handle(#[from] HandleError),
    /// The memory store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A step did not get as far as it should have.
    #[error("fixture step failed: {0}")]
    Step(&'static str),
}

/// MLS ingest at a group member: bob, added by alice to a group, as he was right after
/// joining (a snapshot of his store). [`MlsIngest::ingest`] reopens him from the snapshot,
/// authenticates and feeds him one entry, so every input starts from the same state.
pub struct MlsIngest {
    /// Bob's store right after joining.
    store: MemoryStore,
    /// Bob's device.
    device: DeviceId,
    /// Alice's device (the sender of fed group entries).
    sender: DeviceId,
    /// The group.
    group: GroupId,
    /// Its epoch at bob.
    epoch: Epoch,
    /// The log position after the last entry bob saw.
    next_seq: Seq,
    /// The inbox position after the last entry bob saw.
    next_inbox: Seq,
    /// Real inputs (alice's text, alice's key update, the Welcome), for a seed corpus.
    samples: Vec<Vec<u8>>,
}

/// Input tag of [`MlsIngest::ingest`]: an application message in the group log.
pub const INGEST_APPLICATION: u8 = 0;
/// Input tag: a proposal in the group log.
pub const INGEST_PROPOSAL: u8 = 1;
/// Input tag: a commit in the group log, adding and removing no device.
pub const INGEST_COMMIT: u8 = 2;
/// Input tag: a commit in the group log that claims to remove bob.
pub const INGEST_COMMIT_REMOVING: u8 = 3;
/// Input tag: a Welcome (into the fixture's group) in bob's inbox.
pub const INGEST_WELCOME: u8 = 4;
/// Input tag: a Welcome into another group in bob's inbox.
pub const INGEST_WELCOME_ELSEWHERE: u8 = 5;
/// Input tags 6, 7, 8: patches to sample 0, 1, 2 (see [`MlsIngest::ingest`]).
pub const INGEST_PATCHED_SAMPLE: u8 = 6;

const NOW_MS: u64 = 1_700_000_000_000;
const ALICE: usize = 0;
const BOB: usize = 1;
const BOB_SEED: [u8; 32] = [2; 32];

impl MlsIngest {
    /// Builds the fixture on `relay` (fresh): alice and bob register, alice creates a group
    /// and adds bob; bob's store is kept; then alice sends a text and updates her keys, which
    /// bob does not see (they become [`MlsIngest::samples`]). Deterministic for a
    /// deterministic relay.
    pub fn build(relay: &mut impl FixtureRelay) -> Result<Self, FixtureError> {
        let name = |n: &str| UserName::new(n).map_err(|_| FixtureError::Step("user name"));
        let mut net = Net {
            clients: vec![
                Client::init(MemoryStore::new(), name("alice")?, [1; 32])?,
                Client::init(MemoryStore::new(), name("bob")?, BOB_SEED)?,
            ],
            online: vec![true, true],
            seen: Seen::default(),
        };
        for slot in [ALICE, BOB] {
            let challenge = relay.connect(slot);
            let channel = relay
                .channel(slot)
                .ok_or(FixtureError::Step("no channel binding"))?;
            net.clients[slot].handle_connected(NOW_MS, channel);
            net.clients[slot].handle_frame(NOW_MS, challenge)?;
        }
        net.run(relay)?;
        net.clients[ALICE].create_group(NOW_MS, "fuzz")?;
        net.run(relay)?;
        net.clients[ALICE].add_users(NOW_MS, "fuzz", &[name("bob")?])?;
        net.run(relay)?;
        let group = net.clients[ALICE].resolve("fuzz")?;
        let (Some(device), Some(sender), Some(epoch)) = (
            net.clients[BOB].device(),
            net.clients[ALICE].device(),
            net.clients[BOB].epoch(&group),
        ) else {
            return Err(FixtureError::Step("bob did not join"));
        };
        let store = net.clients[BOB].store().snapshot()?;
        let (next_seq, next_inbox) = (Seq(net.seen.group + 1), Seq(net.seen.inbox + 1));
        let welcome = net
            .seen
            .welcome
            .take()
            .ok_or(FixtureError::Step("no Welcome"))?;
        net.online[BOB] = false;
        net.clients[ALICE].send_text(NOW_MS, "fuzz", "hello bob")?;
        net.run(relay)?;
        net.clients[ALICE].update_keys(NOW_MS, "fuzz")?;
        net.run(relay)?;
        let mut samples = net.seen.posted;
        samples.push([&[INGEST_WELCOME][..], &welcome].concat());
        Ok(MlsIngest {
            store,
            device,
            sender,
            group,
            epoch: Epoch(epoch),
            next_seq,
            next_inbox,
            samples,
        })
    }

    /// Real inputs for a seed corpus: alice's text, her key-update commit (both at bob's
    /// epoch, unseen by him) and the Welcome that added bob.
    pub fn samples(&self) -> &[Vec<u8>] {
        &self.samples
    }

    /// Feeds `data` to bob. Byte 0 is a tag (taken modulo 9): for `INGEST_*` (0..=5) the rest
    /// is the payload of a group entry from alice at bob's epoch and next position, or of a
    /// Welcome in bob's inbox; for [`INGEST_PATCHED_SAMPLE`] + k (k < 3) it is a list of
    /// 3-byte patches (offset u16 BE modulo the length, byte XORed in) applied to sample k of
    /// this fixture, delivered as that sample's kind. The fixture's MLS messages differ from
    /// one process to the next (openmls draws some values outside the seeded provider), so
    /// patched samples are how a fuzzer reaches deep into valid-looking MLS messages. Bob may
    /// refuse the input; nothing may panic. Returns the events bob reported for it.
    pub fn ingest(&self, data: &[u8]) -> Vec<Event> {
        let Some((&tag, rest)) = data.split_first() else {
            return Vec::new();
        };
        let patched;
        let (tag, payload) = match tag % 9 {
            t if t >= INGEST_PATCHED_SAMPLE => {
                let Some((&sample_tag, sample)) = self
                    .samples
                    .get(usize::from(t - INGEST_PATCHED_SAMPLE))
                    .and_then(|s| s.split_first())
                else {
                    return Vec::new();
                };
                patched = patch(sample, rest);
                (sample_tag, patched.as_slice())
            }
            t => (t, rest),
        };
        let Ok(store) = self.store.snapshot() else {
            return Vec::new();
        };
        let Ok(mut bob) = Client::open(store, BOB_SEED) else {
            return Vec::new();
        };
        if !self.authenticate(&mut bob) {
            return Vec::new();
        }
        let payload = Payload(payload.to_vec());
        let entry = |kind| {
            Delivery::Group(GroupEntry {
                group: self.group,
                seq: self.next_seq,
                epoch: self.epoch,
                sender: self.sender,
                kind,
                received_at_ms: NOW_MS,
                payload: payload.clone(),
            })
        };
        let welcome = |group| {
            Delivery::Inbox(InboxEntry {
                seq: self.next_inbox,
                kind: InboxKind::Welcome {
                    group,
                    commit_seq: self.next_seq,
                    sender: self.sender,
                },
                received_at_ms: NOW_MS,
                payload: payload.clone(),
            })
        };
        let delivery = match tag % 6 {
            INGEST_APPLICATION => entry(EntryKind::Application),
            INGEST_PROPOSAL => entry(EntryKind::Proposal),
            INGEST_COMMIT => entry(EntryKind::Commit {
                added: Vec::new().into(),
                removed: Vec::new().into(),
            }),
            INGEST_COMMIT_REMOVING => entry(EntryKind::Commit {
                added: Vec::new().into(),
                removed: vec![self.device].into(),
            }),
            INGEST_WELCOME => welcome(self.group),
            _ => welcome(GroupId([0x77; 16])),
        };
        // Errors are allowed (a refused entry is a warning or a protocol violation).
        let _ = bob.handle_frame(NOW_MS, ServerFrame::Deliver(delivery));
        let _ = bob.handle_frame(NOW_MS, ServerFrame::BacklogDone);
        let mut events = Vec::new();
        while let Some(out) = bob.poll_output() {
            if let Output::Event(e) = out {
                events.push(e);
            }
        }
        events
    }

    /// Reconnects bob: challenge, his answer, `Authenticated`.
    fn authenticate(&self, bob: &mut Client<MemoryStore>) -> bool {
        bob.handle_connected(
            NOW_MS,
            ChannelBinding {
                exporter: [8; 32],
                relay_certificate: [7; 32],
            },
        );
        let challenge = ServerFrame::Challenge {
            version: cove_wire::PROTOCOL_VERSION,
            nonce: [9; 32],
        };
        if bob.handle_frame(NOW_MS, challenge).is_err() {
            return false;
        }
        let mut id = None;
        while let Some(out) = bob.poll_output() {
            if let Output::Send(ClientFrame::Request {
                id: i,
                body: Request::Authenticate { .. },
            }) = out
            {
                id = Some(i);
            }
        }
        let Some(id) = id else {
            return false;
        };
        let reply = ServerFrame::Response {
            id,
            result: Ok(Reply::Authenticated {
                device: self.device,
            }),
        };
        let ok = bob.handle_frame(NOW_MS, reply).is_ok();
        while bob.poll_output().is_some() {}
        ok
    }
}

/// `sample` with `patches` (3 bytes each: offset u16 BE modulo the length, byte XORed in).
fn patch(sample: &[u8], patches: &[u8]) -> Vec<u8> {
    let mut out = sample.to_vec();
    let len = out.len();
    for p in patches.chunks_exact(3) {
        let &[hi, lo, x] = p else {
            continue;
        };
        if let Some(b) = usize::from(u16::from_be_bytes([hi, lo]))
            .checked_rem(len)
            .and_then(|at| out.get_mut(at))
        {
            *b ^= x;
        }
    }
    out
}

/// What bob received and what alice posted while building the fixture.
#[derive(Default)]
struct Seen {
    /// Highest group-log seq delivered to a member while bob is online.
    group: u64,
    /// Highest inbox seq delivered to bob.
    inbox: u64,
    /// The first Welcome bob got.
    welcome: Option<Vec<u8>>,
    /// Alice's posts (tag + payload) while bob is offline.
    posted: Vec<Vec<u8>>,
}

/// Two clients on a relay, run until quiet.
struct Net {
    clients: Vec<Client<MemoryStore>>,
    /// Frames for an offline client are dropped.
    online: Vec<bool>,
    seen: Seen,
}

impl Net {
    fn run(&mut self, relay: &mut impl FixtureRelay) -> Result<(), FixtureError> {
        for _ in 0..10_000 {
            let mut quiet = true;
            for slot in 0..self.clients.len() {
                let Some(out) = self.clients[slot].poll_output() else {
                    continue;
                };
                quiet = false;
                let Output::Send(frame) = out else {
                    continue;
                };
                if !self.online[slot] {
                    continue;
                }
                if slot == ALICE && !self.online[BOB] {
                    self.note_post(&frame);
                }
                for (to, frame) in relay.handle(slot, frame, NOW_MS) {
                    if !self.online.get(to).copied().unwrap_or(false) {
                        continue;
                    }
                    if self.online[BOB] {
                        self.note_delivery(to, &frame);
                    }
                    self.clients[to].handle_frame(NOW_MS, frame)?;
                }
            }
            if quiet {
                return Ok(());
            }
        }
        Err(FixtureError::Step("the clients never went quiet"))
    }

    fn note_post(&mut self, frame: &ClientFrame) {
        let ClientFrame::Request {
            body: Request::Post { kind, payload, .. },
            ..
        } = frame
        else {
            return;
        };
        let tag = match kind {
            PostKind::Application => INGEST_APPLICATION,
            PostKind::Commit { .. } => INGEST_COMMIT,
            PostKind::Proposal => INGEST_PROPOSAL,
        };
        self.seen
            .posted
            .push([&[tag][..], payload.0.as_slice()].concat());
    }

    fn note_delivery(&mut self, to: usize, frame: &ServerFrame) {
        match frame {
            // Any member's copy: bob's log cursor starts at the commit that added him.
            ServerFrame::Deliver(Delivery::Group(e)) => {
                self.seen.group = self.seen.group.max(e.seq.0);
            }
            ServerFrame::Deliver(Delivery::Inbox(e)) if to == BOB => {
                self.seen.inbox = self.seen.inbox.max(e.seq.0);
                if self.seen.welcome.is_none() {
                    self.seen.welcome = Some(e.payload.0.clone());
                }
            }
            _ => {}
        }
    }
}
