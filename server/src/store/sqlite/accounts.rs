//! Password accounts (`accounts`): one row per user with the OPAQUE record, the KSF
//! version, the two wrapped bundles and the recovery public key, written once.

use cove_wire::UserName;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::directory::user_exists;
use super::rows::corrupt;
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
