//! Blobs sealed under a one-time key: manifests too long to go inline, tree snapshots and
//! folder links. `blob = AES-256-GCM(key, nonce = 12 zero bytes, aad, plaintext)`: the key
//! is random and used once, so the fixed nonce is never reused.
use ring::aead::Aad;

use super::chunk::{FileSecret, aead_key, zero_nonce};

/// Associated data of a manifest blob (postcard [`super::Manifest`]).
pub const MANIFEST_AAD: &[u8] = b"cove/drive/v1/manifest";
/// Associated data of a snapshot blob ([`super::Tree::encode_state`]).
pub const SNAPSHOT_AAD: &[u8] = b"cove/drive/v1/snapshot";
/// Associated data of a folder or file link blob (JSON, see `PROTOCOL.md`).
pub const LINK_AAD: &[u8] = b"cove/drive/v1/link";

/// Why a sealed blob does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sealed drive blob failed authentication")]
pub struct SealError;

/// Seals `plaintext` under `key` with `aad`. `key` must be fresh (used for this one blob).
pub fn seal(key: &FileSecret, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(plaintext.len() + 16);
    blob.extend_from_slice(plaintext);
    // Sealing fails only beyond GCM's length limit (~64 GiB); drive blobs are far smaller.
    #[allow(clippy::expect_used)]
    aead_key(&key.0)
        .seal_in_place_append_tag(zero_nonce(), Aad::from(aad), &mut blob)
        .expect("sealed blob within the AES-GCM length limit");
    blob
}

/// Opens a sealed blob.
pub fn open(key: &FileSecret, aad: &[u8], blob: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut buf = blob.to_vec();
    let n = aead_key(&key.0)
        .open_in_place(zero_nonce(), Aad::from(aad), &mut buf)
        .map_err(|_| SealError)?
        .len();
    buf.truncate(n);
    Ok(buf)
}
