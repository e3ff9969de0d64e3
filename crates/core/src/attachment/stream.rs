//! Streaming encryptor and decryptor over buffers (sans-IO).

use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use super::format::{ChunkCipher, HEADER_LEN, Header, NONCE_PREFIX_LEN, TAG_LEN};
use super::{AttachmentError, FileKey};

/// What [`Encryptor::finish`] reports: the values that go into the pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// SHA-256 of the whole blob (`None` if the caller hashes it elsewhere, see
    /// [`Encryptor::hash_elsewhere`]).
    pub digest: Option<[u8; 32]>,
    /// Plaintext bytes encrypted.
    pub plaintext_len: u64,
    /// Blob bytes produced (header included).
    pub ciphertext_len: u64,
    /// Chunk size used.
    pub chunk_size: u32,
}

/// Encrypts a file, either pushed in pieces of any size ([`Encryptor::push`]; it holds back
/// up to one chunk of plaintext, as it must know whether a chunk is the last before sealing
/// it, so memory is bounded by the chunk size) or handed over one whole chunk at a time and
/// sealed in place without a copy ([`Encryptor::seal_chunk`], what the shipped upload uses).
/// Both ways produce the same bytes and run the same sealing code.
pub struct Encryptor {
    cipher: ChunkCipher,
    chunk_size: usize,
    /// Plaintext of the chunk being filled; sealed in place when known not to be the last.
    buf: Vec<u8>,
    next_index: u32,
    header_written: bool,
    /// Set once the last chunk is sealed; nothing may follow it.
    finished: bool,
    /// `None` when the caller hashes the blob itself.
    hasher: Option<Sha256>,
    plaintext_len: u64,
    ciphertext_len: u64,
}

impl Encryptor {
    /// An encryptor with a fresh random nonce prefix from `rng`.
    pub fn new<R: RngCore + CryptoRng>(
        key: &FileKey,
        rng: &mut R,
        chunk_size: u32,
    ) -> Result<Self, AttachmentError> {
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        rng.fill_bytes(&mut prefix);
        Self::with_nonce_prefix(key, prefix, chunk_size)
    }

    /// An encryptor with a given nonce prefix (test vectors, deterministic resumption of an
    /// upload). A key must never encrypt two different files with the same prefix.
    pub fn with_nonce_prefix(
        key: &FileKey,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        chunk_size: u32,
    ) -> Result<Self, AttachmentError> {
        let header = Header::new(chunk_size, nonce_prefix)?;
        let chunk_size = chunk_size as usize; // at most 1 MiB
        Ok(Encryptor {
            cipher: ChunkCipher::new(key, header),
            chunk_size,
            buf: Vec::with_capacity(chunk_size + TAG_LEN),
            next_index: 0,
            header_written: false,
            finished: false,
            hasher: Some(Sha256::new()),
            plaintext_len: 0,
            ciphertext_len: 0,
        })
    }

    /// Leaves the SHA-256 of the blob to the caller (e.g. on another core, in parallel with
    /// encryption); [`Sealed::digest`] is then `None`.
    pub fn hash_elsewhere(mut self) -> Self {
        self.hasher = None;
        self
    }

    /// The blob header (also the first bytes of the output).
    pub fn header(&self) -> &Header {
        self.cipher.header()
    }

    /// Seals one whole chunk in place: `chunk` holds the plaintext of the next chunk (exactly
    /// the chunk size, or 1 to chunk-size bytes for the last one; an empty file is one empty
    /// last chunk) and becomes its ciphertext, tag appended. The header is not included:
    /// the caller writes [`Header::encode`] of [`Encryptor::header`] before the first chunk.
    /// Cannot be mixed with [`Encryptor::push`].
    pub fn seal_chunk(&mut self, chunk: &mut Vec<u8>, last: bool) -> Result<(), AttachmentError> {
        let first = self.next_index == 0;
        let size_ok = if last {
            chunk.len() <= self.chunk_size && (first || !chunk.is_empty())
        } else {
            chunk.len() == self.chunk_size
        };
        if self.finished || !self.buf.is_empty() || !size_ok {
            return Err(AttachmentError::ChunkMisuse);
        }
        if !self.header_written {
            self.header_written = true;
            self.ciphertext_len += HEADER_LEN as u64;
            if let Some(h) = &mut self.hasher {
                h.update(self.cipher.header().encode());
            }
        }
        self.plaintext_len += chunk.len() as u64;
        self.seal_in_place(chunk, last)
    }

    /// Encrypts `input`, appending every finished chunk (and, the first time, the header) to
    /// `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        self.write_header(out);
        while !input.is_empty() {
            if self.buf.len() == self.chunk_size {
                // More plaintext follows, so the held chunk is not the last.
                self.seal_buf(false, out)?;
            }
            let take = (self.chunk_size - self.buf.len()).min(input.len());
            let (now, rest) = input.split_at(take);
            self.buf.extend_from_slice(now);
            self.plaintext_len += take as u64;
            input = rest;
        }
        Ok(())
    }

    /// Seals the final chunk into `out` (unless [`Encryptor::seal_chunk`] already sealed
    /// it) and reports digest and sizes.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<Sealed, AttachmentError> {
        if !self.finished {
            self.write_header(out);
            self.seal_buf(true, out)?;
        }
        Ok(Sealed {
            digest: self.hasher.take().map(|h| h.finalize().into()),
            plaintext_len: self.plaintext_len,
            ciphertext_len: self.ciphertext_len,
            chunk_size: self.cipher.header().chunk_size,
        })
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            let h = self.cipher.header().encode();
            if let Some(hasher) = &mut self.hasher {
                hasher.update(h);
            }
            out.extend_from_slice(&h);
            self.ciphertext_len += HEADER_LEN as u64;
            self.header_written = true;
        }
    }

    fn seal_buf(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        if self.finished {
            return Err(AttachmentError::ChunkMisuse);
        }
        let mut buf = std::mem::take(&mut self.buf);
        let sealed = self.seal_in_place(&mut buf, last);
        if sealed.is_ok() {
            out.extend_from_slice(&buf);
        }
        buf.clear();
        self.buf = buf;
        sealed
    }

    /// The one sealing step both ways of encrypting run: plaintext in, ciphertext and tag
    /// out, in the same buffer.
    fn seal_in_place(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), AttachmentError> {
        let index = self.next_index;
        self.next_index = index.checked_add(1).ok_or(AttachmentError::TooLarge)?;
        let tag = self.cipher.seal(index, last, buf);
        buf.extend_from_slice(&tag);
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..]);
        }
        self.ciphertext_len += buf.len() as u64;
        self.finished = last;
        Ok(())
    }
}

/// What the receiver expects of a blob (from the pointer or the share link). Each field that
/// is set is checked; a mismatch fails the decryption.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// SHA-256 of the whole blob.
    pub digest: Option<[u8; 32]>,
    /// Plaintext size.
    pub size: Option<u64>,
    /// Chunk size.
    pub chunk_size: Option<u32>,
}

/// What [`Decryptor::finish`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// SHA-256 of the whole blob (`None` if the caller hashes it elsewhere, see
    /// [`Decryptor::hash_elsewhere`]).
    pub digest: Option<[u8; 32]>,
    /// Plaintext bytes released.
    pub plaintext_len: u64,
    /// Blob bytes consumed.
    pub ciphertext_len: u64,
}

/// Decrypts a blob pushed in pieces of any size. Plaintext of a chunk is appended to the
/// output only after that chunk authenticated; a chunk is opened as "not last" once a byte
/// after it has arrived, and the final chunk at [`Decryptor::finish`]. The caller must treat
/// released plaintext as provisional until `finish` succeeds (a truncated blob fails only
/// there), e.g. by writing to a temporary file that is renamed on success.
pub struct Decryptor {
    key: FileKey,
    expected: Expected,
    header: [u8; HEADER_LEN],
    header_len: usize,
    cipher: Option<ChunkCipher>,
    /// Ciphertext of the chunk being received (at most chunk size + tag).
    buf: Vec<u8>,
    chunk_len: usize,
    next_index: u32,
    /// `None` when the caller hashes the blob itself.
    hasher: Option<Sha256>,
    plaintext_len: u64,
    ciphertext_len: u64,
}

impl Decryptor {
    /// Leaves the SHA-256 of the blob to the caller (e.g. on another core, in parallel with
    /// decryption). The caller must then check the digest itself before trusting the file;
    /// any expected digest is ignored here.
    pub fn hash_elsewhere(mut self) -> Self {
        self.hasher = None;
        self.expected.digest = None;
        self
    }

    /// A decryptor for the blob encrypted under `key`.
    pub fn new(key: &FileKey, expected: Expected) -> Self {
        Decryptor {
            key: key.clone(),
            expected,
            header: [0; HEADER_LEN],
            header_len: 0,
            cipher: None,
            buf: Vec::new(),
            chunk_len: 0,
            next_index: 0,
            hasher: Some(Sha256::new()),
            plaintext_len: 0,
            ciphertext_len: 0,
        }
    }

    /// Blob bytes consumed so far (where a resumed download continues).
    pub fn consumed(&self) -> u64 {
        self.ciphertext_len
    }

    /// Feeds blob bytes; appends authenticated plaintext to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        self.ciphertext_len += input.len() as u64;
        if let Some(h) = &mut self.hasher {
            h.update(input);
        }
        if self.cipher.is_none() {
            let need = HEADER_LEN - self.header_len;
            let take = need.min(input.len());
            let (now, rest) = input.split_at(take);
            if let Some(dst) = self.header.get_mut(self.header_len..self.header_len + take) {
                dst.copy_from_slice(now);
            }
            self.header_len += take;
            input = rest;
            if self.header_len < HEADER_LEN {
                return Ok(());
            }
            let header = Header::decode(&self.header)?;
            if let Some(expected) = self.expected.chunk_size
                && expected != header.chunk_size
            {
                return Err(AttachmentError::ChunkSizeMismatch {
                    expected,
                    found: header.chunk_size,
                });
            }
            self.chunk_len = header.chunk_size as usize + TAG_LEN; // at most 1 MiB + 16
            self.buf = Vec::with_capacity(self.chunk_len);
            self.cipher = Some(ChunkCipher::new(&self.key, header));
        }
        while !input.is_empty() {
            if self.buf.len() == self.chunk_len {
                // A byte follows this chunk, so it is not the last.
                self.open_buf(false, out)?;
            }
            let take = (self.chunk_len - self.buf.len()).min(input.len());
            let (now, rest) = input.split_at(take);
            self.buf.extend_from_slice(now);
            input = rest;
        }
        Ok(())
    }

    /// Opens the final chunk, then checks size and digest against the expectations.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<Opened, AttachmentError> {
        if self.cipher.is_none() || self.buf.len() < TAG_LEN {
            return Err(AttachmentError::Truncated);
        }
        let index = self.next_index;
        if self.buf.len() == TAG_LEN && index > 0 {
            return Err(AttachmentError::EmptyFinalChunk);
        }
        self.open_buf(true, out)?;
        let digest: Option<[u8; 32]> = self.hasher.take().map(|h| h.finalize().into());
        if let Some(size) = self.expected.size
            && size != self.plaintext_len
        {
            return Err(AttachmentError::SizeMismatch {
                expected: size,
                found: self.plaintext_len,
            });
        }
        if let Some(d) = self.expected.digest
            && Some(d) != digest
        {
            return Err(AttachmentError::DigestMismatch);
        }
        Ok(Opened {
            digest,
            plaintext_len: self.plaintext_len,
            ciphertext_len: self.ciphertext_len,
        })
    }

    fn open_buf(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let Some(cipher) = &self.cipher else {
            return Err(AttachmentError::Truncated);
        };
        let index = self.next_index;
        let plain = cipher.open(index, last, &mut self.buf)?;
        let len = plain.len() as u64;
        if let Some(size) = self.expected.size
            && self.plaintext_len + len > size
        {
            return Err(AttachmentError::SizeMismatch {
                expected: size,
                found: self.plaintext_len + len,
            });
        }
        out.extend_from_slice(plain);
        self.plaintext_len += len;
        self.next_index = index.checked_add(1).ok_or(AttachmentError::TooLarge)?;
        self.buf.clear();
        Ok(())
    }
}
