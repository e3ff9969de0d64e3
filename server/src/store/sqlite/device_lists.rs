//! Users' signed device lists (`device_lists`): one row per entry, the entry stored as its
//! postcard encoding, appended only when the stored list has the length the caller expects.
//! An appended `Revoke` entry withdraws the revoked device's KeyPackages in the same
//! transaction.

use cove_wire::UserName;
use cove_wire::identity::ListEntry;
use rusqlite::{Connection, Transaction, params};

use super::directory::user_exists;
use super::rows::{corrupt, to_i64, to_u64};
use crate::store::{StoreError, check_list_append, revoked_keys};

/// A user's list, from entry 0 (see `RelayStore::device_list`).
pub(super) fn read(conn: &Connection, user: &UserName) -> Result<Vec<ListEntry>, StoreError> {
    if !user_exists(conn, user)? {
        return Err(StoreError::UnknownUser);
    }
    let mut stmt =
        conn.prepare_cached("SELECT idx, entry FROM device_lists WHERE user = ?1 ORDER BY idx")?;
    let rows = stmt.query_map(params![user.as_str()], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (idx, bytes) = row?;
        let entry: ListEntry =
            cove_wire::decode(&bytes).map_err(|_| corrupt("device-list entry"))?;
        if to_u64(idx)? != out.len() as u64 || entry.body.index != out.len() as u64 {
            return Err(corrupt("device-list index"));
        }
        out.push(entry);
    }
    Ok(out)
}

/// Appends `entries` if the list has `expected_len` entries (see
/// `RelayStore::append_device_list`); runs inside the caller's write transaction.
pub(super) fn append(
    tx: &Transaction<'_>,
    user: &UserName,
    expected_len: u64,
    entries: &[ListEntry],
) -> Result<u64, StoreError> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser);
    }
    let count: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM device_lists WHERE user = ?1")?
        .query_row(params![user.as_str()], |r| r.get(0))?;
    let stored = to_u64(count)?;
    if stored != expected_len {
        return Err(StoreError::ListChanged { stored });
    }
    check_list_append(user, stored, entries)?;
    let mut insert =
        tx.prepare_cached("INSERT INTO device_lists (user, idx, entry) VALUES (?1, ?2, ?3)")?;
    for entry in entries {
        let bytes = cove_wire::encode(entry)
            .map_err(|_| StoreError::Invalid("a device-list entry that cannot be encoded"))?;
        insert.execute(params![user.as_str(), to_i64(entry.body.index)?, bytes])?;
    }
    // Revoked devices' KeyPackages are withdrawn with the entry that revokes them.
    for key in revoked_keys(entries) {
        let key = key.0.as_slice();
        tx.prepare_cached(
            "DELETE FROM key_packages WHERE device IN \
             (SELECT id FROM devices WHERE user = ?1 AND key = ?2)",
        )?
        .execute(params![user.as_str(), key])?;
        tx.prepare_cached(
            "DELETE FROM last_resort_key_packages WHERE device IN \
             (SELECT id FROM devices WHERE user = ?1 AND key = ?2)",
        )?
        .execute(params![user.as_str(), key])?;
    }
    Ok(stored + entries.len() as u64)
}
