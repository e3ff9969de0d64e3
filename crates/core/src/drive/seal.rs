//! Blobs sealed under a one-time key: manifests too long to go inline, tree snapshots and
//! folder links. `blob = AES-256-GCM(key, nonce = 12 zero bytes, aad, plaintext)`: the key
//! is random and used once, so the fixed nonce is never reused.
#![allow(clippy::todo)] // contract stubs (issue 14); the helper filling them removes this

use super::chunk::FileSecret;

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

/// Seals `plaintext` under `key` with `aad`.
pub fn seal(_key: &FileSecret, _aad: &[u8], _plaintext: &[u8]) -> Vec<u8> {
    todo!("drive-chunks")
}

/// Opens a sealed blob.
pub fn open(_key: &FileSecret, _aad: &[u8], _blob: &[u8]) -> Result<Vec<u8>, SealError> {
    todo!("drive-chunks")
}
