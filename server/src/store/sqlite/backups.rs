//! The history-backup index (`backup_segments`): per user, one row per indexed segment
//! (position, blob, size, opaque entry).

use cove_wire::{BackupSegment, BlobId, NewBackupSegment, Payload, UserName};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::directory::user_exists;
use super::rows::{corrupt, to_i64, to_u64};
use crate::store::{BackupCaps, StoreError, backup_fits};

/// Appends a segment (see `RelayStore::append_backup_segment`).
pub(super) fn append(
    tx: &Transaction<'_>,
    user: &UserName,
    segment: &NewBackupSegment,
    caps: BackupCaps,
) -> Result<u64, StoreError> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser);
    }
    if holds(tx, user, &segment.blob)? {
        return Err(StoreError::Invalid(
            "the blob is already in the backup index",
        ));
    }
    let (count, bytes, last): (i64, i64, i64) = tx
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(position), 0) \
             FROM backup_segments WHERE user = ?1",
        )?
        .query_row(params![user.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if !backup_fits(caps, to_u64(count)?, to_u64(bytes)?, segment.size) {
        return Err(StoreError::BackupFull);
    }
    let position = to_u64(last)?
        .checked_add(1)
        .ok_or(StoreError::Invalid("backup positions used up"))?;
    tx.prepare_cached(
        "INSERT INTO backup_segments (user, position, blob, size, entry) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        user.as_str(),
        to_i64(position)?,
        segment.blob.0.as_slice(),
        to_i64(segment.size)?,
        segment.entry.as_bytes(),
    ])?;
    Ok(position)
}

/// Index entries after `after` (see `RelayStore::backup_segments`).
pub(super) fn list(
    conn: &Connection,
    user: &UserName,
    after: u64,
    limit: usize,
) -> Result<Vec<BackupSegment>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT position, blob, size, entry FROM backup_segments \
         WHERE user = ?1 AND position > ?2 ORDER BY position LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            user.as_str(),
            i64::try_from(after).unwrap_or(i64::MAX),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (position, blob, size, entry) = row?;
        out.push(BackupSegment {
            position: to_u64(position)?,
            blob: blob_id(&blob)?,
            size: to_u64(size)?,
            entry: Payload(entry),
        });
    }
    Ok(out)
}

/// Whether the user's index holds `blob`.
pub(super) fn holds(conn: &Connection, user: &UserName, blob: &BlobId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM backup_segments WHERE user = ?1 AND blob = ?2")?
        .query_row(params![user.as_str(), blob.0.as_slice()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Deletes the user's index; returns the blobs it held.
pub(super) fn delete(tx: &Transaction<'_>, user: &UserName) -> Result<Vec<BlobId>, StoreError> {
    let blobs: Vec<Vec<u8>> = {
        let mut stmt = tx
            .prepare_cached("SELECT blob FROM backup_segments WHERE user = ?1 ORDER BY position")?;
        let rows = stmt.query_map(params![user.as_str()], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    tx.prepare_cached("DELETE FROM backup_segments WHERE user = ?1")?
        .execute(params![user.as_str()])?;
    blobs.iter().map(|b| blob_id(b)).collect()
}

fn blob_id(bytes: &[u8]) -> Result<BlobId, StoreError> {
    Ok(BlobId(bytes.try_into().map_err(|_| corrupt("blob id"))?))
}
