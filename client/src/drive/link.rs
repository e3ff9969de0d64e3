//! Public links to a drive file or folder (`cove drive link`): the linked subtree as it is
//! now, with the keys of its files, sealed in a blob whose key goes after `#`; the share
//! page at `/s/<id>` lists it and decrypts files in the browser. See `PROTOCOL.md`,
//! "Drive links".
#![allow(clippy::todo)] // contract stubs (issue 14); the helper filling them removes this

use cove_core::drive::op::SealedBlob;
use cove_core::drive::{NodeId, Tree};

use super::DriveError;
use crate::transfer::BlobClient;

/// A link made.
#[derive(Clone, Debug)]
pub struct Created {
    /// `https://HOST:PORT/s/<blob>#drive.<key>` (the key never reaches the relay).
    pub url: String,
    /// The link's sealed blob (for the `Link` operation).
    pub sealed: SealedBlob,
}

/// Makes a link to `node` of `tree` (a file or a folder): builds the link document (every
/// file below with its size, secret and chunk list), seals and uploads it, kept until
/// `expires_in_secs` if given (else until revoked).
pub async fn create(
    _blobs: &BlobClient,
    _tree: &Tree,
    _node: &NodeId,
    _expires_in_secs: Option<u64>,
) -> Result<Created, DriveError> {
    todo!("drive-links")
}

/// The URL of a link made earlier (from its `Link` operation).
pub fn url(_blobs: &BlobClient, _sealed: &SealedBlob) -> String {
    todo!("drive-links")
}
