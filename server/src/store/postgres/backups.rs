//! The history-backup index (`backup_segments`): per user, one row per indexed segment
//! (position, blob, size, opaque entry).

use cove_wire::{BackupSegment, BlobId, NewBackupSegment, Payload, UserName};

use super::rows::{R, Tx, corrupt, to_i64, to_u64};
use crate::store::{BackupCaps, StoreError, backup_fits};

/// Appends a segment (see `RelayStore::append_backup_segment`).
pub(super) fn append(
    tx: &mut Tx<'_>,
    user: &UserName,
    segment: &NewBackupSegment,
    caps: BackupCaps,
) -> R<u64> {
    // The user's row lock: appends for one user take turns (positions, caps).
    if tx
        .opt(
            "SELECT 1 FROM users WHERE name = $1 FOR UPDATE",
            &[&user.as_str()],
        )?
        .is_none()
    {
        return Err(StoreError::UnknownUser.into());
    }
    if holds(tx, user, &segment.blob)? {
        return Err(StoreError::Invalid("the blob is already in the backup index").into());
    }
    let r = tx.one(
        "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT, COALESCE(MAX(position), 0) \
         FROM backup_segments WHERE user_name = $1",
        &[&user.as_str()],
    )?;
    let (count, bytes, last): (i64, i64, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
    if !backup_fits(caps, to_u64(count)?, to_u64(bytes)?, segment.size) {
        return Err(StoreError::BackupFull.into());
    }
    let position = to_u64(last)?
        .checked_add(1)
        .ok_or(StoreError::Invalid("backup positions used up"))?;
    tx.exec(
        "INSERT INTO backup_segments (user_name, position, blob, size, entry) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &user.as_str(),
            &to_i64(position)?,
            &segment.blob.0.as_slice(),
            &to_i64(segment.size)?,
            &segment.entry.as_bytes(),
        ],
    )?;
    Ok(position)
}

/// Index entries after `after`.
pub(super) fn list(
    tx: &mut Tx<'_>,
    user: &UserName,
    after: u64,
    limit: usize,
) -> R<Vec<BackupSegment>> {
    let rows = tx.rows(
        "SELECT position, blob, size, entry FROM backup_segments \
         WHERE user_name = $1 AND position > $2 ORDER BY position LIMIT $3",
        &[
            &user.as_str(),
            &i64::try_from(after).unwrap_or(i64::MAX),
            &i64::try_from(limit).unwrap_or(i64::MAX),
        ],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(BackupSegment {
            position: to_u64(r.try_get(0)?)?,
            blob: blob_id(r.try_get(1)?)?,
            size: to_u64(r.try_get(2)?)?,
            entry: Payload(r.try_get(3)?),
        });
    }
    Ok(out)
}

/// Whether the user's index holds `blob`.
pub(super) fn holds(tx: &mut Tx<'_>, user: &UserName, blob: &BlobId) -> R<bool> {
    Ok(tx
        .opt(
            "SELECT 1 FROM backup_segments WHERE user_name = $1 AND blob = $2",
            &[&user.as_str(), &blob.0.as_slice()],
        )?
        .is_some())
}

/// Deletes the user's index; returns the blobs it held.
pub(super) fn delete(tx: &mut Tx<'_>, user: &UserName) -> R<Vec<BlobId>> {
    let rows = tx.rows(
        "DELETE FROM backup_segments WHERE user_name = $1 RETURNING position, blob",
        &[&user.as_str()],
    )?;
    let mut blobs = Vec::with_capacity(rows.len());
    for r in rows {
        let position: i64 = r.try_get(0)?;
        blobs.push((position, blob_id(r.try_get(1)?)?));
    }
    blobs.sort_by_key(|(p, _)| *p);
    Ok(blobs.into_iter().map(|(_, b)| b).collect())
}

fn blob_id(bytes: &[u8]) -> Result<BlobId, StoreError> {
    Ok(BlobId(bytes.try_into().map_err(|_| corrupt("blob id"))?))
}
