//! Hostile inputs with exact expectations: size limits, huge declared lengths (and that they
//! allocate nothing like them), unknown tags, trailing bytes.

use cove_wire::limits::{MAX_FRAME_BYTES, MAX_VEC_ITEMS};
use cove_wire::{
    ClientFrame, DecodeError, EncodeError, Epoch, GroupId, Payload, PostKind, Request, RequestId,
    ServerFrame, decode, encode,
};

use crate::alloc::largest_allocation;
use crate::corpus::{
    ERROR_CODE_VARIANTS, GIB, REPLY_VARIANTS, REQ_LIST_DEVICES, REQ_PING, REQ_POST,
    REQ_UPLOAD_KEY_PACKAGES, Raw, SERVER_FRAME_VARIANTS, SRV_RESPONSE, UNKNOWN_TAG,
    ten_bytes_declaring_a_gib,
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
}

#[test]
fn huge_declared_lengths_fail_cleanly_everywhere() {
    let inputs: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "post payload",
            Raw::request(1, REQ_POST)
                .raw(&[1; 16])
                .v(0)
                .v(0)
                .v(GIB)
                .raw(b"x")
                .done(),
            true,
        ),
        (
            "vec count 2^30",
            Raw::request(1, REQ_UPLOAD_KEY_PACKAGES).v(GIB).v(0).done(),
            true,
        ),
        (
            "vec count u64::MAX",
            Raw::request(1, REQ_UPLOAD_KEY_PACKAGES)
                .v(u64::MAX)
                .v(0)
                .done(),
            true,
        ),
        (
            "user name",
            Raw::request(1, REQ_LIST_DEVICES).v(GIB).raw(b"bob").done(),
            true,
        ),
        (
            "error message",
            Raw::new()
                .v(SRV_RESPONSE)
                .v(1)
                .v(1)
                .v(0)
                .v(GIB)
                .raw(b"oops")
                .done(),
            false,
        ),
    ];
    for (what, bytes, is_client) in inputs {
        let (failed, largest) = largest_allocation(|| {
            if is_client {
                decode::<ClientFrame>(&bytes).is_err()
            } else {
                decode::<ServerFrame>(&bytes).is_err()
            }
        });
        assert!(failed, "{what}: decoded");
        assert!(largest < SMALL, "{what}: allocated {largest} bytes at once");
    }
}

#[test]
fn a_vec_declaring_more_than_the_item_cap_is_refused() {
    let bytes = Raw::request(1, REQ_UPLOAD_KEY_PACKAGES)
        .v(MAX_VEC_ITEMS as u64 + 1)
        .raw(&vec![0; MAX_VEC_ITEMS + 1])
        .v(0)
        .done();
    assert!(matches!(
        decode::<ClientFrame>(&bytes),
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
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "ClientFrame",
            Raw::new().v(UNKNOWN_TAG).v(1).v(REQ_PING).done(),
            true,
        ),
        ("Request", Raw::request(1, UNKNOWN_TAG).done(), true),
        ("Request u64 tag", Raw::request(1, u64::MAX).done(), true),
        (
            "PostKind",
            Raw::request(1, REQ_POST)
                .raw(&[1; 16])
                .v(0)
                .v(UNKNOWN_TAG)
                .v(0)
                .done(),
            true,
        ),
        ("ServerFrame", Raw::new().v(UNKNOWN_TAG).done(), false),
        ("Result", Raw::new().v(SRV_RESPONSE).v(1).v(2).done(), false),
        (
            "Reply",
            Raw::new().v(SRV_RESPONSE).v(1).v(0).v(UNKNOWN_TAG).done(),
            false,
        ),
        ("ErrorCode", Raw::new().v(4).v(UNKNOWN_TAG).done(), false),
    ];
    for (what, bytes, is_client) in cases {
        let result = if is_client {
            decode::<ClientFrame>(&bytes).map(drop)
        } else {
            decode::<ServerFrame>(&bytes).map(drop)
        };
        assert!(
            matches!(result, Err(DecodeError::Malformed(_))),
            "{what}: {result:?}"
        );
    }
    // The last variant known when this was written is valid (tags count from 0). Far-out
    // tags are used above so that appending a variant does not break these tests.
    assert!(decode::<ClientFrame>(&Raw::request(1, REQ_PING).done()).is_ok());
    assert!(decode::<ServerFrame>(&Raw::new().v(4).v(ERROR_CODE_VARIANTS - 1).done()).is_ok());
    assert!(decode::<ServerFrame>(&Raw::new().v(SERVER_FRAME_VARIANTS - 2).done()).is_ok());
    assert!(
        decode::<ServerFrame>(
            &Raw::new()
                .v(SRV_RESPONSE)
                .v(1)
                .v(0)
                .v(REPLY_VARIANTS - 1)
                .done()
        )
        .is_ok()
    );
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
