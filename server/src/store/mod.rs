//! The relay's durable state behind one trait, [`RelayStore`], with a SQLite backend (the
//! embedded default, WAL mode, in the data directory), an in-memory one, and a PostgreSQL
//! one that several relay nodes share ([`PostgresStore`]). All pass the same conformance
//! suite (`conformance.rs`, also built for other crates with the
//! `conformance` feature, so a backend in another crate runs it too).
//!
//! The relay stores only what it must to route ciphertext: user names, device public keys,
//! opaque KeyPackages, group membership by device id, opaque MLS messages and Welcomes,
//! and per-device cursors. It never stores plaintext or keys.
//!
//! Calls are synchronous and may block on disk; the network layer calls them from a
//! blocking context (a dedicated writer thread or `spawn_blocking`). A successful
//! [`RelayStore::append_batch`] is durable when it returns: the relay acknowledges a post
//! only after that. Batching many posts into one call is how the relay coalesces fsyncs.

mod columns;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod memory;
pub mod postgres;
mod rules;
pub mod sqlite;

pub use self::postgres::{PostgresOptions, PostgresStore};
pub use memory::MemoryStore;
pub use rules::DEFAULT_READ_BYTES;
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};

use std::sync::Arc;

use cove_wire::identity::ListEntry;
use cove_wire::{
    BackupSegment, BlobId, ClaimedKeyPackage, DeviceId, DeviceInfo, DeviceKey, Epoch, GroupEntry,
    GroupId, GroupSummary, InboxEntry, InboxKind, NewBackupSegment, Payload, PostKind, Seq, Stream,
    UserName,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The user name is taken.
    #[error("user name taken")]
    UserTaken,
    /// No such user.
    #[error("unknown user")]
    UnknownUser,
    /// No such device.
    #[error("unknown device")]
    UnknownDevice,
    /// The user has the most devices allowed.
    #[error("too many devices")]
    TooManyDevices,
    /// The device's KeyPackage stock is full.
    #[error("key package stock full")]
    StockFull,
    /// No such group.
    #[error("unknown group")]
    UnknownGroup,
    /// The group id is taken.
    #[error("group exists")]
    GroupExists,
    /// The device is not a member of the group.
    #[error("not a member")]
    NotMember,
    /// A commit for a stale epoch; the group is at `current`.
    #[error("stale epoch, current is {current}")]
    StaleEpoch {
        /// The group's current epoch.
        current: Epoch,
    },
    /// The same sender posted the same bytes to the group recently (a client resending a post
    /// whose reply it did not get): not stored again. `seq` is the original entry's; the
    /// relay answers `Posted { seq }` and delivers nothing.
    #[error("duplicate of the entry at seq {seq}")]
    Duplicate {
        /// The seq of the entry first stored with these bytes.
        seq: Seq,
    },
    /// A request that cannot apply (e.g. adding a device that is already a member, ack past
    /// the end of the log, a group growing past its cap).
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// The backend failed (I/O, corruption). Details are logged by the backend.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// A device-list append whose caller verified it against another list than the stored
    /// one (another append won meanwhile): nothing was stored.
    #[error("the device list has {stored} entries, not the expected number")]
    ListChanged {
        /// How many entries the stored list has.
        stored: u64,
    },
    /// The user's history-backup index is at one of its caps ([`BackupCaps`]): nothing was
    /// indexed.
    #[error("the backup index is full")]
    BackupFull,
}

/// The per-user caps of the history-backup index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupCaps {
    /// Most segments indexed.
    pub segments: u64,
    /// Most bytes (the sum of the indexed segments' sizes).
    pub bytes: u64,
}

impl Default for BackupCaps {
    fn default() -> Self {
        BackupCaps {
            segments: cove_wire::limits::MAX_BACKUP_SEGMENTS,
            bytes: cove_wire::limits::MAX_BACKUP_BYTES,
        }
    }
}

/// A user's password account as the relay keeps it: nothing in it checks a password guess
/// without the relay's OPAQUE secrets, and nothing in it opens the bundles.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// The OPAQUE registration record (`ServerRegistration`, serialized).
    pub record: Vec<u8>,
    /// The version of the key-stretching parameters the record was made with.
    pub ksf_version: u8,
    /// The account bundle wrapped under the OPAQUE export key.
    pub password_bundle: Vec<u8>,
    /// The account bundle wrapped under the recovery key.
    pub recovery_bundle: Vec<u8>,
    /// The Ed25519 public key that signs recovery requests.
    pub recovery_key: [u8; 32],
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("ksf_version", &self.ksf_version)
            .finish_non_exhaustive()
    }
}

/// A post to append to a group log.
#[derive(Clone, Debug)]
pub struct NewPost {
    /// The group.
    pub group: GroupId,
    /// The authenticated posting device.
    pub sender: DeviceId,
    /// The epoch the sender says the message belongs to.
    pub epoch: Epoch,
    /// Application / proposal / commit (with membership change and Welcome).
    pub kind: PostKind,
    /// Opaque MLS bytes.
    pub payload: Vec<u8>,
    /// Relay time, milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// For a commit the relay validated: the group's public MLS state after it, stored in
    /// place of the previous one in the same transaction as the commit. The store does not
    /// interpret it. `None` leaves the stored state as it is.
    pub public_state: Option<PublicGroupState>,
}

/// A group's latest public MLS state as the relay keeps it: opaque bytes to the store (the
/// relay logic writes and reads them, see `logic/handshake.rs`). Public by construction: a
/// GroupInfo and a ratchet tree hold no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicGroupState {
    /// The latest GroupInfo (MLSMessage encoding).
    pub group_info: Vec<u8>,
    /// The ratchet tree of the same epoch (TLS encoding).
    pub tree: Vec<u8>,
}

/// Prints only the lengths.
impl std::fmt::Debug for PublicGroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublicGroupState(group_info: {} bytes, tree: {} bytes)",
            self.group_info.len(),
            self.tree.len()
        )
    }
}

/// The heads of logs (see [`RelayStore::heads`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heads {
    /// Each known group asked for, with the seq of the last entry ever appended to its log.
    pub groups: Vec<(GroupId, Seq)>,
    /// Each known device asked for, with the seq of the last entry ever put in its inbox.
    pub inboxes: Vec<(DeviceId, Seq)>,
}

/// What an accepted post did.
#[derive(Clone, Debug)]
pub struct Appended {
    /// The stored entry (to push to members).
    pub entry: GroupEntry,
    /// The group's members after this post. `entry` is pushed to these and to `removed`
    /// (so removed devices learn of their removal), never to anyone else.
    pub members: Vec<DeviceId>,
    /// Devices removed by this commit (they receive this entry, then nothing more).
    pub removed: Vec<DeviceId>,
    /// The inbox entries this commit's Welcome created: one per added device, with its seq
    /// in that device's inbox. They all carry [`Appended::welcome`].
    pub welcomes: Vec<(DeviceId, Seq)>,
    /// The commit's Welcome, held once however many devices it adds (`None` when it adds
    /// none).
    pub welcome: Option<Welcome>,
}

/// A Welcome as it sits in the inboxes of the devices a commit added: everything of the
/// [`InboxEntry`] but its seq, with the payload shared (one copy per commit, not per device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// What the entries are (`InboxKind::Welcome { group, commit_seq, sender }`).
    pub kind: InboxKind,
    /// Relay time of acceptance, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// The Welcome's bytes.
    pub payload: Arc<[u8]>,
}

impl Welcome {
    /// The inbox entry at `seq` (copies the payload).
    pub fn entry(&self, seq: Seq) -> InboxEntry {
        InboxEntry {
            seq,
            kind: self.kind.clone(),
            received_at_ms: self.received_at_ms,
            payload: Payload(self.payload.to_vec()),
        }
    }
}

/// What [`RelayStore::prune`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Group-log entries removed.
    pub group_entries: u64,
    /// Inbox entries removed.
    pub inbox_entries: u64,
}

/// Stock of a device's KeyPackages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stock {
    /// Normal KeyPackages left.
    pub remaining: u32,
    /// A last-resort KeyPackage is on file.
    pub has_last_resort: bool,
}

/// The relay's durable state. Implementations are internally synchronised.
///
/// Errors common to all methods: `UnknownDevice` for a `device` argument that does not exist,
/// `UnknownGroup` for a `group` that does not exist, `Backend` when storage fails (the
/// operation then had no effect).
pub trait RelayStore: Send + Sync + 'static {
    /// Registers `user` with its first device (UserTaken if the name exists). Device ids are
    /// assigned by the store, start at 1 and are never reused.
    fn register_user(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError>;
    /// Adds a further device to an existing user (authorisation is checked by the caller).
    /// UnknownUser, or TooManyDevices when the user has `limits::MAX_DEVICES_PER_USER`
    /// devices that are not revoked in the user's stored device list (revoked devices do not
    /// count: a lost device cannot keep a user from adding new ones).
    fn add_device(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError>;
    /// A user's devices, ordered by id (UnknownUser if no such user).
    fn devices(&self, user: &UserName) -> Result<Vec<DeviceInfo>, StoreError>;
    /// A device's user and key, if it exists.
    fn device(&self, device: DeviceId) -> Result<Option<(UserName, DeviceKey)>, StoreError>;
    /// Records that `device` authenticated (or registered) at `now_ms`, relay time in ms
    /// since the Unix epoch. Last seen never moves backwards: an older `now_ms` than the one
    /// recorded changes nothing. One small write per login; durable when it returns.
    fn record_seen(&self, device: DeviceId, now_ms: u64) -> Result<(), StoreError>;
    /// When each device of `user` last authenticated, ordered by id (the devices of
    /// [`RelayStore::devices`]): `None` for a device with no record. UnknownUser if no such
    /// user.
    fn last_seen(&self, user: &UserName) -> Result<Vec<(DeviceId, Option<u64>)>, StoreError>;

    /// Adds normal KeyPackages to a device's stock and optionally replaces its last-resort one.
    /// All or nothing: Invalid for more than `limits::MAX_KEY_PACKAGES_PER_UPLOAD`, an empty
    /// KeyPackage or one over `limits::MAX_KEY_PACKAGE_BYTES`; StockFull if the stock would
    /// exceed `limits::MAX_KEY_PACKAGE_STOCK`. Returns the stock after the upload.
    fn upload_key_packages(
        &self,
        device: DeviceId,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Stock, StoreError>;
    /// Claims one KeyPackage for each device of `user`: each normal KeyPackage is handed out
    /// exactly once (atomically, even under concurrent claims); a device with an empty stock
    /// yields its last-resort KeyPackage (not consumed); a device with neither, or one whose
    /// key the user's stored device list revokes, is left out. Normal KeyPackages go out in upload order; results are ordered by device id.
    /// UnknownUser if no such user.
    fn claim_key_packages(&self, user: &UserName) -> Result<Vec<ClaimedKeyPackage>, StoreError>;
    /// A device's stock.
    fn key_package_stock(&self, device: DeviceId) -> Result<Stock, StoreError>;

    /// Creates a group at epoch 0 whose only member is `creator`, without a public state.
    fn create_group(&self, group: GroupId, creator: DeviceId) -> Result<(), StoreError> {
        self.create_group_with_state(group, creator, None)
    }
    /// Creates a group at epoch 0 whose only member is `creator`, and stores `state` as its
    /// public state (see [`RelayStore::public_state`]) in the same transaction. GroupExists
    /// if the id is taken (then nothing is stored).
    fn create_group_with_state(
        &self,
        group: GroupId,
        creator: DeviceId,
        state: Option<PublicGroupState>,
    ) -> Result<(), StoreError>;
    /// The group's latest public state: the one stored at creation or with the last accepted
    /// post that carried one (`None` if none ever did). UnknownGroup if no such group.
    fn public_state(&self, group: GroupId) -> Result<Option<PublicGroupState>, StoreError>;
    /// `device` leaves `group` at the relay, without an MLS commit: for a device that was
    /// added but has no MLS state for the group (it refused or lost the Welcome), which
    /// therefore cannot send the leave request members would commit. It stops being a
    /// member at once (no more deliveries, reads or posts; its cursor and inbox Welcome stay
    /// as they are) but stays a leaf of the MLS tree until a member's commit removes it, so
    /// the group's rules let such a commit name it among the removed devices (a no-op here:
    /// no departure record, nothing delivered to it). A commit may also add it again.
    /// NotMember if it is not a current member, UnknownGroup/UnknownDevice as usual.
    /// Durable when it returns.
    fn leave_group(&self, group: GroupId, device: DeviceId) -> Result<(), StoreError>;
    /// Whether `device` is a current member of `group` (UnknownGroup if no such group).
    fn is_member(&self, group: GroupId, device: DeviceId) -> Result<bool, StoreError>;
    /// The groups `device` is a member of, with their current epochs, ordered by group id.
    fn groups_of(&self, device: DeviceId) -> Result<Vec<GroupSummary>, StoreError>;

    /// Appends posts, each checked on its own (membership, epoch rule), all accepted ones
    /// made durable together before returning (one transaction, one sync). Results are in
    /// input order, and each post sees the effect of the ones before it in the batch. If the
    /// backend fails, every post of the batch fails with `Backend` and none is stored.
    ///
    /// Checks, in order: UnknownGroup; NotMember if the sender is not a current member;
    /// Invalid for a payload (or Welcome) over `limits::MAX_PAYLOAD_BYTES`; then, for
    /// application messages and proposals, `Duplicate { seq }` when the same sender's post
    /// with the same payload is among the group's last `rules::RECENT_POSTS` application
    /// messages and proposals (remembered as a SHA-256 prefix of the payload, so memory per
    /// group is bounded; the SQLite backend rebuilds the window from its log on load); then
    /// the epoch rule, refused with `StaleEpoch { current }`:
    /// - application messages and proposals: `epoch` is the current epoch or the one just
    ///   before it (a message made just before a commit it raced with; members keep the
    ///   previous epoch's secrets briefly, and an older or future epoch is never accepted);
    /// - commits: `epoch` equals the current epoch exactly (one commit per epoch).
    ///
    /// A commit's membership change must be consistent or the commit is Invalid: no device
    /// twice, none both added and removed, removed devices are members, added ones are not,
    /// at most `limits::MAX_MEMBERSHIP_CHANGE` each, the group stays within
    /// `limits::MAX_GROUP_DEVICES`, and a Welcome is present exactly when devices are added.
    /// An added device that does not exist is UnknownDevice. A committer may remove itself.
    ///
    /// An accepted commit advances the epoch, applies the membership change, sets each added
    /// device's cursor in the group to the commit's seq, and puts the Welcome in each added
    /// device's inbox (`InboxKind::Welcome`), and replaces the group's public state with the
    /// post's [`NewPost::public_state`] if it has one, all in the same transaction; a refused
    /// commit changes nothing. Each added device's join seq (see [`RelayStore::joined`]) is the
    /// commit's seq. Removed devices stop being members but keep their cursor in a
    /// *departure* record (device, group, removal commit seq) until they acknowledge the
    /// removal commit (see [`RelayStore::departures`]). Re-adding a device keeps its
    /// departure record: a device always receives the commit that removed it, also when it
    /// was added again before it saw it.
    fn append_batch(&self, posts: Vec<NewPost>) -> Vec<Result<Appended, StoreError>>;
    /// Group entries with seq > `after`, at most `limit` (capped at
    /// `limits::MAX_FETCH_ENTRIES`), in order (caller checks membership). The entries'
    /// payloads total at most `max_bytes`, except that the first entry after `after` is
    /// always returned: the read stops at the first entry past the budget (without loading
    /// it), so a reader pages through large entries holding a few MiB, never `limit` times
    /// the largest entry.
    fn read_group(
        &self,
        group: GroupId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError>;
    /// The seq from which `device` may read `group`: the seq of the commit that added it (0
    /// for the creator). `None` if it is not a current member.
    fn joined(&self, group: GroupId, device: DeviceId) -> Result<Option<Seq>, StoreError>;
    /// What a member reads with `Fetch`: entries with seq > max(`after`, its join seq), as
    /// [`RelayStore::read_group`] (bounded by `limit` entries and `max_bytes` payload bytes).
    /// NotMember if `device` is not a current member.
    fn fetch(
        &self,
        group: GroupId,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        let joined = self.joined(group, device)?.ok_or(StoreError::NotMember)?;
        self.read_group(group, after.max(joined), limit, max_bytes)
    }
    /// The groups `device` was removed from without having acknowledged the removal commit
    /// yet, each with that commit's seq, ordered by group id. The device still receives the
    /// group's entries from its cursor up to and including that commit (nothing after), and
    /// may ack up to it; acking it drops the record. A device added to the group again has
    /// both a departure record and a membership: its acks up to the removal commit move the
    /// record's cursor (and drop it on reaching the commit).
    fn departures(&self, device: DeviceId) -> Result<Vec<(GroupId, Seq)>, StoreError>;
    /// The cursor of `device`'s departure record in `group` (see
    /// [`RelayStore::departures`]), whether or not it is a member again; `None` without a
    /// record.
    fn departure_cursor(&self, device: DeviceId, group: GroupId)
    -> Result<Option<Seq>, StoreError>;
    /// Inbox entries of `device` with seq > `after`, at most `limit` (capped at
    /// `limits::MAX_FETCH_ENTRIES`) and at most `max_bytes` of payload (the first entry is
    /// always returned), in order, as [`RelayStore::read_group`].
    fn read_inbox(
        &self,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<InboxEntry>, StoreError>;
    /// The device's cursor (last acknowledged seq) in a stream; 0 if nothing was acknowledged
    /// (for a device added by a commit: the commit's seq). For a group the device was removed
    /// from and has a departure record in: its cursor there. NotMember for a group the device
    /// is neither in nor departing from.
    fn cursor(&self, device: DeviceId, stream: Stream) -> Result<Seq, StoreError>;
    /// Moves the cursor forward to `seq` (never backwards: an older `seq` is accepted and
    /// changes nothing; Invalid past the stream's end; NotMember for a group the device is
    /// not in). A device with a departure record in the group may ack up to the removal
    /// commit (Invalid past it); reaching it drops the record (then NotMember).
    fn ack(&self, device: DeviceId, stream: Stream, seq: Seq) -> Result<(), StoreError>;
    /// [`RelayStore::ack`] if it can be applied without I/O and without waiting on a lock
    /// held across I/O (the relay calls this on its async runtime): `None` when it would need
    /// the disk (inbox acks, departure records, a group not in memory, a due flush of buffered
    /// acks) or a lock is busy; the caller then uses `ack` off the runtime. The default
    /// never applies inline.
    fn try_ack_buffered(
        &self,
        _device: DeviceId,
        _stream: Stream,
        _seq: Seq,
    ) -> Option<Result<(), StoreError>> {
        None
    }

    /// The heads of some logs, for a relay node's catch-up (see `crate::bus`): for each of
    /// `groups` that exists, the seq of the last entry ever appended to its log (0 for a
    /// log that never had one; pruning does not move it back), and for each of `devices`
    /// that exists, the same for its inbox. Unknown groups and devices are left out; the
    /// rest come in the order asked. One consistent read.
    fn heads(&self, groups: &[GroupId], devices: &[DeviceId]) -> Result<Heads, StoreError>;

    /// A user's device list as stored, from entry 0 (empty if the user published none).
    /// UnknownUser if no such user.
    fn device_list(&self, user: &UserName) -> Result<Vec<ListEntry>, StoreError>;
    /// Appends `entries` to `user`'s device list, atomically, if the stored list has exactly
    /// `expected_len` entries (the list the caller verified `entries` against); otherwise
    /// `ListChanged { stored }` and nothing is stored, so of two concurrent appends to the
    /// same list only one wins. The store does not check signatures or the hash chain (the
    /// caller does, with `cove-identity`); it checks only the shape: Invalid for no entries,
    /// an entry whose user is not `user` or whose index is not its position, or a list
    /// growing past `limits::MAX_DEVICE_LIST_ENTRIES`. UnknownUser if no such user. Durable
    /// when it returns; returns the new length. In the same transaction, each appended
    /// `Revoke` entry withdraws the KeyPackages (normal and last-resort) of the user's
    /// devices with the revoked key.
    fn append_device_list(
        &self,
        user: &UserName,
        expected_len: u64,
        entries: Vec<ListEntry>,
    ) -> Result<u64, StoreError>;

    /// Stores `user`'s password account, atomically (record, KSF version, both wrapped
    /// bundles, recovery key), durable when it returns. UnknownUser if no such user;
    /// `Invalid` if the user already has an account (nothing changes).
    fn create_account(&self, user: &UserName, account: Account) -> Result<(), StoreError>;
    /// `user`'s password account; `None` for a user without one and for an unknown user.
    fn account(&self, user: &UserName) -> Result<Option<Account>, StoreError>;
    /// Replaces `user`'s password: the OPAQUE record, the KSF version and the
    /// password-wrapped bundle, in one transaction; the recovery bundle and recovery key stay.
    /// UnknownUser if no such user; `Invalid` if the user has no account (nothing changes).
    /// Durable when it returns.
    fn replace_password(
        &self,
        user: &UserName,
        record: Vec<u8>,
        ksf_version: u8,
        password_bundle: Vec<u8>,
    ) -> Result<(), StoreError>;
    /// Deletes `user` and everything the relay keeps of it, in one transaction: its account,
    /// its device list and every device of it with the device's KeyPackages (normal and
    /// last-resort), inbox, cursors and departure records. Each group membership of those
    /// devices ends as with [`RelayStore::leave_group`]: the device is no longer a member
    /// (nothing is delivered to it) but stays a left leaf, so a member's commit may still
    /// name it among its removed devices. The name is free afterwards (`register_user` of it
    /// succeeds, for anyone); device ids are never reused. Returns the deleted devices,
    /// ordered by id. UnknownUser if no such user. Durable when it returns.
    fn delete_user(&self, user: &UserName) -> Result<Vec<DeviceId>, StoreError>;

    /// Appends `segment` to `user`'s history-backup index and returns its position: 1 for
    /// the first, then one more than the last position (in append order). The store does
    /// not check the blob (the caller does); it checks: UnknownUser; Invalid for an entry
    /// over `limits::MAX_BACKUP_ENTRY_BYTES` or a blob already in the user's index;
    /// BackupFull when the index would exceed `caps` (segments, or total bytes). Nothing is
    /// stored on error; durable when it returns.
    fn append_backup_segment(
        &self,
        user: &UserName,
        segment: NewBackupSegment,
        caps: BackupCaps,
    ) -> Result<u64, StoreError>;
    /// `user`'s index entries with position > `after`, at most `limit`, in position order
    /// (empty for an unknown user or an empty index).
    fn backup_segments(
        &self,
        user: &UserName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BackupSegment>, StoreError>;
    /// Whether `user`'s backup index holds `blob` (the blob sweep keeps such blobs).
    fn backup_holds_blob(&self, user: &UserName, blob: &BlobId) -> Result<bool, StoreError>;
    /// Deletes `user`'s whole backup index (for account deletion) and returns the blobs it
    /// held, so the caller can delete them. Empty for an unknown user. Durable when it
    /// returns.
    fn delete_backup_index(&self, user: &UserName) -> Result<Vec<BlobId>, StoreError>;

    /// Retention: removes
    /// - from each group log, the entries every reader has acknowledged: those at or below
    ///   the lowest cursor of its members and of its departure records (the whole log when
    ///   it has neither);
    /// - from each group log, its oldest entries received before `now_ms - max_age_ms`,
    ///   acknowledged or not: the longest prefix of the log (in seq order) of such entries;
    /// - from each inbox, the entries at or below the device's inbox cursor, and every
    ///   entry received before `now_ms - max_age_ms`.
    ///
    /// A log always keeps a suffix of itself. Nothing else changes: seqs are never reused
    /// (a log's next seq, the end an ack is checked against, and an inbox's next seq stay
    /// what they were, also across a reopen), cursors and departure records stay, the
    /// repeated-post window stays (SQLite rebuilds it after a reopen from the entries that
    /// remain), and a read after a pruned seq returns what remains. Buffered
    /// acknowledgements count (a backend writes them first). Each group's pruning is
    /// atomic; a backend may prune groups in several transactions (SQLite: 256 groups
    /// each, so posts are not held up), and a failure leaves what was done so far.
    fn prune(&self, now_ms: u64, max_age_ms: u64) -> Result<Pruned, StoreError>;

    /// Makes buffered state durable. Posts, registrations, KeyPackages and groups are always
    /// durable when their call returns; a backend may buffer acknowledgements (an ack lost
    /// in a crash only means a redelivery) and write them here, with the next batch of posts,
    /// or on its own schedule. The relay calls this at shutdown. The default does nothing.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The keys that `entries` (a user's stored device list) revoke.
pub(crate) fn revoked_keys(entries: &[ListEntry]) -> std::collections::HashSet<DeviceKey> {
    entries
        .iter()
        .filter_map(|e| match &e.body.op {
            cove_wire::identity::ListOp::Revoke { device } => Some(*device),
            _ => None,
        })
        .collect()
}

/// The shape checks of [`RelayStore::append_device_list`] on `entries` appended to a list of
/// `stored` entries: Invalid for none, another user's entry, an entry out of its place, or
/// a list growing past `limits::MAX_DEVICE_LIST_ENTRIES`.
pub(crate) fn check_list_append(
    user: &UserName,
    stored: u64,
    entries: &[ListEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Err(StoreError::Invalid("no device-list entries to append"));
    }
    let total = usize::try_from(stored)
        .ok()
        .and_then(|s| s.checked_add(entries.len()));
    if total.is_none_or(|t| t > cove_wire::limits::MAX_DEVICE_LIST_ENTRIES) {
        return Err(StoreError::Invalid(
            "the device list would grow past its cap",
        ));
    }
    for (i, entry) in (stored..).zip(entries) {
        if &entry.body.user != user {
            return Err(StoreError::Invalid("a device-list entry of another user"));
        }
        if entry.body.index != i {
            return Err(StoreError::Invalid("a device-list entry out of its place"));
        }
    }
    Ok(())
}

/// The shape checks of [`RelayStore::append_backup_segment`] that need no stored state.
pub(crate) fn check_backup_entry(segment: &NewBackupSegment) -> Result<(), StoreError> {
    if segment.entry.len() > cove_wire::limits::MAX_BACKUP_ENTRY_BYTES {
        return Err(StoreError::Invalid("backup entry too large"));
    }
    Ok(())
}

/// Whether an index of `segments` segments and `bytes` bytes may take one more of `size`.
pub(crate) fn backup_fits(caps: BackupCaps, segments: u64, bytes: u64, size: u64) -> bool {
    segments < caps.segments && bytes.checked_add(size).is_some_and(|b| b <= caps.bytes)
}
