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

#[test]
fn a_mistyped_recovery_key_is_told_apart() {
    let key = RecoveryKey::generate();
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
