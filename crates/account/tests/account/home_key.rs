//! The password-locked database key.

use cove_account::AccountError;
use cove_account::home_key::{LOCKED_LEN, lock, unlock};

#[test]
fn a_locked_key_opens_with_its_password_only() {
    let key = [0x42u8; 32];
    let locked = lock(b"hunter2 but longer", &key).expect("lock");
    assert_eq!(locked.len(), LOCKED_LEN);
    assert!(!locked.windows(32).any(|w| w == key));
    assert_eq!(
        *unlock(b"hunter2 but longer", &locked).expect("unlock"),
        key
    );
    assert_eq!(
        unlock(b"hunter3 but longer", &locked).err(),
        Some(AccountError::WrongPassword)
    );
}

#[test]
fn a_changed_or_hostile_locked_key_is_refused_without_a_huge_allocation() {
    let locked = lock(b"pw", &[1; 32]).expect("lock");
    // A changed salt, nonce, ciphertext or tag: the password no longer opens it.
    for i in [13, 28, 29, 40, 41, LOCKED_LEN - 1] {
        let mut bad = locked.clone();
        bad[i] ^= 1;
        assert_eq!(
            unlock(b"pw", &bad).err(),
            Some(AccountError::WrongPassword),
            "byte {i}"
        );
    }
    // Parameters past the bounds are refused before Argon2 runs (4 GiB, 2^32-1 passes).
    let mut huge = locked.clone();
    huge[1..5].copy_from_slice(&(4u32 << 20).to_be_bytes());
    assert_eq!(
        unlock(b"pw", &huge).err(),
        Some(AccountError::Malformed("locked key parameters"))
    );
    let mut passes = locked.clone();
    passes[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        unlock(b"pw", &passes).err(),
        Some(AccountError::Malformed("locked key parameters"))
    );
    // Parameters lowered within bounds are authenticated too: refused, not used.
    let mut weaker = locked.clone();
    weaker[5..9].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(
        unlock(b"pw", &weaker).err(),
        Some(AccountError::WrongPassword)
    );
    assert_eq!(
        unlock(b"pw", &locked[..LOCKED_LEN - 1]).err(),
        Some(AccountError::Malformed("locked key"))
    );
    let mut version = locked.clone();
    version[0] = 9;
    assert_eq!(
        unlock(b"pw", &version).err(),
        Some(AccountError::UnsupportedVersion(9))
    );
}
