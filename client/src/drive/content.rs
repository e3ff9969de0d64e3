//! File contents of Cove Drive over the relay's blob endpoint: chunked, sealed, uploaded
//! [`super::PARALLEL_TRANSFERS`] at a time, only the chunks a previous version lacks;
//! downloads verified and written atomically (temp file + rename), resumable.
#![allow(clippy::todo)] // contract stubs (issue 14); the helper filling them removes this

use std::path::Path;

use cove_core::drive::op::SealedBlob;
use cove_core::drive::{FileVersion, Manifest, ManifestRef};

use super::DriveError;
use crate::transfer::BlobClient;

/// What an upload did.
#[derive(Clone, Debug)]
pub struct Uploaded {
    /// The new version (to publish in a `PutVersion`).
    pub version: FileVersion,
    /// Ciphertext bytes sent to the relay (new chunks and the manifest blob).
    pub bytes_sent: u64,
    /// Chunks uploaded.
    pub chunks_sent: usize,
    /// Chunks reused from `previous`.
    pub chunks_reused: usize,
}

/// Encrypts and uploads the file at `path` as a new version. With `previous` (the file's
/// latest version), the file's secret is kept and chunks whose id the previous version has
/// are not uploaded again. `device` is this device's name. With `journal`, a directory
/// private to this upload's caller, uploaded chunks are remembered there so that an upload
/// cut by a crash resumes without sending them again. Blobs are kept until deleted.
pub async fn upload_file(
    _blobs: &BlobClient,
    _path: &Path,
    _previous: Option<&FileVersion>,
    _device: &str,
    _journal: Option<&Path>,
) -> Result<Uploaded, DriveError> {
    todo!("drive-chunks")
}

/// Downloads `version` to `target` (a file path; refused with [`DriveError::Exists`] when
/// it exists and `overwrite` is false): chunks fetched in parallel and verified, written to
/// a temporary file beside `target` that is renamed over it only once the whole file's
/// SHA-256 matches. A temporary file left by a cut download is resumed (its verified
/// chunks are not fetched again). Returns the ciphertext bytes fetched.
pub async fn download_file(
    _blobs: &BlobClient,
    _version: &FileVersion,
    _target: &Path,
    _overwrite: bool,
) -> Result<u64, DriveError> {
    todo!("drive-chunks")
}

/// The chunk list of a version (fetched and opened when it is in a blob).
pub async fn manifest(
    _blobs: &BlobClient,
    _manifest: &ManifestRef,
) -> Result<Manifest, DriveError> {
    todo!("drive-chunks")
}

/// Seals `plaintext` under a new one-time key with `aad` and uploads it (kept).
pub async fn put_sealed(
    _blobs: &BlobClient,
    _aad: &[u8],
    _plaintext: &[u8],
) -> Result<SealedBlob, DriveError> {
    todo!("drive-chunks")
}

/// Fetches and opens a sealed blob (at most `limit` bytes).
pub async fn get_sealed(
    _blobs: &BlobClient,
    _sealed: &SealedBlob,
    _aad: &[u8],
    _limit: u64,
) -> Result<Vec<u8>, DriveError> {
    todo!("drive-chunks")
}

/// Every blob a version refers to (its chunks and its manifest blob), for deleting a purged
/// file's contents.
pub async fn blobs_of(
    _blobs: &BlobClient,
    _version: &FileVersion,
) -> Result<Vec<cove_wire::BlobId>, DriveError> {
    todo!("drive-chunks")
}
