//! The directory: users and their devices (`users`, `devices`), registration, adding a
//! device under the per-user cap (of devices not revoked in the user's list), and the device lookups every other table module uses to
//! turn a [`DeviceId`] into a row id.

use cove_wire::limits::MAX_DEVICES_PER_USER;
use cove_wire::{DeviceId, DeviceInfo, DeviceKey, UserName};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::rows::{clamp_i64, corrupt, device_id, device_key, to_u64};
use crate::store::{StoreError, revoked_keys};

/// Registers `user` with its first device (see `RelayStore::register_user`).
pub(super) fn register_user(
    tx: &Transaction<'_>,
    user: &UserName,
    key: &DeviceKey,
) -> Result<DeviceId, StoreError> {
    if user_exists(tx, user)? {
        return Err(StoreError::UserTaken);
    }
    tx.prepare_cached("INSERT INTO users (name) VALUES (?1)")?
        .execute(params![user.as_str()])?;
    insert_device(tx, user, key)
}

/// Adds a device to an existing user (see `RelayStore::add_device`).
pub(super) fn add_device(
    tx: &Transaction<'_>,
    user: &UserName,
    key: &DeviceKey,
) -> Result<DeviceId, StoreError> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser);
    }
    // Devices revoked in the user's signed list do not count against the cap.
    let revoked = revoked_keys(&super::device_lists::read(tx, user)?);
    let count = devices(tx, user)?
        .iter()
        .filter(|d| !revoked.contains(&d.key))
        .count();
    if count >= MAX_DEVICES_PER_USER {
        return Err(StoreError::TooManyDevices);
    }
    insert_device(tx, user, key)
}

/// A user's devices, ordered by id (see `RelayStore::devices`).
pub(super) fn devices(conn: &Connection, user: &UserName) -> Result<Vec<DeviceInfo>, StoreError> {
    if !user_exists(conn, user)? {
        return Err(StoreError::UnknownUser);
    }
    let mut stmt =
        conn.prepare_cached("SELECT id, key FROM devices WHERE user = ?1 ORDER BY id")?;
    let rows = stmt.query_map(params![user.as_str()], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, key) = row?;
        out.push(DeviceInfo {
            device: device_id(id)?,
            key: device_key(&key)?,
        });
    }
    Ok(out)
}

/// Records a login of `device` at `now_ms`, never moving last seen backwards (see
/// `RelayStore::record_seen`).
pub(super) fn record_seen(
    tx: &Transaction<'_>,
    device: DeviceId,
    now_ms: u64,
) -> Result<(), StoreError> {
    let Ok(id) = i64::try_from(device.0) else {
        return Err(StoreError::UnknownDevice);
    };
    let changed = tx
        .prepare_cached(
            "UPDATE devices SET last_seen_ms = \
             CASE WHEN last_seen_ms IS NULL OR last_seen_ms < ?2 THEN ?2 ELSE last_seen_ms END \
             WHERE id = ?1",
        )?
        .execute(params![id, clamp_i64(now_ms)])?;
    if changed == 0 {
        return Err(StoreError::UnknownDevice);
    }
    Ok(())
}

/// When each device of `user` last authenticated, ordered by id (see
/// `RelayStore::last_seen`).
pub(super) fn last_seen(
    conn: &Connection,
    user: &UserName,
) -> Result<Vec<(DeviceId, Option<u64>)>, StoreError> {
    if !user_exists(conn, user)? {
        return Err(StoreError::UnknownUser);
    }
    let mut stmt =
        conn.prepare_cached("SELECT id, last_seen_ms FROM devices WHERE user = ?1 ORDER BY id")?;
    let rows = stmt.query_map(params![user.as_str()], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, seen) = row?;
        out.push((device_id(id)?, seen.map(to_u64).transpose()?));
    }
    Ok(out)
}

/// A device's user and key, if it exists (see `RelayStore::device`).
pub(super) fn device(
    conn: &Connection,
    device: DeviceId,
) -> Result<Option<(UserName, DeviceKey)>, StoreError> {
    let Ok(id) = i64::try_from(device.0) else {
        return Ok(None);
    };
    let row = conn
        .prepare_cached("SELECT user, key FROM devices WHERE id = ?1")?
        .query_row(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .optional()?;
    match row {
        None => Ok(None),
        Some((user, key)) => Ok(Some((
            UserName::new(user).map_err(|_| corrupt("user name"))?,
            device_key(&key)?,
        ))),
    }
}

/// Whether the user is registered.
pub(super) fn user_exists(conn: &Connection, user: &UserName) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
        .query_row(params![user.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

fn insert_device(
    tx: &Transaction<'_>,
    user: &UserName,
    key: &DeviceKey,
) -> Result<DeviceId, StoreError> {
    tx.prepare_cached("INSERT INTO devices (user, key) VALUES (?1, ?2)")?
        .execute(params![user.as_str(), key.0.as_slice()])?;
    device_id(tx.last_insert_rowid())
}

/// Whether the device exists (false for an id out of SQLite's range).
pub(super) fn device_exists(conn: &Connection, device: DeviceId) -> Result<bool, StoreError> {
    let Ok(id) = i64::try_from(device.0) else {
        return Ok(false);
    };
    Ok(conn
        .prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The device's row id, or UnknownDevice.
pub(super) fn existing_device(conn: &Connection, device: DeviceId) -> Result<i64, StoreError> {
    if device_exists(conn, device)? {
        i64::try_from(device.0).map_err(|_| StoreError::UnknownDevice)
    } else {
        Err(StoreError::UnknownDevice)
    }
}
