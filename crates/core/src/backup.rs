//! The encrypted history backup (issue 11): a device of a user with a password account
//! uploads its message history, incrementally, as **sealed segments** in blobs and indexes
//! them in the user's backup index on the relay; a new device of the user lists the index,
//! downloads and opens every segment and imports its rows, so it shows the past of every
//! group. Sans-IO: the shell uploads, downloads and talks to the relay.
//!
//! ```text
//! backup:  plan(store)           -> segments of the rows after each group's mark (numbered)
//!          seal(key, segment)    -> blob bytes          (shell: upload, AppendBackupSegment)
//!          commit_marks(store)   once the relay indexed it
//! restore: ListBackupSegments    -> entries             (shell: download each blob)
//!          open(key, entry, blob) -> segment            (refused: tampered, foreign, renumbered)
//!          import(store, segment) -> rows never seen before, group names
//! ```
//!
//! A segment is `"covh" || version (1) || nonce (12) || AES-256-GCM(ciphertext || tag)`,
//! sealed under a key derived by HKDF-SHA256 from the user's backup key with the info
//! `"cove history backup segment key" || version || user || device || counter`, and the
//! header and that same info as AAD. Its plaintext names the same user, device and counter
//! again. So a segment of another user, or one renumbered (another device or counter than
//! its index entry says), fails authentication and is refused, never imported. The index
//! entry (opaque to the relay) is `version || device || counter`; a device's counters only
//! grow, so an index the relay reordered shows a device's counter going back, and that
//! entry is refused too.

use std::collections::BTreeMap;

use rand::{CryptoRng, RngCore};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use cove_store::{GroupRecord, Membership, Namespace, Store, StoreError, StoredMessage};
use cove_wire::{BoundedVec, DeviceId, GroupId, Seq, UserName};

use crate::link::HistoryMessage;

/// The format version of segments and index entries.
pub const BACKUP_VERSION: u8 = 1;
/// The first four bytes of a sealed segment.
pub const SEGMENT_MAGIC: [u8; 4] = *b"covh";
/// Most messages in one segment.
pub const MAX_SEGMENT_MESSAGES: usize = 2000;
/// The plaintext size a segment is filled to (one more message may take it past this, up
/// to [`MAX_SEALED_SEGMENT`]).
pub const SEGMENT_TARGET_BYTES: usize = 512 * 1024;
/// Largest sealed segment accepted (1 MiB).
pub const MAX_SEALED_SEGMENT: usize = cove_wire::limits::MAX_FRAME_BYTES;
/// Longest group name carried in a segment.
pub const MAX_BACKUP_GROUP_NAME: usize = 256;
/// Largest content of one message in a segment (an application plaintext with room).
pub const MAX_BACKUP_CONTENT: usize = cove_wire::limits::MAX_APPLICATION_PLAINTEXT + 1024;

const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = SEGMENT_MAGIC.len() + 1 + NONCE_LEN;
const TAG_LEN: usize = 16;
const KEY_LABEL: &[u8] = b"cove history backup segment key";
/// Estimated encoded size of a message beyond its content.
const MESSAGE_OVERHEAD: usize = 96;

/// Local state keys (namespace `Backup`).
const NEXT_COUNTER: &[u8] = b"next-counter";
const MARK_PREFIX: &[u8] = b"mark/";

/// Why a segment was refused, or a backup step failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    /// The segment failed authentication: modified, of another user, under another key, or
    /// renumbered (its index entry names another device or counter).
    #[error("segment failed authentication (tampered, another user's, or renumbered)")]
    Tampered,
    /// The bytes are not a segment or an index entry of this format.
    #[error("not a history-backup segment or entry: {0}")]
    Malformed(&'static str),
    /// A format version this build does not read.
    #[error("unsupported backup format version {0}")]
    Version(u8),
    /// Over a size bound.
    #[error("segment too large")]
    TooLarge,
    /// The index lists a device's segment after a later one of the same device (the relay
    /// reordered or replayed the index).
    #[error("segment out of order in the index (device {device}, counter {counter})")]
    OutOfOrder {
        /// The device whose counters went back.
        device: DeviceId,
        /// The counter that came too late.
        counter: u64,
    },
}

/// The user's history-backup key (from the account bundle). No `Debug`; zeroized on drop.
#[derive(Clone)]
pub struct BackupKey(Zeroizing<[u8; 32]>);

impl BackupKey {
    /// Wraps the raw key.
    pub fn new(key: Zeroizing<[u8; 32]>) -> Self {
        BackupKey(key)
    }
}

/// Which segment: the device that made it and that device's counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentId {
    /// The device that sealed it.
    pub device: DeviceId,
    /// The device's counter (grows by at least one per segment, never reused).
    pub counter: u64,
}

/// The opaque entry of a segment in the relay's index: the format version and the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// [`BACKUP_VERSION`].
    pub version: u8,
    /// The segment.
    pub id: SegmentId,
}

impl SegmentEntry {
    /// The entry's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // A version byte, a varint and a varint: postcard cannot fail on it.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses an entry; refuses another version and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, BackupError> {
        let entry: SegmentEntry =
            cove_wire::decode(bytes).map_err(|_| BackupError::Malformed("index entry"))?;
        if entry.version != BACKUP_VERSION {
            return Err(BackupError::Version(entry.version));
        }
        Ok(entry)
    }
}

/// A group's name as the backing-up device knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupName {
    /// The group.
    pub group: GroupId,
    /// Its name (may be empty).
    pub name: String,
}

/// One segment's plaintext: a bounded batch of stored history rows and the names of their
/// groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// [`BACKUP_VERSION`].
    pub version: u8,
    /// Whose history.
    pub user: UserName,
    /// Which segment.
    pub id: SegmentId,
    /// The names of the groups of `messages`.
    pub groups: BoundedVec<GroupName>,
    /// The rows, in (group, log position) order.
    pub messages: BoundedVec<HistoryMessage>,
}

/// A planned segment and the marks to record once the relay indexed it.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The segment to seal and upload.
    pub segment: Segment,
    /// For each group in it, the highest log position it carries.
    pub marks: Vec<(GroupId, Seq)>,
}

/// What [`import`] stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Rows stored (not seen before).
    pub messages: usize,
    /// Rows skipped (already here).
    pub duplicates: usize,
    /// Group records created or given their name.
    pub groups_named: usize,
}

/// Seals `segment` for `user` (its own id is the key's and the AAD's).
pub fn seal<R: RngCore + CryptoRng>(
    key: &BackupKey,
    segment: &Segment,
    rng: &mut R,
) -> Result<Vec<u8>, BackupError> {
    let plain =
        Zeroizing::new(postcard::to_stdvec(segment).map_err(|_| BackupError::Malformed("encode"))?);
    if plain.len() + HEADER_LEN + TAG_LEN > MAX_SEALED_SEGMENT
        || segment.messages.len() > MAX_SEGMENT_MESSAGES
    {
        return Err(BackupError::TooLarge);
    }
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.push(BACKUP_VERSION);
    out.extend_from_slice(&nonce);
    let info = info(&segment.user, segment.id);
    let aad = [out.as_slice(), info.as_slice()].concat();
    let mut body = plain.to_vec();
    let sealing = aead_key(key, &info);
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_slice()),
            &mut body,
        )
        .map_err(|_| BackupError::TooLarge)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens the segment `sealed` that the index lists as `entry` for `user`; refuses anything
/// that does not authenticate as exactly that segment of that user.
pub fn open(
    key: &BackupKey,
    user: &UserName,
    entry: &SegmentEntry,
    sealed: &[u8],
) -> Result<Segment, BackupError> {
    if sealed.len() > MAX_SEALED_SEGMENT {
        return Err(BackupError::TooLarge);
    }
    if sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(BackupError::Malformed("short segment"));
    }
    let (header, body) = sealed.split_at(HEADER_LEN);
    let (magic, rest) = header.split_at(SEGMENT_MAGIC.len());
    let (version, nonce) = rest.split_at(1);
    if magic != SEGMENT_MAGIC {
        return Err(BackupError::Malformed("bad magic"));
    }
    if version != [BACKUP_VERSION] {
        return Err(BackupError::Version(version.first().copied().unwrap_or(0)));
    }
    let nonce: [u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| BackupError::Malformed("nonce"))?;
    let info = info(user, entry.id);
    let aad = [header, info.as_slice()].concat();
    let mut body = Zeroizing::new(body.to_vec());
    let plain = aead_key(key, &info)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_slice()),
            &mut body,
        )
        .map_err(|_| BackupError::Tampered)?;
    let segment: Segment =
        cove_wire::decode(plain).map_err(|_| BackupError::Malformed("segment body"))?;
    if segment.version != BACKUP_VERSION {
        return Err(BackupError::Version(segment.version));
    }
    // Authenticated under the key of exactly this user and id; the copies inside must agree.
    if &segment.user != user || segment.id != entry.id {
        return Err(BackupError::Tampered);
    }
    if segment.messages.len() > MAX_SEGMENT_MESSAGES
        || segment
            .groups
            .iter()
            .any(|g| g.name.len() > MAX_BACKUP_GROUP_NAME)
        || segment
            .messages
            .iter()
            .any(|m| m.content.len() > MAX_BACKUP_CONTENT)
    {
        return Err(BackupError::TooLarge);
    }
    Ok(segment)
}

/// Checks the order of index entries: each device's counters must grow along the index.
/// Keeps, per device, the last counter accepted.
#[derive(Debug, Default)]
pub struct OrderCheck {
    last: BTreeMap<DeviceId, u64>,
}

impl OrderCheck {
    /// Accepts `entry` if its counter is above every earlier one of its device.
    pub fn accept(&mut self, entry: &SegmentEntry) -> Result<(), BackupError> {
        let SegmentId { device, counter } = entry.id;
        if self.last.get(&device).is_some_and(|&last| counter <= last) {
            return Err(BackupError::OutOfOrder { device, counter });
        }
        self.last.insert(device, counter);
        Ok(())
    }
}

/// The segments of every row stored after each group's mark, numbered from this device's
/// next counter, which this call moves past them (so a counter is never sealed twice, even
/// when an upload fails: its rows go into a later segment with a new counter). Reads only
/// the rows after the marks. Empty when there is nothing new.
pub fn plan<S: Store>(
    store: &S,
    user: &UserName,
    device: DeviceId,
) -> Result<Vec<Planned>, StoreError> {
    let mut batches: Vec<Vec<StoredMessage>> = Vec::new();
    let mut current: Vec<StoredMessage> = Vec::new();
    let mut used = 0usize;
    for record in store.groups()? {
        let after = mark(store, &record.id)?;
        for m in store.messages_after(&record.id, after)? {
            let len = m.content.len() + MESSAGE_OVERHEAD;
            if m.content.len() > MAX_BACKUP_CONTENT {
                continue;
            }
            if !current.is_empty()
                && (used + len > SEGMENT_TARGET_BYTES || current.len() >= MAX_SEGMENT_MESSAGES)
            {
                batches.push(std::mem::take(&mut current));
                used = 0;
            }
            used += len;
            current.push(m);
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let first = next_counter(store)?;
    let count = u64::try_from(batches.len()).unwrap_or(u64::MAX);
    store.kv_put(
        Namespace::Backup,
        NEXT_COUNTER,
        &first.saturating_add(count).to_be_bytes(),
    )?;
    let mut names: BTreeMap<GroupId, String> = BTreeMap::new();
    let mut planned = Vec::new();
    for (counter, batch) in (first..).zip(batches) {
        let mut marks: BTreeMap<GroupId, Seq> = BTreeMap::new();
        for m in &batch {
            let e = marks.entry(m.group).or_insert(m.seq);
            *e = (*e).max(m.seq);
        }
        let mut groups = Vec::new();
        for group in marks.keys() {
            if !names.contains_key(group) {
                let name = store.group(group)?.map(|r| r.name).unwrap_or_default();
                names.insert(*group, name);
            }
            let mut name = names.get(group).cloned().unwrap_or_default();
            truncate(&mut name, MAX_BACKUP_GROUP_NAME);
            groups.push(GroupName {
                group: *group,
                name,
            });
        }
        planned.push(Planned {
            segment: Segment {
                version: BACKUP_VERSION,
                user: user.clone(),
                id: SegmentId { device, counter },
                groups: BoundedVec(groups),
                messages: BoundedVec(batch.into_iter().map(HistoryMessage::from).collect()),
            },
            marks: marks.into_iter().collect(),
        });
    }
    Ok(planned)
}

/// How many rows are stored after the marks (what the next backup would upload).
pub fn pending<S: Store>(store: &S) -> Result<usize, StoreError> {
    let mut n = 0;
    for record in store.groups()? {
        n += store
            .messages_after(&record.id, mark(store, &record.id)?)?
            .len();
    }
    Ok(n)
}

/// Records that the rows up to each mark are in the backup (never moves a mark back).
pub fn commit_marks<S: Store>(store: &S, marks: &[(GroupId, Seq)]) -> Result<(), StoreError> {
    for (group, seq) in marks {
        if mark(store, group)? < *seq {
            store.kv_put(Namespace::Backup, &mark_key(group), &seq.0.to_be_bytes())?;
        }
    }
    Ok(())
}

/// Stores the rows of an opened segment this device has not seen (by message id, and never
/// over a row at the same log position), in one transaction; creates a record (membership
/// `Left`: this device is not in the group) carrying the name of each group it has none
/// of, and fills the empty or placeholder name of a group it has; moves each group's mark up to the
/// segment's rows (they are in the backup already). Returns what it stored and the group
/// records it wrote (for the caller's cache).
pub fn import<S: Store>(
    store: &S,
    segment: Segment,
    now_ms: u64,
) -> Result<(Imported, Vec<GroupRecord>), StoreError> {
    store.transaction(|s: &S| {
        let mut imported = Imported::default();
        let mut records = Vec::new();
        for g in &segment.groups.0 {
            match s.group(&g.group)? {
                None => {
                    let record = GroupRecord {
                        id: g.group,
                        name: g.name.clone(),
                        membership: Membership::Left,
                        joined_at_ms: now_ms,
                    };
                    s.put_group(&record)?;
                    records.push(record);
                    imported.groups_named += 1;
                }
                // No name yet, or the placeholder of a group joined by an external commit
                // (`cove login`): the backup's name is the user's own.
                Some(mut record)
                    if (record.name.is_empty()
                        || record.name == crate::client::placeholder_name(&record.id))
                        && !g.name.is_empty() =>
                {
                    record.name = g.name.clone();
                    s.put_group(&record)?;
                    records.push(record);
                    imported.groups_named += 1;
                }
                Some(_) => {}
            }
        }
        let mut marks: BTreeMap<GroupId, Seq> = BTreeMap::new();
        for m in segment.messages.0 {
            let e = marks.entry(m.group).or_insert(m.seq);
            *e = (*e).max(m.seq);
            if s.is_seen(&m.group, &m.message_id)? || s.message(&m.group, m.seq)?.is_some() {
                imported.duplicates += 1;
                continue;
            }
            let (group, id) = (m.group, m.message_id);
            let m = StoredMessage::from(m);
            s.put_message(&m)?;
            s.mark_seen(&group, &id)?;
            // Into the chat log (its events are not reported: this is history).
            crate::client::chat_log::record(s, &m, "", false)?;
            imported.messages += 1;
        }
        let marks: Vec<(GroupId, Seq)> = marks.into_iter().collect();
        commit_marks(s, &marks)?;
        Ok((imported, records))
    })
}

fn info(user: &UserName, id: SegmentId) -> Vec<u8> {
    let user = user.as_str().as_bytes();
    let mut info = Vec::with_capacity(KEY_LABEL.len() + 1 + 1 + user.len() + 16);
    info.extend_from_slice(KEY_LABEL);
    info.push(BACKUP_VERSION);
    // A user name is at most 32 bytes (`limits::USER_NAME_LEN`).
    info.push(u8::try_from(user.len()).unwrap_or(u8::MAX));
    info.extend_from_slice(user);
    info.extend_from_slice(&id.device.0.to_be_bytes());
    info.extend_from_slice(&id.counter.to_be_bytes());
    info
}

fn aead_key(key: &BackupKey, info: &[u8]) -> LessSafeKey {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(key.0.as_slice());
    let mut bytes = Zeroizing::new([0u8; 32]);
    // `expand` fails only for an output over 255 hash lengths; `fill` only on a length
    // other than the key type's. Neither can happen with 32 bytes.
    #[allow(clippy::expect_used)]
    prk.expand(&[info], Len)
        .and_then(|okm| okm.fill(bytes.as_mut_slice()))
        .expect("32-byte HKDF output");
    // AES-256 takes any 32-byte key.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::new(&AES_256_GCM, bytes.as_slice()).expect("32-byte key");
    LessSafeKey::new(unbound)
}

fn mark_key(group: &GroupId) -> Vec<u8> {
    [MARK_PREFIX, group.0.as_slice()].concat()
}

fn mark<S: Store>(store: &S, group: &GroupId) -> Result<Seq, StoreError> {
    Ok(Seq(be_u64(
        store.kv_get(Namespace::Backup, &mark_key(group))?,
    )?))
}

fn next_counter<S: Store>(store: &S) -> Result<u64, StoreError> {
    be_u64(store.kv_get(Namespace::Backup, NEXT_COUNTER)?)
}

fn be_u64(value: Option<Vec<u8>>) -> Result<u64, StoreError> {
    match value {
        None => Ok(0),
        Some(v) => {
            Ok(u64::from_be_bytes(v.as_slice().try_into().map_err(
                |_| StoreError::Corrupt("backup state value".into()),
            )?))
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}
