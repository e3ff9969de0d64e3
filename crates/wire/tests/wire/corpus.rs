//! The checked-in corpus of `crates/wire/fuzz-corpus/{client,server}/`: hostile and valid
//! frames that every test run pushes through `decode`. A file named `ok-*.bin` must decode,
//! `err-*.bin` must be refused, and nothing may panic.
//!
//! The files are made by [`generated`] below, so the corpus is reproducible:
//!
//! ```text
//! COVE_WRITE_CORPUS=1 cargo test -p cove-wire --test wire corpus
//! ```
//!
//! rewrites them. Without that variable, [`corpus_matches_the_generator`] fails when a
//! generated file is missing or differs, which makes the corpus a snapshot of the encoding:
//! a wire format change shows up here and is a conscious decision. Files added by hand (for
//! instance crashes found by a fuzzer) are kept and checked like the rest.

use std::path::{Path, PathBuf};

use cove_wire::limits::MAX_VEC_ITEMS;
use cove_wire::{
    ClientFrame, Delivery, DeviceId, DeviceInfo, DeviceKey, EntryKind, Epoch, ErrorCode,
    ErrorReply, GroupEntry, GroupId, InboxEntry, InboxKind, Payload, PostKind, Reply, Request,
    RequestId, Seq, ServerFrame, Signature, Stream, UserName, decode, encode,
};

/// Which decoder a corpus file is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `decode::<ClientFrame>`.
    Client,
    /// `decode::<ServerFrame>`.
    Server,
}

impl Side {
    fn dir(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }

    /// Decodes with this side's frame type; true when it decoded.
    pub fn decodes(self, bytes: &[u8]) -> bool {
        match self {
            Side::Client => decode::<ClientFrame>(bytes).is_ok(),
            Side::Server => decode::<ServerFrame>(bytes).is_ok(),
        }
    }
}

/// A little postcard writer for hand-made (usually invalid) frames.
#[derive(Default, Clone)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    pub fn new() -> Self {
        Raw(Vec::new())
    }
    /// A varint (enum tags, integers, lengths).
    pub fn v(mut self, mut x: u64) -> Self {
        loop {
            let byte = (x & 0x7f) as u8;
            x >>= 7;
            if x == 0 {
                self.0.push(byte);
                return self;
            }
            self.0.push(byte | 0x80);
        }
    }
    /// Raw bytes as they are.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// A length-prefixed byte or text string.
    pub fn bytes(self, bytes: &[u8]) -> Self {
        self.v(bytes.len() as u64).raw(bytes)
    }
    /// The start of a client request: `ClientFrame::Request { id, body: <tag> ... }`.
    pub fn request(id: u32, tag: u64) -> Self {
        Raw::new().v(0).v(u64::from(id)).v(tag)
    }
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

// Tags (variant indices) used when writing frames by hand. The `*_VARIANTS` constants are
// the variant counts when this was written.
pub const REQ_REGISTER: u64 = 0;
pub const REQ_LIST_DEVICES: u64 = 3;
pub const REQ_UPLOAD_KEY_PACKAGES: u64 = 4;
pub const REQ_POST: u64 = 8;
pub const REQ_ACK: u64 = 10;
pub const REQ_PING: u64 = 12;
/// A tag no enum of the protocol has (far above today's counts, so appending variants
/// within the protocol version does not turn the `err-unknown-*` files valid).
pub const UNKNOWN_TAG: u64 = 100;
pub const SERVER_FRAME_VARIANTS: u64 = 5;
pub const SRV_RESPONSE: u64 = 1;
pub const SRV_DELIVER: u64 = 2;
pub const SRV_BACKLOG_DONE: u64 = 3;
pub const SRV_CLOSING: u64 = 4;
pub const REPLY_DEVICES: u64 = 1;
pub const REPLY_KEY_PACKAGE_STOCK: u64 = 2;
pub const REPLY_KEY_PACKAGES: u64 = 3;
pub const REPLY_GROUP_CREATED: u64 = 4;
pub const REPLY_VARIANTS: u64 = 10;
pub const ERROR_CODE_VARIANTS: u64 = 21;

/// One GiB, the declared length of the "huge length" inputs.
pub const GIB: u64 = 1 << 30;

/// The 10-byte client frame that declares a 1 GiB KeyPackage:
/// `Request { id: 1, UploadKeyPackages { key_packages: [<1 GiB>], last_resort: None } }`,
/// of whose KeyPackage none of the bytes follow.
pub fn ten_bytes_declaring_a_gib() -> Vec<u8> {
    upload_one_key_package_declaring(GIB)
}

/// [`ten_bytes_declaring_a_gib`] with the declared length repaired (an empty KeyPackage): it
/// decodes, so the declared length alone makes the other fail.
pub fn ten_bytes_declaring_a_gib_repaired() -> Vec<u8> {
    upload_one_key_package_declaring(0)
}

fn upload_one_key_package_declaring(len: u64) -> Vec<u8> {
    Raw::request(1, REQ_UPLOAD_KEY_PACKAGES)
        .v(1)
        .v(len)
        .v(0)
        .done()
}

fn group() -> GroupId {
    GroupId([0x11; 16])
}

fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

fn enc<T: serde::Serialize>(frame: &T) -> Vec<u8> {
    encode(frame).unwrap()
}

fn client(id: u32, body: Request) -> Vec<u8> {
    enc(&ClientFrame::Request {
        id: RequestId(id),
        body,
    })
}

fn group_entry(seq: u64, kind: EntryKind, payload: &[u8]) -> GroupEntry {
    GroupEntry {
        group: group(),
        seq: Seq(seq),
        epoch: Epoch(3),
        sender: DeviceId(7),
        kind,
        received_at_ms: 1_700_000_000_000,
        payload: Payload::from(payload),
    }
}

/// A deterministic byte stream (xorshift64*), for "garbage" inputs.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// One generated corpus file.
pub struct Case {
    pub side: Side,
    /// File name (`ok-*.bin` or `err-*.bin`).
    pub name: String,
    pub bytes: Vec<u8>,
    /// For a hand-made `err-` frame: the same frame with its one defect repaired, which must
    /// decode. It shows the frame fails for the reason its name gives, not for a mistake
    /// elsewhere in the hand-written bytes.
    pub repaired: Option<Vec<u8>>,
}

/// `err-` files with no valid frame one repair away (empty, runs, pseudo-random garbage).
const WITHOUT_REPAIR: &[&str] = &[
    "err-empty",
    "-run-",
    "err-garbage-",
    "err-post-then-garbage-",
];

/// Every generated corpus file.
pub fn generated() -> Vec<Case> {
    let cases = std::cell::RefCell::new(Vec::new());
    let add = |side: Side, name: &str, bytes: Vec<u8>| {
        cases.borrow_mut().push(Case {
            side,
            name: format!("{name}.bin"),
            bytes,
            repaired: None,
        })
    };
    // A hostile frame and the same frame with its defect repaired.
    let bad = |side: Side, name: &str, bytes: Vec<u8>, repaired: Vec<u8>| {
        cases.borrow_mut().push(Case {
            side,
            name: format!("{name}.bin"),
            bytes,
            repaired: Some(repaired),
        })
    };
    use Side::{Client, Server};

    // --- client: valid frames ---
    let register = client(
        1,
        Request::Register {
            user: user("alice"),
            key: DeviceKey([0x42; 32]),
            signature: Signature([0x5a; 64]),
        },
    );
    add(Client, "ok-register", register.clone());
    add(Client, "ok-ping", client(u32::MAX, Request::Ping));
    add(
        Client,
        "ok-register-device",
        client(
            2,
            Request::RegisterDevice {
                user: user("a.b_c-9"),
                key: DeviceKey([1; 32]),
                signature: Signature([2; 64]),
                authorizer: DeviceId(u64::MAX),
                authorization: Signature([3; 64]),
            },
        ),
    );
    add(
        Client,
        "ok-upload-key-packages",
        client(
            3,
            Request::UploadKeyPackages {
                key_packages: vec![Payload::from(&b"kp-1"[..]), Payload::from(&b"kp-2"[..])].into(),
                last_resort: Some(Payload::from(&b"last"[..])),
            },
        ),
    );
    add(
        Client,
        "ok-post-commit",
        client(
            4,
            Request::Post {
                group: group(),
                epoch: Epoch(41),
                kind: PostKind::Commit {
                    added: vec![DeviceId(5), DeviceId(300)].into(),
                    removed: vec![DeviceId(1)].into(),
                    welcome: Some(Payload::from(&b"welcome"[..])),
                    group_info: Payload::from(&b"group info"[..]),
                },
                payload: Payload::from(&b"mls commit"[..]),
            },
        ),
    );
    add(
        Client,
        "ok-post-application",
        client(
            5,
            Request::Post {
                group: group(),
                epoch: Epoch(0),
                kind: PostKind::Application,
                payload: Payload(vec![]),
            },
        ),
    );
    add(
        Client,
        "ok-ack-inbox",
        client(
            6,
            Request::Ack {
                stream: Stream::Inbox,
                seq: Seq(9),
            },
        ),
    );
    add(
        Client,
        "ok-fetch",
        client(
            7,
            Request::Fetch {
                group: group(),
                after: Seq(0),
                limit: u32::MAX,
            },
        ),
    );
    // Postcard accepts over-long varints (here the request id 1 as two bytes); pinned here
    // so that a change of that behaviour is noticed. Nothing signs frame bytes.
    add(
        Client,
        "ok-overlong-varint-request-id",
        Raw::new().v(0).raw(&[0x81, 0x00]).v(REQ_PING).done(),
    );
    let mut max_items = Raw::request(8, REQ_UPLOAD_KEY_PACKAGES).v(MAX_VEC_ITEMS as u64);
    for _ in 0..MAX_VEC_ITEMS {
        max_items = max_items.bytes(b"");
    }
    add(Client, "ok-max-vec-items", max_items.clone().v(0).done());

    // --- client: hostile frames (each with its repaired twin where one exists) ---
    add(Client, "err-empty", vec![]);
    bad(
        Client,
        "err-unknown-frame-tag",
        Raw::new().v(UNKNOWN_TAG).v(1).v(REQ_PING).done(),
        Raw::new().v(0).v(1).v(REQ_PING).done(),
    );
    let ping = Raw::request(1, REQ_PING).done();
    bad(
        Client,
        "err-unknown-request-tag",
        Raw::request(1, UNKNOWN_TAG).done(),
        ping.clone(),
    );
    bad(
        Client,
        "err-unknown-request-tag-u32-max",
        Raw::request(1, u64::from(u32::MAX)).done(),
        ping.clone(),
    );
    let post_kind = |tag: u64| {
        Raw::request(1, REQ_POST)
            .raw(&group().0)
            .v(0)
            .v(tag)
            .bytes(b"x")
            .done()
    };
    bad(
        Client,
        "err-unknown-post-kind-tag",
        post_kind(UNKNOWN_TAG),
        post_kind(0),
    );
    bad(
        Client,
        "err-unknown-stream-tag",
        Raw::request(1, REQ_ACK).v(UNKNOWN_TAG).v(1).done(),
        Raw::request(1, REQ_ACK).v(1).v(1).done(),
    );
    bad(
        Client,
        "err-truncated-register",
        register[..register.len() - 1].to_vec(),
        register.clone(),
    );
    bad(
        Client,
        "err-truncated-to-tag",
        register[..2].to_vec(),
        register.clone(),
    );
    bad(
        Client,
        "err-trailing-byte",
        Raw::request(1, REQ_PING).v(0).done(),
        ping.clone(),
    );
    bad(
        Client,
        "err-huge-payload-length",
        ten_bytes_declaring_a_gib(),
        ten_bytes_declaring_a_gib_repaired(),
    );
    let post_payload = |len: u64| {
        Raw::request(1, REQ_POST)
            .raw(&group().0)
            .v(0)
            .v(0)
            .v(len)
            .raw(b"tiny")
            .done()
    };
    bad(
        Client,
        "err-huge-post-payload-length",
        post_payload(GIB),
        post_payload(4),
    );
    let upload_count = |count: u64| {
        Raw::request(1, REQ_UPLOAD_KEY_PACKAGES)
            .v(count)
            .bytes(b"a")
            .v(0)
            .done()
    };
    bad(
        Client,
        "err-huge-vec-count",
        upload_count(u64::from(u32::MAX)),
        upload_count(1),
    );
    let upload_empties = |count: usize| {
        Raw::request(1, REQ_UPLOAD_KEY_PACKAGES)
            .v(count as u64)
            .raw(&vec![0; count])
            .v(0)
            .done()
    };
    bad(
        Client,
        "err-too-many-items",
        upload_empties(MAX_VEC_ITEMS + 1),
        upload_empties(MAX_VEC_ITEMS),
    );
    // The count says 5000 but 5001 items follow: the decoder stops at the count and the rest
    // is trailing garbage.
    bad(
        Client,
        "err-more-items-than-declared",
        max_items.clone().v(0).v(0).done(),
        max_items.v(0).done(),
    );
    let list_devices = |name: &[u8]| Raw::request(1, REQ_LIST_DEVICES).bytes(name).done();
    let alice = list_devices(b"alice");
    bad(
        Client,
        "err-user-name-uppercase",
        list_devices(b"Alice"),
        alice.clone(),
    );
    bad(
        Client,
        "err-user-name-empty",
        list_devices(b""),
        alice.clone(),
    );
    bad(
        Client,
        "err-user-name-33-bytes",
        list_devices(&[b'a'; 33]),
        list_devices(&[b'a'; 32]),
    );
    bad(
        Client,
        "err-user-name-not-utf8",
        list_devices(&[0xff, 0xfe]),
        alice.clone(),
    );
    let user_name_length = |len: u64| {
        Raw::request(1, REQ_LIST_DEVICES)
            .v(len)
            .raw(b"alice")
            .done()
    };
    bad(
        Client,
        "err-user-name-huge-length",
        user_name_length(GIB),
        user_name_length(5),
    );
    let signature = |len: usize| {
        Raw::request(1, REQ_REGISTER)
            .bytes(b"alice")
            .raw(&[0x42; 32])
            .bytes(&vec![0x5a; len])
            .done()
    };
    bad(
        Client,
        "err-signature-63-bytes",
        signature(63),
        signature(64),
    );
    bad(
        Client,
        "err-signature-65-bytes",
        signature(65),
        signature(64),
    );
    let option_tag = |tag: u64| Raw::request(1, REQ_UPLOAD_KEY_PACKAGES).v(0).v(tag).done();
    bad(Client, "err-bad-option-tag", option_tag(2), option_tag(0));
    bad(
        Client,
        "err-varint-overflow",
        Raw::new().v(0).raw(&[0xff; 11]).v(REQ_PING).done(),
        Raw::new()
            .v(0)
            .raw(&[0xff, 0xff, 0xff, 0xff, 0x0f])
            .v(REQ_PING)
            .done(),
    );
    let id_varint = |last: u8| {
        Raw::new()
            .v(0)
            .raw(&[0xff, 0xff, 0xff, 0xff, last])
            .v(REQ_PING)
            .done()
    };
    bad(
        Client,
        "err-varint-u32-overflow",
        id_varint(0x1f),
        id_varint(0x0f),
    );
    add(Client, "err-continuation-run-16k", vec![0x80; 16 * 1024]);
    add(Client, "err-zero-run-16k", vec![0; 16 * 1024]);
    add(Client, "err-ff-run-4k", vec![0xff; 4096]);
    // Nested commits are not a thing; the nearest is a commit whose Welcome is itself a
    // whole encoded frame: fine as opaque bytes, but with a byte cut off the outer frame.
    let nested = client(
        9,
        Request::Post {
            group: group(),
            epoch: Epoch(1),
            kind: PostKind::Commit {
                added: vec![DeviceId(2)].into(),
                removed: vec![].into(),
                welcome: Some(Payload(register.clone())),
                group_info: Payload(register.clone()),
            },
            payload: Payload(register.clone()),
        },
    );
    add(Client, "ok-frame-inside-payloads", nested.clone());
    bad(
        Client,
        "err-frame-inside-payloads-truncated",
        nested[..nested.len() - 1].to_vec(),
        nested,
    );
    for seed in 1..=6u64 {
        let mut bytes = garbage(seed, 16 << seed);
        if let Some(first) = bytes.first_mut() {
            *first |= 1; // never the only valid ClientFrame tag (0)
        }
        add(Client, &format!("err-garbage-{seed}"), bytes);
    }
    for seed in 1..=4u64 {
        // Valid frame start, garbage after.
        let bytes = Raw::request(1, REQ_POST)
            .raw(&garbage(100 + seed, 200))
            .done();
        add(Client, &format!("err-post-then-garbage-{seed}"), bytes);
    }

    // --- server: valid frames ---
    add(
        Server,
        "ok-challenge",
        enc(&ServerFrame::Challenge {
            version: 1,
            nonce: [0xc3; 32],
        }),
    );
    add(Server, "ok-backlog-done", enc(&ServerFrame::BacklogDone));
    add(
        Server,
        "ok-closing-slow-reader",
        enc(&ServerFrame::Closing {
            code: ErrorCode::SlowReader,
        }),
    );
    add(
        Server,
        "ok-response-posted",
        enc(&ServerFrame::Response {
            id: RequestId(4),
            result: Ok(Reply::Posted { seq: Seq(77) }),
        }),
    );
    add(
        Server,
        "ok-response-stale-epoch",
        enc(&ServerFrame::Response {
            id: RequestId(4),
            result: Err(ErrorReply {
                current_epoch: Some(Epoch(42)),
                ..ErrorReply::new(ErrorCode::StaleEpoch, "stale epoch")
            }),
        }),
    );
    add(
        Server,
        "ok-response-invalid-commit",
        enc(&ServerFrame::Response {
            id: RequestId(4),
            result: Err(ErrorReply::new(
                ErrorCode::InvalidCommit,
                "the commit's added devices do not match its proposals",
            )),
        }),
    );
    add(
        Client,
        "ok-create-group",
        client(
            12,
            Request::CreateGroup {
                group: group(),
                group_info: Payload::from(&b"group info"[..]),
                tree: Payload::from(&b"ratchet tree"[..]),
            },
        ),
    );
    add(
        Client,
        "ok-fetch-group-state",
        client(13, Request::FetchGroupState { group: group() }),
    );
    add(
        Server,
        "ok-response-group-state",
        enc(&ServerFrame::Response {
            id: RequestId(13),
            result: Ok(Reply::GroupState {
                group: group(),
                group_info: Payload::from(&b"group info"[..]),
                tree: Payload::from(&b"ratchet tree"[..]),
            }),
        }),
    );
    add(
        Server,
        "ok-response-devices",
        enc(&ServerFrame::Response {
            id: RequestId(5),
            result: Ok(Reply::Devices {
                user: user("bob"),
                devices: vec![
                    DeviceInfo {
                        device: DeviceId(1),
                        key: DeviceKey([1; 32]),
                    },
                    DeviceInfo {
                        device: DeviceId(2),
                        key: DeviceKey([2; 32]),
                    },
                ]
                .into(),
            }),
        }),
    );
    add(
        Server,
        "ok-response-entries",
        enc(&ServerFrame::Response {
            id: RequestId(6),
            result: Ok(Reply::Entries {
                entries: vec![
                    group_entry(1, EntryKind::Application, b"m1"),
                    group_entry(2, EntryKind::Proposal, b"p"),
                    group_entry(
                        3,
                        EntryKind::Commit {
                            added: vec![DeviceId(9)].into(),
                            removed: vec![].into(),
                        },
                        b"c",
                    ),
                ]
                .into(),
            }),
        }),
    );
    add(
        Server,
        "ok-deliver-group",
        enc(&ServerFrame::Deliver(Delivery::Group(group_entry(
            5,
            EntryKind::Application,
            b"hi",
        )))),
    );
    add(
        Server,
        "ok-deliver-welcome",
        enc(&ServerFrame::Deliver(Delivery::Inbox(InboxEntry {
            seq: Seq(1),
            kind: InboxKind::Welcome {
                group: group(),
                commit_seq: Seq(3),
                sender: DeviceId(7),
            },
            received_at_ms: 5,
            payload: Payload::from(&b"welcome"[..]),
        }))),
    );

    // --- server: hostile frames (each with its repaired twin where one exists) ---
    add(Server, "err-empty", vec![]);
    bad(
        Server,
        "err-unknown-frame-tag",
        Raw::new().v(UNKNOWN_TAG).done(),
        Raw::new().v(SRV_BACKLOG_DONE).done(),
    );
    let reply = |tag: u64| Raw::new().v(SRV_RESPONSE).v(1).v(0).v(tag).done();
    bad(
        Server,
        "err-unknown-reply-tag",
        reply(UNKNOWN_TAG),
        reply(REPLY_GROUP_CREATED),
    );
    let result = |tag: u64| {
        Raw::new()
            .v(SRV_RESPONSE)
            .v(1)
            .v(tag)
            .v(REPLY_GROUP_CREATED)
            .done()
    };
    bad(Server, "err-unknown-result-tag", result(2), result(0));
    bad(
        Server,
        "err-unknown-error-code",
        Raw::new().v(SRV_CLOSING).v(UNKNOWN_TAG).done(),
        Raw::new().v(SRV_CLOSING).v(0).done(),
    );
    // Deliver(Group(entry)) with a one-byte payload, `tag` as the delivery tag.
    let delivery = |tag: u64, payload_len: u64| {
        Raw::new()
            .v(SRV_DELIVER)
            .v(tag)
            .raw(&group().0)
            .v(1)
            .v(1)
            .v(1)
            .v(0)
            .v(0)
            .v(payload_len)
            .raw(b"x")
            .done()
    };
    bad(
        Server,
        "err-unknown-delivery-tag",
        delivery(UNKNOWN_TAG, 1),
        delivery(0, 1),
    );
    let inbox_kind = |tag: u64| {
        Raw::new()
            .v(SRV_DELIVER)
            .v(1)
            .v(1)
            .v(tag)
            .raw(&group().0)
            .v(1)
            .v(1)
            .v(1)
            .bytes(b"w")
            .done()
    };
    bad(
        Server,
        "err-unknown-inbox-kind",
        inbox_kind(UNKNOWN_TAG),
        inbox_kind(0),
    );
    bad(
        Server,
        "err-truncated-challenge",
        Raw::new().v(0).v(1).raw(&[0xc3; 31]).done(),
        Raw::new().v(0).v(1).raw(&[0xc3; 32]).done(),
    );
    bad(
        Server,
        "err-trailing-byte",
        Raw::new().v(SRV_BACKLOG_DONE).v(0).done(),
        Raw::new().v(SRV_BACKLOG_DONE).done(),
    );
    let stock = |has_last_resort: u64| {
        Raw::new()
            .v(SRV_RESPONSE)
            .v(1)
            .v(0)
            .v(REPLY_KEY_PACKAGE_STOCK)
            .v(3)
            .v(has_last_resort)
            .done()
    };
    bad(Server, "err-bad-bool", stock(2), stock(1));
    bad(
        Server,
        "err-huge-payload-length",
        delivery(0, GIB),
        delivery(0, 1),
    );
    // Err(ErrorReply { code: Malformed, message, retry_after_ms: None, current_epoch: None })
    let error_reply = |message: Raw| {
        Raw::new()
            .v(SRV_RESPONSE)
            .v(1)
            .v(1)
            .v(0)
            .raw(&message.done())
            .v(0)
            .v(0)
            .done()
    };
    bad(
        Server,
        "err-huge-error-message-length",
        error_reply(Raw::new().v(GIB).raw(b"oops")),
        error_reply(Raw::new().v(4).raw(b"oops")),
    );
    bad(
        Server,
        "err-error-message-not-utf8",
        error_reply(Raw::new().bytes(&[0xc3, 0x28])),
        error_reply(Raw::new().bytes("é".as_bytes())),
    );
    // KeyPackages { user: bob, key_packages: [count × { device 1, empty, not last resort }] }
    let claimed = |count: usize| {
        let mut raw = Raw::new()
            .v(SRV_RESPONSE)
            .v(1)
            .v(0)
            .v(REPLY_KEY_PACKAGES)
            .bytes(b"bob")
            .v(count as u64);
        for _ in 0..count {
            raw = raw.v(1).bytes(b"").v(0);
        }
        raw.done()
    };
    bad(
        Server,
        "err-too-many-claimed-key-packages",
        claimed(MAX_VEC_ITEMS + 1),
        claimed(MAX_VEC_ITEMS),
    );
    let devices_of = |user: &[u8]| {
        Raw::new()
            .v(SRV_RESPONSE)
            .v(1)
            .v(0)
            .v(REPLY_DEVICES)
            .bytes(user)
            .v(0)
            .done()
    };
    bad(
        Server,
        "err-devices-invalid-user",
        devices_of(b"-bob"),
        devices_of(b"bob"),
    );
    // A response whose request id is an 11-byte varint.
    let response_id = |id: &[u8]| {
        Raw::new()
            .v(SRV_RESPONSE)
            .raw(id)
            .v(0)
            .v(REPLY_GROUP_CREATED)
            .done()
    };
    let mut eleven = vec![0x80; 10];
    eleven.push(0x7f);
    bad(
        Server,
        "err-varint-overflow",
        response_id(&eleven),
        response_id(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
    );
    add(Server, "err-continuation-run-16k", vec![0x80; 16 * 1024]);
    add(Server, "err-ff-run-4k", vec![0xff; 4096]);
    for seed in 1..=6u64 {
        let mut bytes = garbage(1_000 + seed, 16 << seed);
        if let Some(first) = bytes.first_mut() {
            *first = 0x05 | (*first & 0xf0) | 0x08; // never a ServerFrame tag (0..=4)
        }
        add(Server, &format!("err-garbage-{seed}"), bytes);
    }
    cases.into_inner()
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

/// With `COVE_WRITE_CORPUS=1`, (re)writes the generated files; otherwise checks them.
#[test]
fn corpus_matches_the_generator() {
    let write = std::env::var_os("COVE_WRITE_CORPUS").is_some();
    let mut stale = Vec::new();
    for Case {
        side, name, bytes, ..
    } in generated()
    {
        let expect_ok = name.starts_with("ok-");
        assert_eq!(
            side.decodes(&bytes),
            expect_ok,
            "generator made {name} with the wrong outcome"
        );
        let path = corpus_dir().join(side.dir()).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "corpus files missing or different from the generator (wire format change?), rerun \
         with COVE_WRITE_CORPUS=1 if intended: {stale:?}"
    );
}

/// Each hand-made `err-` frame is a valid frame but for its one defect: the repaired twin
/// decodes (so a slip elsewhere in the hand-written bytes cannot be what makes the `err-`
/// frame fail), and only the files that have no valid frame nearby lack a twin.
#[test]
fn hostile_frames_fail_only_for_their_defect() {
    let mut repaired = 0;
    for case in generated() {
        if !case.name.starts_with("err-") {
            assert!(case.repaired.is_none(), "{}", case.name);
            continue;
        }
        match &case.repaired {
            Some(twin) => {
                assert!(
                    case.side.decodes(twin),
                    "{}: the repaired frame does not decode either",
                    case.name
                );
                assert_ne!(twin, &case.bytes);
                repaired += 1;
            }
            None => assert!(
                WITHOUT_REPAIR.iter().any(|p| case.name.contains(p)),
                "{} needs its repaired twin",
                case.name
            ),
        }
    }
    assert!(repaired >= 30, "only {repaired} repaired twins");
}

/// Every file in the corpus decodes (`ok-`) or is refused (`err-`), without a panic.
#[test]
fn corpus_decodes_as_named() {
    for side in [Side::Client, Side::Server] {
        let dir = corpus_dir().join(side.dir());
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".bin") {
                continue;
            }
            let expect_ok = if name.starts_with("ok-") {
                true
            } else if name.starts_with("err-") {
                false
            } else {
                panic!("corpus file {name} must be named ok-*.bin or err-*.bin");
            };
            let bytes = std::fs::read(&path).unwrap();
            let decoded = std::panic::catch_unwind(|| side.decodes(&bytes));
            let decoded = decoded.unwrap_or_else(|_| panic!("decoder panicked on {name}"));
            assert_eq!(decoded, expect_ok, "{}/{name}", side.dir());
            checked += 1;
        }
        assert!(
            checked >= 20,
            "only {checked} corpus files in {}",
            dir.display()
        );
    }
}
