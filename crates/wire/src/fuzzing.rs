//! Fuzz entry point: the function the `frame_decoder` target in `fuzz/fuzz_targets/` calls,
//! and that this crate's tests replay over `fuzz/corpus/frame_decoder/` (see
//! `fuzz/README.md`). Not an API: it panics when the codec breaks a property it promises,
//! never for any input alone.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ClientFrame, ServerFrame, decode, encode};

/// Decodes `data` as a [`ClientFrame`] and as a [`ServerFrame`]. A frame that decodes must
/// encode again (no larger than it came) and decode back to itself.
pub fn frame_decoder(data: &[u8]) {
    if let Ok(frame) = decode::<ClientFrame>(data) {
        round_trip(&frame, data.len());
    }
    if let Ok(frame) = decode::<ServerFrame>(data) {
        round_trip(&frame, data.len());
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(frame: &T, len: usize) {
    let bytes = encode(frame);
    assert!(
        matches!(&bytes, Ok(b) if b.len() <= len),
        "a decoded frame does not encode within its {len} bytes: {frame:?} -> {bytes:?}"
    );
    let again = bytes.map(|b| decode::<T>(&b));
    assert!(
        matches!(&again, Ok(Ok(f)) if f == frame),
        "a decoded frame does not round-trip: {frame:?} -> {again:?}"
    );
}
