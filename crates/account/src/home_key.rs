//! A home locked with a password: the database key wrapped under Argon2id of the password.
//!
//! Format, version 1 (`db.key.locked`, 100 bytes):
//!
//! ```text
//! version (1) = 1 | memory KiB (4, BE) | iterations (4) | lanes (4) | salt (16) | nonce (12)
//! | ChaCha20-Poly1305(Argon2id(password, salt, params), nonce, database key (32), aad) (48)
//! aad = "cove/v1/home-key" | the 29 header bytes before the ciphertext
//! ```
//!
//! The parameters travel in the file so they can be raised; on reading they are bounded (at
//! most [`MAX_MEMORY_KIB`] and [`MAX_ITERATIONS`]) so a hostile file cannot make the client
//! allocate without limit, and they are authenticated with the rest of the header.

use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore as _;
use rand::rngs::OsRng;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::{AccountError, KSF_PARAMS, KsfParams};

/// The locked-key format's version.
pub const HOME_KEY_VERSION: u8 = 1;
/// The length of a locked key, version 1.
pub const LOCKED_LEN: usize = HEADER_LEN + 32 + 16;
/// The most memory a locked key may ask Argon2id for (1 GiB).
pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// The most passes a locked key may ask Argon2id for.
pub const MAX_ITERATIONS: u32 = 64;

const HEADER_LEN: usize = 1 + 12 + 16 + 12;
const AAD_LABEL: &[u8] = b"cove/v1/home-key";

fn kek(password: &[u8], salt: &[u8], params: KsfParams) -> Result<LessSafeKey, AccountError> {
    let argon = Params::new(params.memory_kib, params.iterations, params.lanes, Some(32))
        .map(|p| Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
        .map_err(|_| AccountError::Malformed("locked key parameters"))?;
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(password, salt, &mut *key)
        .map_err(|_| AccountError::Internal("argon2"))?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &*key)
        .map_err(|_| AccountError::Internal("aead key"))?;
    Ok(LessSafeKey::new(unbound))
}

fn aad(header: &[u8]) -> Vec<u8> {
    [AAD_LABEL, header].concat()
}

/// Wraps `key` under `password` with [`KSF_PARAMS`] and a fresh salt.
pub fn lock(password: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, AccountError> {
    let p = KSF_PARAMS;
    let mut out = Vec::with_capacity(LOCKED_LEN);
    out.push(HOME_KEY_VERSION);
    out.extend_from_slice(&p.memory_kib.to_be_bytes());
    out.extend_from_slice(&p.iterations.to_be_bytes());
    out.extend_from_slice(&p.lanes.to_be_bytes());
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    out.extend_from_slice(&salt);
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    let sealing = kek(password, &salt, p)?;
    let mut data = Zeroizing::new(key.to_vec());
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(&out)),
            &mut *data,
        )
        .map_err(|_| AccountError::Internal("seal"))?;
    out.extend_from_slice(&data);
    Ok(out)
}

/// Unwraps a key [`lock`] made. [`AccountError::WrongPassword`] for a wrong password or any
/// changed byte.
pub fn unlock(password: &[u8], locked: &[u8]) -> Result<Zeroizing<[u8; 32]>, AccountError> {
    if locked.len() != LOCKED_LEN {
        return Err(AccountError::Malformed("locked key"));
    }
    if locked[0] != HOME_KEY_VERSION {
        return Err(AccountError::UnsupportedVersion(locked[0]));
    }
    let word = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&locked[i..i + 4]);
        u32::from_be_bytes(b)
    };
    let params = KsfParams {
        memory_kib: word(1),
        iterations: word(5),
        lanes: word(9),
    };
    if params.memory_kib > MAX_MEMORY_KIB
        || params.iterations > MAX_ITERATIONS
        || params.lanes == 0
        || params.lanes > 16
    {
        return Err(AccountError::Malformed("locked key parameters"));
    }
    let (header, sealed) = locked.split_at(HEADER_LEN);
    let salt = &header[13..29];
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&header[29..41]);
    let opening = kek(password, salt, params)?;
    let mut data = Zeroizing::new(sealed.to_vec());
    let plain = opening
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(header)),
            &mut data,
        )
        .map_err(|_| AccountError::WrongPassword)?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(plain);
    Ok(key)
}
