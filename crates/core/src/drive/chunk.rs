//! File contents: content-defined chunks (FastCDC), each sealed under a key derived from
//! the file's secret. Format (also what the share page implements in WebCrypto):
//!
//! ```text
//! id_key    = HKDF-SHA256(ikm = secret, salt = "", info = "cove/drive/v1/chunk-id"), 32 bytes
//! chunk_id  = HMAC-SHA256(id_key, SHA-256(plaintext))
//! chunk_key = HKDF-SHA256(ikm = secret, salt = chunk_id, info = "cove/drive/v1/chunk-key"), 32 bytes
//! blob      = AES-256-GCM(chunk_key, nonce = 12 zero bytes, aad = chunk_id, plaintext) (ciphertext || tag)
//! ```
//!
//! A key encrypts exactly one plaintext (the key is derived from the plaintext's id), so the
//! fixed nonce is never reused for two plaintexts, and a re-upload of a chunk is byte for
//! byte the same blob. Ids are keyed by the file's secret: the same plaintext in two files
//! (two secrets) gives unrelated ids, keys and blobs.
//!
//! The id is a MAC of the plaintext's SHA-256 (hash, then MAC) rather than of the plaintext
//! itself: the plaintext is hashed once, and for a file of one chunk (every file under
//! [`MAX_CHUNK`]) that hash is also the whole file's SHA-256, which versions carry. So an
//! upload and a download hash each byte once, not twice. The MAC of a collision-resistant
//! hash is as good an id (two plaintexts with one id would be a SHA-256 collision).
use std::fmt;
use std::io::Read;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::{digest, hkdf, hmac};

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

/// Info string of the id key's HKDF.
const ID_KEY_INFO: &[u8] = b"cove/drive/v1/chunk-id";
/// Info string of a chunk key's HKDF.
const CHUNK_KEY_INFO: &[u8] = b"cove/drive/v1/chunk-key";

/// The FastCDC cut points of a stream: yields `(offset, plaintext)` per chunk with the
/// sizes above. Reads `source` in bounded buffers (memory is O([`MAX_CHUNK`])).
///
/// FastCDC 2020 (`fastcdc::v2020`, normalization level 1, the crate's gear table, i.e. seed
/// 0) with [`MIN_CHUNK`], [`AVG_CHUNK`] and [`MAX_CHUNK`]: the same cut points as
/// `fastcdc::v2020::FastCDC` over the whole file, found in a window of [`MAX_CHUNK`] bytes.
/// They depend on the content only, so an edit moves at most the chunks around it. A
/// source shorter than [`MAX_CHUNK`] is one chunk (a small file is one blob: its edits
/// re-upload at most 2 MiB, and a tree of small files costs one blob each, not several).
/// An empty source yields nothing. After an I/O error the iterator ends.
pub struct Chunker<R: Read> {
    source: R,
    /// `buf[start..len]` are read and not yet cut.
    buf: Vec<u8>,
    start: usize,
    len: usize,
    /// File offset of `buf[start]`.
    offset: u64,
    eof: bool,
    done: bool,
}

/// Masks of FastCDC 2020 at normalization level 1 for [`AVG_CHUNK`] (2^19): small chunks
/// use 2^20's, large ones 2^18's.
const MASK_S: u64 = fastcdc::v2020::MASKS[20];
const MASK_L: u64 = fastcdc::v2020::MASKS[18];

impl<R: Read> Chunker<R> {
    /// Chunks `source`.
    pub fn new(source: R) -> Self {
        Chunker {
            source,
            buf: vec![0; MAX_CHUNK as usize],
            start: 0,
            len: 0,
            offset: 0,
            eof: false,
            done: false,
        }
    }

    /// Fills the window: moves the unread tail to the front and reads until it is full or
    /// the source ends.
    fn fill(&mut self) -> std::io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.len, 0);
            self.len -= self.start;
            self.start = 0;
        }
        while !self.eof && self.len < self.buf.len() {
            match self.source.read(&mut self.buf[self.len..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<(u64, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Err(e) = self.fill() {
            self.done = true;
            return Some(Err(e));
        }
        if self.start == self.len {
            self.done = true;
            return None;
        }
        // A whole source shorter than the window is one chunk: no cut point to look for,
        // and the window itself is handed over (a small one's spare room given back).
        if self.offset == 0 && self.eof {
            self.done = true;
            let mut chunk = std::mem::take(&mut self.buf);
            chunk.truncate(self.len);
            if chunk.len() <= MIN_CHUNK as usize {
                chunk.shrink_to(chunk.len() + CHUNK_OVERHEAD as usize);
            }
            self.offset = chunk.len() as u64;
            return Some(Ok((0, chunk)));
        }
        let window = &self.buf[self.start..self.len];
        let (_, n) = fastcdc::v2020::cut(
            window,
            MIN_CHUNK as usize,
            AVG_CHUNK as usize,
            MAX_CHUNK as usize,
            MASK_S,
            MASK_L,
            MASK_S << 1,
            MASK_L << 1,
        );
        let n = n.clamp(1, window.len());
        // Room for the tag, so that sealing in place does not move the chunk.
        let mut chunk = Vec::with_capacity(n + CHUNK_OVERHEAD as usize);
        chunk.extend_from_slice(&window[..n]);
        let at = self.offset;
        self.start += n;
        self.offset += n as u64;
        Some(Ok((at, chunk)))
    }
}

/// A [`hkdf::KeyType`] of 32 bytes.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-SHA256(ikm, salt, info) to 32 bytes.
fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let infos = [info];
    // Expanding to 32 bytes (<= 255 * 32) and filling 32 bytes cannot fail.
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    if let Ok(okm) = prk.expand(&infos, Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// The key chunk ids are HMACs under.
fn id_key(secret: &FileSecret) -> hmac::Key {
    let mut k = hkdf32(&secret.0, b"", ID_KEY_INFO);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &k);
    k.zeroize();
    key
}

/// The AEAD key of the chunk with id `id`.
fn chunk_key(secret: &FileSecret, id: &[u8; 32]) -> LessSafeKey {
    let mut k = hkdf32(&secret.0, id, CHUNK_KEY_INFO);
    let key = aead_key(&k);
    k.zeroize();
    key
}

/// An AES-256-GCM key.
pub(crate) fn aead_key(k: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always a valid AES-256 key.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::new(&AES_256_GCM, k).expect("32-byte AES-256 key");
    LessSafeKey::new(unbound)
}

/// The fixed all-zero nonce (each key seals exactly one plaintext).
pub(crate) fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; 12])
}

/// The SHA-256 of a chunk's plaintext (what its id is a MAC of; for a file of one chunk,
/// the file's SHA-256).
pub fn chunk_digest(plaintext: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, plaintext).as_ref());
    out
}

/// A chunk's id under `secret`.
pub fn chunk_id(secret: &FileSecret, plaintext: &[u8]) -> [u8; 32] {
    chunk_id_of_digest(secret, &chunk_digest(plaintext))
}

/// A chunk's id under `secret` from its plaintext's [`chunk_digest`].
pub fn chunk_id_of_digest(secret: &FileSecret, digest: &[u8; 32]) -> [u8; 32] {
    let tag = hmac::sign(&id_key(secret), digest);
    let mut id = [0u8; 32];
    id.copy_from_slice(tag.as_ref());
    id
}

/// Seals a chunk: its id and the blob bytes.
pub fn seal_chunk(secret: &FileSecret, plaintext: &[u8]) -> ([u8; 32], Vec<u8>) {
    let id = chunk_id(secret, plaintext);
    let blob = seal_chunk_with_id(secret, &id, plaintext);
    (id, blob)
}

/// Seals a chunk whose id the caller already computed with [`chunk_id`] (an upload checks
/// the id against the chunks it already has before sealing): the blob bytes, the same as
/// [`seal_chunk`]'s. Given another id, the blob is one that [`open_chunk`] refuses.
pub fn seal_chunk_with_id(secret: &FileSecret, id: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(plaintext.len() + CHUNK_OVERHEAD as usize);
    blob.extend_from_slice(plaintext);
    seal_chunk_in_place(secret, id, blob)
}

/// [`seal_chunk_with_id`] in the plaintext's own buffer (no copy): the blob bytes.
pub fn seal_chunk_in_place(secret: &FileSecret, id: &[u8; 32], mut plaintext: Vec<u8>) -> Vec<u8> {
    let key = chunk_key(secret, id);
    // Sealing fails only for plaintexts beyond GCM's limit (~64 GiB), far above MAX_CHUNK.
    #[allow(clippy::expect_used)]
    key.seal_in_place_append_tag(zero_nonce(), Aad::from(&id[..]), &mut plaintext)
        .expect("chunk within the AES-GCM length limit");
    plaintext
}

/// Opens a chunk's blob, checking its id and length against `chunk`.
pub fn open_chunk(
    secret: &FileSecret,
    chunk: &ChunkRef,
    blob: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    open_chunk_in_place(secret, chunk, blob.to_vec()).map(|(plaintext, _)| plaintext)
}

/// [`open_chunk`] in the blob's own buffer (no copy): the plaintext and its
/// [`chunk_digest`] (checked against the id already, so a caller need not hash it again).
pub fn open_chunk_in_place(
    secret: &FileSecret,
    chunk: &ChunkRef,
    mut blob: Vec<u8>,
) -> Result<(Vec<u8>, [u8; 32]), ChunkError> {
    if chunk.len > MAX_CHUNK {
        return Err(ChunkError::InvalidManifest);
    }
    if blob.len() as u64 != u64::from(chunk.len) + CHUNK_OVERHEAD {
        return Err(ChunkError::Tampered);
    }
    let key = chunk_key(secret, &chunk.id);
    let n = key
        .open_in_place(zero_nonce(), Aad::from(&chunk.id[..]), &mut blob)
        .map_err(|_| ChunkError::Tampered)?
        .len();
    blob.truncate(n);
    if n != chunk.len as usize {
        return Err(ChunkError::Mismatch);
    }
    let digest = chunk_digest(&blob);
    if chunk_id_of_digest(secret, &digest) != chunk.id {
        return Err(ChunkError::Mismatch);
    }
    Ok((blob, digest))
}

impl Manifest {
    /// The plaintext size (sum of the chunk lengths).
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// The postcard encoding: the plaintext of a manifest blob
    /// ([`super::seal::MANIFEST_AAD`]).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain integers and byte arrays into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a manifest blob's plaintext and checks its bounds ([`Self::validate`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, ChunkError> {
        let m: Manifest = postcard::from_bytes(bytes).map_err(|_| ChunkError::InvalidManifest)?;
        m.validate()?;
        Ok(m)
    }

    /// Checks the bounds: at most [`MAX_CHUNKS`] chunks of 1..=[`MAX_CHUNK`] bytes.
    pub fn validate(&self) -> Result<(), ChunkError> {
        let ok = self.chunks.len() <= MAX_CHUNKS
            && self.chunks.iter().all(|c| (1..=MAX_CHUNK).contains(&c.len));
        ok.then_some(()).ok_or(ChunkError::InvalidManifest)
    }
}
