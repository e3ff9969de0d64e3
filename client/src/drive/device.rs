//! The drive commands over a [`crate::Device`]: `cove drive ls/put/get/mkdir/mv/rm/restore/
//! empty-trash/versions/share/unshare/shared/link/usage`. The methods below are the seam the
//! CLI and the sync engine (`sync`) build on.
#![allow(clippy::todo)] // contract stubs (issue 14); the helper filling them removes this

use cove_core::drive::{DriveOp, Tree};
use cove_wire::GroupId;

use super::DriveError;
use crate::device::Device;
use crate::transfer::BlobClient;

/// A drive as this device sees it.
#[derive(Clone, Debug)]
pub struct DriveHandle {
    /// Its MLS group.
    pub group: GroupId,
    /// The group's name (`drive/...`).
    pub group_name: String,
    /// Its tree, up to the last operation this device has (see [`Device::drive_refresh`]).
    pub tree: Tree,
}

impl Device {
    /// Opens a drive: `""` is this user's personal drive (created, with its `Init`, when the
    /// user has none yet), `OWNER:FOLDER` a shared folder by its owner and display name.
    /// Receives what is pending first. [`DriveError::NoSnapshot`] when this device joined
    /// after the tree began and no snapshot is here yet (a request for one is posted).
    pub async fn drive_open(&self, _drive: &str) -> Result<DriveHandle, DriveError> {
        todo!("shell")
    }

    /// Receives what is pending and applies the drive's new operations to `handle.tree`.
    pub async fn drive_refresh(&self, _handle: &mut DriveHandle) -> Result<(), DriveError> {
        todo!("shell")
    }

    /// Posts operations to a drive, in order, and waits until the relay stored them (they
    /// are then in this device's log, so a refresh applies them). Refused with
    /// [`DriveError::ReadOnly`] when this user may not write.
    pub async fn drive_post(&self, _group: GroupId, _ops: Vec<DriveOp>) -> Result<(), DriveError> {
        todo!("shell")
    }

    /// A blob client for drive contents: signed as this device, blobs kept until deleted.
    pub async fn drive_blobs(&self) -> Result<BlobClient, DriveError> {
        todo!("shell")
    }

    /// This device's name as drive versions and conflict copies show it.
    pub fn drive_device_name(&self) -> String {
        todo!("shell")
    }
}
