//! SFrame: RFC 9605 Appendix C vectors, tampering, unknown and removed KIDs, rekeying, replay
//! window edges (127/128/129 behind, per KID, across a rekey, counters near `u64::MAX`), no
//! key and nonce shared across a re-dial.

use std::time::{Duration, Instant};

use cove_media::sframe::{
    CIPHER_SUITE_AES_128_GCM_SHA256_128, EpochKey, Header, KeyMaterial, REPLAY_WINDOW, SframeError,
    SframeKeyring, SframeSender, decrypt_frame, derive_key_material, encrypt_frame, kid_for,
    kid_for_context,
};
use serde_json::Value;

fn vectors() -> Value {
    let text = include_str!("../vectors/rfc9605.json");
    serde_json::from_str(text).unwrap()
}

fn hexv(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn rfc9605_header_vectors() {
    let v = vectors();
    let cases = v["header"].as_array().unwrap();
    assert!(cases.len() > 50);
    for case in cases {
        let kid = case["kid"].as_u64().unwrap();
        let ctr = case["ctr"].as_u64().unwrap();
        let encoded = hexv(&case["encoded"]);
        let header = Header { kid, ctr };
        assert_eq!(header.to_bytes(), encoded, "encode kid={kid} ctr={ctr}");
        assert_eq!(Header::decode(&encoded).unwrap(), (header, encoded.len()));
        // Every strict prefix is malformed, never a panic.
        for cut in 0..encoded.len() {
            assert_eq!(
                Header::decode(&encoded[..cut]),
                Err(SframeError::MalformedHeader)
            );
        }
    }
}

#[test]
fn rfc9605_sframe_vector_aes_128_gcm() {
    let v = vectors();
    let cases = v["sframe"].as_array().unwrap();
    let mut checked = 0;
    for case in cases {
        let suite = u16::try_from(case["cipher_suite"].as_u64().unwrap()).unwrap();
        // The labels are the same construction for every suite: check them all.
        let kid = case["kid"].as_u64().unwrap();
        let mut key_label = b"SFrame 1.0 Secret key ".to_vec();
        key_label.extend_from_slice(&kid.to_be_bytes());
        key_label.extend_from_slice(&suite.to_be_bytes());
        assert_eq!(key_label, hexv(&case["sframe_key_label"]));
        let mut salt_label = b"SFrame 1.0 Secret salt ".to_vec();
        salt_label.extend_from_slice(&kid.to_be_bytes());
        salt_label.extend_from_slice(&suite.to_be_bytes());
        assert_eq!(salt_label, hexv(&case["sframe_salt_label"]));
        if suite != CIPHER_SUITE_AES_128_GCM_SHA256_128 {
            continue;
        }
        let ctr = case["ctr"].as_u64().unwrap();
        let base_key = hexv(&case["base_key"]);
        let material = derive_key_material(&base_key, kid);
        assert_eq!(material.key.to_vec(), hexv(&case["sframe_key"]));
        assert_eq!(material.salt.to_vec(), hexv(&case["sframe_salt"]));
        let metadata = hexv(&case["metadata"]);
        let pt = hexv(&case["pt"]);
        let ct = encrypt_frame(&material, kid, ctr, &metadata, &pt).unwrap();
        assert_eq!(ct, hexv(&case["ct"]));
        let (header, plain) = decrypt_frame(&material, &metadata, &ct).unwrap();
        assert_eq!(header, Header { kid, ctr });
        assert_eq!(plain, pt);
        // Tampering anywhere (header, body, tag) or with the metadata fails authentication.
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert!(
                decrypt_frame(&material, &metadata, &bad).is_err(),
                "byte {i}"
            );
        }
        assert_eq!(
            decrypt_frame(&material, b"other metadata", &ct),
            Err(SframeError::AuthenticationFailed)
        );
        checked += 1;
    }
    assert_eq!(checked, 1);
}

fn key(epoch: u64, byte: u8) -> EpochKey {
    EpochKey::new(epoch, &[byte; 32]).unwrap()
}

/// A re-dial (a second sender for the same member index and the same epoch key, as a second
/// `Call` with the same call id, epoch and leaf makes): both start at counter 0, but under
/// different KIDs whose derived keys and salts differ, so equal first frames encrypt to
/// different bytes and no (key, nonce) is shared. A receiver takes the new dial's frames and
/// from then on refuses the old one's.
#[test]
fn a_redial_with_the_same_key_and_leaf_never_reuses_a_key_and_nonce() {
    let now = Instant::now();
    let base = [5u8; 32];
    let mut first = SframeSender::new(2).unwrap();
    let mut second = SframeSender::new(2).unwrap();
    first.install(&EpochKey::new(9, &base).unwrap()).unwrap();
    second.install(&EpochKey::new(9, &base).unwrap()).unwrap();
    let a = first.encrypt(b"", b"same first frame").unwrap();
    let b = second.encrypt(b"", b"same first frame").unwrap();
    let (ha, la) = Header::decode(&a).unwrap();
    let (hb, lb) = Header::decode(&b).unwrap();
    assert_eq!((ha.ctr, hb.ctr), (0, 0), "both dials start at counter 0");
    assert_ne!(ha.kid, hb.kid, "each dial has its own KID");
    assert_eq!(Some(ha.kid), first.kid());
    assert_eq!(ha.kid, kid_for_context(first.context(), 2, 9));
    let (ka, kb) = (
        derive_key_material(&base, ha.kid),
        derive_key_material(&base, hb.kid),
    );
    assert_ne!(ka.key, kb.key, "different AEAD keys");
    assert_ne!(ka.salt, kb.salt, "different nonce salts");
    assert_ne!(
        a[la..],
        b[lb..],
        "equal plaintexts encrypt to different bytes"
    );
    // Each frame opens only under its own dial's key material.
    assert_eq!(decrypt_frame(&ka, b"", &a).unwrap().1, b"same first frame");
    assert_eq!(
        decrypt_frame(&kb, b"", &a).unwrap_err(),
        SframeError::AuthenticationFailed
    );

    let mut rx = SframeKeyring::new(Duration::from_secs(2));
    rx.install(EpochKey::new(9, &base).unwrap(), [2], now)
        .unwrap();
    let a2 = first.encrypt(b"", b"old dial").unwrap();
    assert_eq!(
        rx.decrypt(b"", &a, now).unwrap().payload,
        b"same first frame"
    );
    let d = rx.decrypt(b"", &b, now).unwrap();
    assert_eq!((d.member_index, d.epoch, d.ctr), (2, 9, 0));
    // The newer dial retired the older one: its later frames are refused.
    assert_eq!(
        rx.decrypt(b"", &a2, now),
        Err(SframeError::UnknownKeyId(ha.kid))
    );
    // A frame under an unknown context that does not authenticate is refused and does not
    // retire the live one.
    let forged = encrypt_frame(
        &derive_key_material(&[6; 32], kid_for_context(77, 2, 9)),
        kid_for_context(77, 2, 9),
        0,
        b"",
        b"forged",
    )
    .unwrap();
    assert_eq!(
        rx.decrypt(b"", &forged, now),
        Err(SframeError::AuthenticationFailed)
    );
    let b2 = second.encrypt(b"", b"new dial").unwrap();
    assert_eq!(rx.decrypt(b"", &b2, now).unwrap().payload, b"new dial");
}

#[test]
fn sender_keyring_round_trip_and_replay() {
    let now = Instant::now();
    let mut alice = SframeSender::new(3).unwrap();
    assert_eq!(alice.encrypt(b"", b"x"), Err(SframeError::NoSendingKey));
    alice.install(&key(7, 1)).unwrap();
    let mut bob = SframeKeyring::new(Duration::from_secs(2));
    bob.install(key(7, 1), [1, 3], now).unwrap();
    let f1 = alice.encrypt(b"", b"frame one").unwrap();
    let f2 = alice.encrypt(b"", b"frame two").unwrap();
    assert_ne!(f1, f2);
    let (h1, _) = Header::decode(&f1).unwrap();
    let (h2, _) = Header::decode(&f2).unwrap();
    assert_eq!(h1.kid, kid_for_context(alice.context(), 3, 7));
    assert_eq!(h2.ctr, h1.ctr + 1);
    // Out of order is fine, a replay is not.
    let d2 = bob.decrypt(b"", &f2, now).unwrap();
    assert_eq!(d2.payload, b"frame two");
    assert_eq!((d2.member_index, d2.epoch), (3, 7));
    assert_eq!(bob.decrypt(b"", &f1, now).unwrap().payload, b"frame one");
    assert_eq!(bob.decrypt(b"", &f1, now), Err(SframeError::Replay));
    // Garbage never panics.
    for len in 0..40 {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        assert!(bob.decrypt(b"", &junk, now).is_err());
    }
    // Epochs only move forward for a sender.
    assert!(matches!(
        alice.install(&key(7, 9)),
        Err(SframeError::StaleEpoch { .. })
    ));
}

#[test]
fn unknown_kid_and_member_not_in_epoch_are_refused() {
    let now = Instant::now();
    let mut keyring = SframeKeyring::new(Duration::from_secs(2));
    keyring.install(key(1, 5), [0, 1], now).unwrap();
    // Member 2 is not in the roster of epoch 1, even though it uses the right base key.
    let mut mallory = SframeSender::new(2).unwrap();
    mallory.install(&key(1, 5)).unwrap();
    let f = mallory.encrypt(b"", b"hi").unwrap();
    assert!(matches!(
        keyring.decrypt(b"", &f, now),
        Err(SframeError::UnknownKeyId(_))
    ));
    // A KID for an epoch the keyring never had.
    let mut other = SframeSender::new(1).unwrap();
    other.install(&key(9, 5)).unwrap();
    let f = other.encrypt(b"", b"hi").unwrap();
    assert!(matches!(
        keyring.decrypt(b"", &f, now),
        Err(SframeError::UnknownKeyId(_))
    ));
    // Wrong base key for a known KID: authentication fails.
    let mut wrong = SframeSender::new(1).unwrap();
    wrong.install(&key(1, 6)).unwrap();
    let f = wrong.encrypt(b"", b"hi").unwrap();
    assert_eq!(
        keyring.decrypt(b"", &f, now),
        Err(SframeError::AuthenticationFailed)
    );
}

#[test]
fn removed_member_after_rekey() {
    let t0 = Instant::now();
    let grace = Duration::from_secs(2);
    // Alice (0), Bob (1), Carol (2) share epoch 4. Carol is removed: epoch 5 without her.
    let mut alice = SframeSender::new(0).unwrap();
    alice.install(&key(4, 0x44)).unwrap();
    let mut carol = SframeKeyring::new(grace);
    carol.install(key(4, 0x44), [0, 1, 2], t0).unwrap();
    let mut bob = SframeKeyring::new(grace);
    bob.install(key(4, 0x44), [0, 1, 2], t0).unwrap();
    let before = alice.encrypt(b"", b"before").unwrap();
    assert_eq!(carol.decrypt(b"", &before, t0).unwrap().payload, b"before");

    alice.install(&key(5, 0x55)).unwrap();
    bob.install(key(5, 0x55), [0, 1], t0).unwrap();
    let after = alice.encrypt(b"", b"after").unwrap();
    assert_eq!(bob.decrypt(b"", &after, t0).unwrap().payload, b"after");
    // Carol has no epoch-5 key: she cannot decrypt what follows the rekey.
    assert!(carol.decrypt(b"", &after, t0).is_err());
    // Even if she guessed epoch 5 with her old key, authentication fails.
    let mut carol_guess = SframeKeyring::new(grace);
    carol_guess.install(key(5, 0x44), [0], t0).unwrap();
    assert_eq!(
        carol_guess.decrypt(b"", &after, t0),
        Err(SframeError::AuthenticationFailed)
    );

    // Bob still accepts a late epoch-4 frame during the grace period, not after it.
    let late = {
        let mut old = SframeSender::new(1).unwrap();
        old.install(&key(4, 0x44)).unwrap();
        old.encrypt(b"", b"late").unwrap()
    };
    assert_eq!(
        bob.decrypt(b"", &late, t0 + Duration::from_secs(1))
            .unwrap()
            .payload,
        b"late"
    );
    let late2 = {
        let mut old = SframeSender::new(0).unwrap();
        old.install(&key(4, 0x44)).unwrap();
        old.encrypt(b"", b"late2").unwrap()
    };
    assert!(matches!(
        bob.decrypt(b"", &late2, t0 + Duration::from_secs(3)),
        Err(SframeError::UnknownKeyId(_))
    ));
    // And a removed member's KIDs are refused at once after remove_member.
    let mut bob2 = SframeKeyring::new(grace);
    bob2.install(key(4, 0x44), [0, 1, 2], t0).unwrap();
    let mut carol_tx = SframeSender::new(2).unwrap();
    carol_tx.install(&key(4, 0x44)).unwrap();
    let from_carol = carol_tx.encrypt(b"", b"x").unwrap();
    bob2.remove_member(2);
    assert!(matches!(
        bob2.decrypt(b"", &from_carol, t0),
        Err(SframeError::UnknownKeyId(_))
    ));
}

#[test]
fn key_material_debug_is_redacted() {
    let m: KeyMaterial = derive_key_material(&[7; 32], 1);
    assert_eq!(format!("{m:?}"), "KeyMaterial(..)");
    let k = key(3, 0xab);
    assert!(!format!("{k:?}").contains("ab"));
}

/// A frame from `member` in `epoch` (base key `[byte; 32]`) with an arbitrary counter, as a
/// sender (or an insider replaying/forging counters) would put on the wire.
fn frame_at(member: u32, epoch: u64, byte: u8, ctr: u64) -> Vec<u8> {
    let kid = kid_for(member, epoch);
    let material = derive_key_material(&[byte; 32], kid);
    encrypt_frame(&material, kid, ctr, b"", &ctr.to_be_bytes()).unwrap()
}

/// Decrypts and checks the payload (the counter it was made with) and sender.
fn accept(keyring: &mut SframeKeyring, frame: &[u8], now: Instant) -> (u32, u64, u64) {
    let d = keyring.decrypt(b"", frame, now).unwrap();
    assert_eq!(d.payload, d.ctr.to_be_bytes());
    (d.member_index, d.epoch, d.ctr)
}

#[test]
fn replay_window_edges_127_128_and_129_behind() {
    let now = Instant::now();
    let mut rx = SframeKeyring::new(Duration::from_secs(2));
    rx.install(key(1, 0x10), [0], now).unwrap();
    let f = |ctr| frame_at(0, 1, 0x10, ctr);
    assert_eq!(accept(&mut rx, &f(1000), now), (0, 1, 1000));
    // REPLAY_WINDOW frames: the highest and the 127 below it.
    assert_eq!(REPLAY_WINDOW, 128);
    assert_eq!(accept(&mut rx, &f(1000 - 127), now), (0, 1, 873));
    assert_eq!(
        rx.decrypt(b"", &f(1000 - 128), now),
        Err(SframeError::Replay)
    );
    assert_eq!(
        rx.decrypt(b"", &f(1000 - 129), now),
        Err(SframeError::Replay)
    );
    // Inside the window each counter is accepted exactly once.
    assert_eq!(rx.decrypt(b"", &f(873), now), Err(SframeError::Replay));
    assert_eq!(rx.decrypt(b"", &f(1000), now), Err(SframeError::Replay));
    assert_eq!(accept(&mut rx, &f(999), now).2, 999);
    assert_eq!(rx.decrypt(b"", &f(999), now), Err(SframeError::Replay));
    // The window slides with the highest counter: 874 is now 127 behind 1001, 873 is 128.
    assert_eq!(accept(&mut rx, &f(1001), now).2, 1001);
    assert_eq!(accept(&mut rx, &f(874), now).2, 874);
    assert_eq!(rx.decrypt(b"", &f(873), now), Err(SframeError::Replay));
    assert_eq!(rx.decrypt(b"", &f(872), now), Err(SframeError::Replay));
    // A frame that fails authentication does not move the window, however far ahead it is.
    let mut forged = f(5000);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        rx.decrypt(b"", &forged, now),
        Err(SframeError::AuthenticationFailed)
    );
    assert_eq!(accept(&mut rx, &f(1002), now).2, 1002);
    assert_eq!(
        rx.decrypt(b"", &f(1002 - 128), now),
        Err(SframeError::Replay)
    );
}

#[test]
fn replay_window_is_per_key() {
    let now = Instant::now();
    let mut rx = SframeKeyring::new(Duration::from_secs(2));
    rx.install(key(1, 0x20), [0, 1], now).unwrap();
    // Member 0's counter runs far ahead...
    assert_eq!(
        accept(&mut rx, &frame_at(0, 1, 0x20, 10_000), now),
        (0, 1, 10_000)
    );
    // ...member 1 (another KID, another key) still starts at 0 with its own window.
    assert_eq!(accept(&mut rx, &frame_at(1, 1, 0x20, 0), now), (1, 1, 0));
    assert_eq!(accept(&mut rx, &frame_at(1, 1, 0x20, 5), now), (1, 1, 5));
    assert_eq!(accept(&mut rx, &frame_at(1, 1, 0x20, 1), now), (1, 1, 1));
    assert_eq!(
        rx.decrypt(b"", &frame_at(1, 1, 0x20, 1), now),
        Err(SframeError::Replay)
    );
    // And member 1 moving ahead does not open member 0's old counters or close its window.
    assert_eq!(
        accept(&mut rx, &frame_at(1, 1, 0x20, 20_000), now).2,
        20_000
    );
    assert_eq!(
        rx.decrypt(b"", &frame_at(0, 1, 0x20, 10_000 - 128), now),
        Err(SframeError::Replay)
    );
    assert_eq!(
        accept(&mut rx, &frame_at(0, 1, 0x20, 10_000 - 127), now),
        (0, 1, 9873)
    );
}

#[test]
fn replay_windows_across_a_rekey_are_independent() {
    let t0 = Instant::now();
    let mut rx = SframeKeyring::new(Duration::from_secs(2));
    rx.install(key(4, 0x44), [0], t0).unwrap();
    assert_eq!(accept(&mut rx, &frame_at(0, 4, 0x44, 500), t0), (0, 4, 500));
    rx.install(key(5, 0x55), [0], t0).unwrap();
    // The new epoch's KID starts with a fresh window: counter 0 is accepted.
    assert_eq!(accept(&mut rx, &frame_at(0, 5, 0x55, 0), t0), (0, 5, 0));
    assert_eq!(
        rx.decrypt(b"", &frame_at(0, 5, 0x55, 0), t0),
        Err(SframeError::Replay)
    );
    // The old epoch keeps its own window during the grace period.
    assert_eq!(accept(&mut rx, &frame_at(0, 4, 0x44, 499), t0), (0, 4, 499));
    assert_eq!(
        rx.decrypt(b"", &frame_at(0, 4, 0x44, 500), t0),
        Err(SframeError::Replay)
    );
    assert_eq!(
        rx.decrypt(b"", &frame_at(0, 4, 0x44, 500 - 128), t0),
        Err(SframeError::Replay)
    );
    // Moving the new epoch far ahead does not touch the old epoch's window, and vice versa.
    assert_eq!(
        accept(&mut rx, &frame_at(0, 5, 0x55, 1_000_000), t0).2,
        1_000_000
    );
    assert_eq!(accept(&mut rx, &frame_at(0, 4, 0x44, 498), t0), (0, 4, 498));
    assert_eq!(
        accept(&mut rx, &frame_at(0, 4, 0x44, 2_000_000), t0).2,
        2_000_000
    );
    assert_eq!(
        accept(&mut rx, &frame_at(0, 5, 0x55, 1_000_000 - 127), t0),
        (0, 5, 999_873)
    );
    // Epoch 260 has the same KID as epoch 4 (260 mod 256 = 4) but another key: it replaces
    // epoch 4 and starts a fresh window; epoch 4's frames no longer authenticate.
    rx.install(key(260, 0x66), [0], t0).unwrap();
    assert_eq!(kid_for(0, 260), kid_for(0, 4));
    assert_eq!(accept(&mut rx, &frame_at(0, 260, 0x66, 0), t0), (0, 260, 0));
    assert_eq!(
        rx.decrypt(b"", &frame_at(0, 4, 0x44, 2_000_001), t0),
        Err(SframeError::AuthenticationFailed)
    );
}

#[test]
fn counters_near_u64_max() {
    let now = Instant::now();
    let max = u64::MAX;
    let mut rx = SframeKeyring::new(Duration::from_secs(2));
    rx.install(key(9, 0x99), [0, 1], now).unwrap();
    let f = |member, ctr| frame_at(member, 9, 0x99, ctr);
    // From 0 straight to the top: the window resets, nothing overflows.
    assert_eq!(accept(&mut rx, &f(0, 0), now).2, 0);
    assert_eq!(accept(&mut rx, &f(0, max - 1), now).2, max - 1);
    assert_eq!(accept(&mut rx, &f(0, max), now).2, max);
    assert_eq!(rx.decrypt(b"", &f(0, max), now), Err(SframeError::Replay));
    assert_eq!(
        rx.decrypt(b"", &f(0, max - 1), now),
        Err(SframeError::Replay)
    );
    assert_eq!(accept(&mut rx, &f(0, max - 127), now).2, max - 127);
    assert_eq!(
        rx.decrypt(b"", &f(0, max - 128), now),
        Err(SframeError::Replay)
    );
    assert_eq!(rx.decrypt(b"", &f(0, 0), now), Err(SframeError::Replay));
    assert_eq!(rx.decrypt(b"", &f(0, 1), now), Err(SframeError::Replay));
    // A KID whose first frame is u64::MAX: accepted once; everything else is then behind it.
    assert_eq!(accept(&mut rx, &f(1, max), now).2, max);
    assert_eq!(rx.decrypt(b"", &f(1, max), now), Err(SframeError::Replay));
    assert_eq!(accept(&mut rx, &f(1, max - 1), now).2, max - 1);
}
