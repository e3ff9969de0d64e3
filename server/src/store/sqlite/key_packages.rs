//! KeyPackages (`key_packages`, `last_resort_key_packages`): uploads within the limits,
//! claims that hand each normal KeyPackage out once, and a device's stock.

use cove_wire::{ClaimedKeyPackage, DeviceId, Payload, UserName};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::directory::{existing_device, user_exists};
use super::rows::{corrupt, device_id, device_key};
use crate::store::rules;
use crate::store::{Stock, StoreError, revoked_keys};

/// Adds KeyPackages to a device's stock (see `RelayStore::upload_key_packages`).
pub(super) fn upload(
    tx: &Transaction<'_>,
    device: DeviceId,
    key_packages: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
) -> Result<Stock, StoreError> {
    let id = existing_device(tx, device)?;
    let before = stock(tx, id)?;
    rules::check_upload(
        usize::try_from(before.remaining).unwrap_or(usize::MAX),
        &key_packages,
        last_resort.as_ref(),
    )?;
    let mut insert =
        tx.prepare_cached("INSERT INTO key_packages (device, data) VALUES (?1, ?2)")?;
    for kp in &key_packages {
        insert.execute(params![id, kp])?;
    }
    if let Some(kp) = &last_resort {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO last_resort_key_packages (device, data) VALUES (?1, ?2)",
        )?
        .execute(params![id, kp])?;
    }
    stock(tx, id)
}

/// Claims one KeyPackage per device of `user` (see `RelayStore::claim_key_packages`).
pub(super) fn claim(
    tx: &Transaction<'_>,
    user: &UserName,
) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser);
    }
    // Devices revoked in the user's signed list are left out.
    let revoked = revoked_keys(&super::device_lists::read(tx, user)?);
    let rows: Vec<(i64, Vec<u8>)> = tx
        .prepare_cached("SELECT id, key FROM devices WHERE user = ?1 ORDER BY id")?
        .query_map(params![user.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, key) in rows {
        if revoked.contains(&device_key(&key)?) {
            continue;
        }
        let normal = tx
            .prepare_cached(
                "SELECT id, data FROM key_packages WHERE device = ?1 ORDER BY id LIMIT 1",
            )?
            .query_row(params![id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?;
        if let Some((kp_id, data)) = normal {
            tx.prepare_cached("DELETE FROM key_packages WHERE id = ?1")?
                .execute(params![kp_id])?;
            out.push(ClaimedKeyPackage {
                device: device_id(id)?,
                key_package: Payload(data),
                last_resort: false,
            });
            continue;
        }
        let fallback = tx
            .prepare_cached("SELECT data FROM last_resort_key_packages WHERE device = ?1")?
            .query_row(params![id], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        if let Some(data) = fallback {
            out.push(ClaimedKeyPackage {
                device: device_id(id)?,
                key_package: Payload(data),
                last_resort: true,
            });
        }
    }
    Ok(out)
}

/// A device's stock (see `RelayStore::key_package_stock`).
pub(super) fn device_stock(conn: &Connection, device: DeviceId) -> Result<Stock, StoreError> {
    let id = existing_device(conn, device)?;
    stock(conn, id)
}

/// The stock of the device with row id `device`.
fn stock(conn: &Connection, device: i64) -> Result<Stock, StoreError> {
    let remaining: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM key_packages WHERE device = ?1")?
        .query_row(params![device], |r| r.get(0))?;
    let has_last_resort = conn
        .prepare_cached("SELECT 1 FROM last_resort_key_packages WHERE device = ?1")?
        .query_row(params![device], |_| Ok(()))
        .optional()?
        .is_some();
    Ok(Stock {
        remaining: u32::try_from(remaining).map_err(|_| corrupt("key package count"))?,
        has_last_resort,
    })
}
