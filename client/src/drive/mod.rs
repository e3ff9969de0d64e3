//! Cove Drive's shell (issue 14): file contents over the relay's blob endpoint
//! ([`content`]), the drive commands over a [`crate::Device`] (`device`), public links
//! ([`link`]). The tree and the formats are cove-core's [`cove_core::drive`].

pub mod commands;
pub mod content;
mod device;

pub use device::DriveHandle;
pub mod link;
pub mod sync;

use std::path::PathBuf;

use cove_core::drive::TreeError;
use cove_core::drive::chunk::ChunkError;
use cove_core::drive::seal::SealError;

use crate::device::DeviceError;
use crate::transfer::TransferError;

/// How many chunk transfers run at once (MEGA runs six).
pub const PARALLEL_TRANSFERS: usize = 6;

/// Why a drive command failed.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The device (connection, relay refusal, MLS command).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A blob transfer.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// The tree refused the operation or the path.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A chunk or manifest did not verify (the relay or a member tampered with it).
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// A sealed blob (manifest, snapshot, link) did not verify.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A local file or folder.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A local file that exists and would be overwritten.
    #[error("{0} exists; not overwritten")]
    Exists(PathBuf),
    /// This user may only read this drive.
    #[error("this shared folder is read-only for you")]
    ReadOnly,
    /// No such drive or shared folder (`OWNER:FOLDER`), or more than one of that name.
    #[error("{0}")]
    NoDrive(String),
    /// The drive's tree is not available yet (this device joined after it started and no
    /// member has posted a snapshot yet).
    #[error("the tree of {0} is not here yet: another device of a member must be online")]
    NoSnapshot(String),
    /// A bad argument (a malformed path, expiry, user).
    #[error("{0}")]
    Invalid(String),
}
