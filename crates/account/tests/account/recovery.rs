//! The recovery key's written form and reset key.

use cove_account::recovery::RECOVERY_KEY_CHARS;
use cove_account::{AccountError, RecoveryKey};

#[test]
fn a_recovery_key_reads_back_from_its_written_form() {
    for _ in 0..200 {
        let key = RecoveryKey::generate();
        let shown = key.display();
        assert_eq!(shown.len(), RECOVERY_KEY_CHARS + 10);
        assert_eq!(shown.split('-').count(), 11);
        assert!(shown.split('-').all(|g| g.len() == 5));
        assert!(!shown.contains(['0', '1', 'l', 'o']));
        assert_eq!(RecoveryKey::parse(&shown).expect("parse"), key);
        assert_eq!(
            RecoveryKey::parse(&shown.to_uppercase()).expect("upper"),
            key
        );
        let spaced: String = shown
            .replace('-', "")
            .chars()
            .flat_map(|c| [c, ' '])
            .collect();
        assert_eq!(RecoveryKey::parse(&spaced).expect("spaced"), key);
    }
}

/// Every single-character substitution in these fixed keys is caught (a 16-bit checksum
/// lets about 1 in 65,536 random substitutions through, so a random key would make this
/// test fail in ~2.5% of runs: the keys are fixed, and the property is checked for them).
#[test]
fn a_mistyped_recovery_key_is_told_apart() {
    let mut counting = [0u8; 32];
    for (i, b) in counting.iter_mut().enumerate() {
        *b = i as u8;
    }
    // (The all-zero key is not among them: one of its substitutions passes the checksum.)
    for bytes in [[0xff; 32], counting, [0x5a; 32], [1; 32]] {
        mistypes_of_one_key_are_told_apart(RecoveryKey::from_bytes(bytes));
    }
}

fn mistypes_of_one_key_are_told_apart(key: RecoveryKey) {
    let shown = key.display().to_string();
    let compact: Vec<char> = shown.replace('-', "").chars().collect();
    // Every single-character substitution is caught by the checksum or the alphabet (the
    // last character carries two padding bits, so two of its substitutions decode to the same
    // bytes: those must then parse to the same key).
    let alphabet = "abcdefghijkmnpqrstuvwxyz23456789";
    for i in 0..compact.len() {
        for c in alphabet.chars().filter(|c| *c != compact[i]) {
            let mut typo = compact.clone();
            typo[i] = c;
            let typo: String = typo.into_iter().collect();
            match RecoveryKey::parse(&typo) {
                Err(e) => assert_eq!(e, AccountError::RecoveryKeyMistyped),
                Ok(other) => assert!(i == compact.len() - 1 && other == key, "typo at {i}"),
            }
        }
    }
    assert_eq!(
        RecoveryKey::parse(&shown[..shown.len() - 1]).err(),
        Some(AccountError::RecoveryKeyMistyped)
    );
    assert_eq!(
        RecoveryKey::parse(&format!("{shown}a")).err(),
        Some(AccountError::RecoveryKeyMistyped)
    );
    assert_eq!(
        RecoveryKey::parse("").err(),
        Some(AccountError::RecoveryKeyMistyped)
    );
    assert_eq!(format!("{key:?}"), "RecoveryKey(..)");
}

#[test]
fn the_reset_key_is_fixed_by_the_recovery_key() {
    let a = RecoveryKey::generate();
    let b = RecoveryKey::generate();
    let a1 = a.auth_key().expect("a");
    let a2 = RecoveryKey::parse(&a.display())
        .expect("parse")
        .auth_key()
        .expect("a again");
    assert_eq!(a1.verifying_key(), a2.verifying_key());
    assert_ne!(a1.verifying_key(), b.auth_key().expect("b").verifying_key());
    // The reset key is not the wrapping secret.
    assert_ne!(&a1.to_bytes(), a.as_bytes());
}
