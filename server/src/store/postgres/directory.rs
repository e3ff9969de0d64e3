//! The directory: users and their devices (`users`, `devices`), registration, adding a
//! device under the per-user cap (of devices not revoked in the user's list), and the
//! device lookups every other table module uses.

use cove_wire::limits::MAX_DEVICES_PER_USER;
use cove_wire::{DeviceId, DeviceInfo, DeviceKey, UserName};

use super::rows::{R, Tx, clamp_i64, corrupt, device_id, device_key, to_u64};
use crate::store::{StoreError, revoked_keys};

/// Registers `user` with its first device (see `RelayStore::register_user`).
pub(super) fn register_user(tx: &mut Tx<'_>, user: &UserName, key: &DeviceKey) -> R<DeviceId> {
    if user_exists(tx, user)? {
        return Err(StoreError::UserTaken.into());
    }
    // A concurrent registration of the same name makes this insert (or the commit) fail
    // with a conflict; the retry then finds the name taken.
    tx.exec("INSERT INTO users (name) VALUES ($1)", &[&user.as_str()])?;
    insert_device(tx, user, key)
}

/// Adds a device to an existing user (see `RelayStore::add_device`).
pub(super) fn add_device(tx: &mut Tx<'_>, user: &UserName, key: &DeviceKey) -> R<DeviceId> {
    // Locks the user's row: concurrent additions for one user take turns, so the cap holds.
    if tx
        .opt(
            "SELECT 1 FROM users WHERE name = $1 FOR UPDATE",
            &[&user.as_str()],
        )?
        .is_none()
    {
        return Err(StoreError::UnknownUser.into());
    }
    let revoked = revoked_keys(&super::device_lists::read(tx, user)?);
    let count = devices(tx, user)?
        .iter()
        .filter(|d| !revoked.contains(&d.key))
        .count();
    if count >= MAX_DEVICES_PER_USER {
        return Err(StoreError::TooManyDevices.into());
    }
    insert_device(tx, user, key)
}

/// A user's devices, ordered by id (see `RelayStore::devices`).
pub(super) fn devices(tx: &mut Tx<'_>, user: &UserName) -> R<Vec<DeviceInfo>> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser.into());
    }
    let rows = tx.rows(
        "SELECT id, key FROM devices WHERE user_name = $1 ORDER BY id",
        &[&user.as_str()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(DeviceInfo {
            device: device_id(r.try_get(0)?)?,
            key: device_key(r.try_get::<_, &[u8]>(1)?)?,
        });
    }
    Ok(out)
}

/// Records a login of `device` at `now_ms`, never moving last seen backwards.
pub(super) fn record_seen(tx: &mut Tx<'_>, device: DeviceId, now_ms: u64) -> R<()> {
    let Ok(id) = i64::try_from(device.0) else {
        return Err(StoreError::UnknownDevice.into());
    };
    let changed = tx.exec(
        "UPDATE devices SET last_seen_ms = GREATEST(COALESCE(last_seen_ms, $2), $2) \
         WHERE id = $1",
        &[&id, &clamp_i64(now_ms)],
    )?;
    if changed == 0 {
        return Err(StoreError::UnknownDevice.into());
    }
    Ok(())
}

/// When each device of `user` last authenticated, ordered by id.
pub(super) fn last_seen(tx: &mut Tx<'_>, user: &UserName) -> R<Vec<(DeviceId, Option<u64>)>> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser.into());
    }
    let rows = tx.rows(
        "SELECT id, last_seen_ms FROM devices WHERE user_name = $1 ORDER BY id",
        &[&user.as_str()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let seen: Option<i64> = r.try_get(1)?;
        out.push((device_id(r.try_get(0)?)?, seen.map(to_u64).transpose()?));
    }
    Ok(out)
}

/// A device's user and key, if it exists.
pub(super) fn device(tx: &mut Tx<'_>, device: DeviceId) -> R<Option<(UserName, DeviceKey)>> {
    let Ok(id) = i64::try_from(device.0) else {
        return Ok(None);
    };
    let Some(r) = tx.opt("SELECT user_name, key FROM devices WHERE id = $1", &[&id])? else {
        return Ok(None);
    };
    let user: String = r.try_get(0)?;
    Ok(Some((
        UserName::new(user).map_err(|_| corrupt("user name"))?,
        device_key(r.try_get::<_, &[u8]>(1)?)?,
    )))
}

/// Whether the user is registered.
pub(super) fn user_exists(tx: &mut Tx<'_>, user: &UserName) -> R<bool> {
    Ok(tx
        .opt("SELECT 1 FROM users WHERE name = $1", &[&user.as_str()])?
        .is_some())
}

fn insert_device(tx: &mut Tx<'_>, user: &UserName, key: &DeviceKey) -> R<DeviceId> {
    let row = tx.one(
        "INSERT INTO devices (user_name, key) VALUES ($1, $2) RETURNING id",
        &[&user.as_str(), &key.0.as_slice()],
    )?;
    Ok(device_id(row.try_get(0)?)?)
}

/// Whether the device exists (false for an id out of range).
pub(super) fn device_exists(tx: &mut Tx<'_>, device: DeviceId) -> R<bool> {
    let Ok(id) = i64::try_from(device.0) else {
        return Ok(false);
    };
    Ok(tx
        .opt("SELECT 1 FROM devices WHERE id = $1", &[&id])?
        .is_some())
}

/// The device's row id, or UnknownDevice.
pub(super) fn existing_device(tx: &mut Tx<'_>, device: DeviceId) -> R<i64> {
    if device_exists(tx, device)? {
        Ok(i64::try_from(device.0).map_err(|_| StoreError::UnknownDevice)?)
    } else {
        Err(StoreError::UnknownDevice.into())
    }
}
