//! Encrypted blob store and share pages over HTTPS (owned by the attachments work).
//! The relay's HTTP router hands every request under `/v1/blobs` and `/s/` to
//! [`BlobService::handle`].

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

use crate::store::RelayStore;

/// The response body type of the blob service.
pub type BlobBody = BoxBody<Bytes, std::io::Error>;

/// Configuration of the blob store.
#[derive(Clone, Debug)]
pub struct BlobConfig {
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Per-user quota, in bytes.
    pub quota_bytes_per_user: u64,
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig { max_blob_bytes: 2 << 30, quota_bytes_per_user: 10 << 30 }
    }
}

/// Why the blob service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The data directory could not be prepared.
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves blob upload/download and share pages.
pub struct BlobService {
    _store: Arc<dyn RelayStore>,
}

impl BlobService {
    /// Opens the blob store under `data_dir/blobs`.
    pub fn open(
        _data_dir: &Path,
        _config: BlobConfig,
        store: Arc<dyn RelayStore>,
    ) -> Result<Self, BlobError> {
        Ok(BlobService { _store: store })
    }

    /// Handles one HTTP request under `/v1/blobs` or `/s/`.
    pub async fn handle(
        &self,
        _req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<BlobBody> {
        use http_body_util::{BodyExt, Full};
        let body = Full::new(Bytes::from_static(b"not found\n"))
            .map_err(|never| match never {})
            .boxed();
        let mut resp = http::Response::new(body);
        *resp.status_mut() = http::StatusCode::NOT_FOUND;
        resp
    }
}
