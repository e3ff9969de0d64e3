//! File contents: content-defined chunks (FastCDC), each sealed under a key derived from
//! the file's secret. Format (also what the share page implements in WebCrypto):
//!
//! ```text
//! id_key    = HKDF-SHA256(ikm = secret, salt = "", info = "cove/drive/v1/chunk-id"), 32 bytes
//! chunk_id  = HMAC-SHA256(id_key, plaintext)
//! chunk_key = HKDF-SHA256(ikm = secret, salt = chunk_id, info = "cove/drive/v1/chunk-key"), 32 bytes
//! blob      = AES-256-GCM(chunk_key, nonce = 12 zero bytes, aad = chunk_id, plaintext) (ciphertext || tag)
//! ```
//!
//! A key encrypts exactly one plaintext (the key is derived from the plaintext's id), so the
//! fixed nonce is never reused for two plaintexts, and a re-upload of a chunk is byte for
//! byte the same blob. Ids are keyed by the file's secret: the same plaintext in two files
//! (two secrets) gives unrelated ids, keys and blobs.
#![allow(clippy::todo)] // contract stubs (issue 14); the helper filling them removes this

use std::fmt;

use cove_wire::BlobId;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Smallest chunk FastCDC cuts (except a file's last).
pub const MIN_CHUNK: u32 = 128 * 1024;
/// Average chunk size FastCDC aims for.
pub const AVG_CHUNK: u32 = 512 * 1024;
/// Largest chunk.
pub const MAX_CHUNK: u32 = 2 * 1024 * 1024;
/// Bytes a sealed chunk adds to its plaintext (the GCM tag).
pub const CHUNK_OVERHEAD: u64 = 16;
/// Most chunks of one file version (a 1 TiB file at the average size).
pub const MAX_CHUNKS: usize = 1 << 21;

/// A file's 256-bit secret (or a sealed blob's one-time key). Never logged, zeroed on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSecret(pub [u8; 32]);

impl FileSecret {
    /// Draws a new secret from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        FileSecret(k)
    }
}

impl fmt::Debug for FileSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileSecret(<redacted>)")
    }
}

/// One chunk of a file version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// HMAC of its plaintext under the file's id key.
    pub id: [u8; 32],
    /// The blob holding it sealed.
    pub blob: BlobId,
    /// Plaintext length (at most [`MAX_CHUNK`]).
    pub len: u32,
}

/// A file version's chunks, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The chunks.
    pub chunks: Vec<ChunkRef>,
}

/// Why a chunk or manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The blob does not open under the chunk's key (tampered, truncated, swapped).
    #[error("a chunk failed authentication")]
    Tampered,
    /// The plaintext does not have the chunk's id or length.
    #[error("a chunk does not match its id")]
    Mismatch,
    /// A manifest out of bounds (too many chunks, a chunk too long).
    #[error("invalid manifest")]
    InvalidManifest,
}

/// The FastCDC cut points of a stream: yields `(offset, plaintext)` per chunk with the
/// sizes above. Reads `source` in bounded buffers (memory is O([`MAX_CHUNK`])).
pub struct Chunker<R> {
    _source: R,
}

impl<R: std::io::Read> Chunker<R> {
    /// Chunks `source`.
    pub fn new(source: R) -> Self {
        Chunker { _source: source }
    }
}

impl<R: std::io::Read> Iterator for Chunker<R> {
    type Item = std::io::Result<(u64, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        todo!("drive-chunks")
    }
}

/// A chunk's id under `secret`.
pub fn chunk_id(_secret: &FileSecret, _plaintext: &[u8]) -> [u8; 32] {
    todo!("drive-chunks")
}

/// Seals a chunk: its id and the blob bytes.
pub fn seal_chunk(_secret: &FileSecret, _plaintext: &[u8]) -> ([u8; 32], Vec<u8>) {
    todo!("drive-chunks")
}

/// Opens a chunk's blob, checking its id and length against `chunk`.
pub fn open_chunk(
    _secret: &FileSecret,
    _chunk: &ChunkRef,
    _blob: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    todo!("drive-chunks")
}

impl Manifest {
    /// The plaintext size (sum of the chunk lengths).
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// Checks the bounds: at most [`MAX_CHUNKS`] chunks of 1..=[`MAX_CHUNK`] bytes.
    pub fn validate(&self) -> Result<(), ChunkError> {
        let ok = self.chunks.len() <= MAX_CHUNKS
            && self.chunks.iter().all(|c| (1..=MAX_CHUNK).contains(&c.len));
        ok.then_some(()).ok_or(ChunkError::InvalidManifest)
    }
}
