//! Frames encoded around a borrowed payload: the relay holds some payloads once and shares
//! them between many frames (a commit's Welcome goes to every device it adds), so it encodes
//! those frames without first copying the payload into an owned frame value.
//!
//! The bytes are exactly what [`crate::encode`] makes of the whole frame: the payload is the
//! frame's last field, so the frame is the encoding with an empty payload (whose last byte is
//! its length, 0) with that byte replaced by the real length (a postcard varint) and the bytes.

use crate::codec::{EncodeError, encode};
use crate::frame::{Delivery, InboxEntry, InboxKind, ServerFrame};
use crate::ids::Seq;
use crate::limits::MAX_FRAME_BYTES;
use crate::payload::Payload;

/// Encodes `ServerFrame::Deliver(Delivery::Inbox(InboxEntry { seq, kind, received_at_ms,
/// payload }))` from a borrowed `payload`, byte for byte what [`crate::encode`] makes of that
/// frame. Fails like [`crate::encode`] if the frame would exceed [`MAX_FRAME_BYTES`].
pub fn encode_inbox_delivery(
    seq: Seq,
    kind: &InboxKind,
    received_at_ms: u64,
    payload: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let head = InboxEntry {
        seq,
        kind: kind.clone(),
        received_at_ms,
        payload: Payload::default(),
    };
    let mut frame = encode(&ServerFrame::Deliver(Delivery::Inbox(head)))?;
    if frame.pop() != Some(0) {
        return Err(EncodeError::Serialize(
            "unexpected encoding of an empty payload".into(),
        ));
    }
    let total = frame
        .len()
        .saturating_add(varint_len(payload.len()))
        .saturating_add(payload.len());
    if total > MAX_FRAME_BYTES {
        return Err(EncodeError::TooLarge(total));
    }
    frame.reserve(total.saturating_sub(frame.len()));
    push_varint(&mut frame, payload.len());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Appends `n` as a postcard (LEB128) varint.
fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n & 0x7f) as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Length of `n` as a postcard varint.
fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}
