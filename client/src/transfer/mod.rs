//! Attachment transfers: encrypt-while-uploading to the relay's blob store, resumable
//! verified downloads, share links.
//!
//! ```text
//! upload:   file --read 1 MiB--> seal chunk (cove_core::attachment) --> SHA-256 --> PATCH body
//!           (a blocking thread produces, hyper sends; a cut resumes from the relay's HEAD offset)
//! download: GET (Range on resume) --> Decryptor (plaintext only after each chunk authenticates)
//!           --> temporary file in the target directory --> rename only after the final chunk,
//!           the size and the ciphertext digest all check out
//! ```
//!
//! Uploads are signed with the device key (`Cove-Device`, `Cove-Timestamp`,
//! `Cove-Signature` over `cove_wire::sign::blob_request_message`); downloads are public (the
//! blob is ciphertext and its 128-bit id unguessable). The file key never leaves this process
//! except inside an MLS message or a share link's fragment.

mod http;

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cove_core::attachment::{
    AttachmentError, AttachmentPointer, DEFAULT_CHUNK_SIZE, Decryptor, Encryptor, Expected,
    FileKey, Header, MAX_NAME_LEN, NONCE_PREFIX_LEN, ShareLink, ShareLinkError, TAG_LEN,
    chunk_count, ciphertext_len,
};
use cove_wire::{BlobId, DeviceId};
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use http::{RequestSigner, SignFn};

/// How many times a transfer reconnects after a network failure before giving up (reset
/// whenever an attempt made progress).
pub const MAX_RETRIES: u32 = 6;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The server address is not `wss://HOST:PORT` or `https://HOST:PORT`.
    #[error("invalid server address {0:?}")]
    BadServer(String),
    /// The link is not a Cove share link.
    #[error(transparent)]
    BadLink(#[from] ShareLinkError),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The target file exists.
    #[error("{0} already exists (choose another name with -o)")]
    Exists(PathBuf),
    /// The relay could not be reached, or the connection failed repeatedly.
    #[error("network error talking to the relay: {0}")]
    Network(String),
    /// The relay refused the request; `message` is its explanation.
    #[error("the relay refused: {message} (HTTP {status})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The relay's one-line message.
        message: String,
    },
    /// The downloaded data failed verification; nothing was written.
    #[error("the file failed verification, nothing was saved: {0}")]
    Integrity(#[from] AttachmentError),
    /// The file changed while it was being uploaded.
    #[error("{0} changed while it was being uploaded")]
    Changed(PathBuf),
    /// The local device could not be used.
    #[error(transparent)]
    Device(#[from] crate::DeviceError),
    /// A blob was longer than the caller accepts (nothing of it was used).
    #[error("the blob is longer than {limit} bytes")]
    BlobTooLarge {
        /// The most bytes accepted.
        limit: u64,
    },
    /// No message with that id has an attachment.
    #[error("no attachment with id {0} in this group (run `cove sync` to receive new messages)")]
    NoSuchAttachment(String),
}

/// What `sync`/`listen`/`history --json` show of an attachment (never the key).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttachmentView {
    /// The blob id (hex): `cove download GROUP ID` accepts it, or the message id.
    pub id: String,
    /// File name.
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Media type.
    #[serde(rename = "type")]
    pub media_type: String,
}

impl From<&AttachmentPointer> for AttachmentView {
    fn from(p: &AttachmentPointer) -> Self {
        AttachmentView {
            id: p.blob_id.to_hex(),
            name: p.name.clone(),
            size: p.size,
            media_type: p.media_type.clone(),
        }
    }
}

/// Encrypts and uploads `path`, then posts its pointer to `group` (`cove send-file`).
pub async fn send_file(
    device: &crate::Device,
    group: &str,
    path: &Path,
    progress: bool,
) -> Result<AttachmentPointer, TransferError> {
    send_file_watched(device, group, path, progress, None).await
}

/// [`send_file`], reporting the upload's progress on `watched` if given.
pub async fn send_file_watched(
    device: &crate::Device,
    group: &str,
    path: &Path,
    progress: bool,
    watched: Option<ProgressBar>,
) -> Result<AttachmentPointer, TransferError> {
    // Nothing is uploaded for a message that would be refused.
    device.check_can_send(group).await?;
    let mut client = BlobClient::for_device(device)
        .await?
        .with_progress(progress);
    if let Some(bar) = watched {
        client = client.with_watched_bar(bar);
    }
    let pointer = client.upload_file(path).await?;
    device.send_attachment(group, pointer.clone()).await?;
    Ok(pointer)
}

/// Downloads the attachment of message (or blob) `id` in `group` (`cove download`).
pub async fn download(
    device: &crate::Device,
    group: &str,
    id: &str,
    out: &Path,
    progress: bool,
) -> Result<PathBuf, TransferError> {
    download_watched(device, group, id, out, progress, None).await
}

/// [`download`], reporting its progress on `watched` if given.
pub async fn download_watched(
    device: &crate::Device,
    group: &str,
    id: &str,
    out: &Path,
    progress: bool,
    watched: Option<ProgressBar>,
) -> Result<PathBuf, TransferError> {
    let pointer = device
        .attachment(group, id)
        .await?
        .ok_or_else(|| TransferError::NoSuchAttachment(id.to_owned()))?;
    let mut client = BlobClient::for_device(device)
        .await?
        .with_progress(progress);
    if let Some(bar) = watched {
        client = client.with_watched_bar(bar);
    }
    client.download(&pointer, out).await
}

/// Uploads `path` and returns its share link (`cove share`).
pub async fn share(
    device: &crate::Device,
    path: &Path,
    progress: bool,
) -> Result<String, TransferError> {
    let client = BlobClient::for_device(device)
        .await?
        .with_progress(progress);
    Ok(client.share(path).await?.to_url())
}

/// A connection target on the relay plus the trust to use.
#[derive(Clone)]
pub struct BlobClient {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    signer: Option<RequestSigner>,
    progress: bool,
    /// A bar the caller watches (the daemon's `transfer` notifications), used instead of one
    /// of its own.
    watched: Option<ProgressBar>,
    /// How long the relay keeps the blobs this client uploads.
    retention: Retention,
    /// Idle keep-alive connections to the relay, shared by clones.
    pool: http::Pool,
}

/// A user's storage on the relay, in bytes ([`BlobClient::usage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Bytes charged: the declared lengths of all the user's blobs, complete or not.
    pub used: u64,
    /// The most the relay lets the user store.
    pub quota: u64,
}

/// How long the relay keeps an uploaded blob once it is complete (header `Cove-Retention`
/// on the upload's requests; see `PROTOCOL.md`, "Blob retention").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    /// The relay's attachment retention (30 days by default).
    #[default]
    Default,
    /// Until its owner deletes it (Cove Drive contents, snapshots and links).
    Keep,
    /// This many seconds after completion (a link with `--expire`).
    ExpiresIn(u64),
}

impl Retention {
    /// The `Cove-Retention` header value, `None` for the default.
    pub fn header(self) -> Option<String> {
        match self {
            Retention::Default => None,
            Retention::Keep => Some("keep".into()),
            Retention::ExpiresIn(secs) => Some(secs.to_string()),
        }
    }
}

impl BlobClient {
    /// A client for the relay at `server` (`wss://HOST:PORT[/...]` or `https://HOST:PORT`).
    pub fn new(server: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, TransferError> {
        let (host, port) = http::authority(server)?;
        Ok(BlobClient {
            host,
            port,
            tls,
            signer: None,
            progress: false,
            watched: None,
            retention: Retention::Default,
            pool: http::Pool::default(),
        })
    }

    /// Uploads with this retention (see [`Retention`]).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Deletes blob `id` (this user's): Cove Drive's emptied trash, a revoked link.
    pub async fn delete_blob(&self, id: BlobId) -> Result<(), TransferError> {
        http::Conn::new(self).delete(id).await
    }

    /// This user's storage on the relay (`GET /v1/usage`, signed): bytes charged (the
    /// declared lengths of all its blobs, complete or not) and its quota.
    pub async fn usage(&self) -> Result<Usage, TransferError> {
        let (used, quota) = http::Conn::new(self).usage().await?;
        Ok(Usage { used, quota })
    }

    /// A client for `device`'s relay, signing uploads with its key.
    pub async fn for_device(device: &crate::Device) -> Result<Self, TransferError> {
        let (signer, tls) = device.blob_access().await?;
        let id = signer.device();
        let sign: SignFn = Arc::new(move |m: &[u8]| signer.sign(m));
        Ok(BlobClient::new(device.server(), tls)?.with_signer(id, sign))
    }

    /// Signs uploads as `device` with `sign` (the device's Ed25519 key).
    pub fn with_signer(mut self, device: DeviceId, sign: SignFn) -> Self {
        self.signer = Some(RequestSigner { device, sign });
        self
    }

    /// Shows progress bars on stderr when it is a terminal.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on && std::io::stderr().is_terminal();
        self
    }

    /// Reports progress on `bar` (length and position in bytes; a hidden bar draws nothing),
    /// for a caller that watches it.
    pub fn with_watched_bar(mut self, bar: ProgressBar) -> Self {
        self.watched = Some(bar);
        self
    }

    /// `https://HOST:PORT`, the origin of share links.
    pub fn origin(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }

    /// Encrypts and uploads `path`, resuming after cuts; returns the pointer to send.
    pub async fn upload_file(&self, path: &Path) -> Result<AttachmentPointer, TransferError> {
        let io = |source| TransferError::Io {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        let chunk_size = DEFAULT_CHUNK_SIZE;
        if chunk_count(size, chunk_size) > u64::from(u32::MAX) {
            return Err(TransferError::Integrity(AttachmentError::TooLarge));
        }
        let total = ciphertext_len(size, chunk_size);
        let mut rng = rand::rngs::OsRng;
        let key = FileKey::generate(&mut rng);
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        rng.fill_bytes(&mut prefix);
        let header = Header::new(chunk_size, prefix).map_err(TransferError::Integrity)?;

        let conn = http::Conn::new(self);
        let blob_id = conn.create(total).await?;
        let bar = self.bar(total, "upload");
        let mut retries = 0;
        let mut offset = 0u64;
        // The SHA-256 of every plaintext chunk sealed so far: a resumption re-reads the file
        // and refuses before sealing a chunk whose plaintext differs (same key and nonce).
        let sealed = SealedChunks::default();
        let digest = loop {
            let source = UploadSource {
                path: path.to_owned(),
                key: key.clone(),
                header,
                size,
                skip: offset,
                sealed: sealed.clone(),
            };
            match conn.append(blob_id, offset, total, source, &bar).await {
                Ok(digest) => break digest,
                Err(
                    e @ (TransferError::Network(_) | TransferError::Refused { status: 409, .. }),
                ) => {
                    retries += 1;
                    if retries > MAX_RETRIES {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff(retries)).await;
                    match conn.offset(blob_id).await {
                        Ok(stored) => {
                            if stored > offset {
                                retries = 0;
                            }
                            offset = stored;
                        }
                        Err(TransferError::Network(_)) => {}
                        Err(e) => return Err(e),
                    }
                    if offset == total {
                        // Everything is stored but the answer was lost: hash locally.
                        let (p, k, s) = (path.to_owned(), key.clone(), sealed.clone());
                        break tokio::task::spawn_blocking(move || {
                            hash_ciphertext(&p, &k, header, size, s)
                        })
                        .await
                        .map_err(|_| TransferError::Network("hashing task failed".into()))??;
                    }
                }
                Err(e) => return Err(e),
            }
        };
        bar.finish_and_clear();
        Ok(AttachmentPointer {
            blob_id,
            key,
            digest,
            size,
            name: file_name(path),
            media_type: media_type(path).to_owned(),
            chunk_size,
        })
    }

    /// Uploads `data` (already encrypted: a sealed history-backup segment) as a new blob,
    /// resuming after cuts; returns its id.
    pub async fn upload_bytes(&self, data: Vec<u8>) -> Result<BlobId, TransferError> {
        let data = Bytes::from(data);
        let total = data.len() as u64;
        let conn = http::Conn::new(self);
        let blob_id = conn.create(total).await?;
        let mut offset = 0u64;
        let mut retries = 0;
        loop {
            let start = usize::try_from(offset)
                .unwrap_or(data.len())
                .min(data.len());
            match conn
                .append_bytes(blob_id, offset, total, data.slice(start..))
                .await
            {
                Ok(()) => break,
                Err(
                    e @ (TransferError::Network(_) | TransferError::Refused { status: 409, .. }),
                ) => {
                    retries += 1;
                    if retries > MAX_RETRIES {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff(retries)).await;
                    match conn.offset(blob_id).await {
                        // Everything is stored but the answer was lost.
                        Ok(stored) if stored == total => break,
                        Ok(stored) => offset = stored,
                        Err(TransferError::Network(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(blob_id)
    }

    /// Downloads blob `id` whole into memory (a sealed history-backup segment), resuming
    /// after cuts; refuses a blob longer than `limit` bytes.
    pub async fn download_bytes(&self, id: BlobId, limit: u64) -> Result<Vec<u8>, TransferError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let collect = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(data) = rx.recv().await {
                if (out.len() + data.len()) as u64 > limit {
                    return Err(TransferError::BlobTooLarge { limit });
                }
                out.extend_from_slice(&data);
            }
            Ok(out)
        });
        let conn = http::Conn::new(self);
        let bar = ProgressBar::hidden();
        let fetched = fetch_resuming(&conn, id, &tx, &bar).await;
        drop(tx);
        let collected = collect
            .await
            .map_err(|_| TransferError::Network("download task failed".into()))?;
        fetched?;
        collected
    }

    /// Uploads `path` and returns its share link.
    pub async fn share(&self, path: &Path) -> Result<ShareLink, TransferError> {
        let pointer = self.upload_file(path).await?;
        Ok(ShareLink::from_pointer(&self.origin(), &pointer))
    }

    /// Downloads, verifies and decrypts an attachment into `out` (a file path, or a
    /// directory to put `pointer.name` in). Nothing is left at `out` unless every check
    /// passed.
    pub async fn download(
        &self,
        pointer: &AttachmentPointer,
        out: &Path,
    ) -> Result<PathBuf, TransferError> {
        let expected = Expected {
            digest: Some(pointer.digest),
            size: Some(pointer.size),
            chunk_size: Some(pointer.chunk_size),
        };
        let target = target_path(out, &pointer.name)?;
        self.download_blob(
            pointer.blob_id,
            &pointer.key,
            expected,
            Some(pointer.ciphertext_len()),
            &target,
        )
        .await?;
        Ok(target)
    }

    /// Downloads blob `id` and decrypts it to `target` (see [`Self::download`]).
    async fn download_blob(
        &self,
        id: BlobId,
        key: &FileKey,
        expected: Expected,
        total: Option<u64>,
        target: &Path,
    ) -> Result<(), TransferError> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".cove-download-")
            .suffix(".part")
            .tempfile_in(&dir)
            .map_err(|source| TransferError::Io {
                path: dir.clone(),
                source,
            })?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let key = key.clone();
        let sink = tokio::task::spawn_blocking(move || decrypt_to(rx, temp, key, expected));
        let conn = http::Conn::new(self);
        let bar = self.bar(total.unwrap_or(0), "download");
        let fetched = fetch_resuming(&conn, id, &tx, &bar).await;
        drop(tx);
        let sunk = sink
            .await
            .map_err(|_| TransferError::Network("download task failed".into()))?;
        bar.finish_and_clear();
        fetched?;
        let temp = sunk?;
        let target_owned = target.to_owned();
        temp.persist_noclobber(target).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                TransferError::Exists(target_owned.clone())
            } else {
                TransferError::Io {
                    path: target_owned.clone(),
                    source: e.error,
                }
            }
        })?;
        Ok(())
    }

    fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if let Some(bar) = &self.watched {
            bar.set_length(len);
            bar.set_position(0);
            return bar.clone();
        }
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        bar
    }
}

/// Fetches a share link into `out` (a file, a directory, or `None` for the current directory
/// and the link's file name). `tls` decides which relay certificates are trusted.
pub async fn fetch(
    link: &str,
    tls: Arc<rustls::ClientConfig>,
    out: Option<&Path>,
    progress: bool,
) -> Result<PathBuf, TransferError> {
    let link = ShareLink::parse(link)?;
    let client = BlobClient::new(&link.origin, tls)?.with_progress(progress);
    let name = link
        .name
        .clone()
        .unwrap_or_else(|| format!("{}.bin", link.blob_id));
    let target = target_path(out.unwrap_or(Path::new(".")), &name)?;
    let expected = Expected {
        digest: link.digest,
        size: link.size,
        chunk_size: None,
    };
    let total = link.size.map(|s| ciphertext_len(s, DEFAULT_CHUNK_SIZE));
    client
        .download_blob(link.blob_id, &link.key, expected, total, &target)
        .await?;
    Ok(target)
}

/// The SHA-256 of each plaintext chunk an upload sealed, by chunk index, shared by its
/// attempts.
pub(crate) type SealedChunks = Arc<std::sync::Mutex<Vec<[u8; 32]>>>;

/// What the upload producer thread reads and seals.
pub(crate) struct UploadSource {
    path: PathBuf,
    key: FileKey,
    header: Header,
    size: u64,
    /// Ciphertext bytes already stored on the relay (produced and hashed, not sent).
    skip: u64,
    /// Plaintext chunk hashes of earlier attempts (checked), extended by this one.
    sealed: SealedChunks,
}

impl UploadSource {
    /// Produces the ciphertext into `tx` from `skip` on; returns the digest of the whole blob.
    pub(crate) fn produce(
        self,
        tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<[u8; 32], TransferError> {
        let io = |source| TransferError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        if file.metadata().map_err(io)?.len() != self.size {
            return Err(TransferError::Changed(self.path.clone()));
        }
        // The core's tested encryptor, fed whole chunks that it seals in place (no copy);
        // the SHA-256 of the ciphertext runs on its own thread, beside encryption.
        let mut encryptor = Encryptor::with_nonce_prefix(
            &self.key,
            self.header.nonce_prefix,
            self.header.chunk_size,
        )?
        .hash_elsewhere();
        let cs = self.header.chunk_size as usize; // at most 1 MiB
        let (htx, hrx) = std::sync::mpsc::sync_channel::<Bytes>(4);
        let hasher = std::thread::spawn(move || {
            let mut h = Sha256::new();
            while let Ok(data) = hrx.recv() {
                h.update(&data);
            }
            <[u8; 32]>::from(h.finalize())
        });
        let mut skip = self.skip;
        let mut emit = |data: Vec<u8>| -> Result<(), TransferError> {
            let bytes = Bytes::from(data);
            // The hasher only stops if it panicked; the join below reports that.
            let _ = htx.send(bytes.clone());
            let len = bytes.len() as u64;
            let start = usize::try_from(skip.min(len)).unwrap_or(0);
            skip -= start as u64;
            if start as u64 == len {
                return Ok(());
            }
            tx.blocking_send(Ok(bytes.slice(start..)))
                .map_err(|_| TransferError::Network("upload cut".into()))
        };
        let mut seal_all = || -> Result<(), TransferError> {
            emit(encryptor.header().encode().to_vec())?;
            let chunks = chunk_count(self.size, self.header.chunk_size);
            let mut left = self.size;
            for index in 0..chunks {
                let n = usize::try_from(left.min(cs as u64)).unwrap_or(cs);
                let mut buf = Vec::with_capacity(n + TAG_LEN);
                buf.resize(n, 0);
                file.read_exact(&mut buf)
                    .map_err(|_| TransferError::Changed(self.path.clone()))?;
                left -= n as u64;
                // Never seal other plaintext under a key and nonce used before: a chunk an
                // earlier attempt sealed must read back identical, else the upload stops.
                let hash = <[u8; 32]>::from(Sha256::digest(&buf));
                {
                    let mut sealed = self.sealed.lock().unwrap_or_else(|e| e.into_inner());
                    let i = usize::try_from(index).unwrap_or(usize::MAX);
                    match sealed.get(i) {
                        Some(before) if *before != hash => {
                            return Err(TransferError::Changed(self.path.clone()));
                        }
                        Some(_) => {}
                        None => sealed.push(hash),
                    }
                }
                encryptor.seal_chunk(&mut buf, index + 1 == chunks)?;
                emit(buf)?;
            }
            Ok(())
        };
        let sealed = seal_all();
        drop(htx);
        let digest = hasher
            .join()
            .map_err(|_| TransferError::Network("hashing thread failed".into()))?;
        sealed?;
        Ok(digest)
    }
}

/// Recomputes the blob digest from the file (used when the last attempt did not see it all).
fn hash_ciphertext(
    path: &Path,
    key: &FileKey,
    header: Header,
    size: u64,
    sealed: SealedChunks,
) -> Result<[u8; 32], TransferError> {
    // Nothing is sent: every byte is skipped.
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let source = UploadSource {
        path: path.to_owned(),
        key: key.clone(),
        header,
        size,
        skip: u64::MAX,
        sealed,
    };
    source.produce(&tx)
}

/// The decrypting sink of a download: runs on a blocking thread.
fn decrypt_to(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    temp: tempfile::NamedTempFile,
    key: FileKey,
    expected: Expected,
) -> Result<tempfile::NamedTempFile, TransferError> {
    let path = temp.path().to_owned();
    let io = |source| TransferError::Io {
        path: path.clone(),
        source,
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, temp);
    // The SHA-256 of the ciphertext runs on its own thread, beside decryption.
    let (htx, hrx) = std::sync::mpsc::sync_channel::<Bytes>(4);
    let hasher = std::thread::spawn(move || {
        let mut h = Sha256::new();
        while let Ok(data) = hrx.recv() {
            h.update(&data);
        }
        <[u8; 32]>::from(h.finalize())
    });
    let mut dec = Decryptor::new(&key, expected).hash_elsewhere();
    let mut plain = Vec::with_capacity(2 << 20);
    let mut decrypt = || -> Result<(), TransferError> {
        while let Some(data) = rx.blocking_recv() {
            // The hasher only stops if it panicked; the join below reports that.
            let _ = htx.send(data.clone());
            dec.push(&data, &mut plain)?;
            if plain.len() >= 1 << 20 {
                out.write_all(&plain).map_err(io)?;
                plain.clear();
            }
        }
        Ok(())
    };
    let decrypted = decrypt();
    drop(htx);
    let digest = hasher
        .join()
        .map_err(|_| TransferError::Network("hashing thread failed".into()))?;
    decrypted?;
    // The temporary file (deleted on drop) never becomes visible unless all this succeeds.
    dec.finish(&mut plain)?;
    if expected.digest.is_some_and(|d| d != digest) {
        return Err(TransferError::Integrity(AttachmentError::DigestMismatch));
    }
    out.write_all(&plain).map_err(io)?;
    let temp = out.into_inner().map_err(|e| io(e.into_error()))?;
    temp.as_file().sync_all().map_err(io)?;
    Ok(temp)
}

fn backoff(retry: u32) -> Duration {
    Duration::from_millis(100u64 << retry.min(6)).min(Duration::from_secs(5))
}

/// `out` if it is a file path, `out/name` if it is a directory.
fn target_path(out: &Path, name: &str) -> Result<PathBuf, TransferError> {
    let safe = if cove_core::attachment::validate_name(name).is_ok() {
        name.to_owned()
    } else {
        "download.bin".to_owned()
    };
    Ok(if out.is_dir() {
        out.join(safe)
    } else {
        out.to_owned()
    })
}

/// The file's name as sent (no directories, at most 255 bytes).
pub fn file_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = name
        .chars()
        .filter(|c| !c.is_control() && *c != '\\')
        .collect();
    while name.len() > MAX_NAME_LEN {
        name.pop();
    }
    if name.is_empty() || name == "." || name == ".." {
        "file".to_owned()
    } else {
        name
    }
}

/// A media type from the file extension (`application/octet-stream` if unknown).
pub fn media_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// Fetches blob `id` into `tx` on `conn`, resuming after a network failure from the bytes
/// already received (up to [`MAX_RETRIES`] failures in a row without progress, with
/// [`backoff`] between them).
async fn fetch_resuming(
    conn: &http::Conn<'_>,
    id: BlobId,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    bar: &ProgressBar,
) -> Result<(), TransferError> {
    let mut received = 0u64;
    let mut retries = 0;
    loop {
        match conn.fetch(id, received, tx, bar).await {
            Ok(_) => return Ok(()),
            Err((n, e @ TransferError::Network(_))) => {
                received += n;
                retries = if n > 0 { 1 } else { retries + 1 };
                if retries > MAX_RETRIES {
                    return Err(e);
                }
                tokio::time::sleep(backoff(retries)).await;
            }
            Err((_, e)) => return Err(e),
        }
    }
}
