//! The account bundle: what a user needs on a new machine besides the password, wrapped so
//! the relay can store it and learn nothing from it.
//!
//! The bundle holds the user's identity key (the Ed25519 seed that signs the device list),
//! the history backup key and the recovery key (so any device that knows the password can
//! show the recovery key again: `cove recovery-key show`). It is wrapped twice, and the relay keeps both copies:
//! - under a key derived from OPAQUE's export key ([`WrapKind::Password`]), fetched only
//!   after a successful login, so only someone who knows the password can unwrap it and the
//!   relay cannot test a guess against it;
//! - under a key derived from the recovery key ([`WrapKind::Recovery`]), 256 random bits
//!   nobody can guess.
//!
//! Wrapped format, version 2 (127 bytes; version 1, without the recovery key, was never
//! stored by a released relay and is refused as [`AccountError::UnsupportedVersion`]):
//!
//! ```text
//! version (1) = 2 | kind (1) | nonce (12) | ChaCha20-Poly1305(key, nonce, plaintext, aad)
//! plaintext   = version (1) = 2 | identity key seed (32) | backup key (32) | recovery key (32)
//! key         = HKDF-SHA256(salt = "cove/v1/bundle-key", ikm = export key or recovery key,
//!                           info = kind label | len(user) (1) | user)
//! aad         = "cove/v1/account-bundle" | version | kind | len(user) (1) | user
//! ```
//!
//! The kind and the user are in both the key derivation and the associated data: a bundle
//! wrapped for one user or one kind never opens as another, and any changed byte (version,
//! kind, nonce, ciphertext, tag) makes unwrapping fail (the AEAD is authenticated, unlike
//! the ECB key wrapping MEGA's 2022 attacks exploited).

use rand::RngCore as _;
use rand::rngs::OsRng;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{AccountError, RecoveryKey};

/// The wrapped format's version.
pub const BUNDLE_VERSION: u8 = 2;

/// The length of a wrapped bundle of version 2.
pub const WRAPPED_LEN: usize = 2 + 12 + PLAINTEXT_LEN + 16;

const PLAINTEXT_LEN: usize = 1 + 32 + 32 + 32;
const KEY_SALT: &[u8] = b"cove/v1/bundle-key";
const AAD_LABEL: &[u8] = b"cove/v1/account-bundle";

/// Which secret a bundle is wrapped under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapKind {
    /// OPAQUE's export key (the password).
    Password,
    /// The recovery key.
    Recovery,
}

impl WrapKind {
    fn byte(self) -> u8 {
        match self {
            WrapKind::Password => 1,
            WrapKind::Recovery => 2,
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            WrapKind::Password => b"password-wrap\0",
            WrapKind::Recovery => b"recovery-wrap\0",
        }
    }
}

/// The user's account secrets. Zeroed on drop; never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct AccountBundle {
    /// The seed of the user's Ed25519 identity key.
    pub identity_key: [u8; 32],
    /// The key the history backup is encrypted with.
    pub backup_key: [u8; 32],
    /// The recovery key's 32 bytes ([`AccountBundle::recovery_key`]).
    pub recovery_key: [u8; 32],
}

impl std::fmt::Debug for AccountBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountBundle(..)")
    }
}

impl AccountBundle {
    /// A bundle for `identity_key` with a fresh random backup key and a fresh recovery key.
    pub fn new(identity_key: [u8; 32]) -> AccountBundle {
        let mut backup_key = [0u8; 32];
        OsRng.fill_bytes(&mut backup_key);
        AccountBundle {
            identity_key,
            backup_key,
            recovery_key: *RecoveryKey::generate().as_bytes(),
        }
    }

    /// The recovery key the bundle carries.
    pub fn recovery_key(&self) -> RecoveryKey {
        RecoveryKey::from_bytes(self.recovery_key)
    }

    /// Wraps the bundle for `user` under `secret` (the export key's 64 bytes or the recovery
    /// key's 32).
    pub fn wrap(&self, user: &str, kind: WrapKind, secret: &[u8]) -> Result<Vec<u8>, AccountError> {
        let key = wrapping_key(user, kind, secret)?;
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let mut data = Zeroizing::new(Vec::with_capacity(PLAINTEXT_LEN + 16));
        data.push(BUNDLE_VERSION);
        data.extend_from_slice(&self.identity_key);
        data.extend_from_slice(&self.backup_key);
        data.extend_from_slice(&self.recovery_key);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(user, kind)?),
            &mut *data,
        )
        .map_err(|_| AccountError::Internal("seal"))?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(BUNDLE_VERSION);
        out.push(kind.byte());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Unwraps a bundle [`AccountBundle::wrap`] made. [`AccountError::BundleRefused`] for a
    /// wrong secret, another user's or kind's bundle, or any changed byte.
    pub fn unwrap(
        wrapped: &[u8],
        user: &str,
        kind: WrapKind,
        secret: &[u8],
    ) -> Result<AccountBundle, AccountError> {
        if wrapped.len() != WRAPPED_LEN {
            return Err(AccountError::BundleRefused);
        }
        if wrapped[0] != BUNDLE_VERSION {
            return Err(AccountError::UnsupportedVersion(wrapped[0]));
        }
        if wrapped[1] != kind.byte() {
            return Err(AccountError::BundleRefused);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&wrapped[2..14]);
        let key = wrapping_key(user, kind, secret)?;
        let mut data = Zeroizing::new(wrapped[14..].to_vec());
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(user, kind)?),
                &mut data,
            )
            .map_err(|_| AccountError::BundleRefused)?;
        if plain.len() != PLAINTEXT_LEN || plain[0] != BUNDLE_VERSION {
            return Err(AccountError::BundleRefused);
        }
        let mut bundle = AccountBundle {
            identity_key: [0; 32],
            backup_key: [0; 32],
            recovery_key: [0; 32],
        };
        bundle.identity_key.copy_from_slice(&plain[1..33]);
        bundle.backup_key.copy_from_slice(&plain[33..65]);
        bundle.recovery_key.copy_from_slice(&plain[65..97]);
        Ok(bundle)
    }
}

fn user_bytes(user: &str) -> Result<(u8, &[u8]), AccountError> {
    let len = u8::try_from(user.len()).map_err(|_| AccountError::Malformed("user name"))?;
    Ok((len, user.as_bytes()))
}

fn aad(user: &str, kind: WrapKind) -> Result<Vec<u8>, AccountError> {
    let (len, name) = user_bytes(user)?;
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 3 + name.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(BUNDLE_VERSION);
    aad.push(kind.byte());
    aad.push(len);
    aad.extend_from_slice(name);
    Ok(aad)
}

fn wrapping_key(user: &str, kind: WrapKind, secret: &[u8]) -> Result<LessSafeKey, AccountError> {
    let (len, name) = user_bytes(user)?;
    let len = [len];
    let info = [kind.label(), &len[..], name];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KEY_SALT).extract(secret);
    let okm = prk
        .expand(&info, &CHACHA20_POLY1305)
        .map_err(|_| AccountError::Internal("hkdf"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}
