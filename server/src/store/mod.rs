//! The relay's durable state behind one trait, [`RelayStore`], with a SQLite backend (the
//! embedded default, WAL mode, in the data directory) and an in-memory one. Both pass the
//! same conformance suite (`conformance.rs`).
//!
//! The relay stores only what it must to route ciphertext: user names, device public keys,
//! opaque KeyPackages, group membership by device id, opaque MLS messages and Welcomes,
//! and per-device cursors. It never stores plaintext or keys.
//!
//! Calls are synchronous and may block on disk; the network layer calls them from a
//! blocking context (a dedicated writer thread or `spawn_blocking`). A successful
//! [`RelayStore::append_batch`] is durable when it returns: the relay acknowledges a post
//! only after that. Batching many posts into one call is how the relay coalesces fsyncs.

#[cfg(test)]
mod conformance;
pub mod memory;
mod rules;
pub mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};

use cove_wire::{
    ClaimedKeyPackage, DeviceId, DeviceInfo, DeviceKey, Epoch, GroupEntry, GroupId, GroupSummary,
    InboxEntry, PostKind, Seq, Stream, UserName,
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
    /// A request that cannot apply (e.g. adding a device that is already a member, ack past
    /// the end of the log, a group growing past its cap).
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// The backend failed (I/O, corruption). Details are logged by the backend.
    #[error("storage backend failed: {0}")]
    Backend(String),
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
    /// Inbox entries created by this commit's Welcome, one per added device.
    pub welcomes: Vec<(DeviceId, InboxEntry)>,
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
pub trait RelayStore: Send + Sync + 'static {
    /// Registers `user` with its first device.
    fn register_user(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError>;
    /// Adds a further device to an existing user (authorisation is checked by the caller).
    fn add_device(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError>;
    /// A user's devices, ordered by id.
    fn devices(&self, user: &UserName) -> Result<Vec<DeviceInfo>, StoreError>;
    /// A device's user and key, if it exists.
    fn device(&self, device: DeviceId) -> Result<Option<(UserName, DeviceKey)>, StoreError>;

    /// Adds normal KeyPackages to a device's stock and optionally replaces its last-resort one.
    fn upload_key_packages(
        &self,
        device: DeviceId,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Stock, StoreError>;
    /// Claims one KeyPackage for each device of `user`: each normal KeyPackage is handed out
    /// exactly once (atomically, even under concurrent claims); a device with an empty stock
    /// yields its last-resort KeyPackage (not consumed); a device with neither is left out.
    fn claim_key_packages(&self, user: &UserName) -> Result<Vec<ClaimedKeyPackage>, StoreError>;
    /// A device's stock.
    fn key_package_stock(&self, device: DeviceId) -> Result<Stock, StoreError>;

    /// Creates a group at epoch 0 whose only member is `creator`.
    fn create_group(&self, group: GroupId, creator: DeviceId) -> Result<(), StoreError>;
    /// Whether `device` is a current member of `group` (UnknownGroup if no such group).
    fn is_member(&self, group: GroupId, device: DeviceId) -> Result<bool, StoreError>;
    /// The groups `device` is a member of, with their current epochs.
    fn groups_of(&self, device: DeviceId) -> Result<Vec<GroupSummary>, StoreError>;

    /// Appends posts, each checked on its own (membership, epoch rule), all accepted ones
    /// made durable together before returning (one transaction, one sync). Results are in
    /// input order. For a commit: only if `epoch` equals the current epoch; then the epoch
    /// advances, the membership change applies, each added device's cursor in the group is
    /// set to the commit's seq, and the Welcome goes to each added device's inbox.
    fn append_batch(&self, posts: Vec<NewPost>) -> Vec<Result<Appended, StoreError>>;
    /// Group entries with seq > `after`, at most `limit`, in order (caller checks membership).
    fn read_group(
        &self,
        group: GroupId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<GroupEntry>, StoreError>;
    /// Inbox entries of `device` with seq > `after`, at most `limit`, in order.
    fn read_inbox(
        &self,
        device: DeviceId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError>;
    /// The device's cursor (last acknowledged seq) in a stream; 0 if none.
    fn cursor(&self, device: DeviceId, stream: Stream) -> Result<Seq, StoreError>;
    /// Moves the cursor forward to `seq` (never backwards; Invalid past the stream's end;
    /// NotMember for a group the device is not in).
    fn ack(&self, device: DeviceId, stream: Stream, seq: Seq) -> Result<(), StoreError>;
}
