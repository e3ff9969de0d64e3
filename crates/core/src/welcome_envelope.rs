//! The Cove Welcome envelope: what a commit that adds devices carries as its Welcome
//! (`PostKind::Commit { welcome }`, opaque to the relay). It holds the MLS Welcome and the
//! group's name sealed under a key of the epoch the commit creates, so that the name travels
//! only between members: the relay, which validates every commit and stores each epoch's
//! GroupInfo (group context in clear), never sees it.
//!
//! ```text
//! envelope    = "CW" | version (1) | u32 BE len | MLS Welcome (len bytes) | sealed name
//! sealed name = nonce (12) | AES-256-GCM(key, nonce, name, aad = group id) (name + 16-byte tag)
//! key         = MLS-Exporter("cove/v1/group-name", group id, 32) of the epoch the commit creates
//! ```
//!
//! The adder derives the key from its pending commit (`StagedCommit::export_secret`) before
//! posting it, the joiner from the group it builds out of the MLS Welcome
//! (`MlsGroup::export_secret`). Every length is bounded while reading; nothing here panics on
//! what a peer sent.
//!
//! A leaf module: it imports only [`crate::error`] and other crates.

use cove_wire::GroupId;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::error::WelcomeEnvelopeError;

/// Longest group name, bytes. The name travels sealed in the Welcome envelope, never in the
/// group context (which the relay sees in every GroupInfo).
pub const MAX_GROUP_NAME: usize = 128;
/// The first two bytes of every Welcome envelope.
pub const WELCOME_MAGIC: [u8; 2] = *b"CW";
/// The envelope format version this core writes and reads.
pub const WELCOME_VERSION: u8 = 1;
/// MLS exporter label of the key that seals the group name.
pub const GROUP_NAME_LABEL: &str = "cove/v1/group-name";
/// Length of the group-name key, bytes.
pub const GROUP_NAME_KEY_LEN: usize = 32;
/// Length of the sealed name's nonce, bytes.
pub const NAME_NONCE_LEN: usize = 12;
/// Length of the AEAD tag after the sealed name, bytes.
const TAG_LEN: usize = 16;
/// Bytes before the MLS Welcome: magic, version, length.
const HEADER_LEN: usize = 2 + 1 + 4;
/// Shortest sealed name (an empty name): nonce and tag.
const MIN_SEALED_NAME: usize = NAME_NONCE_LEN + TAG_LEN;
/// Longest sealed name: nonce, a name of [`MAX_GROUP_NAME`] bytes, tag.
pub const MAX_SEALED_NAME: usize = NAME_NONCE_LEN + MAX_GROUP_NAME + TAG_LEN;

/// A decoded Welcome envelope, borrowing the bytes it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WelcomeEnvelope<'a> {
    /// The TLS-encoded MLS Welcome message.
    pub welcome: &'a [u8],
    /// The group name, sealed (`nonce | ciphertext | tag`); opened with [`open_name`].
    pub sealed_name: &'a [u8],
}

impl<'a> WelcomeEnvelope<'a> {
    /// Reads an envelope: magic, version, a bounded Welcome, and a sealed name whose length
    /// fits a name of at most [`MAX_GROUP_NAME`] bytes (nothing may follow it).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, WelcomeEnvelopeError> {
        let (header, rest) = bytes
            .split_at_checked(HEADER_LEN)
            .ok_or(WelcomeEnvelopeError::Truncated)?;
        let (magic, header) = header.split_at(2);
        if magic != WELCOME_MAGIC {
            return Err(WelcomeEnvelopeError::NotAnEnvelope);
        }
        let (version, len) = header.split_at(1);
        if version != [WELCOME_VERSION] {
            return Err(WelcomeEnvelopeError::Version(version.first().copied()));
        }
        let len: [u8; 4] = len
            .try_into()
            .map_err(|_| WelcomeEnvelopeError::Truncated)?;
        let len = usize::try_from(u32::from_be_bytes(len))
            .map_err(|_| WelcomeEnvelopeError::Truncated)?;
        let (welcome, sealed_name) = rest
            .split_at_checked(len)
            .ok_or(WelcomeEnvelopeError::Truncated)?;
        if !(MIN_SEALED_NAME..=MAX_SEALED_NAME).contains(&sealed_name.len()) {
            return Err(WelcomeEnvelopeError::SealedNameLength(sealed_name.len()));
        }
        Ok(WelcomeEnvelope {
            welcome,
            sealed_name,
        })
    }

    /// The envelope's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WelcomeEnvelopeError> {
        let len =
            u32::try_from(self.welcome.len()).map_err(|_| WelcomeEnvelopeError::WelcomeTooLarge)?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.welcome.len() + self.sealed_name.len());
        out.extend_from_slice(&WELCOME_MAGIC);
        out.push(WELCOME_VERSION);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.welcome);
        out.extend_from_slice(self.sealed_name);
        Ok(out)
    }
}

/// Seals `name` (at most [`MAX_GROUP_NAME`] bytes) for the members of `group` under `key`
/// (the [`GROUP_NAME_LABEL`] export of the epoch the Welcome is into), with a fresh random
/// `nonce`.
pub fn seal_name(
    key: &[u8],
    nonce: [u8; NAME_NONCE_LEN],
    group: &GroupId,
    name: &str,
) -> Result<Vec<u8>, WelcomeEnvelopeError> {
    if name.len() > MAX_GROUP_NAME {
        return Err(WelcomeEnvelopeError::NameTooLong(name.len()));
    }
    let key = aead_key(key)?;
    let mut sealed = name.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&group.0),
        &mut sealed,
    )
    .map_err(|_| WelcomeEnvelopeError::Key)?;
    let mut out = Vec::with_capacity(NAME_NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a sealed name of `group` with `key`: refused if it was altered, sealed for another
/// group or under another key, is not UTF-8, or is longer than [`MAX_GROUP_NAME`] bytes.
pub fn open_name(
    key: &[u8],
    group: &GroupId,
    sealed_name: &[u8],
) -> Result<String, WelcomeEnvelopeError> {
    if !(MIN_SEALED_NAME..=MAX_SEALED_NAME).contains(&sealed_name.len()) {
        return Err(WelcomeEnvelopeError::SealedNameLength(sealed_name.len()));
    }
    let (nonce, ciphertext) = sealed_name
        .split_first_chunk::<NAME_NONCE_LEN>()
        .ok_or(WelcomeEnvelopeError::SealedNameLength(sealed_name.len()))?;
    let key = aead_key(key)?;
    let mut buf = ciphertext.to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(&group.0),
            &mut buf,
        )
        .map_err(|_| WelcomeEnvelopeError::NameNotOpened)?;
    if plain.len() > MAX_GROUP_NAME {
        return Err(WelcomeEnvelopeError::NameTooLong(plain.len()));
    }
    String::from_utf8(plain.to_vec()).map_err(|_| WelcomeEnvelopeError::NameNotUtf8)
}

/// The AES-256-GCM key of a [`GROUP_NAME_KEY_LEN`]-byte exported secret.
fn aead_key(key: &[u8]) -> Result<LessSafeKey, WelcomeEnvelopeError> {
    if key.len() != GROUP_NAME_KEY_LEN {
        return Err(WelcomeEnvelopeError::Key);
    }
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| WelcomeEnvelopeError::Key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const GROUP: GroupId = GroupId([7; 16]);
    const KEY: [u8; 32] = [3; 32];

    fn envelope(name: &str) -> Vec<u8> {
        let sealed = seal_name(&KEY, [5; 12], &GROUP, name).unwrap();
        WelcomeEnvelope {
            welcome: b"mls welcome",
            sealed_name: &sealed,
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn a_sealed_name_round_trips_and_hides_the_name() {
        let bytes = envelope("Secret Club");
        assert!(!bytes.windows(6).any(|w| w == b"Secret"));
        let env = WelcomeEnvelope::decode(&bytes).unwrap();
        assert_eq!(env.welcome, b"mls welcome");
        assert_eq!(
            open_name(&KEY, &GROUP, env.sealed_name).unwrap(),
            "Secret Club"
        );
    }

    #[test]
    fn every_prefix_and_every_flipped_byte_is_refused_without_panicking() {
        let bytes = envelope("name");
        for n in 0..bytes.len() {
            let Ok(env) = WelcomeEnvelope::decode(&bytes[..n]) else {
                continue;
            };
            assert!(
                open_name(&KEY, &GROUP, env.sealed_name).is_err(),
                "prefix {n}"
            );
        }
        let welcome_end = HEADER_LEN + b"mls welcome".len();
        for i in (0..bytes.len()).filter(|i| !(HEADER_LEN..welcome_end).contains(i)) {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let opened = WelcomeEnvelope::decode(&b)
                .and_then(|env| open_name(&KEY, &GROUP, env.sealed_name));
            assert!(opened.is_err(), "byte {i} flipped: {opened:?}");
        }
    }

    #[test]
    fn a_name_for_another_group_or_key_does_not_open() {
        let bytes = envelope("name");
        let env = WelcomeEnvelope::decode(&bytes).unwrap();
        assert!(matches!(
            open_name(&KEY, &GroupId([8; 16]), env.sealed_name),
            Err(WelcomeEnvelopeError::NameNotOpened)
        ));
        assert!(matches!(
            open_name(&[4; 32], &GROUP, env.sealed_name),
            Err(WelcomeEnvelopeError::NameNotOpened)
        ));
    }

    #[test]
    fn lengths_are_bounded() {
        let long = "x".repeat(MAX_GROUP_NAME + 1);
        assert!(matches!(
            seal_name(&KEY, [0; 12], &GROUP, &long),
            Err(WelcomeEnvelopeError::NameTooLong(129))
        ));
        let mut bytes = envelope(&"x".repeat(MAX_GROUP_NAME));
        assert!(WelcomeEnvelope::decode(&bytes).is_ok());
        bytes.push(0);
        assert!(matches!(
            WelcomeEnvelope::decode(&bytes),
            Err(WelcomeEnvelopeError::SealedNameLength(_))
        ));
        // A length past the end.
        let mut bytes = envelope("n");
        bytes[3..7].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            WelcomeEnvelope::decode(&bytes),
            Err(WelcomeEnvelopeError::Truncated)
        ));
    }
}
