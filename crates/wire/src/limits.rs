//! Protocol limits. The relay enforces every one of them; clients respect them.
//! All are defaults that a relay may lower (never raise past the hard caps here).

/// Largest WebSocket message (and so largest frame) either side accepts: 1 MiB.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Largest opaque MLS payload (message, commit, Welcome) in one post: 1 MiB minus framing room.
pub const MAX_PAYLOAD_BYTES: usize = MAX_FRAME_BYTES - 4 * 1024;
/// Largest application plaintext a client puts in one MLS application message: 64 KiB.
pub const MAX_APPLICATION_PLAINTEXT: usize = 64 * 1024;
/// Largest serialized KeyPackage accepted by the relay.
pub const MAX_KEY_PACKAGE_BYTES: usize = 16 * 1024;
/// Most KeyPackages in one upload batch.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 200;
/// Most KeyPackages the relay stores per device (the stock).
pub const MAX_KEY_PACKAGE_STOCK: usize = 1000;
/// Most devices one user may register.
pub const MAX_DEVICES_PER_USER: usize = 16;
/// Most device ids in one membership change (added or removed) of a commit.
pub const MAX_MEMBERSHIP_CHANGE: usize = 1000;
/// Most members (devices) in one group.
pub const MAX_GROUP_DEVICES: usize = 5000;
/// Most entries returned by one `Fetch`.
pub const MAX_FETCH_ENTRIES: u32 = 500;
/// Longest error message text in a [`crate::ErrorReply`].
pub const MAX_ERROR_MESSAGE: usize = 512;
/// Shortest and longest user name, in bytes.
pub const USER_NAME_LEN: std::ops::RangeInclusive<usize> = 1..=32;
/// Largest items count any `BoundedVec` may declare (a hard decode cap).
pub const MAX_VEC_ITEMS: usize = 5000;
/// Most backlog entries the relay queues per connection before it stops reading the store
/// (the bounded outgoing queue; a reader slower than this is disconnected, entries stay stored).
pub const OUTGOING_QUEUE_FRAMES: usize = 4096;
/// Shortest and longest device name, in bytes.
pub const DEVICE_NAME_LEN: std::ops::RangeInclusive<usize> = 1..=64;
/// Most entries in one user's device list over its whole life (adds and revokes; each entry
/// is about 200 bytes, so a whole list fits one frame).
pub const MAX_DEVICE_LIST_ENTRIES: usize = 1024;
/// Largest message passed through a link slot (`LinkSend`): a sealed channel message of
/// 512 KiB plaintext with its tag and room to spare.
pub const MAX_LINK_MESSAGE_BYTES: usize = 512 * 1024 + 64;

/// Most bytes of one OPAQUE message or wrapped account bundle in an account request (the
/// real ones are at most a few hundred bytes).
pub const MAX_ACCOUNT_MESSAGE_BYTES: usize = 1024;

/// Largest opaque entry of a history-backup segment in the relay's index.
pub const MAX_BACKUP_ENTRY_BYTES: usize = 512;
/// Most segments in one user's history-backup index.
pub const MAX_BACKUP_SEGMENTS: u64 = 100_000;
/// Most bytes (total of the indexed blobs' sizes) in one user's history-backup index: 8 GiB.
pub const MAX_BACKUP_BYTES: u64 = 8 << 30;
/// Most index entries in one `BackupSegments` reply.
pub const MAX_BACKUP_LIST: usize = 1000;
