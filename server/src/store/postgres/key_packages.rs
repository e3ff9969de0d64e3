//! KeyPackages (`key_packages`, `last_resort_key_packages`): uploads within the limits,
//! claims that hand each normal KeyPackage out once across every node (the oldest row is
//! deleted with `FOR UPDATE SKIP LOCKED ... DELETE ... RETURNING`, in a serialisable
//! transaction), and a device's stock.

use cove_wire::{ClaimedKeyPackage, DeviceId, Payload, UserName};

use super::directory::{existing_device, user_exists};
use super::rows::{R, Tx, corrupt, device_id, device_key};
use crate::store::rules;
use crate::store::{Stock, StoreError, revoked_keys};

/// Adds KeyPackages to a device's stock (see `RelayStore::upload_key_packages`).
pub(super) fn upload(
    tx: &mut Tx<'_>,
    device: DeviceId,
    key_packages: &[Vec<u8>],
    last_resort: Option<&Vec<u8>>,
) -> R<Stock> {
    let id = existing_device(tx, device)?;
    // Uploads for one device take turns (the stock cap).
    tx.exec("SELECT 1 FROM devices WHERE id = $1 FOR UPDATE", &[&id])?;
    let before = stock(tx, id)?;
    rules::check_upload(
        usize::try_from(before.remaining).unwrap_or(usize::MAX),
        key_packages,
        last_resort,
    )?;
    for kp in key_packages {
        tx.exec(
            "INSERT INTO key_packages (device, data) VALUES ($1, $2)",
            &[&id, kp],
        )?;
    }
    if let Some(kp) = last_resort {
        tx.exec(
            "INSERT INTO last_resort_key_packages (device, data) VALUES ($1, $2) \
             ON CONFLICT (device) DO UPDATE SET data = EXCLUDED.data",
            &[&id, kp],
        )?;
    }
    stock(tx, id)
}

/// Claims one KeyPackage per device of `user` (see `RelayStore::claim_key_packages`).
pub(super) fn claim(tx: &mut Tx<'_>, user: &UserName) -> R<Vec<ClaimedKeyPackage>> {
    if !user_exists(tx, user)? {
        return Err(StoreError::UnknownUser.into());
    }
    let revoked = revoked_keys(&super::device_lists::read(tx, user)?);
    let rows = tx.rows(
        "SELECT id, key FROM devices WHERE user_name = $1 ORDER BY id",
        &[&user.as_str()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.try_get(0)?;
        if revoked.contains(&device_key(r.try_get::<_, &[u8]>(1)?)?) {
            continue;
        }
        // The oldest KeyPackage no concurrent claim holds, taken out in one statement.
        let normal = tx.opt(
            "DELETE FROM key_packages WHERE id = (
                 SELECT id FROM key_packages WHERE device = $1 ORDER BY id LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             RETURNING data",
            &[&id],
        )?;
        if let Some(row) = normal {
            out.push(ClaimedKeyPackage {
                device: device_id(id)?,
                key_package: Payload(row.try_get(0)?),
                last_resort: false,
            });
            continue;
        }
        let fallback = tx.opt(
            "SELECT data FROM last_resort_key_packages WHERE device = $1",
            &[&id],
        )?;
        if let Some(row) = fallback {
            out.push(ClaimedKeyPackage {
                device: device_id(id)?,
                key_package: Payload(row.try_get(0)?),
                last_resort: true,
            });
        }
    }
    Ok(out)
}

/// A device's stock (see `RelayStore::key_package_stock`).
pub(super) fn device_stock(tx: &mut Tx<'_>, device: DeviceId) -> R<Stock> {
    let id = existing_device(tx, device)?;
    stock(tx, id)
}

/// The stock of the device with row id `device`.
fn stock(tx: &mut Tx<'_>, device: i64) -> R<Stock> {
    let remaining: i64 = tx
        .one(
            "SELECT COUNT(*) FROM key_packages WHERE device = $1",
            &[&device],
        )?
        .try_get(0)?;
    let has_last_resort = tx
        .opt(
            "SELECT 1 FROM last_resort_key_packages WHERE device = $1",
            &[&device],
        )?
        .is_some();
    Ok(Stock {
        remaining: u32::try_from(remaining).map_err(|_| corrupt("key package count"))?,
        has_last_resort,
    })
}
