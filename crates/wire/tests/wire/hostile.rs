//! Hostile inputs with exact expectations: size limits, huge declared lengths (and that they
//! allocate nothing like them), unknown tags, trailing bytes. Each hand-made hostile frame
//! comes with its repaired twin, which must decode: the frame fails for its defect alone.

use cove_wire::limits::{MAX_FRAME_BYTES, MAX_VEC_ITEMS};
use cove_wire::{
    ClientFrame, DecodeError, EncodeError, Epoch, GroupId, Payload, PostKind, Request, RequestId,
    ServerFrame, decode, encode,
};

use crate::alloc::largest_allocation;
use crate::corpus::{
    ERROR_CODE_VARIANTS, GIB, REPLY_GROUP_CREATED, REPLY_VARIANTS, REQ_LIST_DEVICES, REQ_PING,
    REQ_POST, REQ_UPLOAD_KEY_PACKAGES, Raw, SERVER_FRAME_VARIANTS, SRV_BACKLOG_DONE, SRV_CLOSING,
    SRV_RESPONSE, UNKNOWN_TAG, ten_bytes_declaring_a_gib, ten_bytes_declaring_a_gib_repaired,
};

/// Largest allocation a decode of a tiny frame may make (error strings and the like).
const SMALL: usize = 4 * 1024;

fn post(payload_len: usize) -> ClientFrame {
    ClientFrame::Request {
        id: RequestId(1),
        body: Request::Post {
            group: GroupId([1; 16]),
            epoch: Epoch(1),
            kind: PostKind::Application,
            payload: Payload(vec![0x61; payload_len]),
        },
    }
}

/// Which decoder a case is for.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn decode(self, bytes: &[u8]) -> Result<(), DecodeError> {
        match self {
            Side::Client => decode::<ClientFrame>(bytes).map(drop),
            Side::Server => decode::<ServerFrame>(bytes).map(drop),
        }
    }
}

/// A hostile frame, the same frame with its one defect repaired, and the decoder.
struct Case {
    what: &'static str,
    hostile: Vec<u8>,
    repaired: Vec<u8>,
    side: Side,
}

/// The repaired frame decodes, so the hostile one fails for its defect alone.
fn assert_repaired_decodes(case: &Case) {
    assert_eq!(
        case.side.decode(&case.repaired),
        Ok(()),
        "{}: the repaired frame must decode",
        case.what
    );
}

#[test]
fn a_ten_byte_frame_declaring_a_gib_fails_without_allocating_it() {
    let frame = ten_bytes_declaring_a_gib();
    assert_eq!(frame.len(), 10);
    let (result, largest) = largest_allocation(|| decode::<ClientFrame>(&frame));
    assert!(
        matches!(result, Err(DecodeError::Malformed(_))),
        "{result:?}"
    );
    assert!(
        largest < SMALL,
        "decoding a 10-byte frame allocated {largest} bytes at once"
    );
    // With the declared length repaired the same frame decodes.
    assert!(decode::<ClientFrame>(&ten_bytes_declaring_a_gib_repaired()).is_ok());
}

#[test]
fn huge_declared_lengths_fail_cleanly_everywhere() {
    let post = |len: u64| {
        Raw::request(1, REQ_POST)
            .raw(&[1; 16])
            .v(0)
            .v(0)
            .v(len)
            .raw(b"x")
            .done()
    };
    // An upload of `count` empty KeyPackages of which one follows, and no last resort.
    let upload = |count: u64| {
        Raw::request(1, REQ_UPLOAD_KEY_PACKAGES)
            .v(count)
            .v(0)
            .v(0)
            .done()
    };
    let user = |len: u64| Raw::request(1, REQ_LIST_DEVICES).v(len).raw(b"bob").done();
    let error_message = |len: u64| {
        Raw::new()
            .v(SRV_RESPONSE)
            .v(1)
            .v(1)
            .v(0)
            .v(len)
            .raw(b"oops")
            .v(0)
            .v(0)
            .done()
    };
    let cases = [
        Case {
            what: "post payload",
            hostile: post(GIB),
            repaired: post(1),
            side: Side::Client,
        },
        Case {
            what: "vec count 2^30",
            hostile: upload(GIB),
            repaired: upload(1),
            side: Side::Client,
        },
        Case {
            what: "vec count u64::MAX",
            hostile: upload(u64::MAX),
            repaired: upload(1),
            side: Side::Client,
        },
        Case {
            what: "user name",
            hostile: user(GIB),
            repaired: user(3),
            side: Side::Client,
        },
        Case {
            what: "error message",
            hostile: error_message(GIB),
            repaired: error_message(4),
            side: Side::Server,
        },
    ];
    for case in &cases {
        assert_repaired_decodes(case);
        let (result, largest) = largest_allocation(|| case.side.decode(&case.hostile));
        assert!(
            matches!(result, Err(DecodeError::Malformed(_))),
            "{}: {result:?}",
            case.what
        );
        assert!(
            largest < SMALL,
            "{}: allocated {largest} bytes at once",
            case.what
        );
    }
}

#[test]
fn a_vec_declaring_more_than_the_item_cap_is_refused() {
    let upload = |count: usize| {
        Raw::request(1, REQ_UPLOAD_KEY_PACKAGES)
            .v(count as u64)
            .raw(&vec![0; count])
            .v(0)
            .done()
    };
    assert!(decode::<ClientFrame>(&upload(MAX_VEC_ITEMS)).is_ok());
    assert!(matches!(
        decode::<ClientFrame>(&upload(MAX_VEC_ITEMS + 1)),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn oversized_frames_are_refused_both_ways() {
    let too_big = vec![0u8; MAX_FRAME_BYTES + 1];
    assert_eq!(
        decode::<ClientFrame>(&too_big),
        Err(DecodeError::TooLarge(MAX_FRAME_BYTES + 1))
    );
    assert_eq!(
        decode::<ServerFrame>(&too_big),
        Err(DecodeError::TooLarge(MAX_FRAME_BYTES + 1))
    );
    assert!(matches!(
        encode(&post(MAX_FRAME_BYTES)),
        Err(EncodeError::TooLarge(_))
    ));

    // A frame of exactly MAX_FRAME_BYTES is fine; one byte more is not.
    let overhead = encode(&post(0)).unwrap().len();
    let mut len = MAX_FRAME_BYTES - overhead;
    while encode(&post(len)).map_or(true, |b| b.len() > MAX_FRAME_BYTES) {
        len -= 1;
    }
    let exact = encode(&post(len)).unwrap();
    assert_eq!(exact.len(), MAX_FRAME_BYTES);
    assert_eq!(decode::<ClientFrame>(&exact), Ok(post(len)));
    assert!(matches!(
        encode(&post(len + 1)),
        Err(EncodeError::TooLarge(_))
    ));
    let mut one_more = exact;
    one_more.push(0);
    assert_eq!(
        decode::<ClientFrame>(&one_more),
        Err(DecodeError::TooLarge(MAX_FRAME_BYTES + 1))
    );
}

#[test]
fn unknown_enum_tags_are_refused() {
    let post_kind = |tag: u64| {
        Raw::request(1, REQ_POST)
            .raw(&[1; 16])
            .v(0)
            .v(tag)
            .v(0)
            .done()
    };
    let result = |tag: u64| {
        Raw::new()
            .v(SRV_RESPONSE)
            .v(1)
            .v(tag)
            .v(REPLY_GROUP_CREATED)
            .done()
    };
    let reply = |tag: u64| Raw::new().v(SRV_RESPONSE).v(1).v(0).v(tag).done();
    let cases = [
        Case {
            what: "ClientFrame",
            hostile: Raw::new().v(UNKNOWN_TAG).v(1).v(REQ_PING).done(),
            repaired: Raw::new().v(0).v(1).v(REQ_PING).done(),
            side: Side::Client,
        },
        Case {
            what: "Request",
            hostile: Raw::request(1, UNKNOWN_TAG).done(),
            repaired: Raw::request(1, REQ_PING).done(),
            side: Side::Client,
        },
        Case {
            what: "Request u64 tag",
            hostile: Raw::request(1, u64::MAX).done(),
            repaired: Raw::request(1, REQ_PING).done(),
            side: Side::Client,
        },
        Case {
            what: "PostKind",
            hostile: post_kind(UNKNOWN_TAG),
            repaired: post_kind(0),
            side: Side::Client,
        },
        Case {
            what: "ServerFrame",
            hostile: Raw::new().v(UNKNOWN_TAG).done(),
            repaired: Raw::new().v(SRV_BACKLOG_DONE).done(),
            side: Side::Server,
        },
        Case {
            what: "Result",
            hostile: result(2),
            repaired: result(0),
            side: Side::Server,
        },
        Case {
            what: "Reply",
            hostile: reply(UNKNOWN_TAG),
            repaired: reply(REPLY_GROUP_CREATED),
            side: Side::Server,
        },
        Case {
            what: "ErrorCode",
            hostile: Raw::new().v(SRV_CLOSING).v(UNKNOWN_TAG).done(),
            repaired: Raw::new().v(SRV_CLOSING).v(0).done(),
            side: Side::Server,
        },
    ];
    for case in &cases {
        assert_repaired_decodes(case);
        let result = case.side.decode(&case.hostile);
        assert!(
            matches!(result, Err(DecodeError::Malformed(_))),
            "{}: {result:?}",
            case.what
        );
    }
    // The last variant known when this was written is valid (tags count from 0). Far-out
    // tags are used above so that appending a variant does not break these tests.
    assert!(decode::<ClientFrame>(&Raw::request(1, REQ_PING).done()).is_ok());
    assert!(
        decode::<ServerFrame>(&Raw::new().v(SRV_CLOSING).v(ERROR_CODE_VARIANTS - 1).done()).is_ok()
    );
    assert!(decode::<ServerFrame>(&Raw::new().v(SERVER_FRAME_VARIANTS - 2).done()).is_ok());
    assert!(decode::<ServerFrame>(&reply(REPLY_VARIANTS - 1)).is_ok());
}

#[test]
fn trailing_bytes_are_counted() {
    let mut bytes = Raw::request(1, REQ_PING).done();
    bytes.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        decode::<ClientFrame>(&bytes),
        Err(DecodeError::TrailingBytes(3))
    );
}
