//! Password accounts (`accounts`): one row per user with the OPAQUE record, the KSF
//! version, the two wrapped bundles and the recovery public key (the primary key makes
//! account creation happen once across nodes); deleting a user removes every row of it.

use cove_wire::{DeviceId, UserName};

use super::directory::user_exists;
use super::rows::{R, Tx, corrupt, device_id};
use crate::store::{Account, StoreError};

/// Stores `user`'s account.
pub(super) fn create(tx: &mut Tx<'_>, user: &UserName, account: &Account) -> R<()> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser.into());
    }
    let created = tx.exec(
        "INSERT INTO accounts (user_name, record, ksf_version, password_bundle, \
         recovery_bundle, recovery_key) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (user_name) DO NOTHING",
        &[
            &user.as_str(),
            &account.record,
            &i64::from(account.ksf_version),
            &account.password_bundle,
            &account.recovery_bundle,
            &account.recovery_key.as_slice(),
        ],
    )?;
    if created == 0 {
        return Err(StoreError::Invalid("the user already has an account").into());
    }
    Ok(())
}

/// `user`'s account, if any.
pub(super) fn read(tx: &mut Tx<'_>, user: &UserName) -> R<Option<Account>> {
    let Some(r) = tx.opt(
        "SELECT record, ksf_version, password_bundle, recovery_bundle, recovery_key \
         FROM accounts WHERE user_name = $1",
        &[&user.as_str()],
    )?
    else {
        return Ok(None);
    };
    let ksf: i64 = r.try_get(1)?;
    let key: Vec<u8> = r.try_get(4)?;
    Ok(Some(Account {
        record: r.try_get(0)?,
        ksf_version: u8::try_from(ksf).map_err(|_| corrupt("account KSF version"))?,
        password_bundle: r.try_get(2)?,
        recovery_bundle: r.try_get(3)?,
        recovery_key: key
            .try_into()
            .map_err(|_| corrupt("account recovery key"))?,
    }))
}

/// Replaces `user`'s record, KSF version and password bundle.
pub(super) fn replace_password(
    tx: &mut Tx<'_>,
    user: &UserName,
    record: &[u8],
    ksf_version: u8,
    password_bundle: &[u8],
) -> R<()> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser.into());
    }
    let changed = tx.exec(
        "UPDATE accounts SET record = $2, ksf_version = $3, password_bundle = $4 \
         WHERE user_name = $1",
        &[
            &user.as_str(),
            &record,
            &i64::from(ksf_version),
            &password_bundle,
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::Invalid("the user has no account").into());
    }
    Ok(())
}

/// Deletes `user` and every row of it; returns its devices, ordered by id.
pub(super) fn delete_user(tx: &mut Tx<'_>, user: &UserName) -> R<Vec<DeviceId>> {
    if tx
        .opt(
            "SELECT 1 FROM users WHERE name = $1 FOR UPDATE",
            &[&user.as_str()],
        )?
        .is_none()
    {
        return Err(StoreError::UnknownUser.into());
    }
    let rows = tx.rows(
        "SELECT id FROM devices WHERE user_name = $1 ORDER BY id",
        &[&user.as_str()],
    )?;
    let mut devices = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.try_get(0)?;
        tx.exec(
            "INSERT INTO group_left (group_id, device) \
             SELECT group_id, device FROM members WHERE device = $1 ON CONFLICT DO NOTHING",
            &[&id],
        )?;
        tx.exec("DELETE FROM members WHERE device = $1", &[&id])?;
        tx.exec("DELETE FROM departures WHERE device = $1", &[&id])?;
        tx.exec("DELETE FROM key_packages WHERE device = $1", &[&id])?;
        tx.exec(
            "DELETE FROM last_resort_key_packages WHERE device = $1",
            &[&id],
        )?;
        tx.exec("DELETE FROM inbox WHERE device = $1", &[&id])?;
        devices.push(device_id(id)?);
    }
    tx.exec(
        "DELETE FROM inbox_payloads p WHERE NOT EXISTS \
         (SELECT 1 FROM inbox i WHERE i.payload = p.id)",
        &[],
    )?;
    let name = user.as_str();
    tx.exec("DELETE FROM devices WHERE user_name = $1", &[&name])?;
    tx.exec("DELETE FROM device_lists WHERE user_name = $1", &[&name])?;
    tx.exec("DELETE FROM accounts WHERE user_name = $1", &[&name])?;
    tx.exec("DELETE FROM backup_segments WHERE user_name = $1", &[&name])?;
    tx.exec("DELETE FROM users WHERE name = $1", &[&name])?;
    Ok(devices)
}
