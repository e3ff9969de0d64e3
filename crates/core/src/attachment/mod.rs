//! Attachment encryption: the chunked AES-256-GCM STREAM format of Cove blobs, the pointer
//! that travels inside an MLS message, and share-link fragments.
//!
//! Everything here is sans-IO: bytes go in, bytes come out, randomness is injected. The
//! client shell reads files and talks HTTPS; the relay stores only the ciphertext.
//!
//! A blob is `header (16 bytes) || chunk_0 || ... || chunk_n`, each chunk
//! `AES-256-GCM(key, nonce_prefix || index_be32 || last_flag, aad = header, plaintext)`
//! holding `chunk_size` bytes of plaintext (the final chunk 0..=`chunk_size`, empty only
//! when the whole file is empty). See `PROTOCOL.md`, "Attachments and share links".
//!
//! ```
//! use cove_core::attachment::{Decryptor, Encryptor, Expected, FileKey, DEFAULT_CHUNK_SIZE};
//! let mut rng = rand::rngs::OsRng;
//! let key = FileKey::generate(&mut rng);
//! let mut enc = Encryptor::new(&key, &mut rng, DEFAULT_CHUNK_SIZE).unwrap();
//! let mut blob = Vec::new();
//! enc.push(b"hello", &mut blob).unwrap();
//! let sealed = enc.finish(&mut blob).unwrap();
//!
//! let expected = Expected { digest: sealed.digest, size: Some(5), ..Expected::default() };
//! let mut dec = Decryptor::new(&key, expected);
//! let mut plain = Vec::new();
//! dec.push(&blob, &mut plain).unwrap();
//! dec.finish(&mut plain).unwrap();
//! assert_eq!(plain, b"hello");
//! ```

mod format;
mod link;
mod pointer;
mod stream;

pub use format::{
    ChunkCipher, DEFAULT_CHUNK_SIZE, HEADER_LEN, Header, MAGIC, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
    NONCE_PREFIX_LEN, TAG_LEN, VERSION, chunk_count, ciphertext_len,
};
pub use link::{ShareLink, ShareLinkError};
pub use pointer::{
    AttachmentPointer, FileKey, KEY_LEN, MAX_MEDIA_TYPE_LEN, MAX_NAME_LEN, PointerError,
    validate_media_type, validate_name,
};
pub use stream::{Decryptor, Encryptor, Expected, Opened, Sealed};

/// Why encrypting or decrypting an attachment failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttachmentError {
    /// The caller asked for a chunk size outside 64 KiB..=1 MiB or not a power of two.
    #[error("invalid chunk size {0}: must be a power of two from 64 KiB to 1 MiB")]
    ChunkSize(u64),
    /// The blob does not start with a valid Cove attachment header.
    #[error("not a Cove attachment (bad header)")]
    BadHeader,
    /// The header's chunk size differs from the one the pointer announced.
    #[error("chunk size mismatch: pointer says {expected}, blob says {found}")]
    ChunkSizeMismatch {
        /// From the pointer.
        expected: u32,
        /// From the blob header.
        found: u32,
    },
    /// A chunk failed authentication: the blob was modified, truncated, reordered, spliced,
    /// extended, or the key is wrong. No plaintext of that chunk was released.
    #[error("chunk {chunk} failed authentication (blob tampered with or wrong key)")]
    Authentication {
        /// Index of the chunk that failed.
        chunk: u32,
    },
    /// The blob ended before its final chunk.
    #[error("blob truncated")]
    Truncated,
    /// A non-empty file ended with an empty final chunk (not produced by a Cove encoder).
    #[error("empty final chunk")]
    EmptyFinalChunk,
    /// Decrypted size differs from the size the pointer announced.
    #[error("size mismatch: expected {expected} bytes, got {found}")]
    SizeMismatch {
        /// From the pointer.
        expected: u64,
        /// Decrypted so far.
        found: u64,
    },
    /// The ciphertext's SHA-256 differs from the digest the pointer announced.
    #[error("ciphertext digest mismatch (relay served a different blob)")]
    DigestMismatch,
    /// More than 2^32 chunks.
    #[error("file too large for the attachment format")]
    TooLarge,
    /// The caller misused [`Encryptor::seal_chunk`]: a chunk of the wrong size, a chunk
    /// after the last one, or mixed with [`Encryptor::push`]. A bug in the caller.
    #[error("encryptor misused: wrong chunk size, or a chunk after the last")]
    ChunkMisuse,
}

/// Signs blob-store HTTP requests with the device key (see `cove_wire::sign::
/// blob_request_message`). Holds a copy of the device's signing key (zeroized on drop) and
/// exposes nothing but this signature; it has no `Debug`.
#[derive(Clone)]
pub struct BlobRequestSigner {
    device: cove_wire::DeviceId,
    key: ed25519_dalek::SigningKey,
}

impl BlobRequestSigner {
    /// A signer for `device` with its key.
    pub fn new(device: cove_wire::DeviceId, key: ed25519_dalek::SigningKey) -> Self {
        BlobRequestSigner { device, key }
    }

    /// The signing device.
    pub fn device(&self) -> cove_wire::DeviceId {
        self.device
    }

    /// Signs `message` (the bytes of `blob_request_message`).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.key.sign(message).to_bytes()
    }
}
