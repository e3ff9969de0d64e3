//! SFrame (RFC 9605) end-to-end media encryption.
//!
//! Only the cipher suite `AES_128_GCM_SHA256_128` (0x0004) is implemented, on `ring`.
//!
//! # Keys and KIDs
//! Key management follows RFC 9605 §5.2 ("MLS"): for every MLS epoch the client core exports a
//! base key (`MLS-Exporter("SFrame 1.0 Base Key", call_id, 32)`, see `PROTOCOL.md`, "Calls") and
//! hands it to this module as an [`EpochKey`]. Each member encrypts under its own KID:
//!
//! ```text
//! KID = (context << 24) | (member_index << 8) | (epoch mod 256)   (RFC 9605 §5.2, E = 8, S = 16)
//! ```
//!
//! so every member has its own `sframe_key`/`sframe_salt` per epoch, and a key rotation (new
//! epoch) changes every KID. `context` is 40 random bits drawn by each [`SframeSender`] when it
//! is created: two senders of the same member with the same base key (a second `Call` with the
//! same call id, epoch and leaf, e.g. a re-answer after a restart) use different KIDs, hence
//! different keys and salts, so their counters, which both start at 0, never meet under one key
//! (AES-GCM nonce reuse). The [`SframeSender`] keeps one strictly increasing counter per KID,
//! so a `(KID, CTR)` pair is never used twice by one sender; one sender object must serve all
//! streams and all peers of a member in a call (the [`crate::call::Call`] does that).
//!
//! The [`SframeKeyring`] decrypts: it holds the current epoch and, for a short grace period, the
//! previous one; it accepts only KIDs of members listed for that epoch (one live context per
//! member: a member's newer context retires the older one, whose frames are then refused), so a member removed by
//! the epoch change is refused as soon as the grace period ends, and a member that never had a
//! key for the new epoch cannot decrypt anything sent under it. A small sliding window per KID
//! refuses replayed counters.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use zeroize::Zeroize;

/// The cipher suite identifier of `AES_128_GCM_SHA256_128` (RFC 9605 §8.1).
pub const CIPHER_SUITE_AES_128_GCM_SHA256_128: u16 = 0x0004;
/// Key length `Nk` of the suite.
pub const KEY_LEN: usize = 16;
/// Nonce length `Nn` of the suite.
pub const NONCE_LEN: usize = 12;
/// Tag length `Nt` of the suite.
pub const TAG_LEN: usize = 16;
/// Largest SFrame header: config byte + 8-byte KID + 8-byte CTR.
pub const MAX_HEADER_LEN: usize = 17;
/// Largest media frame (plaintext) this module encrypts or decrypts.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Smallest and largest accepted base key lengths.
pub const BASE_KEY_LEN_RANGE: std::ops::RangeInclusive<usize> = 16..=64;
/// Number of low epoch bits carried in the KID (`E` in RFC 9605 §5.2).
pub const EPOCH_BITS: u32 = 8;
/// Number of member index bits in the KID (`S` in RFC 9605 §5.2): leaf indexes up to
/// [`MAX_MEMBER_INDEX`].
pub const INDEX_BITS: u32 = 16;
/// Largest member (leaf) index a KID can carry.
pub const MAX_MEMBER_INDEX: u32 = (1 << INDEX_BITS) - 1;
/// Number of sender context bits in the KID (the rest of its 64 bits).
pub const CONTEXT_BITS: u32 = 64 - INDEX_BITS - EPOCH_BITS;
/// Largest sender context.
pub const MAX_CONTEXT: u64 = (1 << CONTEXT_BITS) - 1;
/// Retired KIDs (a member's older contexts) a keyring remembers per epoch, to refuse them.
pub const MAX_RETIRED_KIDS: usize = 64;
/// Default time the previous epoch's key stays usable for decryption after a rotation.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// Width of the per-KID anti-replay window, in frames: the highest counter accepted so far and
/// the `REPLAY_WINDOW - 1` = 127 counters below it. A frame whose counter is above the highest
/// is accepted (and moves the window); one 1..=127 below it is accepted once; one 128 or more
/// below it is refused as [`SframeError::Replay`]. Each KID (member and epoch) has its own
/// window, and only frames that authenticate move it.
pub const REPLAY_WINDOW: u64 = 128;

/// The MLS exporter label for the per-epoch base key (RFC 9605 §5.2):
/// `base_key = MLS-Exporter(EXPORTER_LABEL, call_id, EXPORTER_LENGTH)`.
pub const EXPORTER_LABEL: &str = "SFrame 1.0 Base Key";
/// Length of the exported base key.
pub const EXPORTER_LENGTH: usize = 32;

const KEY_LABEL: &[u8] = b"SFrame 1.0 Secret key ";
const SALT_LABEL: &[u8] = b"SFrame 1.0 Secret salt ";

/// Errors of SFrame encryption and decryption.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SframeError {
    /// The ciphertext is too short or its header is malformed (peer misbehaved).
    #[error("malformed SFrame header")]
    MalformedHeader,
    /// The frame is larger than [`MAX_FRAME_LEN`] (peer misbehaved or caller misuse).
    #[error("frame too large")]
    FrameTooLarge,
    /// The KID names no member/epoch this keyring has a key for (unknown, removed, expired).
    #[error("unknown or expired key id {0:#x}")]
    UnknownKeyId(u64),
    /// Authentication failed: wrong key or tampered frame.
    #[error("SFrame authentication failed")]
    AuthenticationFailed,
    /// The counter was already seen for this KID, or is too old for the replay window.
    #[error("replayed SFrame counter")]
    Replay,
    /// The sender has no key installed yet (caller misuse; retry after installing a key).
    #[error("no SFrame sending key installed")]
    NoSendingKey,
    /// A key for an epoch not newer than the current one was installed (caller misuse).
    #[error("epoch {new} is not newer than the current epoch {current}")]
    StaleEpoch {
        /// The current epoch.
        current: u64,
        /// The rejected epoch.
        new: u64,
    },
    /// The base key length is outside [`BASE_KEY_LEN_RANGE`] (caller misuse).
    #[error("bad base key length")]
    BadBaseKey,
    /// The counter space of a KID is exhausted (rotate the epoch).
    #[error("SFrame counter exhausted")]
    CounterExhausted,
    /// The member index does not fit the KID layout (caller misuse).
    #[error("member index out of range")]
    BadMemberIndex,
    /// The sender context does not fit the KID layout (caller misuse).
    #[error("sender context out of range")]
    BadContext,
    /// The system random number generator failed (retryable).
    #[error("no randomness for the SFrame sender context")]
    NoRandomness,
}

/// A per-epoch base key handed in by the client core (from the MLS exporter).
///
/// Zeroized on drop; its `Debug` output is redacted.
#[derive(Clone)]
pub struct EpochKey {
    epoch: u64,
    base_key: Vec<u8>,
}

impl EpochKey {
    /// Wraps a base key for `epoch`. The key must be 16..=64 bytes (32 recommended).
    pub fn new(epoch: u64, base_key: &[u8]) -> Result<Self, SframeError> {
        if !BASE_KEY_LEN_RANGE.contains(&base_key.len()) {
            return Err(SframeError::BadBaseKey);
        }
        Ok(Self {
            epoch,
            base_key: base_key.to_vec(),
        })
    }

    /// The MLS epoch this key belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochKey")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Drop for EpochKey {
    fn drop(&mut self) {
        self.base_key.zeroize();
    }
}

/// The KID of `member_index` in `epoch` with sender context 0 (see the module docs).
pub fn kid_for(member_index: u32, epoch: u64) -> u64 {
    kid_for_context(0, member_index, epoch)
}

/// The KID of `member_index` in `epoch` under sender `context` (see the module docs). Only the
/// low [`CONTEXT_BITS`] of `context` and [`INDEX_BITS`] of `member_index` are used.
pub fn kid_for_context(context: u64, member_index: u32, epoch: u64) -> u64 {
    ((context & MAX_CONTEXT) << (INDEX_BITS + EPOCH_BITS))
        | (u64::from(member_index & MAX_MEMBER_INDEX) << EPOCH_BITS)
        | (epoch & ((1 << EPOCH_BITS) - 1))
}

/// Splits a KID into `(member_index, epoch mod 256)` (the sender context is ignored).
pub fn split_kid(kid: u64) -> Option<(u32, u8)> {
    let index = u32::try_from((kid >> EPOCH_BITS) & u64::from(MAX_MEMBER_INDEX)).ok()?;
    let epoch_low = u8::try_from(kid & ((1 << EPOCH_BITS) - 1)).ok()?;
    Some((index, epoch_low))
}

/// The sender context of a KID.
pub fn kid_context(kid: u64) -> u64 {
    kid >> (INDEX_BITS + EPOCH_BITS)
}

/// An SFrame header: key id and counter (RFC 9605 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Key id (KID).
    pub kid: u64,
    /// Counter (CTR).
    pub ctr: u64,
}

impl Header {
    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut config = 0u8;
        let kid_bytes = self.kid.to_be_bytes();
        let ctr_bytes = self.ctr.to_be_bytes();
        let kid_len = min_len(self.kid);
        let ctr_len = min_len(self.ctr);
        // Lengths are 1..=8, so the casts below cannot truncate.
        if self.kid < 8 {
            config |= (self.kid as u8) << 4;
        } else {
            config |= 0x80 | (((kid_len - 1) as u8) << 4);
        }
        if self.ctr < 8 {
            config |= self.ctr as u8;
        } else {
            config |= 0x08 | ((ctr_len - 1) as u8);
        }
        out.push(config);
        if self.kid >= 8 {
            out.extend_from_slice(&kid_bytes[8 - kid_len..]);
        }
        if self.ctr >= 8 {
            out.extend_from_slice(&ctr_bytes[8 - ctr_len..]);
        }
    }

    /// The encoded header as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MAX_HEADER_LEN);
        self.encode(&mut v);
        v
    }

    /// Decodes a header from the start of `buf`; returns it and its encoded length.
    pub fn decode(buf: &[u8]) -> Result<(Header, usize), SframeError> {
        let (&config, rest) = buf.split_first().ok_or(SframeError::MalformedHeader)?;
        let mut pos = 0usize;
        let kid = if config & 0x80 == 0 {
            u64::from((config >> 4) & 0x07)
        } else {
            let len = usize::from((config >> 4) & 0x07) + 1;
            let v = read_be(rest, pos, len)?;
            pos += len;
            v
        };
        let ctr = if config & 0x08 == 0 {
            u64::from(config & 0x07)
        } else {
            let len = usize::from(config & 0x07) + 1;
            let v = read_be(rest, pos, len)?;
            pos += len;
            v
        };
        Ok((Header { kid, ctr }, pos + 1))
    }
}

fn min_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(8).max(1)
}

fn read_be(buf: &[u8], pos: usize, len: usize) -> Result<u64, SframeError> {
    let bytes = buf
        .get(pos..pos + len)
        .ok_or(SframeError::MalformedHeader)?;
    Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// `sframe_key` and `sframe_salt` for one KID (RFC 9605 §4.4.2). Zeroized on drop.
pub struct KeyMaterial {
    /// The AEAD key.
    pub key: [u8; KEY_LEN],
    /// The nonce salt.
    pub salt: [u8; NONCE_LEN],
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(..)")
    }
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        self.key.zeroize();
        self.salt.zeroize();
    }
}

struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// Derives `sframe_key`/`sframe_salt` from a base key and KID (RFC 9605 §4.4.2, suite 0x0004).
pub fn derive_key_material(base_key: &[u8], kid: u64) -> KeyMaterial {
    let secret = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(base_key);
    let suite = CIPHER_SUITE_AES_128_GCM_SHA256_128.to_be_bytes();
    let kid_bytes = kid.to_be_bytes();
    let mut out = KeyMaterial {
        key: [0; KEY_LEN],
        salt: [0; NONCE_LEN],
    };
    // The lengths requested (16 and 12) are far below 255 * HashLen, so expand cannot fail;
    // a failure would leave zero keys, which then simply fail to authenticate anything.
    let key_info = [KEY_LABEL, &kid_bytes, &suite];
    if let Ok(okm) = secret.expand(&key_info, OkmLen(KEY_LEN)) {
        let _ = okm.fill(&mut out.key);
    }
    let salt_info = [SALT_LABEL, &kid_bytes, &suite];
    if let Ok(okm) = secret.expand(&salt_info, OkmLen(NONCE_LEN)) {
        let _ = okm.fill(&mut out.salt);
    }
    out
}

/// A ready-to-use AEAD context for one KID.
struct KidCipher {
    aead: LessSafeKey,
    salt: [u8; NONCE_LEN],
}

impl KidCipher {
    fn new(base_key: &[u8], kid: u64) -> Self {
        let material = derive_key_material(base_key, kid);
        // AES-128 accepts exactly 16-byte keys, which KEY_LEN guarantees.
        let unbound = UnboundKey::new(&AES_128_GCM, &material.key)
            .unwrap_or_else(|_| unreachable!("AES-128 key length is 16"));
        Self {
            aead: LessSafeKey::new(unbound),
            salt: material.salt,
        }
    }

    fn nonce(&self, ctr: u64) -> Nonce {
        let mut n = self.salt;
        let c = ctr.to_be_bytes();
        for (dst, src) in n.iter_mut().skip(NONCE_LEN - 8).zip(c.iter()) {
            *dst ^= src;
        }
        Nonce::assume_unique_for_key(n)
    }
}

impl Drop for KidCipher {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

/// Encrypts one frame: `header || AEAD(key, nonce, header || metadata, plaintext)`.
///
/// Low-level; callers must guarantee `(kid, ctr)` uniqueness (use [`SframeSender`]).
pub fn encrypt_frame(
    material: &KeyMaterial,
    kid: u64,
    ctr: u64,
    metadata: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SframeError> {
    let unbound =
        UnboundKey::new(&AES_128_GCM, &material.key).map_err(|_| SframeError::BadBaseKey)?;
    let cipher = KidCipher {
        aead: LessSafeKey::new(unbound),
        salt: material.salt,
    };
    seal(&cipher, kid, ctr, metadata, plaintext)
}

/// Decrypts one frame with known key material; returns the header and plaintext.
pub fn decrypt_frame(
    material: &KeyMaterial,
    metadata: &[u8],
    ciphertext: &[u8],
) -> Result<(Header, Vec<u8>), SframeError> {
    let unbound =
        UnboundKey::new(&AES_128_GCM, &material.key).map_err(|_| SframeError::BadBaseKey)?;
    let cipher = KidCipher {
        aead: LessSafeKey::new(unbound),
        salt: material.salt,
    };
    let (header, header_len) = Header::decode(ciphertext)?;
    let pt = open(&cipher, header, header_len, metadata, ciphertext)?;
    Ok((header, pt))
}

fn seal(
    cipher: &KidCipher,
    kid: u64,
    ctr: u64,
    metadata: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SframeError> {
    if plaintext.len() > MAX_FRAME_LEN || metadata.len() > MAX_FRAME_LEN {
        return Err(SframeError::FrameTooLarge);
    }
    let header = Header { kid, ctr };
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + plaintext.len() + TAG_LEN);
    header.encode(&mut out);
    let header_len = out.len();
    let mut aad = Vec::with_capacity(header_len + metadata.len());
    aad.extend_from_slice(&out);
    aad.extend_from_slice(metadata);
    out.extend_from_slice(plaintext);
    let (_, body) = out.split_at_mut(header_len);
    let tag = cipher
        .aead
        .seal_in_place_separate_tag(cipher.nonce(ctr), Aad::from(&aad[..]), body)
        .map_err(|_| SframeError::FrameTooLarge)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open(
    cipher: &KidCipher,
    header: Header,
    header_len: usize,
    metadata: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, SframeError> {
    if ciphertext.len() > MAX_FRAME_LEN + MAX_HEADER_LEN + TAG_LEN || metadata.len() > MAX_FRAME_LEN
    {
        return Err(SframeError::FrameTooLarge);
    }
    let header_bytes = ciphertext
        .get(..header_len)
        .ok_or(SframeError::MalformedHeader)?;
    let body = ciphertext
        .get(header_len..)
        .ok_or(SframeError::MalformedHeader)?;
    if body.len() < TAG_LEN {
        return Err(SframeError::MalformedHeader);
    }
    let mut aad = Vec::with_capacity(header_len + metadata.len());
    aad.extend_from_slice(header_bytes);
    aad.extend_from_slice(metadata);
    let mut buf = body.to_vec();
    let plain_len = cipher
        .aead
        .open_in_place(cipher.nonce(header.ctr), Aad::from(&aad[..]), &mut buf)
        .map_err(|_| SframeError::AuthenticationFailed)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// The sending side of one member: encrypts frames under the current epoch's KID.
pub struct SframeSender {
    member_index: u32,
    /// Random per sender (see the module docs), the same for all its epochs.
    context: u64,
    current: Option<SenderEpoch>,
}

struct SenderEpoch {
    epoch: u64,
    kid: u64,
    cipher: KidCipher,
    next_ctr: u64,
}

impl SframeSender {
    /// A sender for the member at `member_index` (its MLS leaf index, at most
    /// [`MAX_MEMBER_INDEX`]) with a fresh random context (see the module docs). No key yet.
    pub fn new(member_index: u32) -> Result<Self, SframeError> {
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| SframeError::NoRandomness)?;
        Self::with_context(member_index, u64::from_be_bytes(bytes) & MAX_CONTEXT)
    }

    /// A sender with a chosen context (at most [`MAX_CONTEXT`]). Test vectors and tests only:
    /// reusing a context with the same base key and member index reuses nonces.
    pub fn with_context(member_index: u32, context: u64) -> Result<Self, SframeError> {
        if member_index > MAX_MEMBER_INDEX {
            return Err(SframeError::BadMemberIndex);
        }
        if context > MAX_CONTEXT {
            return Err(SframeError::BadContext);
        }
        Ok(Self {
            member_index,
            context,
            current: None,
        })
    }

    /// The member index this sender encrypts as.
    pub fn member_index(&self) -> u32 {
        self.member_index
    }

    /// This sender's context (the high bits of its KIDs).
    pub fn context(&self) -> u64 {
        self.context
    }

    /// The KID in use, if a key is installed.
    pub fn kid(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.kid)
    }

    /// The epoch currently used for sending, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.epoch)
    }

    /// Switches to a new epoch key. Epochs must strictly increase, so counters are never reused.
    pub fn install(&mut self, key: &EpochKey) -> Result<(), SframeError> {
        if let Some(cur) = &self.current
            && key.epoch <= cur.epoch
        {
            return Err(SframeError::StaleEpoch {
                current: cur.epoch,
                new: key.epoch,
            });
        }
        let kid = kid_for_context(self.context, self.member_index, key.epoch);
        self.current = Some(SenderEpoch {
            epoch: key.epoch,
            kid,
            cipher: KidCipher::new(&key.base_key, kid),
            next_ctr: 0,
        });
        Ok(())
    }

    /// Encrypts one encoded media frame. `metadata` is authenticated but not sent.
    ///
    /// Counters run from 0 to `u64::MAX - 1` per epoch; after that every call returns
    /// [`SframeError::CounterExhausted`] (never a wrapped, reused counter) until a new epoch
    /// key is installed.
    pub fn encrypt(&mut self, metadata: &[u8], frame: &[u8]) -> Result<Vec<u8>, SframeError> {
        let cur = self.current.as_mut().ok_or(SframeError::NoSendingKey)?;
        let ctr = cur.next_ctr;
        cur.next_ctr = ctr.checked_add(1).ok_or(SframeError::CounterExhausted)?;
        seal(&cur.cipher, cur.kid, ctr, metadata, frame)
    }
}

/// A frame that decrypted and authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptedFrame {
    /// The sender's member index (from the KID).
    pub member_index: u32,
    /// The full epoch the key belongs to.
    pub epoch: u64,
    /// The frame counter.
    pub ctr: u64,
    /// The plaintext (encoded media frame).
    pub payload: Vec<u8>,
}

/// The receiving side: keys of the current (and, briefly, previous) epoch.
pub struct SframeKeyring {
    grace: Duration,
    /// Newest last; at most two entries.
    epochs: Vec<ReceiverEpoch>,
}

struct ReceiverEpoch {
    key: EpochKey,
    members: HashSet<u32>,
    /// When this epoch stops being accepted (set when a newer epoch is installed).
    expires: Option<Instant>,
    /// The live KID of each member (one context per member), created by the first frame that
    /// authenticates under it.
    ciphers: HashMap<u64, KidState>,
    /// KIDs replaced by a newer context of the same member (oldest first, bounded by
    /// [`MAX_RETIRED_KIDS`]); their frames are refused.
    retired: VecDeque<u64>,
}

struct KidState {
    cipher: KidCipher,
    /// Highest counter accepted so far and a bitmap of the `REPLAY_WINDOW` below it.
    highest: Option<u64>,
    window: u128,
}

impl SframeKeyring {
    /// An empty keyring; the previous epoch stays valid for `grace` after a rotation.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            epochs: Vec::new(),
        }
    }

    /// The newest installed epoch.
    pub fn current_epoch(&self) -> Option<u64> {
        self.epochs.last().map(|e| e.key.epoch)
    }

    /// Installs the key of a new epoch with the member indexes allowed to send in it.
    ///
    /// The previous epoch stays valid until `now + grace`; anything older is dropped at once.
    pub fn install(
        &mut self,
        key: EpochKey,
        members: impl IntoIterator<Item = u32>,
        now: Instant,
    ) -> Result<(), SframeError> {
        if let Some(cur) = self.epochs.last_mut() {
            if key.epoch <= cur.key.epoch {
                return Err(SframeError::StaleEpoch {
                    current: cur.key.epoch,
                    new: key.epoch,
                });
            }
            cur.expires = Some(now + self.grace);
        }
        // Keep only the previous epoch; also drop one whose low epoch bits collide (§5.2).
        let low = key.epoch & 0xff;
        self.epochs.retain(|e| e.expires.is_some_and(|t| t > now));
        while self.epochs.len() > 1 {
            self.epochs.remove(0);
        }
        self.epochs.retain(|e| e.key.epoch & 0xff != low);
        self.epochs.push(ReceiverEpoch {
            key,
            members: members.into_iter().collect(),
            expires: None,
            ciphers: HashMap::new(),
            retired: VecDeque::new(),
        });
        Ok(())
    }

    /// Stops accepting frames from `member_index` in every installed epoch (e.g. on removal,
    /// before the rekey arrives).
    pub fn remove_member(&mut self, member_index: u32) {
        for e in &mut self.epochs {
            e.members.remove(&member_index);
            e.ciphers
                .retain(|kid, _| split_kid(*kid).map(|(i, _)| i) != Some(member_index));
        }
    }

    /// Decrypts one SFrame ciphertext received at `now`.
    pub fn decrypt(
        &mut self,
        metadata: &[u8],
        ciphertext: &[u8],
        now: Instant,
    ) -> Result<DecryptedFrame, SframeError> {
        let (header, header_len) = Header::decode(ciphertext)?;
        let (index, epoch_low) =
            split_kid(header.kid).ok_or(SframeError::UnknownKeyId(header.kid))?;
        let entry = self
            .epochs
            .iter_mut()
            .find(|e| e.key.epoch & 0xff == u64::from(epoch_low))
            .ok_or(SframeError::UnknownKeyId(header.kid))?;
        if entry.expires.is_some_and(|t| t <= now) || !entry.members.contains(&index) {
            return Err(SframeError::UnknownKeyId(header.kid));
        }
        if entry.retired.contains(&header.kid) {
            return Err(SframeError::UnknownKeyId(header.kid));
        }
        let payload = match entry.ciphers.get_mut(&header.kid) {
            Some(state) => {
                if state.is_replay(header.ctr) {
                    return Err(SframeError::Replay);
                }
                let payload = open(&state.cipher, header, header_len, metadata, ciphertext)?;
                state.accept(header.ctr);
                payload
            }
            None => {
                // A new context of this member: state is kept only once a frame authenticates,
                // so garbage KIDs cost no memory; it retires the member's previous context.
                let mut state = KidState {
                    cipher: KidCipher::new(&entry.key.base_key, header.kid),
                    highest: None,
                    window: 0,
                };
                let payload = open(&state.cipher, header, header_len, metadata, ciphertext)?;
                state.accept(header.ctr);
                let old: Vec<u64> = entry
                    .ciphers
                    .keys()
                    .copied()
                    .filter(|k| split_kid(*k).map(|(i, _)| i) == Some(index))
                    .collect();
                for k in old {
                    entry.ciphers.remove(&k);
                    if entry.retired.len() >= MAX_RETIRED_KIDS {
                        entry.retired.pop_front();
                    }
                    entry.retired.push_back(k);
                }
                entry.ciphers.insert(header.kid, state);
                payload
            }
        };
        Ok(DecryptedFrame {
            member_index: index,
            epoch: entry.key.epoch,
            ctr: header.ctr,
            payload,
        })
    }
}

impl KidState {
    fn is_replay(&self, ctr: u64) -> bool {
        match self.highest {
            None => false,
            Some(h) if ctr > h => false,
            Some(h) => {
                let back = h - ctr;
                back >= REPLAY_WINDOW || (self.window >> back) & 1 == 1
            }
        }
    }

    fn accept(&mut self, ctr: u64) {
        match self.highest {
            // `is_replay` refused anything older than the window; a stale one is ignored here.
            Some(h) if ctr <= h => {
                if h - ctr < REPLAY_WINDOW {
                    self.window |= 1 << (h - ctr);
                }
            }
            Some(h) => {
                let shift = ctr - h;
                self.window = if shift >= 128 {
                    0
                } else {
                    self.window << shift
                };
                self.window |= 1;
                self.highest = Some(ctr);
            }
            None => {
                self.window = 1;
                self.highest = Some(ctr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn header_round_trip_and_garbage() {
        for kid in [0u64, 7, 8, 255, 256, u64::MAX] {
            for ctr in [0u64, 7, 8, 0xffff, u64::MAX] {
                let h = Header { kid, ctr };
                let b = h.to_bytes();
                assert_eq!(Header::decode(&b).unwrap(), (h, b.len()));
                for cut in 0..b.len() {
                    if cut < b.len() {
                        assert!(Header::decode(&b[..cut]).is_err() || cut == b.len());
                    }
                }
            }
        }
        assert_eq!(Header::decode(&[]), Err(SframeError::MalformedHeader));
    }

    #[test]
    fn replay_window() {
        let mut s = KidState {
            cipher: KidCipher::new(&[1; 16], 0),
            highest: None,
            window: 0,
        };
        for c in [5u64, 3, 9, 4, 200] {
            assert!(!s.is_replay(c));
            s.accept(c);
            assert!(s.is_replay(c));
        }
        assert!(s.is_replay(9));
        assert!(s.is_replay(50));
        assert!(!s.is_replay(199));
        // Edges: 127 behind is inside the window, 128 behind is not.
        assert!(!s.is_replay(200 - 127));
        assert!(s.is_replay(200 - 128));
        // A stale counter passed to `accept` is ignored, not a shift overflow.
        s.accept(0);
        assert!(s.is_replay(0));
        assert!(!s.is_replay(199));
    }

    #[test]
    fn frames_under_unknown_contexts_that_fail_to_authenticate_keep_no_state() {
        let now = Instant::now();
        let mut rx = SframeKeyring::new(Duration::from_secs(2));
        rx.install(EpochKey::new(1, &[3; 32]).unwrap(), [0], now)
            .unwrap();
        for context in 0..500u64 {
            let kid = kid_for_context(context, 0, 1);
            let mut forged = Header { kid, ctr: 0 }.to_bytes();
            forged.extend_from_slice(&[0; 40]);
            assert_eq!(
                rx.decrypt(b"", &forged, now),
                Err(SframeError::AuthenticationFailed)
            );
        }
        assert!(rx.epochs[0].ciphers.is_empty());
        assert!(rx.epochs[0].retired.is_empty());
        let mut tx = SframeSender::with_context(0, 5).unwrap();
        tx.install(&EpochKey::new(1, &[3; 32]).unwrap()).unwrap();
        rx.decrypt(b"", &tx.encrypt(b"", b"ok").unwrap(), now)
            .unwrap();
        assert_eq!(rx.epochs[0].ciphers.len(), 1);
        assert_eq!(
            SframeSender::with_context(0, MAX_CONTEXT + 1).err(),
            Some(SframeError::BadContext)
        );
        assert_eq!(
            SframeSender::new(MAX_MEMBER_INDEX + 1).err(),
            Some(SframeError::BadMemberIndex)
        );
    }

    #[test]
    fn sender_counter_exhaustion_is_an_error_not_a_wrap() {
        let mut tx = SframeSender::new(1).unwrap();
        tx.install(&EpochKey::new(3, &[9; 32]).unwrap()).unwrap();
        tx.current.as_mut().unwrap().next_ctr = u64::MAX - 1;
        let last = tx.encrypt(b"", b"last").unwrap();
        assert_eq!(Header::decode(&last).unwrap().0.ctr, u64::MAX - 1);
        // Counter u64::MAX would leave no next value: the sender stops instead of wrapping to 0
        // (which would reuse a nonce), and keeps refusing until a new epoch is installed.
        assert_eq!(tx.encrypt(b"", b"x"), Err(SframeError::CounterExhausted));
        assert_eq!(tx.encrypt(b"", b"x"), Err(SframeError::CounterExhausted));
        tx.install(&EpochKey::new(4, &[9; 32]).unwrap()).unwrap();
        let first = tx.encrypt(b"", b"first").unwrap();
        assert_eq!(
            Header::decode(&first).unwrap().0,
            Header {
                kid: kid_for_context(tx.context(), 1, 4),
                ctr: 0
            }
        );
    }
}
