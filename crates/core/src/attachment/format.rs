//! The blob header and the per-chunk STREAM nonces.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

use super::{AttachmentError, FileKey};

/// First four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"cove";
/// Format version (byte 4 of the header).
pub const VERSION: u8 = 1;
/// Length of the header that starts every blob and is the AAD of every chunk.
pub const HEADER_LEN: usize = 16;
/// Length of the random per-file nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Smallest allowed chunk size (64 KiB).
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
/// Largest allowed chunk size (1 MiB).
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;
/// The chunk size Cove encoders use (1 MiB: fewest tags and calls per byte).
pub const DEFAULT_CHUNK_SIZE: u32 = MAX_CHUNK_SIZE;

/// The 16-byte blob header: `"cove" || version (1) || chunk_size (u32 BE) || nonce_prefix (7)`.
/// It is authenticated as the AAD of every chunk, so changing it breaks every chunk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// Plaintext bytes per chunk (the final chunk may hold fewer).
    pub chunk_size: u32,
    /// Random per-file prefix of every nonce.
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    /// Builds a header after checking the chunk size.
    pub fn new(
        chunk_size: u32,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
    ) -> Result<Self, AttachmentError> {
        check_chunk_size(chunk_size)?;
        Ok(Header {
            chunk_size,
            nonce_prefix,
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5..9].copy_from_slice(&self.chunk_size.to_be_bytes());
        h[9..].copy_from_slice(&self.nonce_prefix);
        h
    }

    /// Parses and validates a header.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, AttachmentError> {
        let (magic, rest) = bytes.split_at(4);
        let (version, rest) = rest.split_at(1);
        let (size, prefix) = rest.split_at(4);
        if magic != MAGIC || version != [VERSION] {
            return Err(AttachmentError::BadHeader);
        }
        let chunk_size =
            u32::from_be_bytes(size.try_into().map_err(|_| AttachmentError::BadHeader)?);
        let nonce_prefix = prefix.try_into().map_err(|_| AttachmentError::BadHeader)?;
        check_chunk_size(chunk_size).map_err(|_| AttachmentError::BadHeader)?;
        Ok(Header {
            chunk_size,
            nonce_prefix,
        })
    }
}

/// Checks that `chunk_size` is a power of two in [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
pub(crate) fn check_chunk_size(chunk_size: u32) -> Result<(), AttachmentError> {
    if chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(AttachmentError::ChunkSize(chunk_size.into()))
    }
}

/// Number of chunks a plaintext of `size` bytes is cut into (at least one: an empty file is
/// one empty final chunk).
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size)).max(1)
}

/// Length of the blob holding a plaintext of `size` bytes.
pub fn ciphertext_len(size: u64, chunk_size: u32) -> u64 {
    HEADER_LEN as u64 + size + chunk_count(size, chunk_size) * TAG_LEN as u64
}

/// Seals and opens single chunks of one file. The streaming [`super::Encryptor`] and
/// [`super::Decryptor`] are built on it; the client shell may use it directly to encrypt in
/// place into its network buffers.
pub struct ChunkCipher {
    key: LessSafeKey,
    header: Header,
    header_bytes: [u8; HEADER_LEN],
}

impl ChunkCipher {
    /// A cipher for the file with `key` and `header`.
    pub fn new(key: &FileKey, header: Header) -> Self {
        // AES-256 takes any 32-byte key: `UnboundKey::new` only fails on a wrong length.
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32-byte key");
        ChunkCipher {
            key: LessSafeKey::new(unbound),
            header,
            header_bytes: header.encode(),
        }
    }

    /// The header bound into every chunk.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The nonce of chunk `index`: `nonce_prefix || index (u32 BE) || last (0 or 1)`.
    pub fn nonce(&self, index: u32, last: bool) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.header.nonce_prefix);
        n[NONCE_PREFIX_LEN..11].copy_from_slice(&index.to_be_bytes());
        n[11] = u8::from(last);
        n
    }

    /// Encrypts one chunk in place and returns its tag (to append after it).
    pub fn seal(&self, index: u32, last: bool, chunk: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = Nonce::assume_unique_for_key(self.nonce(index, last));
        // ring only fails for inputs longer than GCM's 64 GiB limit; chunks are <= 1 MiB.
        #[allow(clippy::expect_used)]
        let tag: Tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&self.header_bytes), chunk)
            .expect("chunk within AES-GCM limits");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts one chunk (`ciphertext || tag`) in place and returns its plaintext.
    pub fn open<'a>(
        &self,
        index: u32,
        last: bool,
        chunk_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], AttachmentError> {
        let nonce = Nonce::assume_unique_for_key(self.nonce(index, last));
        self.key
            .open_in_place(nonce, Aad::from(&self.header_bytes), chunk_and_tag)
            .map_err(|_| AttachmentError::Authentication { chunk: index })
    }
}
