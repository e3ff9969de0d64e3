//! Encrypted blob store and share pages over HTTPS (owned by the attachments work).
//! The relay's HTTP router hands every request under `/v1/blobs` and `/s/` to
//! [`BlobService::handle`].
//!
//! Blobs are ciphertext produced by clients (`cove_core::attachment`); the relay never sees a
//! key. Endpoints (all documented in `PROTOCOL.md`, "Attachments and share links"):
//!
//! ```text
//! POST   /v1/blobs          signed, Upload-Length: N       -> 201, Location, Upload-Offset: 0
//! HEAD   /v1/blobs/<id>     signed (owner)                 -> Upload-Offset, Upload-Length
//! PATCH  /v1/blobs/<id>     signed (owner), Upload-Offset  -> 204, Upload-Offset (409 mismatch)
//! DELETE /v1/blobs/<id>     signed (owner)                 -> 204
//! GET    /v1/blobs/<id>     public, Range                  -> 200/206 ciphertext
//! GET    /v1/usage          signed (value 0)               -> 200 {"used":N,"quota":M}
//! GET    /s/<id>            public                         -> the share page (HTML, strict CSP)
//! ```
//!
//! A create or append may carry `Cove-Retention: keep | <secs>` (see [`Retention`]): read on
//! the append that completes the blob, it sets how long the blob is kept (Cove Drive keeps
//! its blobs until their owner deletes them); a malformed value is refused (`400`).
//!
//! Signed requests are refused (`401`) when a header is missing or malformed, the device is
//! unknown, the signature does not verify, the timestamp is more than 5 minutes off, or the
//! signature was already used (a replay); another user's blob answers `403`.
//!
//! Bodies move one chunk at a time ([`TRANSFER_CHUNK`]): a download starts reading the
//! next chunk (one ahead) only once the connection took the previous one, an upload writes a
//! chunk once it arrived. Each disk call runs on tokio's blocking pool for just that call (as
//! `tokio::fs` does); no thread ever waits on a client, so a client that stops reading or
//! sending holds no thread and at most one chunk of memory, freed when it goes. An upload
//! body that makes no progress for the relay's `http_body_idle_ms` is cut off (`408`,
//! connection closed; what arrived is kept); a stalled download is cut off by the
//! connection's write idle timeout (`crate::http`). A sweep thread deletes expired blobs:
//! incomplete uploads after [`BlobConfig::incomplete_retention`], complete blobs after
//! [`BlobConfig::retention`]; a blob with an append running is left to the next sweep.

pub(crate) mod auth;
mod body;
#[cfg(test)]
mod conformance;
pub mod s3;
mod share;
pub mod store;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cove_wire::{BlobId, UserName};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use rand::RngCore;
use tracing::{debug, info, warn};

use crate::config::BlobBackend;
use crate::store::RelayStore;
pub use s3::S3BlobStore;
pub use store::{
    BlobMeta, BlobStore, BlobStoreError, BlobWriter, FsBlobStore, Gone, TOMBSTONE_RETENTION_MS,
};

/// The path of the signed storage-usage request (`GET`, value 0).
pub const USAGE_PATH: &str = "/v1/usage";

/// The response body type of the blob service.
pub type BlobBody = BoxBody<Bytes, std::io::Error>;

/// Configuration of the blob store.
#[derive(Clone, Debug)]
pub struct BlobConfig {
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Per-user quota, in bytes (declared lengths of all the user's blobs, complete or not).
    pub quota_bytes_per_user: u64,
    /// How long a complete blob is kept after its upload finished. The relay cannot see
    /// which messages refer to a blob (they are end-to-end encrypted), so blobs live for a
    /// fixed retention, like Signal's attachment store.
    pub retention: Duration,
    /// How long an unfinished upload is kept (resumable during that time).
    pub incomplete_retention: Duration,
    /// How often expired blobs are deleted.
    pub sweep_interval: Duration,
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig {
            max_blob_bytes: 2 << 30,
            quota_bytes_per_user: 10 << 30,
            retention: Duration::from_secs(30 * 24 * 3600),
            incomplete_retention: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(600),
        }
    }
}

/// Why the blob service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The data directory could not be prepared.
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The blob store could not be opened.
    #[error("blob store: {0}")]
    Store(#[from] BlobStoreError),
    /// The S3-compatible store is unreachable or refuses the configured bucket or keys (a
    /// probe object could not be written, read back and deleted).
    #[error("S3 blob store at {endpoint}, bucket {bucket:?}: {source}")]
    S3 {
        /// The configured endpoint.
        endpoint: String,
        /// The configured bucket.
        bucket: String,
        /// What failed.
        source: BlobStoreError,
    },
}

/// Serves blob upload/download and share pages.
pub struct BlobService {
    inner: Arc<Inner>,
}

struct Inner {
    blobs: Arc<dyn BlobStore>,
    relay: Arc<dyn RelayStore>,
    config: BlobConfig,
    share: share::SharePage,
    /// Signatures already used (a second use is refused as a replay).
    replay: auth::ReplayGuard,
    /// Blob bytes received from clients (`/metrics`).
    bytes_up: AtomicU64,
    /// Blob bytes handed to clients' connections (`/metrics`).
    bytes_down: Arc<AtomicU64>,
}

/// Expiry recorded for a blob kept until its owner deletes it (`Cove-Retention: keep`):
/// the largest value every backend stores (SQLite integers are signed), never reached.
pub const KEEP_EXPIRES_MS: u64 = i64::MAX as u64;

/// Longest retention a client may ask for with `Cove-Retention: <secs>`: ten years of 365
/// days.
pub const MAX_RETENTION_SECS: u64 = 10 * 365 * 24 * 3600;

/// How long a complete blob is kept, from the request header `Cove-Retention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// No header: [`BlobConfig::retention`].
    Default,
    /// `keep`: until its owner deletes it (or the owner's account is deleted).
    Keep,
    /// `<secs>` (1..=[`MAX_RETENTION_SECS`]): this long after completion.
    Secs(u64),
}

impl Retention {
    /// Parses the header value; `None` when it is neither `keep` nor a number of seconds
    /// in range.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "keep" => Some(Retention::Keep),
            v if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=MAX_RETENTION_SECS).contains(s))
                .map(Retention::Secs),
            _ => None,
        }
    }

    /// The expiry of a blob completed at `now_ms` (`default` for [`Retention::Default`]).
    fn expires_ms(self, now_ms: u64, default: Duration) -> u64 {
        match self {
            Retention::Default => now_ms.saturating_add(millis(default)),
            Retention::Keep => KEEP_EXPIRES_MS,
            Retention::Secs(s) => now_ms.saturating_add(s.saturating_mul(1000)),
        }
    }
}

/// The request's `Cove-Retention` ([`Retention::Default`] without one); `None` when it is
/// malformed (answer [`bad_retention`]).
fn retention(req: &Request<Incoming>) -> Option<Retention> {
    match req.headers().get("cove-retention") {
        None => Some(Retention::Default),
        Some(v) => v.to_str().ok().and_then(Retention::parse),
    }
}

/// The `400` refusing a malformed `Cove-Retention`.
fn bad_retention() -> Response<BlobBody> {
    text(
        StatusCode::BAD_REQUEST,
        &format!(
            "invalid Cove-Retention header (expected keep or 1..={MAX_RETENTION_SECS} seconds)"
        ),
    )
}

/// Bytes read from disk per download step, and collected from the network before an
/// upload's next disk write: the memory one transfer holds in the service.
pub const TRANSFER_CHUNK: usize = 128 * 1024;

impl BlobService {
    /// Opens the blob store (`backend`: files under `data_dir/blobs`, or an S3-compatible
    /// bucket, checked with a probe object) and starts its sweep thread (which ends when the
    /// service is dropped). Blocks on disk or network.
    pub fn open(
        data_dir: &Path,
        backend: &BlobBackend,
        config: BlobConfig,
        store: Arc<dyn RelayStore>,
    ) -> Result<Self, BlobError> {
        let blobs: Arc<dyn BlobStore> = match backend {
            BlobBackend::Filesystem => Arc::new(FsBlobStore::open(&data_dir.join("blobs"))?),
            BlobBackend::S3(s3) => {
                Arc::new(S3BlobStore::open(s3).map_err(|source| BlobError::S3 {
                    endpoint: s3.endpoint.clone(),
                    bucket: s3.bucket.clone(),
                    source,
                })?)
            }
        };
        let service = Self::with_store(blobs, config, store);
        service.sweep_now();
        let weak = Arc::downgrade(&service.inner);
        let interval = service.inner.config.sweep_interval;
        std::thread::Builder::new()
            .name("cove-blob-sweep".into())
            .spawn(move || sweep_loop(weak, interval))?;
        Ok(service)
    }

    /// A service over any blob-store backend (no sweep thread: call [`Self::sweep_now`]).
    pub fn with_store(
        blobs: Arc<dyn BlobStore>,
        config: BlobConfig,
        relay: Arc<dyn RelayStore>,
    ) -> Self {
        BlobService {
            inner: Arc::new(Inner {
                blobs,
                relay,
                config,
                share: share::SharePage::new(),
                replay: auth::ReplayGuard::default(),
                bytes_up: AtomicU64::new(0),
                bytes_down: Arc::new(AtomicU64::new(0)),
            }),
        }
    }

    /// Deletes expired blobs now; returns how many.
    pub fn sweep_now(&self) -> usize {
        sweep(&self.inner)
    }

    /// Deletes every blob `owner` uploaded (see [`BlobStore::delete_owner`]); returns how
    /// many. Blocks on disk.
    pub fn delete_owner(&self, owner: &UserName) -> Result<usize, BlobStoreError> {
        self.inner.blobs.delete_owner(owner)
    }

    /// Blob bytes received from and sent to clients so far: `(up, down)`.
    pub(crate) fn transferred(&self) -> (u64, u64) {
        (
            self.inner.bytes_up.load(Ordering::Relaxed),
            self.inner.bytes_down.load(Ordering::Relaxed),
        )
    }

    /// The blob-store backend.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.inner.blobs
    }

    /// Handles one HTTP request under `/v1/blobs`, `/s/` or at [`USAGE_PATH`]. An upload body that brings no
    /// byte for `body_idle` is cut off.
    pub async fn handle(&self, req: Request<Incoming>, body_idle: Duration) -> Response<BlobBody> {
        let inner = &self.inner;
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if path == USAGE_PATH {
            return match method {
                Method::GET => inner.usage(req).await,
                _ => method_not_allowed("GET"),
            };
        }
        if path == "/v1/blobs" || path == "/v1/blobs/" {
            return match method {
                Method::POST => inner.create(req).await,
                _ => method_not_allowed("POST"),
            };
        }
        if let Some(id) = path.strip_prefix("/v1/blobs/") {
            let Ok(id) = BlobId::from_hex(id) else {
                return text(StatusCode::NOT_FOUND, "no such blob");
            };
            return match method {
                Method::HEAD => inner.head(req, id).await,
                Method::PATCH => inner.append(req, id, body_idle).await,
                Method::GET => inner.download(req, id).await,
                Method::DELETE => inner.delete(req, id).await,
                _ => method_not_allowed("GET, HEAD, PATCH, DELETE"),
            };
        }
        if let Some(id) = path.strip_prefix("/s/") {
            if method != Method::GET && method != Method::HEAD {
                return method_not_allowed("GET, HEAD");
            }
            let page = match BlobId::from_hex(id) {
                Ok(id) => match inner.meta(id).await {
                    Ok(Some(m)) if m.complete() => share::Page::Share,
                    _ => {
                        let blobs = Arc::clone(&inner.blobs);
                        match blocking(move || blobs.gone(&id)).await {
                            Ok(Some(Gone::Expired)) => share::Page::Expired,
                            Ok(Some(Gone::Revoked)) => share::Page::Revoked,
                            _ => share::Page::Unknown,
                        }
                    }
                },
                Err(_) => share::Page::Unknown,
            };
            return inner.share.response(page);
        }
        text(StatusCode::NOT_FOUND, "not found")
    }
}

impl Inner {
    async fn meta(&self, id: BlobId) -> Result<Option<BlobMeta>, BlobStoreError> {
        let blobs = Arc::clone(&self.blobs);
        blocking(move || blobs.meta(&id)).await
    }

    /// Checks the request signature; returns the user.
    async fn authenticate(
        &self,
        req: &Request<Incoming>,
        value: u64,
    ) -> Result<UserName, Response<BlobBody>> {
        let signed = auth::SignedHeaders::parse(req.headers())
            .map_err(|m| text(StatusCode::UNAUTHORIZED, m))?;
        let relay = Arc::clone(&self.relay);
        let device = signed.device;
        let found = blocking(move || {
            relay
                .device(device)
                .map_err(|e| BlobStoreError::Io(std::io::Error::other(e.to_string())))
        })
        .await;
        let (user, key) = match found {
            Ok(Some(found)) => found,
            Ok(None) => return Err(text(StatusCode::UNAUTHORIZED, "unknown device")),
            Err(e) => {
                warn!(error = %e, "device lookup failed");
                return Err(text(StatusCode::SERVICE_UNAVAILABLE, "try again later"));
            }
        };
        let now = now_ms();
        signed
            .verify(req.method().as_str(), req.uri().path(), value, &key, now)
            .map_err(|m| text(StatusCode::UNAUTHORIZED, m))?;
        match self
            .replay
            .admit(signed.signature(), signed.timestamp_ms(), now)
        {
            Ok(()) => Ok(user),
            Err(auth::Replay::Seen) => {
                debug!(device = %device, "replayed blob request signature");
                Err(text(
                    StatusCode::UNAUTHORIZED,
                    "replayed request signature (sign every request afresh)",
                ))
            }
            Err(auth::Replay::Full) => {
                warn!("blob request replay cache full");
                Err(text(StatusCode::SERVICE_UNAVAILABLE, "try again later"))
            }
        }
    }

    async fn owned(
        &self,
        req: &Request<Incoming>,
        id: BlobId,
        value: u64,
    ) -> Result<BlobMeta, Response<BlobBody>> {
        let user = self.authenticate(req, value).await?;
        match self.meta(id).await {
            Ok(Some(meta)) if meta.owner == user => Ok(meta),
            Ok(Some(_)) => Err(text(
                StatusCode::FORBIDDEN,
                "this blob belongs to another user",
            )),
            Ok(None) => Err(text(StatusCode::NOT_FOUND, "no such blob")),
            Err(e) => Err(internal(&e)),
        }
    }

    async fn create(&self, req: Request<Incoming>) -> Response<BlobBody> {
        let Some(length) = header_u64(&req, "upload-length") else {
            return text(
                StatusCode::BAD_REQUEST,
                "missing or invalid Upload-Length header",
            );
        };
        if retention(&req).is_none() {
            return bad_retention();
        }
        let user = match self.authenticate(&req, length).await {
            Ok(u) => u,
            Err(r) => return r,
        };
        let max = self.config.max_blob_bytes;
        if length > max {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "blob too large: {length} bytes exceeds the relay's maximum of {max} bytes"
                ),
            );
        }
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = BlobId(id);
        let now = now_ms();
        let expires = now.saturating_add(millis(self.config.incomplete_retention));
        let quota = self.config.quota_bytes_per_user;
        let blobs = Arc::clone(&self.blobs);
        let owner = user.clone();
        match blocking(move || blobs.create(id, &owner, length, quota, now, expires)).await {
            Ok(_) => {
                info!(blob = %id, user = %user, length, "blob upload created");
                let mut r = text(StatusCode::CREATED, &id.to_hex());
                set(&mut r, header::LOCATION, &format!("/v1/blobs/{id}"));
                set(&mut r, "upload-offset", "0");
                set(&mut r, "upload-length", &length.to_string());
                r
            }
            Err(e @ BlobStoreError::QuotaExceeded { .. }) => {
                text(StatusCode::INSUFFICIENT_STORAGE, &e.to_string())
            }
            Err(e) => internal(&e),
        }
    }

    /// `GET /v1/usage`: the signing user's bytes charged (declared lengths of all its
    /// blobs, complete or not) and quota, as JSON.
    async fn usage(&self, req: Request<Incoming>) -> Response<BlobBody> {
        let user = match self.authenticate(&req, 0).await {
            Ok(u) => u,
            Err(r) => return r,
        };
        let blobs = Arc::clone(&self.blobs);
        let used = match blocking(move || blobs.usage(&user)).await {
            Ok(n) => n,
            Err(e) => return internal(&e),
        };
        let quota = self.config.quota_bytes_per_user;
        let mut r = Response::new(body::full(format!("{{\"used\":{used},\"quota\":{quota}}}")));
        set(&mut r, header::CONTENT_TYPE, "application/json");
        set(&mut r, header::CACHE_CONTROL, "no-store");
        r
    }

    async fn head(&self, req: Request<Incoming>, id: BlobId) -> Response<BlobBody> {
        match self.owned(&req, id, 0).await {
            Ok(meta) => offsets(StatusCode::OK, &meta),
            Err(r) => r,
        }
    }

    async fn delete(&self, req: Request<Incoming>, id: BlobId) -> Response<BlobBody> {
        if let Err(r) = self.owned(&req, id, 0).await {
            return r;
        }
        let blobs = Arc::clone(&self.blobs);
        match blocking(move || blobs.delete(&id)).await {
            Ok(()) => empty(StatusCode::NO_CONTENT),
            Err(BlobStoreError::Busy) => text(
                StatusCode::CONFLICT,
                "an upload to this blob is in progress",
            ),
            Err(e) => internal(&e),
        }
    }

    async fn append(
        &self,
        req: Request<Incoming>,
        id: BlobId,
        body_idle: Duration,
    ) -> Response<BlobBody> {
        let Some(offset) = header_u64(&req, "upload-offset") else {
            return text(
                StatusCode::BAD_REQUEST,
                "missing or invalid Upload-Offset header",
            );
        };
        let Some(retention) = retention(&req) else {
            return bad_retention();
        };
        let meta = match self.owned(&req, id, offset).await {
            Ok(m) => m,
            Err(r) => return r,
        };
        if let Some(len) = header_u64(&req, header::CONTENT_LENGTH.as_str())
            && offset.checked_add(len).is_none_or(|end| end > meta.length)
        {
            let mut r = text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("upload past the declared length of {} bytes", meta.length),
            );
            set(&mut r, "upload-offset", &meta.offset.to_string());
            return r;
        }
        let blobs = Arc::clone(&self.blobs);
        let writer = match blocking(move || blobs.writer(&id, offset)).await {
            Ok(w) => w,
            Err(BlobStoreError::OffsetMismatch { stored }) => {
                let mut r = text(
                    StatusCode::CONFLICT,
                    &format!("offset mismatch: {stored} bytes stored, continue from there"),
                );
                set(&mut r, "upload-offset", &stored.to_string());
                return r;
            }
            Err(BlobStoreError::Busy) => {
                return text(
                    StatusCode::CONFLICT,
                    "another upload to this blob is in progress",
                );
            }
            Err(BlobStoreError::NotFound) => return text(StatusCode::NOT_FOUND, "no such blob"),
            Err(e) => return internal(&e),
        };

        // Network -> one chunk -> disk, each write on the blocking pool for just that write.
        let mut writer = WriterSlot(Some(writer));
        let mut body = req.into_body();
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut written: Result<(), BlobStoreError> = Ok(());
        let mut ended = Ended::Complete;
        loop {
            let frame = match tokio::time::timeout(body_idle, body.frame()).await {
                Err(_) => {
                    debug!(blob = %id, idle_ms = millis(body_idle), "upload body idle: cut off");
                    ended = Ended::Idle;
                    None
                }
                Ok(None) => None,
                Ok(Some(Err(e))) => {
                    debug!(blob = %id, error = %e, "upload body ended early");
                    ended = Ended::Cut;
                    None
                }
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Some(data),
                    Err(_) => continue, // trailers
                },
            };
            let last = frame.is_none();
            if let Some(data) = frame {
                self.bytes_up
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                pending_bytes += data.len();
                pending.push(data);
            }
            if pending_bytes >= TRANSFER_CHUNK || (last && !pending.is_empty()) {
                let frames = std::mem::take(&mut pending);
                pending_bytes = 0;
                let Some(w) = writer.0.take() else { break };
                // Frame by frame, as they came: one past the declared end is refused whole.
                let (w, result) = match tokio::task::spawn_blocking(move || {
                    let mut w = w;
                    let result = frames.iter().try_for_each(|data| w.write(data));
                    (w, result)
                })
                .await
                {
                    Ok(done) => done,
                    Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
                };
                writer.0 = Some(w);
                if let Err(e) = result {
                    written = Err(e); // past the end or a disk error: stop reading
                    break;
                }
            }
            if last {
                break;
            }
        }
        let Some(writer) = writer.0.take() else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        // Keep whatever arrived, even from a cut or overlong request: the client resumes
        // from the stored offset.
        let expires = retention.expires_ms(now_ms(), self.config.retention);
        let meta = match blocking(move || writer.commit(expires)).await {
            Ok(m) => m,
            Err(BlobStoreError::NotFound) => return text(StatusCode::NOT_FOUND, "no such blob"),
            Err(e) => return internal(&e),
        };
        if meta.complete() {
            info!(blob = %id, length = meta.length, "blob upload complete");
        }
        match written {
            Ok(()) if ended == Ended::Idle => {
                let mut r = offsets(StatusCode::REQUEST_TIMEOUT, &meta);
                set(&mut r, header::CONNECTION, "close");
                r
            }
            Ok(()) if ended == Ended::Cut => offsets(StatusCode::BAD_REQUEST, &meta),
            Ok(()) => offsets(StatusCode::NO_CONTENT, &meta),
            Err(e @ BlobStoreError::PastEnd { .. }) => {
                let mut r = text(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string());
                set(&mut r, "upload-offset", &meta.offset.to_string());
                r
            }
            Err(e) => internal(&e),
        }
    }

    async fn download(&self, req: Request<Incoming>, id: BlobId) -> Response<BlobBody> {
        let meta = match self.meta(id).await {
            Ok(Some(m)) if m.complete() => m,
            Ok(_) => {
                return text(
                    StatusCode::NOT_FOUND,
                    "no such blob (or its upload is not finished)",
                );
            }
            Err(e) => return internal(&e),
        };
        let total = meta.length;
        let range = match req
            .headers()
            .get(header::RANGE)
            .map(|v| parse_range(v, total))
        {
            None => None,
            Some(Some(r)) => Some(r),
            Some(None) => {
                let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                set(&mut r, header::CONTENT_RANGE, &format!("bytes */{total}"));
                return r;
            }
        };
        let (start, end) = range.unwrap_or((0, total)); // end exclusive
        let len = end - start;
        let status = if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let body = if req.method() == Method::HEAD || len == 0 {
            body::empty()
        } else {
            let blobs = Arc::clone(&self.blobs);
            let reader = match blocking(move || blobs.reader(&id, start)).await {
                Ok(r) => r,
                Err(e) => return internal(&e),
            };
            body::ReaderBody::new(reader, len, TRANSFER_CHUNK, Arc::clone(&self.bytes_down)).boxed()
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        set(&mut r, header::CONTENT_TYPE, "application/octet-stream");
        set(&mut r, header::CONTENT_LENGTH, &len.to_string());
        set(&mut r, header::ACCEPT_RANGES, "bytes");
        set(&mut r, header::CACHE_CONTROL, "no-store");
        set(&mut r, header::CONTENT_DISPOSITION, "attachment");
        set(&mut r, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        if range.is_some() {
            set(
                &mut r,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{}/{total}", end - 1),
            );
        }
        r
    }
}

/// How an upload body ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// All of it arrived.
    Complete,
    /// The client cut it (connection error).
    Cut,
    /// It brought nothing for the idle timeout.
    Idle,
}

/// The blob writer of an append, between its disk calls. Dropped with one (the handler was
/// cancelled: the connection went), it is dropped on the blocking pool, since dropping it
/// records what reached the disk (a sync and a database update).
struct WriterSlot(Option<Box<dyn BlobWriter>>);

impl Drop for WriterSlot {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || drop(writer))),
                Err(_) => drop(writer),
            }
        }
    }
}

fn sweep(inner: &Inner) -> usize {
    // A blob in its owner's history-backup index stays while it is indexed (kept too when
    // the index cannot be read: a later sweep decides).
    let relay = &inner.relay;
    let keep = |meta: &BlobMeta| {
        relay
            .backup_holds_blob(&meta.owner, &meta.id)
            .unwrap_or(true)
    };
    match inner.blobs.sweep_keeping(now_ms(), &keep) {
        Ok(0) => 0,
        Ok(n) => {
            info!(deleted = n, "expired blobs deleted");
            n
        }
        Err(e) => {
            warn!(error = %e, "blob sweep failed");
            0
        }
    }
}

fn sweep_loop(weak: Weak<Inner>, interval: Duration) {
    let tick = Duration::from_secs(1).min(interval);
    let mut waited = Duration::ZERO;
    loop {
        std::thread::sleep(tick);
        waited += tick;
        let Some(inner) = weak.upgrade() else { return };
        if waited >= interval {
            waited = Duration::ZERO;
            sweep(&inner);
        }
    }
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range into `[start, end)`.
/// `None` if unsatisfiable or malformed.
fn parse_range(v: &HeaderValue, total: u64) -> Option<(u64, u64)> {
    let spec = v.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (total.saturating_sub(n), total)
        }
        (a, "") => (a.parse().ok()?, total),
        (a, b) => {
            let b: u64 = b.parse().ok()?;
            (a.parse().ok()?, b.saturating_add(1).min(total))
        }
    };
    (start < end || (start == 0 && total == 0)).then_some((start, end))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobStoreError> + Send + 'static,
) -> Result<T, BlobStoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| {
        Err(BlobStoreError::Io(std::io::Error::other(
            "blob task panicked",
        )))
    })
}

fn header_u64(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn set<K: header::IntoHeaderName>(r: &mut Response<BlobBody>, name: K, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn text(status: StatusCode, message: &str) -> Response<BlobBody> {
    let mut r = Response::new(body::full(format!("{message}\n")));
    *r.status_mut() = status;
    set(&mut r, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    set(&mut r, header::CACHE_CONTROL, "no-store");
    r
}

fn empty(status: StatusCode) -> Response<BlobBody> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = status;
    r
}

fn offsets(status: StatusCode, meta: &BlobMeta) -> Response<BlobBody> {
    let mut r = empty(status);
    set(&mut r, "upload-offset", &meta.offset.to_string());
    set(&mut r, "upload-length", &meta.length.to_string());
    set(&mut r, header::CACHE_CONTROL, "no-store");
    r
}

fn method_not_allowed(allow: &str) -> Response<BlobBody> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    set(&mut r, header::ALLOW, allow);
    r
}

fn internal(e: &BlobStoreError) -> Response<BlobBody> {
    warn!(error = %e, "blob store failure");
    text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{BackupCaps, MemoryStore};

    /// An expired blob that its owner's history-backup index holds survives the sweep while
    /// indexed (another user's index naming it does not count) and goes at the first sweep
    /// after the index is deleted; an expired blob no index holds goes at once.
    #[test]
    fn the_sweep_keeps_blobs_while_their_owners_backup_index_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(dir.path()).unwrap());
        let relay = Arc::new(MemoryStore::new());
        let (alice, bob) = (
            UserName::new("alice").unwrap(),
            UserName::new("bob").unwrap(),
        );
        relay
            .register_user(&alice, &cove_wire::DeviceKey([1; 32]))
            .unwrap();
        relay
            .register_user(&bob, &cove_wire::DeviceKey([2; 32]))
            .unwrap();
        let (indexed, foreign, loose) = (BlobId([1; 16]), BlobId([2; 16]), BlobId([3; 16]));
        for id in [indexed, foreign, loose] {
            // Expired long ago (expiry 10 ms after the Unix epoch).
            blobs.create(id, &alice, 0, 1 << 20, 0, 10).unwrap();
        }
        let segment = |blob| cove_wire::NewBackupSegment {
            blob,
            size: 0,
            entry: cove_wire::Payload(vec![1]),
        };
        relay
            .append_backup_segment(&alice, segment(indexed), BackupCaps::default())
            .unwrap();
        relay
            .append_backup_segment(&bob, segment(foreign), BackupCaps::default())
            .unwrap();
        let relay_dyn: Arc<dyn RelayStore> = relay.clone();
        let service = BlobService::with_store(Arc::clone(&blobs), BlobConfig::default(), relay_dyn);
        assert_eq!(service.sweep_now(), 2);
        assert!(blobs.meta(&indexed).unwrap().is_some());
        assert!(blobs.meta(&foreign).unwrap().is_none());
        assert!(blobs.meta(&loose).unwrap().is_none());
        assert_eq!(relay.delete_backup_index(&alice).unwrap(), vec![indexed]);
        assert_eq!(service.sweep_now(), 1);
        assert!(blobs.meta(&indexed).unwrap().is_none());
    }
}
