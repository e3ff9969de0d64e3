//! Property tests: every frame round-trips; no prefix of an encoding decodes; arbitrary bytes
//! never panic the decoder.

use cove_wire::{ClientFrame, DecodeError, ServerFrame, decode, encode};
use proptest::prelude::*;

use crate::strategies::{client_frame, server_frame};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let bytes = encode(&frame).unwrap();
        prop_assert_eq!(decode::<ClientFrame>(&bytes), Ok(frame));
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let bytes = encode(&frame).unwrap();
        prop_assert_eq!(decode::<ServerFrame>(&bytes), Ok(frame));
    }

    /// The encoding is self-delimiting, so no strict prefix of a valid encoding decodes.
    #[test]
    fn truncated_client_frames_fail(frame in client_frame()) {
        let bytes = encode(&frame).unwrap();
        for cut in 0..bytes.len() {
            prop_assert!(decode::<ClientFrame>(&bytes[..cut]).is_err(), "prefix {} decoded", cut);
        }
    }

    #[test]
    fn truncated_server_frames_fail(frame in server_frame()) {
        let bytes = encode(&frame).unwrap();
        for cut in 0..bytes.len() {
            prop_assert!(decode::<ServerFrame>(&bytes[..cut]).is_err(), "prefix {} decoded", cut);
        }
    }

    #[test]
    fn trailing_bytes_are_rejected(frame in client_frame(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        let mut bytes = encode(&frame).unwrap();
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(decode::<ClientFrame>(&bytes), Err(DecodeError::TrailingBytes(extra.len())));
    }

    #[test]
    fn server_trailing_bytes_are_rejected(frame in server_frame(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        let mut bytes = encode(&frame).unwrap();
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(decode::<ServerFrame>(&bytes), Err(DecodeError::TrailingBytes(extra.len())));
    }

    /// Arbitrary bytes: the decoder answers (either way) and never panics, and whatever
    /// decodes encodes again within the size limit.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(frame) = decode::<ClientFrame>(&bytes) {
            prop_assert!(encode(&frame).unwrap().len() <= bytes.len());
        }
        if let Ok(frame) = decode::<ServerFrame>(&bytes) {
            prop_assert!(encode(&frame).unwrap().len() <= bytes.len());
        }
    }

    /// Valid encodings with one byte flipped: never a panic.
    #[test]
    fn mutated_frames_never_panic(frame in server_frame(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&frame).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = decode::<ServerFrame>(&bytes);
        let _ = decode::<ClientFrame>(&bytes);
    }
}
