//! [`S3BlobStore`]: blobs in an S3-compatible object store that several relay nodes share.
//!
//! Every piece of state lives in the bucket, none on the node, so any node serves any blob
//! and an upload interrupted on one node resumes on another. Objects, under the configured
//! prefix (`P/`):
//!
//! ```text
//! P/blobs/meta/<id>              JSON: owner, declared length, stored length, created,
//!                                expiry, the multipart upload id and the ETags of its parts
//! P/blobs/data/<id>              the blob, once complete (a multipart upload's target)
//! P/blobs/tail/<id>/<stored>     bytes past the last full part, up to the stored length
//! P/blobs/owner/<user>/<id>-<n>  quota index: one empty object per blob of declared length n
//! P/blobs/lease/blob/<id>        the writer's lease (one writer per blob, across nodes)
//! P/blobs/lease/owner/<user>     held while a blob of <user> is created (quota check)
//! ```
//!
//! **Resumable uploads on multipart uploads.** An append collects bytes in memory up to one
//! part ([`PART_SIZE`], 5 MiB, S3's minimum for all but the last part); each full part is
//! uploaded at once as the next part of the blob's multipart upload (created with the first
//! full part; its id is recorded in the metadata before any part is sent). At commit the
//! bytes that do not fill a part yet go to a tail object named by the new stored length,
//! then the metadata records the stored length and the parts' ETags, then the previous tail
//! is deleted: a node that dies at any point leaves the metadata naming a consistent state
//! (a part uploaded but not recorded is uploaded again under the same number; an unrecorded
//! tail is an orphan the blob's deletion removes). The next append, on any node, starts by
//! reading the tail back. When the declared length is reached, the tail becomes the last
//! part and the upload is completed (a blob smaller than one part is a single PUT). Memory:
//! one part per running append.
//!
//! **One writer per blob** is a lease object created with a conditional PUT
//! (`If-None-Match: *`), holding a random token and an expiry ([`LEASE_TTL`]); the writer
//! renews it (`If-Match` on its ETag) while it writes, and a lease past its expiry (its node
//! died) is taken over with `If-Match` on the stale lease's ETag. Metadata updates are
//! compare-and-swap too (`If-Match`), and a writer whose base changed under it (another
//! writer after its lease was taken over) fails with `Busy` instead of overwriting. Leases
//! compare wall clocks across nodes: they must agree to well within [`LEASE_TTL`].
//!
//! **Quota**: a blob's creation holds its owner's lease while it sums the owner's quota index
//! (a listing; the lengths are in the names) and writes the new entry, so concurrent
//! creations on several nodes cannot both pass the check. A creation that dies between the
//! index entry and the metadata leaves an entry that counts against the quota (never for it).
//!
//! The calls of [`BlobStore`] are blocking: they run the S3 requests on the store's own small
//! tokio runtime and wait for them, so they work from the service's blocking pool, from the
//! sweep thread and from tests alike.

use std::future::Future;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cove_wire::{BlobId, UserName};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::store::{BlobMeta, BlobStore, BlobStoreError, BlobWriter};
use crate::config::S3Config;

/// Size of every multipart part but the last: S3's minimum.
pub const PART_SIZE: usize = 5 << 20;

/// How long a writer's lease lasts without renewal (a node that died holding it blocks
/// appends to that blob for at most this long).
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// How long a creation waits for its owner's lease (held by a creation on another node).
const OWNER_LEASE_WAIT: Duration = Duration::from_secs(5);

/// Largest metadata or lease object read back.
const MAX_SMALL_OBJECT: u64 = 1 << 20;

/// Compare-and-swap attempts on a metadata object before giving up (`Busy`).
const CAS_ATTEMPTS: usize = 16;

/// Blobs in an S3-compatible bucket (see the module documentation).
pub struct S3BlobStore {
    ctx: Arc<Ctx>,
    /// The runtime the S3 requests run on (shut down without waiting on drop, which may
    /// happen inside another runtime).
    runtime: Option<tokio::runtime::Runtime>,
}

/// What the store's calls, writers and readers share.
struct Ctx {
    s3: AmazonS3,
    root: Vec<String>,
    handle: tokio::runtime::Handle,
    /// [`LEASE_TTL`] (shorter in tests).
    lease_ttl: Duration,
}

/// The metadata object of a blob.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    owner: String,
    length: u64,
    stored: u64,
    created_ms: u64,
    expires_ms: u64,
    /// The multipart upload of an incomplete blob, once its first full part was sent.
    upload: Option<String>,
    /// ETags of the parts sent and recorded, in order (each [`PART_SIZE`] bytes).
    parts: Vec<String>,
}

impl Meta {
    fn to_blob_meta(&self, id: BlobId) -> Result<BlobMeta, BlobStoreError> {
        Ok(BlobMeta {
            id,
            owner: UserName::new(self.owner.clone()).map_err(|_| corrupt())?,
            length: self.length,
            offset: self.stored,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
        })
    }

    /// Bytes held in the tail object (past the recorded parts); none once complete.
    fn tail_len(&self) -> Result<u64, BlobStoreError> {
        if self.upload.is_none() && !self.parts.is_empty() {
            return Err(corrupt());
        }
        if self.stored == self.length && self.upload.is_none() {
            return Ok(0);
        }
        let in_parts = (self.parts.len() as u64)
            .checked_mul(PART_SIZE as u64)
            .ok_or_else(corrupt)?;
        let tail = self.stored.checked_sub(in_parts).ok_or_else(corrupt)?;
        if tail >= PART_SIZE as u64 || self.stored > self.length {
            return Err(corrupt());
        }
        Ok(tail)
    }
}

/// A writer's lease object.
#[derive(Serialize, Deserialize)]
struct LeaseBody {
    token: String,
    expires_ms: u64,
}

/// A lease held: its object and the ETag of our last write of it.
struct Lease {
    path: Path,
    token: String,
    version: UpdateVersion,
    /// When to renew it (wall clock ms).
    renew_at_ms: u64,
}

fn corrupt() -> BlobStoreError {
    BlobStoreError::Io(io::Error::other(
        "corrupt blob metadata in the object store",
    ))
}

fn s3_err(e: object_store::Error) -> BlobStoreError {
    match e {
        object_store::Error::NotFound { .. } => BlobStoreError::NotFound,
        e => BlobStoreError::ObjectStore(e),
    }
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

fn random_token() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Is `endpoint`'s host a loopback address (or `localhost`)?
fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl S3BlobStore {
    /// Connects to the bucket and checks it is usable (writes, reads back and deletes a probe
    /// object): a wrong endpoint, bucket or key fails here, not at the first upload.
    pub fn open(config: &S3Config) -> Result<Self, BlobStoreError> {
        Self::open_with_lease(config, LEASE_TTL)
    }

    /// [`Self::open`] with writer leases lasting `lease_ttl` (tests take over a dead
    /// node's lease with a zero one).
    pub(crate) fn open_with_lease(
        config: &S3Config,
        lease_ttl: Duration,
    ) -> Result<Self, BlobStoreError> {
        // reqwest is built without a default TLS provider: https endpoints need one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = config.endpoint.trim_end_matches('/');
        let http = endpoint.starts_with("http://");
        if http && !is_loopback(endpoint) {
            warn!(
                endpoint,
                "S3 endpoint over plain http (blobs are ciphertext, but metadata and \
                 request signatures travel in the clear)"
            );
        }
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        let s3 = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false)
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key)
            .with_secret_access_key(&config.secret_key)
            .with_retry(retry)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60)),
            )
            .build()
            .map_err(BlobStoreError::ObjectStore)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cove-s3")
            .enable_all()
            .build()?;
        let root = config
            .prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .chain(std::iter::once("blobs".to_owned()))
            .collect();
        let store = S3BlobStore {
            ctx: Arc::new(Ctx {
                s3,
                root,
                handle: runtime.handle().clone(),
                lease_ttl,
            }),
            runtime: Some(runtime),
        };
        store.probe()?;
        Ok(store)
    }

    fn probe(&self) -> Result<(), BlobStoreError> {
        let ctx = Arc::clone(&self.ctx);
        let path = ctx.key(&["probe", &random_token()]);
        let body = Bytes::from_static(b"cove relay probe");
        self.ctx.run(async move {
            ctx.s3
                .put(&path, PutPayload::from(body.clone()))
                .await
                .map_err(BlobStoreError::ObjectStore)?;
            let back = ctx
                .s3
                .get(&path)
                .await
                .map_err(BlobStoreError::ObjectStore)?
                .bytes()
                .await
                .map_err(BlobStoreError::ObjectStore)?;
            ctx.s3
                .delete(&path)
                .await
                .map_err(BlobStoreError::ObjectStore)?;
            if back != body {
                return Err(BlobStoreError::Io(io::Error::other(
                    "the object store returned other bytes than were written",
                )));
            }
            Ok(())
        })?
    }
}

impl Drop for S3BlobStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Ctx {
    fn key(&self, parts: &[&str]) -> Path {
        Path::from_iter(
            self.root
                .iter()
                .map(String::as_str)
                .chain(parts.iter().copied()),
        )
    }
    fn meta_key(&self, id: &BlobId) -> Path {
        self.key(&["meta", &id.to_hex()])
    }
    fn data_key(&self, id: &BlobId) -> Path {
        self.key(&["data", &id.to_hex()])
    }
    fn tail_dir(&self, id: &BlobId) -> Path {
        self.key(&["tail", &id.to_hex()])
    }
    fn tail_key(&self, id: &BlobId, stored: u64) -> Path {
        self.key(&["tail", &id.to_hex(), &stored.to_string()])
    }
    fn owner_dir(&self, owner: &str) -> Path {
        self.key(&["owner", owner])
    }
    fn owner_key(&self, owner: &str, id: &BlobId, length: u64) -> Path {
        self.key(&["owner", owner, &format!("{}-{length}", id.to_hex())])
    }

    /// Runs `fut` on the store's runtime and waits for it (from any thread).
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, BlobStoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| BlobStoreError::Io(io::Error::other("the S3 client stopped")))
    }

    /// A blob's metadata and the version to update it with.
    async fn get_meta(&self, id: &BlobId) -> Result<Option<(Meta, UpdateVersion)>, BlobStoreError> {
        let got = match self.s3.get(&self.meta_key(id)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(BlobStoreError::ObjectStore(e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        // A metadata object is small (10,000 part ETags at most); a huge one is not ours.
        if got.meta.size > MAX_SMALL_OBJECT {
            return Err(corrupt());
        }
        let body = got.bytes().await.map_err(s3_err)?;
        let meta: Meta = serde_json::from_slice(&body).map_err(|_| corrupt())?;
        Ok(Some((meta, version)))
    }

    async fn put_meta(
        &self,
        id: &BlobId,
        meta: &Meta,
        mode: PutMode,
    ) -> Result<UpdateVersion, object_store::Error> {
        let body = serde_json::to_vec(meta).map_err(|e| object_store::Error::Generic {
            store: "cove",
            source: Box::new(e),
        })?;
        let put = self
            .s3
            .put_opts(
                &self.meta_key(id),
                PutPayload::from(body),
                PutOptions::from(mode),
            )
            .await?;
        Ok(UpdateVersion::from(put))
    }

    /// Applies `change` to a blob's metadata with compare-and-swap, re-reading it when
    /// another node changed it first. `NotFound` if the blob is gone.
    async fn update_meta(
        &self,
        id: &BlobId,
        mut change: impl FnMut(&mut Meta) -> Result<(), BlobStoreError>,
    ) -> Result<Meta, BlobStoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut meta, version) = self.get_meta(id).await?.ok_or(BlobStoreError::NotFound)?;
            change(&mut meta)?;
            match self.put_meta(id, &meta, PutMode::Update(version)).await {
                Ok(_) => return Ok(meta),
                Err(object_store::Error::Precondition { .. }) => continue,
                // s3s-fs (and S3) answer a conditional PUT on a deleted object this way.
                Err(object_store::Error::NotFound { .. }) => return Err(BlobStoreError::NotFound),
                Err(e) => return Err(BlobStoreError::ObjectStore(e)),
            }
        }
        Err(BlobStoreError::Busy)
    }

    /// Takes the lease at `path`: creates it, or takes over one past its expiry. `Busy` if
    /// a live lease is held.
    async fn acquire(&self, path: Path) -> Result<Lease, BlobStoreError> {
        let token = random_token();
        for _ in 0..CAS_ATTEMPTS {
            let now = now_ms();
            let body = serde_json::to_vec(&LeaseBody {
                token: token.clone(),
                expires_ms: now.saturating_add(millis(self.lease_ttl)),
            })
            .map_err(|_| corrupt())?;
            let lease = |put: object_store::PutResult| Lease {
                path: path.clone(),
                token: token.clone(),
                version: UpdateVersion::from(put),
                renew_at_ms: now.saturating_add(millis(self.lease_ttl) / 3),
            };
            match self
                .s3
                .put_opts(
                    &path,
                    PutPayload::from(body.clone()),
                    PutOptions::from(PutMode::Create),
                )
                .await
            {
                Ok(put) => return Ok(lease(put)),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => {}
                Err(e) => return Err(BlobStoreError::ObjectStore(e)),
            }
            // Held: take it over if it expired.
            let got = match self.s3.get(&path).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => continue, // just released
                Err(e) => return Err(BlobStoreError::ObjectStore(e)),
            };
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            if got.meta.size > MAX_SMALL_OBJECT {
                return Err(corrupt());
            }
            let held: Option<LeaseBody> = got
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match held {
                // Our own create, retried by the client after its answer was lost.
                Some(h) if h.token == token => {
                    return Ok(Lease {
                        path: path.clone(),
                        token: token.clone(),
                        version,
                        renew_at_ms: now,
                    });
                }
                Some(h) if h.expires_ms > now => return Err(BlobStoreError::Busy),
                _ => {}
            }
            debug!(lease = %path, "taking over an expired lease");
            match self
                .s3
                .put_opts(
                    &path,
                    PutPayload::from(body),
                    PutOptions::from(PutMode::Update(version)),
                )
                .await
            {
                Ok(put) => return Ok(lease(put)),
                Err(
                    object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
                ) => continue,
                Err(e) => return Err(BlobStoreError::ObjectStore(e)),
            }
        }
        Err(BlobStoreError::Busy)
    }

    /// Extends a lease we hold; `Busy` if it was taken over.
    async fn renew(&self, lease: &mut Lease) -> Result<(), BlobStoreError> {
        let now = now_ms();
        let body = serde_json::to_vec(&LeaseBody {
            token: lease.token.clone(),
            expires_ms: now.saturating_add(millis(self.lease_ttl)),
        })
        .map_err(|_| corrupt())?;
        match self
            .s3
            .put_opts(
                &lease.path,
                PutPayload::from(body),
                PutOptions::from(PutMode::Update(lease.version.clone())),
            )
            .await
        {
            Ok(put) => {
                lease.version = UpdateVersion::from(put);
                lease.renew_at_ms = now.saturating_add(millis(self.lease_ttl) / 3);
                Ok(())
            }
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Err(BlobStoreError::Busy),
            Err(e) => Err(BlobStoreError::ObjectStore(e)),
        }
    }

    /// Gives a lease up if it is still ours (best effort: an expired lease may have been
    /// taken over, which this leaves alone).
    async fn release(&self, lease: Lease) {
        let ours = match self.s3.get(&lease.path).await {
            Ok(got) if got.meta.size <= MAX_SMALL_OBJECT => got
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<LeaseBody>(&b).ok())
                .is_some_and(|h| h.token == lease.token),
            _ => false,
        };
        if ours && let Err(e) = self.s3.delete(&lease.path).await {
            warn!(lease = %lease.path, error = %e, "cannot release a blob lease");
        }
    }

    /// Every object under `dir`.
    async fn list(&self, dir: &Path) -> Result<Vec<Path>, BlobStoreError> {
        let mut out = Vec::new();
        let mut listing = self.s3.list(Some(dir));
        while let Some(item) = listing.next().await {
            out.push(item.map_err(BlobStoreError::ObjectStore)?.location);
        }
        Ok(out)
    }

    async fn delete_quiet(&self, path: &Path) -> Result<(), BlobStoreError> {
        match self.s3.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BlobStoreError::ObjectStore(e)),
        }
    }

    /// Deletes a blob and everything it has in the bucket, holding its writer lease (`Busy`
    /// while an append runs).
    async fn delete_blob(self: Arc<Self>, id: BlobId) -> Result<(), BlobStoreError> {
        let lease = self
            .acquire(self.key(&["lease", "blob", &id.to_hex()]))
            .await?;
        let result = self.delete_locked(&id).await;
        self.release(lease).await;
        result
    }

    async fn delete_locked(&self, id: &BlobId) -> Result<(), BlobStoreError> {
        let Some((meta, _)) = self.get_meta(id).await? else {
            return Ok(());
        };
        if let Some(upload) = &meta.upload {
            let _ = self.s3.abort_multipart(&self.data_key(id), upload).await;
        }
        self.delete_quiet(&self.data_key(id)).await?;
        for tail in self.list(&self.tail_dir(id)).await? {
            self.delete_quiet(&tail).await?;
        }
        self.delete_quiet(&self.owner_key(&meta.owner, id, meta.length))
            .await?;
        self.delete_quiet(&self.meta_key(id)).await
    }

    /// The ids of every blob with metadata.
    async fn all_ids(&self) -> Result<Vec<BlobId>, BlobStoreError> {
        let dir = self.key(&["meta"]);
        Ok(self
            .list(&dir)
            .await?
            .iter()
            .filter_map(|p| p.filename().and_then(|f| BlobId::from_hex(f).ok()))
            .collect())
    }

    /// `(id, declared length)` of each of `owner`'s quota index entries.
    async fn owned(&self, owner: &str) -> Result<Vec<(BlobId, u64)>, BlobStoreError> {
        Ok(self
            .list(&self.owner_dir(owner))
            .await?
            .iter()
            .filter_map(|p| {
                let (id, len) = p.filename()?.split_once('-')?;
                Some((BlobId::from_hex(id).ok()?, len.parse().ok()?))
            })
            .collect())
    }
}

impl BlobStore for S3BlobStore {
    fn create(
        &self,
        id: BlobId,
        owner: &UserName,
        length: u64,
        quota: u64,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<BlobMeta, BlobStoreError> {
        let ctx = Arc::clone(&self.ctx);
        let owner_name = owner.as_str().to_owned();
        self.ctx.run(async move {
            let lease_path = ctx.key(&["lease", "owner", &owner_name]);
            let deadline = std::time::Instant::now() + OWNER_LEASE_WAIT;
            let lease = loop {
                match ctx.acquire(lease_path.clone()).await {
                    Err(BlobStoreError::Busy) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => break other?,
                }
            };
            let result = async {
                let used = ctx
                    .owned(&owner_name)
                    .await?
                    .iter()
                    .fold(0u64, |sum, (_, len)| sum.saturating_add(*len));
                if used.checked_add(length).is_none_or(|total| total > quota) {
                    return Err(BlobStoreError::QuotaExceeded {
                        used,
                        quota,
                        needed: length,
                    });
                }
                // The index entry first: a creation cut short counts against the quota.
                ctx.s3
                    .put(&ctx.owner_key(&owner_name, &id, length), PutPayload::new())
                    .await
                    .map_err(BlobStoreError::ObjectStore)?;
                if length == 0 {
                    ctx.s3
                        .put(&ctx.data_key(&id), PutPayload::new())
                        .await
                        .map_err(BlobStoreError::ObjectStore)?;
                }
                let meta = Meta {
                    owner: owner_name.clone(),
                    length,
                    stored: 0,
                    created_ms: now_ms,
                    expires_ms,
                    upload: None,
                    parts: Vec::new(),
                };
                ctx.put_meta(&id, &meta, PutMode::Create)
                    .await
                    .map_err(|e| match e {
                        object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. } => BlobStoreError::Io(
                            io::Error::new(io::ErrorKind::AlreadyExists, "blob id in use"),
                        ),
                        e => BlobStoreError::ObjectStore(e),
                    })?;
                meta.to_blob_meta(id)
            }
            .await;
            ctx.release(lease).await;
            result
        })?
    }

    fn meta(&self, id: &BlobId) -> Result<Option<BlobMeta>, BlobStoreError> {
        let ctx = Arc::clone(&self.ctx);
        let id = *id;
        self.ctx.run(async move {
            ctx.get_meta(&id)
                .await?
                .map(|(m, _)| m.to_blob_meta(id))
                .transpose()
        })?
    }

    fn writer(&self, id: &BlobId, offset: u64) -> Result<Box<dyn BlobWriter>, BlobStoreError> {
        let ctx = Arc::clone(&self.ctx);
        let id = *id;
        let state = self.ctx.run(async move {
            let (meta, _) = ctx.get_meta(&id).await?.ok_or(BlobStoreError::NotFound)?;
            if meta.stored != offset {
                return Err(BlobStoreError::OffsetMismatch {
                    stored: meta.stored,
                });
            }
            let lease = ctx
                .acquire(ctx.key(&["lease", "blob", &id.to_hex()]))
                .await?;
            // Read again under the lease: a writer on another node may have committed.
            let loaded = async {
                let (meta, _) = ctx.get_meta(&id).await?.ok_or(BlobStoreError::NotFound)?;
                if meta.stored != offset {
                    return Err(BlobStoreError::OffsetMismatch {
                        stored: meta.stored,
                    });
                }
                let tail_len = meta.tail_len()?;
                let mut buf = Vec::new();
                if tail_len > 0 {
                    let got = ctx
                        .s3
                        .get(&ctx.tail_key(&id, meta.stored))
                        .await
                        .map_err(s3_err)?;
                    if got.meta.size != tail_len {
                        return Err(corrupt());
                    }
                    let bytes = got.bytes().await.map_err(s3_err)?;
                    if bytes.len() as u64 != tail_len {
                        return Err(corrupt());
                    }
                    buf.extend_from_slice(&bytes);
                }
                Ok((meta, buf))
            }
            .await;
            match loaded {
                Ok((meta, buf)) => Ok(WriterState {
                    id,
                    base_stored: meta.stored,
                    pos: meta.stored,
                    base_tail: (!buf.is_empty()).then(|| ctx.tail_key(&id, meta.stored)),
                    meta,
                    buf,
                    lease,
                }),
                Err(e) => {
                    ctx.release(lease).await;
                    Err(e)
                }
            }
        })??;
        Ok(Box::new(S3Writer {
            ctx: Arc::clone(&self.ctx),
            state: Some(state),
        }))
    }

    fn reader(&self, id: &BlobId, start: u64) -> Result<Box<dyn Read + Send>, BlobStoreError> {
        let ctx = Arc::clone(&self.ctx);
        let id = *id;
        let stream = self.ctx.run(async move {
            let (meta, _) = ctx.get_meta(&id).await?.ok_or(BlobStoreError::NotFound)?;
            // Only a complete blob has its object (the parts are assembled at completion).
            if meta.stored != meta.length {
                return Err(BlobStoreError::NotFound);
            }
            if start >= meta.length {
                return Ok(None);
            }
            let range: Range<u64> = start..meta.length;
            let got = ctx
                .s3
                .get_opts(
                    &ctx.data_key(&id),
                    GetOptions {
                        range: Some(GetRange::Bounded(range)),
                        ..GetOptions::default()
                    },
                )
                .await
                .map_err(s3_err)?;
            Ok(Some(got.into_stream()))
        })??;
        Ok(Box::new(S3Reader {
            ctx: Arc::clone(&self.ctx),
            stream,
            pending: Bytes::new(),
        }))
    }

    fn usage(&self, owner: &UserName) -> Result<u64, BlobStoreError> {
        let ctx = Arc::clone(&self.ctx);
        let owner = owner.as_str().to_owned();
        self.ctx.run(async move {
            Ok(ctx
                .owned(&owner)
                .await?
                .iter()
                .fold(0u64, |sum, (_, len)| sum.saturating_add(*len)))
        })?
    }

    fn delete(&self, id: &BlobId) -> Result<(), BlobStoreError> {
        let ctx = Arc::clone(&self.ctx);
        self.ctx.run(ctx.delete_blob(*id))?
    }

    fn sweep_keeping(
        &self,
        now_ms: u64,
        keep: &dyn Fn(&BlobMeta) -> bool,
    ) -> Result<usize, BlobStoreError> {
        let ctx = Arc::clone(&self.ctx);
        let ids = self.ctx.run(async move { ctx.all_ids().await })??;
        let mut n = 0;
        for id in ids {
            let Some(meta) = self.meta(&id)? else {
                continue;
            };
            if meta.expires_ms > now_ms || keep(&meta) {
                continue;
            }
            match self.delete(&id) {
                Ok(()) => n += 1,
                // An append is running: a later sweep gets it if it is still expired.
                Err(BlobStoreError::Busy) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn delete_owner(&self, owner: &UserName) -> Result<usize, BlobStoreError> {
        let ctx = Arc::clone(&self.ctx);
        let name = owner.as_str().to_owned();
        let owned = self.ctx.run(async move { ctx.owned(&name).await })??;
        let mut n = 0;
        for (id, length) in owned {
            match self.delete(&id) {
                Ok(()) => {
                    // Also an entry whose creation died before its metadata was written.
                    let ctx = Arc::clone(&self.ctx);
                    let owner = owner.as_str().to_owned();
                    self.ctx.run(async move {
                        ctx.delete_quiet(&ctx.owner_key(&owner, &id, length)).await
                    })??;
                    n += 1;
                }
                Err(BlobStoreError::Busy) => {
                    let ctx = Arc::clone(&self.ctx);
                    let expired = self.ctx.run(async move {
                        ctx.update_meta(&id, |m| {
                            m.expires_ms = 0;
                            Ok(())
                        })
                        .await
                    })?;
                    match expired {
                        Ok(_) | Err(BlobStoreError::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// An append's state between calls.
struct WriterState {
    id: BlobId,
    /// The stored length this append started from.
    base_stored: u64,
    /// The metadata as this writer last wrote or read it (parts sent so far included).
    meta: Meta,
    /// Bytes past the last part sent (less than one part).
    buf: Vec<u8>,
    /// The stored length plus what this append wrote.
    pos: u64,
    /// The tail object this append started from, if any (deleted once superseded).
    base_tail: Option<Path>,
    lease: Lease,
}

struct S3Writer {
    ctx: Arc<Ctx>,
    /// `None` once committed.
    state: Option<WriterState>,
}

impl S3Writer {
    /// Runs `step` on the writer's state on the store's runtime.
    fn step<F, Fut>(&mut self, step: F) -> Result<(), BlobStoreError>
    where
        F: FnOnce(Arc<Ctx>, WriterState) -> Fut,
        Fut: Future<Output = (WriterState, Result<(), BlobStoreError>)> + Send + 'static,
    {
        let state = self.state.take().ok_or(BlobStoreError::NotFound)?;
        let (back, result) = self.ctx.run(step(Arc::clone(&self.ctx), state))?;
        self.state = Some(back);
        result
    }
}

impl BlobWriter for S3Writer {
    fn write(&mut self, mut data: &[u8]) -> Result<(), BlobStoreError> {
        let state = self.state.as_ref().ok_or(BlobStoreError::NotFound)?;
        if data.len() as u64 > state.meta.length.saturating_sub(state.pos) {
            return Err(BlobStoreError::PastEnd {
                length: state.meta.length,
            });
        }
        while !data.is_empty() {
            let state = self.state.as_mut().ok_or(BlobStoreError::NotFound)?;
            let take = (PART_SIZE - state.buf.len()).min(data.len());
            state.buf.extend_from_slice(&data[..take]);
            state.pos += take as u64;
            data = &data[take..];
            if state.buf.len() == PART_SIZE {
                self.step(|ctx, mut s| async move {
                    let r = ctx.send_part(&mut s).await;
                    (s, r)
                })?;
            }
        }
        let due = self
            .state
            .as_ref()
            .is_some_and(|s| now_ms() >= s.lease.renew_at_ms);
        if due {
            self.step(|ctx, mut s| async move {
                let r = ctx.renew(&mut s.lease).await;
                (s, r)
            })?;
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>, complete_expires_ms: u64) -> Result<BlobMeta, BlobStoreError> {
        let state = self.state.take().ok_or(BlobStoreError::NotFound)?;
        let ctx = Arc::clone(&self.ctx);
        self.ctx
            .run(async move { ctx.persist(state, complete_expires_ms).await })?
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Not committed (the request was cancelled): record what was written, as the
        // filesystem store does, keeping the blob's expiry; in the background.
        if let Some(state) = self.state.take() {
            let ctx = Arc::clone(&self.ctx);
            let expires = state.meta.expires_ms;
            self.ctx.handle.spawn(async move {
                if let Err(e) = ctx.persist(state, expires).await {
                    debug!(error = %e, "recording an interrupted blob append failed");
                }
            });
        }
    }
}

impl Ctx {
    /// Sends the full buffer as the next part (creating the multipart upload first).
    async fn send_part(&self, s: &mut WriterState) -> Result<(), BlobStoreError> {
        self.renew_if_due(s).await?;
        let data_key = self.data_key(&s.id);
        let upload = match &s.meta.upload {
            Some(u) => u.clone(),
            None => {
                let upload = self
                    .s3
                    .create_multipart(&data_key)
                    .await
                    .map_err(BlobStoreError::ObjectStore)?;
                // Recorded before any part goes, so that a deletion can abort it.
                s.meta.upload = Some(upload.clone());
                self.cas_writer(s).await?;
                upload
            }
        };
        let part = std::mem::take(&mut s.buf);
        let idx = s.meta.parts.len();
        let id = self
            .s3
            .put_part(&data_key, &upload, idx, PutPayload::from(part))
            .await
            .map_err(BlobStoreError::ObjectStore)?;
        s.meta.parts.push(id.content_id);
        Ok(())
    }

    async fn renew_if_due(&self, s: &mut WriterState) -> Result<(), BlobStoreError> {
        if now_ms() >= s.lease.renew_at_ms {
            self.renew(&mut s.lease).await?;
        }
        Ok(())
    }

    /// Writes the writer's view of the metadata, unless another writer changed the blob's
    /// stored length or upload meanwhile (`Busy`); other changes (an expiry set by an
    /// account deletion) are kept.
    async fn cas_writer(&self, s: &mut WriterState) -> Result<(), BlobStoreError> {
        let mine = s.meta.clone();
        let base = s.base_stored;
        s.meta = self
            .update_meta(&s.id, |m| {
                let done = m.stored == mine.stored && m.upload == mine.upload;
                if !done && (m.stored != base || (m.upload.is_some() && m.upload != mine.upload)) {
                    // Another writer (this one's lease was taken over).
                    return Err(BlobStoreError::Busy);
                }
                m.stored = mine.stored;
                m.upload.clone_from(&mine.upload);
                m.parts.clone_from(&mine.parts);
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Records what the append wrote: the tail, then the metadata, then drops the old tail;
    /// completes the upload when the declared length is reached. Releases the lease.
    async fn persist(
        &self,
        mut s: WriterState,
        complete_expires_ms: u64,
    ) -> Result<BlobMeta, BlobStoreError> {
        let result = self.persist_locked(&mut s, complete_expires_ms).await;
        self.release(s.lease).await;
        result
    }

    async fn persist_locked(
        &self,
        s: &mut WriterState,
        complete_expires_ms: u64,
    ) -> Result<BlobMeta, BlobStoreError> {
        let id = s.id;
        if s.pos == s.base_stored {
            // Nothing written: nothing to record.
            return s.meta.to_blob_meta(id);
        }
        self.renew_if_due(s).await?;
        let new_tail = if s.pos == s.meta.length {
            let data_key = self.data_key(&id);
            match s.meta.upload.clone() {
                None => {
                    let body = std::mem::take(&mut s.buf);
                    self.s3
                        .put(&data_key, PutPayload::from(body))
                        .await
                        .map_err(BlobStoreError::ObjectStore)?;
                }
                Some(upload) => {
                    if !s.buf.is_empty() {
                        let body = std::mem::take(&mut s.buf);
                        let idx = s.meta.parts.len();
                        let part = self
                            .s3
                            .put_part(&data_key, &upload, idx, PutPayload::from(body))
                            .await
                            .map_err(BlobStoreError::ObjectStore)?;
                        s.meta.parts.push(part.content_id);
                    }
                    let parts = s
                        .meta
                        .parts
                        .iter()
                        .map(|p| PartId {
                            content_id: p.clone(),
                        })
                        .collect();
                    self.s3
                        .complete_multipart(&data_key, &upload, parts)
                        .await
                        .map_err(BlobStoreError::ObjectStore)?;
                }
            }
            let base = s.base_stored;
            let upload = s.meta.upload.clone();
            s.meta = self
                .update_meta(&id, |m| {
                    let done = m.stored == m.length && m.upload.is_none();
                    if done {
                        // Recorded by this very update, retried after its answer was lost.
                        return Ok(());
                    }
                    if m.stored != base || m.upload != upload {
                        return Err(BlobStoreError::Busy);
                    }
                    m.stored = m.length;
                    m.upload = None;
                    m.parts.clear();
                    // Zero: its owner's account was deleted meanwhile; it stays doomed.
                    if m.expires_ms != 0 {
                        m.expires_ms = complete_expires_ms;
                    }
                    Ok(())
                })
                .await?;
            None
        } else {
            let tail = (!s.buf.is_empty()).then(|| self.tail_key(&id, s.pos));
            if let Some(tail) = &tail {
                self.s3
                    .put(tail, PutPayload::from(Bytes::copy_from_slice(&s.buf)))
                    .await
                    .map_err(BlobStoreError::ObjectStore)?;
            }
            s.meta.stored = s.pos;
            self.cas_writer(s).await?;
            tail
        };
        if let Some(old) = s.base_tail.take()
            && Some(&old) != new_tail.as_ref()
            && let Err(e) = self.delete_quiet(&old).await
        {
            warn!(error = %e, "cannot delete an old blob tail (deleted with the blob)");
        }
        s.meta.to_blob_meta(id)
    }
}

/// Streams a ranged GET, one network chunk at a time.
struct S3Reader {
    ctx: Arc<Ctx>,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    pending: Bytes,
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            let Some(mut stream) = self.stream.take() else {
                return Ok(0);
            };
            let (stream, next) = self
                .ctx
                .run(async move {
                    let next = stream.next().await;
                    (stream, next)
                })
                .map_err(io::Error::other)?;
            match next {
                None => return Ok(0),
                Some(Ok(bytes)) => {
                    self.pending = bytes;
                    self.stream = Some(stream);
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_endpoints_are_recognised() {
        for e in [
            "http://127.0.0.1:9000",
            "http://localhost:9000/",
            "http://[::1]:9000",
            "http://127.0.0.2",
        ] {
            assert!(is_loopback(e), "{e}");
        }
        for e in [
            "http://10.0.0.1:9000",
            "https://s3.example.com",
            "http://[::2]:1",
        ] {
            assert!(!is_loopback(e), "{e}");
        }
    }
}
