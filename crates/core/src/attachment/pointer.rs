//! The file key and the attachment pointer that travels inside an MLS message.

use std::fmt;

use cove_wire::BlobId;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::format::check_chunk_size;

/// Length of a file key.
pub const KEY_LEN: usize = 32;
/// Longest file name in a pointer, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;
/// Longest media type in a pointer, in bytes.
pub const MAX_MEDIA_TYPE_LEN: usize = 127;

/// A fresh random AES-256 key for one file. Never logged (its `Debug` is redacted), zeroed
/// on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct FileKey([u8; KEY_LEN]);

impl FileKey {
    /// Draws a new key from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut k = [0u8; KEY_LEN];
        rng.fill_bytes(&mut k);
        FileKey(k)
    }

    /// Wraps existing key bytes (from a pointer or a share link).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        FileKey(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

impl PartialEq for FileKey {
    fn eq(&self, other: &Self) -> bool {
        // Constant time: compare without early exit.
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for FileKey {}

impl Serialize for FileKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for FileKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FileKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 key bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<FileKey, E> {
                let arr: [u8; KEY_LEN] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(FileKey(arr))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<FileKey, A::Error> {
                let mut k = [0u8; KEY_LEN];
                for (i, slot) in k.iter_mut().enumerate() {
                    *slot = a
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if a.next_element::<u8>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(KEY_LEN + 1, &self));
                }
                Ok(FileKey(k))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Why a pointer is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PointerError {
    /// Name empty, longer than [`MAX_NAME_LEN`] bytes, or containing a path separator or a
    /// control character.
    #[error("invalid file name")]
    Name,
    /// Media type longer than [`MAX_MEDIA_TYPE_LEN`] or not printable ASCII.
    #[error("invalid media type")]
    MediaType,
    /// Chunk size not allowed by the format.
    #[error("invalid chunk size")]
    ChunkSize,
}

/// Everything a receiver needs to fetch, verify and decrypt an attachment. It travels only
/// inside MLS application messages (end-to-end encrypted), never to the relay in clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPointer")]
pub struct AttachmentPointer {
    /// Where the ciphertext is stored on the relay.
    pub blob_id: BlobId,
    /// The file key.
    pub key: FileKey,
    /// SHA-256 of the whole blob (header and chunks), so the relay cannot swap it.
    pub digest: [u8; 32],
    /// Plaintext size in bytes, so the relay cannot truncate it.
    pub size: u64,
    /// File name as the sender had it (no directories).
    pub name: String,
    /// Media type, e.g. `image/png` (`application/octet-stream` if unknown).
    pub media_type: String,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
}

impl AttachmentPointer {
    /// Checks the fields a peer controls.
    pub fn validate(&self) -> Result<(), PointerError> {
        validate_name(&self.name)?;
        validate_media_type(&self.media_type)?;
        check_chunk_size(self.chunk_size).map_err(|_| PointerError::ChunkSize)
    }

    /// Length of the blob on the relay.
    pub fn ciphertext_len(&self) -> u64 {
        super::ciphertext_len(self.size, self.chunk_size)
    }
}

impl fmt::Debug for AttachmentPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentPointer")
            .field("blob_id", &self.blob_id)
            .field("key", &self.key)
            .field("digest", &hex::encode(self.digest))
            .field("size", &self.size)
            .field("name", &self.name)
            .field("media_type", &self.media_type)
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

/// Checks a file name: 1..=255 bytes, no `/`, `\`, NUL or control characters, not `.`/`..`.
pub fn validate_name(name: &str) -> Result<(), PointerError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if ok { Ok(()) } else { Err(PointerError::Name) }
}

/// Checks a media type: 1..=127 bytes of printable ASCII without spaces.
pub fn validate_media_type(t: &str) -> Result<(), PointerError> {
    let ok =
        !t.is_empty() && t.len() <= MAX_MEDIA_TYPE_LEN && t.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(PointerError::MediaType)
    }
}

#[derive(Deserialize)]
struct RawPointer {
    blob_id: BlobId,
    key: FileKey,
    digest: [u8; 32],
    size: u64,
    name: String,
    media_type: String,
    chunk_size: u32,
}

impl TryFrom<RawPointer> for AttachmentPointer {
    type Error = PointerError;
    fn try_from(r: RawPointer) -> Result<Self, PointerError> {
        let p = AttachmentPointer {
            blob_id: r.blob_id,
            key: r.key,
            digest: r.digest,
            size: r.size,
            name: r.name,
            media_type: r.media_type,
            chunk_size: r.chunk_size,
        };
        p.validate()?;
        Ok(p)
    }
}
