//! SFrame: RFC 9605 Appendix C vectors, tampering, unknown and removed KIDs, rekeying.

use std::time::{Duration, Instant};

use cove_media::sframe::{
    CIPHER_SUITE_AES_128_GCM_SHA256_128, EpochKey, Header, KeyMaterial, SframeError, SframeKeyring,
    SframeSender, decrypt_frame, derive_key_material, encrypt_frame, kid_for,
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
    assert_eq!(h1.kid, kid_for(3, 7));
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
