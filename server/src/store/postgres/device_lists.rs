//! Users' signed device lists (`device_lists`): one row per entry, the entry stored as its
//! postcard encoding, appended only when the stored list has the length the caller expects
//! (the user's row is locked, and `(user_name, idx)` is the primary key, so of two nodes
//! appending at once one wins). An appended `Revoke` withdraws the revoked device's
//! KeyPackages in the same transaction.

use cove_wire::UserName;
use cove_wire::identity::ListEntry;

use super::directory::user_exists;
use super::rows::{R, Tx, corrupt, to_i64, to_u64};
use crate::store::{StoreError, check_list_append, revoked_keys};

/// A user's list, from entry 0.
pub(super) fn read(tx: &mut Tx<'_>, user: &UserName) -> R<Vec<ListEntry>> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser.into());
    }
    let rows = tx.rows(
        "SELECT idx, entry FROM device_lists WHERE user_name = $1 ORDER BY idx",
        &[&user.as_str()],
    )?;
    let mut out: Vec<ListEntry> = Vec::with_capacity(rows.len());
    for r in rows {
        let idx = to_u64(r.try_get(0)?)?;
        let entry: ListEntry = cove_wire::decode(r.try_get::<_, &[u8]>(1)?)
            .map_err(|_| corrupt("device-list entry"))?;
        if idx != out.len() as u64 || entry.body.index != out.len() as u64 {
            return Err(corrupt("device-list index").into());
        }
        out.push(entry);
    }
    Ok(out)
}

/// Appends `entries` if the list has `expected_len` entries.
pub(super) fn append(
    tx: &mut Tx<'_>,
    user: &UserName,
    expected_len: u64,
    entries: &[ListEntry],
) -> R<u64> {
    if tx
        .opt(
            "SELECT 1 FROM users WHERE name = $1 FOR UPDATE",
            &[&user.as_str()],
        )?
        .is_none()
    {
        return Err(StoreError::UnknownUser.into());
    }
    let count: i64 = tx
        .one(
            "SELECT COUNT(*) FROM device_lists WHERE user_name = $1",
            &[&user.as_str()],
        )?
        .try_get(0)?;
    let stored = to_u64(count)?;
    if stored != expected_len {
        return Err(StoreError::ListChanged { stored }.into());
    }
    check_list_append(user, stored, entries)?;
    for entry in entries {
        let bytes = cove_wire::encode(entry)
            .map_err(|_| StoreError::Invalid("a device-list entry that cannot be encoded"))?;
        tx.exec(
            "INSERT INTO device_lists (user_name, idx, entry) VALUES ($1, $2, $3)",
            &[&user.as_str(), &to_i64(entry.body.index)?, &bytes],
        )?;
    }
    for key in revoked_keys(entries) {
        let key = key.0.as_slice();
        tx.exec(
            "DELETE FROM key_packages WHERE device IN \
             (SELECT id FROM devices WHERE user_name = $1 AND key = $2)",
            &[&user.as_str(), &key],
        )?;
        tx.exec(
            "DELETE FROM last_resort_key_packages WHERE device IN \
             (SELECT id FROM devices WHERE user_name = $1 AND key = $2)",
            &[&user.as_str(), &key],
        )?;
    }
    Ok(stored + entries.len() as u64)
}
