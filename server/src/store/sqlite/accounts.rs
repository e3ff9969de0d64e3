//! Password accounts (`accounts`): one row per user with the OPAQUE record, the KSF
//! version, the two wrapped bundles and the recovery public key; a password change or reset
//! replaces the record and the password bundle; deleting a user removes every row of it.

use std::collections::BTreeSet;

use cove_wire::{DeviceId, GroupId, UserName};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::directory::user_exists;
use super::rows::{corrupt, device_id, group_id};
use crate::store::{Account, StoreError};

/// Stores `user`'s account (see `RelayStore::create_account`).
pub(super) fn create(
    tx: &Transaction<'_>,
    user: &UserName,
    account: &Account,
) -> Result<(), StoreError> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser);
    }
    let exists = tx
        .prepare_cached("SELECT 1 FROM accounts WHERE user = ?1")?
        .query_row(params![user.as_str()], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        return Err(StoreError::Invalid("the user already has an account"));
    }
    tx.prepare_cached(
        "INSERT INTO accounts (user, record, ksf_version, password_bundle, recovery_bundle, \
         recovery_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        user.as_str(),
        account.record,
        i64::from(account.ksf_version),
        account.password_bundle,
        account.recovery_bundle,
        account.recovery_key.as_slice(),
    ])?;
    Ok(())
}

/// `user`'s account, if any (see `RelayStore::account`).
pub(super) fn read(conn: &Connection, user: &UserName) -> Result<Option<Account>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT record, ksf_version, password_bundle, recovery_bundle, recovery_key \
             FROM accounts WHERE user = ?1",
        )?
        .query_row(params![user.as_str()], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })
        .optional()?;
    let Some((record, ksf, password_bundle, recovery_bundle, key)) = row else {
        return Ok(None);
    };
    let ksf_version = u8::try_from(ksf).map_err(|_| corrupt("account KSF version"))?;
    let recovery_key: [u8; 32] = key
        .try_into()
        .map_err(|_| corrupt("account recovery key"))?;
    Ok(Some(Account {
        record,
        ksf_version,
        password_bundle,
        recovery_bundle,
        recovery_key,
    }))
}

/// Replaces `user`'s record, KSF version and password bundle (see
/// `RelayStore::replace_password`).
pub(super) fn replace_password(
    tx: &Transaction<'_>,
    user: &UserName,
    record: &[u8],
    ksf_version: u8,
    password_bundle: &[u8],
) -> Result<(), StoreError> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser);
    }
    let changed = tx
        .prepare_cached(
            "UPDATE accounts SET record = ?2, ksf_version = ?3, password_bundle = ?4 \
             WHERE user = ?1",
        )?
        .execute(params![
            user.as_str(),
            record,
            i64::from(ksf_version),
            password_bundle
        ])?;
    if changed == 0 {
        return Err(StoreError::Invalid("the user has no account"));
    }
    Ok(())
}

/// Deletes `user` and every row of it (see `RelayStore::delete_user`): its devices, ordered
/// by id, and the groups whose membership changed (to reload into the cache).
pub(super) fn delete_user(
    tx: &Transaction<'_>,
    user: &UserName,
) -> Result<(Vec<DeviceId>, BTreeSet<GroupId>), StoreError> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser);
    }
    let ids: Vec<i64> = tx
        .prepare_cached("SELECT id FROM devices WHERE user = ?1 ORDER BY id")?
        .query_map(params![user.as_str()], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut groups = BTreeSet::new();
    let mut devices = Vec::with_capacity(ids.len());
    for id in ids {
        let member_of: Vec<Vec<u8>> = tx
            .prepare_cached("SELECT group_id FROM members WHERE device = ?1")?
            .query_map(params![id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for g in member_of {
            groups.insert(group_id(&g)?);
        }
        tx.prepare_cached(
            "INSERT OR IGNORE INTO group_left (group_id, device) \
             SELECT group_id, device FROM members WHERE device = ?1",
        )?
        .execute(params![id])?;
        for sql in [
            "DELETE FROM members WHERE device = ?1",
            "DELETE FROM departures WHERE device = ?1",
            "DELETE FROM key_packages WHERE device = ?1",
            "DELETE FROM last_resort_key_packages WHERE device = ?1",
            "DELETE FROM inbox WHERE device = ?1",
        ] {
            tx.prepare_cached(sql)?.execute(params![id])?;
        }
        devices.push(device_id(id)?);
    }
    tx.prepare_cached("DELETE FROM inbox_payloads WHERE id NOT IN (SELECT payload FROM inbox)")?
        .execute([])?;
    for sql in [
        "DELETE FROM devices WHERE user = ?1",
        "DELETE FROM device_lists WHERE user = ?1",
        "DELETE FROM accounts WHERE user = ?1",
        "DELETE FROM backup_segments WHERE user = ?1",
        "DELETE FROM users WHERE name = ?1",
    ] {
        tx.prepare_cached(sql)?.execute(params![user.as_str()])?;
    }
    Ok((devices, groups))
}
