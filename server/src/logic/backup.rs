//! The history-backup index: a per-user list of opaque segment entries, each naming a blob
//! of that user that holds one sealed history segment (see `PROTOCOL.md`, "History
//! backup"). Only the user's own devices append to or list it; the relay learns how many
//! segments there are, their sizes and when they came, never their content.

use cove_wire::limits::{MAX_BACKUP_ENTRY_BYTES, MAX_BACKUP_LIST};
use cove_wire::{BoundedVec, DeviceId, ErrorCode, ErrorReply, NewBackupSegment, Reply, UserName};

use crate::reply::{invalid, store_error_reply};
use crate::store::{BackupCaps, RelayStore, StoreError};

/// What the relay's blob store says of the blob a segment names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobFacts {
    /// Who uploaded it.
    pub owner: UserName,
    /// Its declared length.
    pub length: u64,
    /// Whether every byte is stored.
    pub complete: bool,
}

/// `AppendBackupSegment` of `device` for `user`'s index: `NotOwner` unless `user` is the
/// device's own user; `TooLarge` for an entry over [`MAX_BACKUP_ENTRY_BYTES`];
/// `InvalidRequest` unless `blob` (the facts of the named blob, `None` when there is no
/// such blob) is a complete blob of the user of exactly `segment.size` bytes; then the
/// store's checks (`BackupFull` past `caps`).
pub fn append(
    store: &dyn RelayStore,
    device: DeviceId,
    user: &UserName,
    segment: NewBackupSegment,
    blob: Option<BlobFacts>,
    caps: BackupCaps,
) -> Result<Reply, ErrorReply> {
    own_user(store, device, user)?;
    if segment.entry.len() > MAX_BACKUP_ENTRY_BYTES {
        return Err(ErrorReply::new(
            ErrorCode::TooLarge,
            "backup entry too large",
        ));
    }
    match blob {
        None => return Err(invalid("no such blob")),
        Some(facts) if &facts.owner != user => {
            return Err(invalid("the blob belongs to another user"));
        }
        Some(facts) if !facts.complete => return Err(invalid("the blob is not complete")),
        Some(facts) if facts.length != segment.size => {
            return Err(invalid("the blob's size differs from the segment's"));
        }
        Some(_) => {}
    }
    let position = store
        .append_backup_segment(user, segment, caps)
        .map_err(|e| store_error_reply(&e))?;
    Ok(Reply::BackupSegmentAppended { position })
}

/// `ListBackupSegments` of `device` for `user`'s index: `NotOwner` unless it is the
/// device's own user; at most [`MAX_BACKUP_LIST`] entries after `after`.
pub fn list(
    store: &dyn RelayStore,
    device: DeviceId,
    user: &UserName,
    after: u64,
) -> Result<Reply, ErrorReply> {
    own_user(store, device, user)?;
    let mut segments = store
        .backup_segments(user, after, MAX_BACKUP_LIST + 1)
        .map_err(|e| store_error_reply(&e))?;
    let more = segments.len() > MAX_BACKUP_LIST;
    segments.truncate(MAX_BACKUP_LIST);
    Ok(Reply::BackupSegments {
        segments: BoundedVec(segments),
        more,
    })
}

/// `NotOwner` unless `user` is `device`'s own user.
fn own_user(store: &dyn RelayStore, device: DeviceId, user: &UserName) -> Result<(), ErrorReply> {
    let (own, _) = store
        .device(device)
        .map_err(|e| store_error_reply(&e))?
        .ok_or_else(|| store_error_reply(&StoreError::UnknownDevice))?;
    if &own != user {
        return Err(ErrorReply::new(
            ErrorCode::NotOwner,
            "a device may use only its own user's backup index",
        ));
    }
    Ok(())
}
