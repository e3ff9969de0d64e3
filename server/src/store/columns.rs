//! Column conversions both SQL backends use (SQLite and PostgreSQL store the same values
//! the same way: integers as `i64`, ids and keys as bytes, device lists as packed `u64`s).

use cove_wire::{DeviceId, DeviceKey, GroupId};

use super::StoreError;

pub(crate) fn corrupt(what: &str) -> StoreError {
    tracing::error!(what, "relay store: corrupt row");
    StoreError::Backend(format!("corrupt {what} in the database"))
}

pub(crate) fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt("negative number"))
}

pub(crate) fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid("number out of range"))
}

pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn device_id(v: i64) -> Result<DeviceId, StoreError> {
    Ok(DeviceId(to_u64(v)?))
}

pub(crate) fn device_key(bytes: &[u8]) -> Result<DeviceKey, StoreError> {
    Ok(DeviceKey(
        bytes.try_into().map_err(|_| corrupt("device key"))?,
    ))
}

pub(crate) fn group_id(bytes: &[u8]) -> Result<GroupId, StoreError> {
    Ok(GroupId(bytes.try_into().map_err(|_| corrupt("group id"))?))
}

pub(crate) fn id_list_to_blob(ids: &[DeviceId]) -> Vec<u8> {
    ids.iter().flat_map(|d| d.0.to_be_bytes()).collect()
}

pub(crate) fn id_list_from_blob(blob: Option<Vec<u8>>) -> Result<Vec<DeviceId>, StoreError> {
    let blob = blob.unwrap_or_default();
    let chunks = blob.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return Err(corrupt("device id list"));
    }
    chunks
        .map(|c| {
            let bytes: [u8; 8] = c.try_into().map_err(|_| corrupt("device id list"))?;
            Ok(DeviceId(u64::from_be_bytes(bytes)))
        })
        .collect()
}
