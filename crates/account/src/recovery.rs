//! The recovery key: 256 random bits shown to the user once, as 55 characters of base32 in
//! groups of five, with a 16-bit checksum so a mistyped key is told apart from a wrong one (all
//! but about 1 in 65,536 mistypes; one that passes is then refused as a wrong key).
//!
//! It does two jobs. It unwraps the recovery copy of the account bundle
//! ([`crate::bundle::WrapKind::Recovery`]), and it derives an Ed25519 key
//! ([`RecoveryKey::auth_key`]) whose public half the relay keeps: a password reset is signed
//! with it, so only the holder of the recovery key can replace the OPAQUE record.

use ed25519_dalek::SigningKey;
use rand::RngCore as _;
use rand::rngs::OsRng;
use ring::hkdf;
use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::AccountError;

const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
const CHECKSUM_LABEL: &[u8] = b"cove/v1/recovery-checksum";
const AUTH_SALT: &[u8] = b"cove/v1/recovery-auth";
/// Characters in a recovery key, without the separators.
pub const RECOVERY_KEY_CHARS: usize = 55;

/// A recovery key. Zeroed on drop; its `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct RecoveryKey([u8; 32]);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(..)")
    }
}

impl RecoveryKey {
    /// A fresh random key.
    pub fn generate() -> RecoveryKey {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        RecoveryKey(key)
    }

    /// The key of these 32 secret bytes (as [`RecoveryKey::as_bytes`] gave them, e.g. from
    /// an unwrapped account bundle).
    pub fn from_bytes(bytes: [u8; 32]) -> RecoveryKey {
        RecoveryKey(bytes)
    }

    /// The 32 secret bytes (the bundle's wrapping secret).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as the user writes it down: 11 groups of 5 characters joined by `-`.
    pub fn display(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(34));
        bytes.extend_from_slice(&self.0);
        bytes.extend_from_slice(&checksum(&self.0));
        let chars = encode(&bytes);
        let mut out = Zeroizing::new(String::with_capacity(RECOVERY_KEY_CHARS + 10));
        for (i, c) in chars.iter().enumerate() {
            if i > 0 && i % 5 == 0 {
                out.push('-');
            }
            out.push(char::from(*c));
        }
        out
    }

    /// Parses what the user typed: case, spaces and dashes do not matter; `l` and `1` (never shown: the alphabet leaves out `l`, `o`, `0` and `1`) are read as `i`. [`AccountError::RecoveryKeyMistyped`] when
    /// the length, a character or the checksum is wrong.
    pub fn parse(typed: &str) -> Result<RecoveryKey, AccountError> {
        let mut chars = Zeroizing::new(Vec::with_capacity(RECOVERY_KEY_CHARS));
        for c in typed.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let c = match c.to_ascii_lowercase() {
                '1' | 'l' => 'i',
                c => c,
            };
            let v = ALPHABET
                .iter()
                .position(|a| char::from(*a) == c)
                .ok_or(AccountError::RecoveryKeyMistyped)?;
            chars.push(v as u8);
            if chars.len() > RECOVERY_KEY_CHARS {
                return Err(AccountError::RecoveryKeyMistyped);
            }
        }
        if chars.len() != RECOVERY_KEY_CHARS {
            return Err(AccountError::RecoveryKeyMistyped);
        }
        let bytes = decode(&chars);
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[..32]);
        if bytes[32..34] != checksum(&key) {
            key.zeroize();
            return Err(AccountError::RecoveryKeyMistyped);
        }
        Ok(RecoveryKey(key))
    }

    /// The Ed25519 key that signs a password reset; the relay keeps its public half.
    pub fn auth_key(&self) -> Result<SigningKey, AccountError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, AUTH_SALT).extract(&self.0);
        prk.expand(&[b"ed25519-seed"], Seed)
            .and_then(|okm| okm.fill(&mut *seed))
            .map_err(|_| AccountError::Internal("hkdf"))?;
        Ok(SigningKey::from_bytes(&seed))
    }
}

struct Seed;

impl hkdf::KeyType for Seed {
    fn len(&self) -> usize {
        32
    }
}

fn checksum(key: &[u8; 32]) -> [u8; 2] {
    let digest = Sha256::new()
        .chain_update(CHECKSUM_LABEL)
        .chain_update(key)
        .finalize();
    [digest[0], digest[1]]
}

/// 34 bytes -> 55 five-bit symbols (the last carries 2 bits of padding, always 0).
fn encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECOVERY_KEY_CHARS);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize]);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize]);
    }
    out
}

/// 55 symbols -> 34 bytes (the inverse of [`encode`]; padding bits are ignored).
fn decode(symbols: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(34));
    let (mut acc, mut bits) = (0u32, 0u32);
    for s in symbols {
        acc = (acc << 5) | u32::from(*s);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    out
}
