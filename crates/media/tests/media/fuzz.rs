//! Property tests over the decoders at trust boundaries: SFrame headers and ciphertexts, VP8
//! RTP payloads, SDP fingerprints, call signals (wire codec). Nothing panics; round trips hold.

use std::time::{Duration, Instant};

use cove_media::CallSignal;
use cove_media::session::{Vp8Assembler, sdp_fingerprints};
use cove_media::sframe::{EpochKey, Header, SframeKeyring, SframeSender};
use proptest::prelude::*;

proptest! {
    #[test]
    fn header_round_trips(kid in any::<u64>(), ctr in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
        let h = Header { kid, ctr };
        let mut b = h.to_bytes();
        let len = b.len();
        b.extend_from_slice(&tail);
        prop_assert_eq!(Header::decode(&b).unwrap(), (h, len));
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Header::decode(&bytes);
        let mut keyring = SframeKeyring::new(Duration::from_secs(1));
        keyring.install(EpochKey::new(1, &[9; 32]).unwrap(), [0, 1, 2], Instant::now()).unwrap();
        prop_assert!(keyring.decrypt(b"", &bytes, Instant::now()).is_err());
        let mut asm = Vp8Assembler::default();
        let _ = asm.push(1, 2, true, &bytes);
        let _ = sdp_fingerprints(&String::from_utf8_lossy(&bytes));
        let _ = cove_wire::decode::<CallSignal>(&bytes);
    }

    #[test]
    fn sframe_bit_flips_fail(frame in proptest::collection::vec(any::<u8>(), 0..200), pos in any::<usize>(), bit in 0u8..8) {
        let mut sender = SframeSender::new(1).unwrap();
        sender.install(&EpochKey::new(4, &[3; 32]).unwrap()).unwrap();
        let mut keyring = SframeKeyring::new(Duration::from_secs(1));
        keyring.install(EpochKey::new(4, &[3; 32]).unwrap(), [1], Instant::now()).unwrap();
        let ct = sender.encrypt(b"", &frame).unwrap();
        let mut bad = ct.clone();
        let i = pos % bad.len();
        bad[i] ^= 1 << bit;
        prop_assert!(keyring.decrypt(b"", &bad, Instant::now()).is_err());
        prop_assert_eq!(keyring.decrypt(b"", &ct, Instant::now()).unwrap().payload, frame);
    }

    #[test]
    fn vp8_reassembly(frame in proptest::collection::vec(any::<u8>(), 1..5000), mtu in 20usize..1200, seq0 in any::<u16>()) {
        // Packetise like RFC 7741 with a 1-byte descriptor (S bit on the first packet).
        let chunks: Vec<_> = frame.chunks(mtu).collect();
        let mut asm = Vp8Assembler::default();
        let mut out = None;
        for (i, c) in chunks.iter().enumerate() {
            let mut p = vec![if i == 0 { 0x10 } else { 0x00 }];
            p.extend_from_slice(c);
            let r = asm.push(seq0.wrapping_add(i as u16), 1234, i + 1 == chunks.len(), &p);
            if i + 1 < chunks.len() {
                prop_assert!(r.is_none());
            }
            out = r;
        }
        prop_assert_eq!(out.unwrap(), frame.clone());
        // Losing a middle packet drops the frame.
        if chunks.len() >= 3 {
            let mut asm = Vp8Assembler::default();
            let mut out = None;
            for (i, c) in chunks.iter().enumerate() {
                if i == 1 {
                    continue;
                }
                let mut p = vec![if i == 0 { 0x10 } else { 0x00 }];
                p.extend_from_slice(c);
                out = asm.push(seq0.wrapping_add(i as u16), 1234, i + 1 == chunks.len(), &p);
            }
            prop_assert!(out.is_none());
        }
    }
}
