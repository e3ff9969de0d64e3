//! Conversions between SQLite column values and relay types, shared by every table module:
//! checked integer conversions, ids, device-id lists, and the [`StoreError`] a corrupt row
//! or a failed SQLite call becomes. Uses nothing else of the backend.

use crate::store::StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        tracing::error!(error = %e, "relay store: SQLite failed");
        StoreError::Backend(e.to_string())
    }
}

pub(super) use crate::store::columns::{
    clamp_i64, corrupt, device_id, device_key, group_id, id_list_from_blob, id_list_to_blob,
    to_i64, to_u64,
};
