//! Frames spliced around a borrowed payload ([`encode_inbox_delivery`]) are the codec's own
//! encoding of the whole frame, and decode back to it.

use cove_wire::limits::MAX_FRAME_BYTES;
use cove_wire::{
    Delivery, DeviceId, EncodeError, GroupId, InboxEntry, InboxKind, Payload, Seq, ServerFrame,
    decode, encode, encode_inbox_delivery,
};
use proptest::prelude::*;

use crate::strategies::inbox_entry;

fn frame(entry: InboxEntry) -> ServerFrame {
    ServerFrame::Deliver(Delivery::Inbox(entry))
}

/// For payload lengths on both sides of each varint width and extreme seqs, the spliced
/// bytes equal the normal encoder's bytes, and decode to the same frame.
#[test]
fn spliced_inbox_deliveries_match_the_encoder_at_varint_boundaries() {
    let kind = InboxKind::Welcome {
        group: GroupId([7; 16]),
        commit_seq: Seq(300),
        sender: DeviceId(5),
    };
    for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000, 1_000_000] {
        let payload = vec![0xab; len];
        for seq in [Seq(1), Seq(200), Seq(u64::MAX)] {
            let entry = InboxEntry {
                seq,
                kind: kind.clone(),
                received_at_ms: 1_700_000_000_000,
                payload: Payload(payload.clone()),
            };
            let spliced = encode_inbox_delivery(seq, &kind, entry.received_at_ms, &payload)
                .unwrap_or_else(|e| panic!("len {len}: {e}"));
            assert_eq!(spliced, encode(&frame(entry.clone())).unwrap(), "len {len}");
            assert_eq!(
                decode::<ServerFrame>(&spliced),
                Ok(frame(entry)),
                "len {len}"
            );
        }
    }
}

/// A payload that would make the frame exceed the limit fails with `TooLarge` of the frame's
/// full length, as the normal encoder does.
#[test]
fn spliced_inbox_delivery_over_the_limit_is_too_large() {
    let kind = InboxKind::Welcome {
        group: GroupId([1; 16]),
        commit_seq: Seq(2),
        sender: DeviceId(3),
    };
    let payload = vec![0; MAX_FRAME_BYTES];
    let entry = InboxEntry {
        seq: Seq(9),
        kind: kind.clone(),
        received_at_ms: 4,
        payload: Payload(payload.clone()),
    };
    let expected = encode(&frame(entry)).unwrap_err();
    assert!(matches!(expected, EncodeError::TooLarge(_)));
    assert_eq!(
        encode_inbox_delivery(Seq(9), &kind, 4, &payload),
        Err(expected)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any inbox entry: spliced bytes == encoder bytes, and they decode to the same frame.
    #[test]
    fn spliced_inbox_deliveries_round_trip(entry in inbox_entry()) {
        let spliced = encode_inbox_delivery(
            entry.seq,
            &entry.kind,
            entry.received_at_ms,
            entry.payload.as_bytes(),
        )
        .unwrap();
        prop_assert_eq!(&spliced, &encode(&frame(entry.clone())).unwrap());
        prop_assert_eq!(decode::<ServerFrame>(&spliced), Ok(frame(entry)));
    }
}
