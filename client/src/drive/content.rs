//! File contents of Cove Drive over the relay's blob endpoint: chunked, sealed, uploaded
//! [`super::PARALLEL_TRANSFERS`] at a time, only the chunks a previous version lacks;
//! downloads verified and written atomically (temp file + rename), resumable.
//!
//! ```text
//! upload:   file --FastCDC (blocking thread)--> chunk id known? (previous version, journal,
//!           earlier in this file) --no--> seal --> PUT as a kept blob (6 at once)
//!           --> journal record (append) --> manifest (inline, or a sealed blob)
//! download: manifest --> chunks not yet verified (sidecar) --> GET (6 at once) --> open_chunk
//!           --> written at their offsets into `.<name>.cove-part` --> sidecar record
//!           --> SHA-256 of the whole file (a one-chunk file's is its chunk's) --> fsync
//!           --> rename over the target
//! ```
//!
//! Memory is bounded by the chunks in flight (at most about twice
//! [`super::PARALLEL_TRANSFERS`] × [`MAX_CHUNK`]), never the file.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use cove_core::drive::chunk::{
    CHUNK_OVERHEAD, ChunkError, ChunkRef, Chunker, FileSecret, MAX_CHUNK, MAX_CHUNKS, chunk_digest,
    chunk_id, chunk_id_of_digest, open_chunk_in_place, seal_chunk_in_place,
};
use cove_core::drive::op::{MAX_INLINE_CHUNKS, SealedBlob};
use cove_core::drive::seal::{self, MANIFEST_AAD, SealError};
use cove_core::drive::{FileVersion, Manifest, ManifestRef};
use cove_wire::BlobId;
use futures_util::StreamExt;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::{DriveError, PARALLEL_TRANSFERS};
use crate::transfer::{BlobClient, Retention, TransferError};

/// Longest manifest blob accepted: [`MAX_CHUNKS`] entries of at most 64 bytes (postcard:
/// a 32-byte id, a 16-byte blob id, a varint length) plus the tag.
pub const MAX_MANIFEST_BLOB: u64 = MAX_CHUNKS as u64 * 64 + 64;

/// Suffix of the temporary file a download writes beside its target
/// (`.<name>.cove-part`); its sidecar adds [`SIDECAR_SUFFIX`].
pub const PART_SUFFIX: &str = ".cove-part";

/// Suffix (after the part file's name) of the sidecar recording a download's verified
/// chunks.
pub const SIDECAR_SUFFIX: &str = ".done";

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

/// The client used for every drive upload: blobs are kept until deleted.
fn keeping(blobs: &BlobClient) -> BlobClient {
    blobs.clone().with_retention(Retention::Keep)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DriveError + '_ {
    move |source| DriveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A blocking task's panic or cancellation, as an error.
fn task_failed(what: &str) -> DriveError {
    DriveError::Transfer(TransferError::Network(format!("{what} task failed")))
}

/// One chunk as the reading thread hands it over.
struct Produced {
    id: [u8; 32],
    len: u32,
    /// The sealed blob, for a chunk whose id is not known yet (first in this upload).
    blob: Option<Vec<u8>>,
}

/// What the reading thread found at the end.
struct ReadDone {
    size: u64,
    sha256: [u8; 32],
}

/// A file's size and modification time (ms since the Unix epoch).
fn stamp(meta: &std::fs::Metadata) -> (u64, u64) {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    (meta.len(), modified)
}

/// Reads and chunks `path`, sealing chunks whose id is not in `known` (nor earlier in the
/// file), handing them to `tx` in file order.
fn produce(
    path: &Path,
    secret: &FileSecret,
    known: HashSet<[u8; 32]>,
    tx: &tokio::sync::mpsc::Sender<Produced>,
) -> Result<Option<ReadDone>, DriveError> {
    let io = io_err(path);
    let file = File::open(path).map_err(&io)?;
    let before = stamp(&file.metadata().map_err(&io)?);
    let changed = || DriveError::Transfer(TransferError::Changed(path.to_owned()));
    let mut seen = known;
    // A file shorter than MAX_CHUNK is one chunk, whose SHA-256 (hashed for its id) is the
    // file's: each byte is hashed once. A longer file's SHA-256 is hashed alongside.
    let one_chunk = before.0 < u64::from(MAX_CHUNK);
    let mut file_digest = FileDigest::new(one_chunk);
    let mut size = 0u64;
    let mut count = 0usize;
    for chunk in Chunker::new(&file) {
        let (_, data) = chunk.map_err(&io)?;
        count += 1;
        if count > MAX_CHUNKS {
            return Err(DriveError::Chunk(ChunkError::InvalidManifest));
        }
        if one_chunk && count > 1 {
            return Err(changed()); // more than one chunk of a shorter file: it grew
        }
        let digest = chunk_digest(&data);
        file_digest.add(&data, digest);
        size += data.len() as u64;
        let len = u32::try_from(data.len()).map_err(|_| ChunkError::InvalidManifest)?;
        let id = chunk_id_of_digest(secret, &digest);
        let blob = if seen.insert(id) {
            Some(seal_chunk_in_place(secret, &id, data))
        } else {
            None
        };
        if tx.blocking_send(Produced { id, len, blob }).is_err() {
            return Ok(None); // the upload stopped
        }
    }
    let after = stamp(&std::fs::metadata(path).map_err(&io)?);
    if after != before || size != before.0 {
        return Err(changed());
    }
    Ok(Some(ReadDone {
        size,
        sha256: file_digest.finish(),
    }))
}

/// Chunks by id.
type Chunks = HashMap<[u8; 32], ChunkRef>;

/// An upload's journal: the file secret and the chunks already uploaded.
///
/// It is written without fsync: it outlives the process being killed at any point (what it
/// is for: a sync cut by kill -9 resumes without sending its chunks again), and an fsync per
/// file and per chunk cost a sync of many small files about a tenth of its time. A power
/// cut can lose its newest records, or the whole journal: those chunks are then sent again
/// under a new secret, and their first blobs stay unreferenced (counted in `cove drive
/// usage`). Never worse: a record is appended only after the relay stored the blob (the
/// relay fsyncs it first), a torn record is dropped, and the secret is stored with its
/// checksum so that a secret a power cut garbled is never used to encrypt.
struct Journal {
    dir: PathBuf,
    file: Arc<Mutex<File>>,
}

/// Bytes of one journal record: chunk id, blob id, length (u32 little-endian).
const RECORD: usize = 32 + 16 + 4;

impl Journal {
    /// Opens (or starts) the journal in `dir`. Its secret is used unless `previous` has
    /// another one (then the journal belongs to something else and starts over).
    fn open(
        dir: &Path,
        previous: Option<&FileSecret>,
    ) -> Result<(Journal, FileSecret, Chunks), DriveError> {
        let io = io_err(dir);
        std::fs::create_dir_all(dir).map_err(&io)?;
        let secret_path = dir.join("secret");
        let chunks_path = dir.join("chunks");
        let stored = std::fs::read(&secret_path)
            .ok()
            .and_then(|b| open_journal_secret(&b));
        let reuse = match (&stored, previous) {
            (Some(s), Some(p)) => s == p,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let (secret, records) = match (stored, reuse) {
            (Some(s), true) => {
                let records = read_records(&chunks_path).map_err(io_err(&chunks_path))?;
                (s, records)
            }
            _ => {
                let secret = match previous {
                    Some(p) => p.clone(),
                    None => FileSecret::generate(&mut rand::rngs::OsRng),
                };
                // The records of another secret are useless: start over.
                match std::fs::remove_file(&chunks_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&chunks_path)(e)),
                }
                write_atomically(dir, "secret", &journal_secret_bytes(&secret)).map_err(&io)?;
                (secret, HashMap::new())
            }
        };
        let file = private_options()
            .append(true)
            .create(true)
            .open(&chunks_path)
            .map_err(io_err(&chunks_path))?;
        // A record torn by a crash is dropped: later records start at a whole record.
        let len = file.metadata().map_err(io_err(&chunks_path))?.len();
        file.set_len(len - len % RECORD as u64)
            .map_err(io_err(&chunks_path))?;
        let journal = Journal {
            dir: dir.to_owned(),
            file: Arc::new(Mutex::new(file)),
        };
        Ok((journal, secret, records))
    }

    /// Records an uploaded chunk (an append; see [`Journal`] on why without fsync).
    async fn record(&self, chunk: &ChunkRef) -> Result<(), DriveError> {
        let mut rec = [0u8; RECORD];
        rec[..32].copy_from_slice(&chunk.id);
        rec[32..48].copy_from_slice(&chunk.blob.0);
        rec[48..].copy_from_slice(&chunk.len.to_le_bytes());
        let file = Arc::clone(&self.file);
        let path = self.dir.join("chunks");
        tokio::task::spawn_blocking(move || {
            let f = file
                .lock()
                .map_err(|_| std::io::Error::other("journal lock"))?;
            (&*f).write_all(&rec)
        })
        .await
        .map_err(|_| task_failed("journal"))?
        .map_err(io_err(&path))
    }
}

/// Open options for a file only this user may read (on Unix).
fn private_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Writes `dir/name` atomically (temporary file, rename): a reader sees the old contents
/// or the new, never a part (unless power is cut: see [`Journal`]).
fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(data)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Domain of a journal secret's checksum.
const JOURNAL_SECRET_CHECK: &[u8] = b"cove/drive/journal-secret\0";

/// A journal's secret file: the secret, then the SHA-256 of the domain and the secret.
fn journal_secret_bytes(secret: &FileSecret) -> Vec<u8> {
    let mut out = secret.0.to_vec();
    let mut h = Sha256::new();
    h.update(JOURNAL_SECRET_CHECK);
    h.update(secret.0);
    out.extend_from_slice(&h.finalize());
    out
}

/// The secret in a journal's secret file, if the file is whole and its checksum matches.
fn open_journal_secret(bytes: &[u8]) -> Option<FileSecret> {
    let secret = FileSecret(<[u8; 32]>::try_from(bytes.get(..32)?).ok()?);
    (journal_secret_bytes(&secret) == bytes).then_some(secret)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The whole records of a journal's chunk file (none if it does not exist).
fn read_records(path: &Path) -> std::io::Result<Chunks> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = HashMap::new();
    for rec in data.chunks_exact(RECORD) {
        let (id, rest) = rec.split_at(32);
        let (blob, len) = rest.split_at(16);
        let (Ok(id), Ok(blob), Ok(len)) = (
            <[u8; 32]>::try_from(id),
            <[u8; 16]>::try_from(blob),
            <[u8; 4]>::try_from(len),
        ) else {
            continue;
        };
        let len = u32::from_le_bytes(len);
        if (1..=MAX_CHUNK).contains(&len) {
            out.insert(
                id,
                ChunkRef {
                    id,
                    blob: BlobId(blob),
                    len,
                },
            );
        }
    }
    Ok(out)
}

/// Encrypts and uploads the file at `path` as a new version. With `previous` (the file's
/// latest version), the file's secret is kept and chunks whose id the previous version has
/// are not uploaded again. `device` is this device's name. With `journal`, a directory
/// private to this upload's caller, uploaded chunks are remembered there so that an upload
/// cut by a crash resumes without sending them again. Blobs are kept until deleted.
///
/// The journal holds the file's secret (a new file's is drawn on the first run and kept
/// for the re-runs) and one record per uploaded chunk; the caller removes the directory
/// once the version is published. A journal whose secret is not `previous`'s is started
/// over. A file that changes while it is read fails with [`TransferError::Changed`].
pub async fn upload_file(
    blobs: &BlobClient,
    path: &Path,
    previous: Option<&FileVersion>,
    device: &str,
    journal: Option<&Path>,
) -> Result<Uploaded, DriveError> {
    let blobs = keeping(blobs);
    let prev_secret = previous.map(|p| &p.secret);
    let (journal, secret, mut known) = match journal {
        Some(dir) => {
            let (dir, prev) = (dir.to_owned(), prev_secret.cloned());
            let (j, s, k) = tokio::task::spawn_blocking(move || Journal::open(&dir, prev.as_ref()))
                .await
                .map_err(|_| task_failed("journal"))??;
            (Some(j), s, k)
        }
        None => {
            let secret = match prev_secret {
                Some(s) => s.clone(),
                None => FileSecret::generate(&mut rand::rngs::OsRng),
            };
            (None, secret, HashMap::new())
        }
    };
    // Chunks of the previous version are the same chunks (same secret) when their ids match.
    if let Some(p) = previous {
        for c in manifest(&blobs, &p.manifest).await?.chunks {
            known.insert(c.id, c);
        }
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Produced>(PARALLEL_TRANSFERS);
    let producer = {
        let (path, secret) = (path.to_owned(), secret.clone());
        let ids: HashSet<[u8; 32]> = known.keys().copied().collect();
        tokio::task::spawn_blocking(move || produce(&path, &secret, ids, &tx))
    };

    let mut order: Vec<([u8; 32], u32)> = Vec::new();
    let mut tasks: JoinSet<Result<ChunkRef, TransferError>> = JoinSet::new();
    let mut uploaded: Chunks = HashMap::new();
    let (mut bytes_sent, mut chunks_sent) = (0u64, 0usize);
    let outcome: Result<ReadDone, DriveError> = async {
        let mut reading = true;
        while reading || !tasks.is_empty() {
            tokio::select! {
                item = rx.recv(), if reading && tasks.len() < PARALLEL_TRANSFERS => match item {
                    None => reading = false,
                    Some(p) => {
                        order.push((p.id, p.len));
                        if let Some(blob) = p.blob {
                            bytes_sent += blob.len() as u64;
                            let (client, id, len) = (blobs.clone(), p.id, p.len);
                            tasks.spawn(async move {
                                let blob = client.upload_bytes(blob).await?;
                                Ok(ChunkRef { id, blob, len })
                            });
                        }
                    }
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let chunk = done.map_err(|_| task_failed("upload"))??;
                    if let Some(j) = &journal {
                        j.record(&chunk).await?;
                    }
                    chunks_sent += 1;
                    uploaded.insert(chunk.id, chunk);
                }
            }
        }
        producer
            .await
            .map_err(|_| task_failed("reading"))??
            .ok_or_else(|| task_failed("reading"))
    }
    .await;
    let read = match outcome {
        Ok(read) => read,
        Err(e) => {
            // Without a journal nothing refers to the chunks sent: delete them (best effort;
            // with one they are what a re-run reuses).
            drop(rx);
            tasks.shutdown().await;
            if journal.is_none() {
                for c in uploaded.values() {
                    let _ = blobs.delete_blob(c.blob).await;
                }
            }
            return Err(e);
        }
    };

    let mut chunks = Vec::with_capacity(order.len());
    let mut chunks_reused = 0usize;
    for (id, len) in order {
        // A chunk not uploaded now is the previous version's or the journal's (a repeat of a
        // chunk uploaded now, earlier in this file, is in `uploaded`).
        let c = match uploaded.get(&id) {
            Some(c) => c.clone(),
            None => {
                chunks_reused += 1;
                known
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| task_failed("upload"))?
            }
        };
        if c.len != len {
            return Err(DriveError::Chunk(ChunkError::Mismatch));
        }
        chunks.push(c);
    }
    let m = Manifest { chunks };
    let manifest = if m.chunks.len() <= MAX_INLINE_CHUNKS {
        ManifestRef::Inline(m)
    } else {
        let sealed = put_sealed(&blobs, MANIFEST_AAD, &m.encode()).await?;
        bytes_sent += sealed.len;
        ManifestRef::Blob(sealed)
    };
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mut version = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut version);
    Ok(Uploaded {
        version: FileVersion {
            version,
            size: read.size,
            modified_ms: stamp(&meta).1,
            sha256: read.sha256,
            secret,
            manifest,
            device: device.to_owned(),
        },
        bytes_sent,
        chunks_sent,
        chunks_reused,
    })
}

/// The part file and its sidecar for `target`.
fn part_paths(target: &Path) -> Result<(PathBuf, PathBuf), DriveError> {
    let name = target
        .file_name()
        .ok_or_else(|| DriveError::Invalid(format!("{} is not a file path", target.display())))?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let part = format!(".{}{PART_SUFFIX}", name.to_string_lossy());
    let sidecar = format!("{part}{SIDECAR_SUFFIX}");
    Ok((dir.join(part), dir.join(sidecar)))
}

/// Bytes of the sidecar's header: the version id and the file's SHA-256.
const SIDECAR_HEADER: usize = 16 + 32;

/// Opens the part file and the sidecar of a download of `version`: the indices of the
/// chunks a previous run verified and wrote, each checked again against the part file
/// (a chunk whose bytes do not have its id is fetched again). A part file of another
/// version starts over.
fn open_part(
    part: &Path,
    sidecar: &Path,
    version: &FileVersion,
    m: &Manifest,
) -> Result<(File, File, HashSet<usize>), DriveError> {
    let mut header = [0u8; SIDECAR_HEADER];
    header[..16].copy_from_slice(&version.version);
    header[16..].copy_from_slice(&version.sha256);
    let claimed: Vec<usize> = match std::fs::read(sidecar) {
        Ok(d) if d.len() >= SIDECAR_HEADER && d[..SIDECAR_HEADER] == header => d[SIDECAR_HEADER..]
            .chunks_exact(4)
            .filter_map(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .filter(|&i| i < m.chunks.len())
            .collect(),
        _ => Vec::new(),
    };
    let fresh = claimed.is_empty();
    let mut file = private_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(fresh)
        .open(part)
        .map_err(io_err(part))?;
    file.set_len(version.size).map_err(io_err(part))?;
    let mut verified = HashSet::new();
    if !fresh {
        let mut offsets = Vec::with_capacity(m.chunks.len());
        let mut at = 0u64;
        for c in &m.chunks {
            offsets.push(at);
            at += u64::from(c.len);
        }
        let mut buf = Vec::new();
        for i in claimed {
            let c = &m.chunks[i];
            buf.resize(c.len as usize, 0);
            file.seek(SeekFrom::Start(offsets[i]))
                .map_err(io_err(part))?;
            file.read_exact(&mut buf).map_err(io_err(part))?;
            if chunk_id(&version.secret, &buf) == c.id {
                verified.insert(i);
            }
        }
    }
    let mut side = private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(sidecar)
        .map_err(io_err(sidecar))?;
    side.write_all(&header).map_err(io_err(sidecar))?;
    let mut sorted: Vec<usize> = verified.iter().copied().collect();
    sorted.sort_unstable();
    for i in sorted {
        side.write_all(&(i as u32).to_le_bytes())
            .map_err(io_err(sidecar))?;
    }
    Ok((file, side, verified))
}

/// Downloads `version` to `target` (a file path; refused with [`DriveError::Exists`] when
/// it exists and `overwrite` is false): chunks fetched in parallel and verified, written to
/// a temporary file beside `target` that is renamed over it only once the whole file's
/// SHA-256 matches. A temporary file left by a cut download is resumed (its verified
/// chunks are not fetched again). Returns the ciphertext bytes fetched.
///
/// The temporary file is `.<name>.cove-part` in the target's folder, with a sidecar
/// `.<name>.cove-part.done` listing the chunks written (each is checked again against its
/// id when resuming); both go once the file is in place. A chunk that fails verification
/// ends the download with [`DriveError::Chunk`] and leaves the target untouched.
pub async fn download_file(
    blobs: &BlobClient,
    version: &FileVersion,
    target: &Path,
    overwrite: bool,
) -> Result<u64, DriveError> {
    if !overwrite && std::fs::symlink_metadata(target).is_ok() {
        return Err(DriveError::Exists(target.to_owned()));
    }
    let mut fetched = 0u64;
    let m = match &version.manifest {
        ManifestRef::Inline(m) => {
            m.validate()?;
            m.clone()
        }
        ManifestRef::Blob(sealed) => {
            fetched += sealed.len;
            manifest(blobs, &version.manifest).await?
        }
    };
    if m.size() != version.size {
        return Err(DriveError::Chunk(ChunkError::InvalidManifest));
    }
    let (part, sidecar) = part_paths(target)?;
    let (file, side, verified) = {
        let (p, s, v, m) = (part.clone(), sidecar.clone(), version.clone(), m.clone());
        tokio::task::spawn_blocking(move || open_part(&p, &s, &v, &m))
            .await
            .map_err(|_| task_failed("download"))??
    };
    let file = Arc::new(Mutex::new((file, side)));

    // Every chunk in file order: fetched and verified (6 at once), or already in the part
    // file; each hashed in order (the whole file's SHA-256, without reading it back) and
    // the fetched ones written at their offsets.
    let mut offset = 0u64;
    let mut all = Vec::with_capacity(m.chunks.len());
    for (i, c) in m.chunks.iter().enumerate() {
        all.push((i, offset, c.clone(), verified.contains(&i)));
        offset += u64::from(c.len);
    }
    let secret = version.secret.clone();
    let mut chunks = futures_util::stream::iter(all)
        .map(|(i, at, c, local)| {
            let (client, secret) = (blobs.clone(), secret.clone());
            async move {
                if local {
                    return Ok::<_, DriveError>((i, at, Got::Local(c.len), 0));
                }
                let blob = client
                    .download_bytes(c.blob, u64::from(c.len) + CHUNK_OVERHEAD)
                    .await
                    .map_err(|e| match e {
                        // Longer than the chunk: not the chunk's blob.
                        TransferError::BlobTooLarge { .. } => {
                            DriveError::Chunk(ChunkError::Tampered)
                        }
                        e => DriveError::Transfer(e),
                    })?;
                let n = blob.len() as u64;
                let (data, digest) =
                    tokio::task::spawn_blocking(move || open_chunk_in_place(&secret, &c, blob))
                        .await
                        .map_err(|_| task_failed("verify"))??;
                Ok((i, at, Got::Fetched(data, digest), n))
            }
        })
        .buffered(PARALLEL_TRANSFERS);
    // The whole file's SHA-256: hashed as the chunks come, or, for a file of one chunk,
    // that chunk's SHA-256 (already computed to check its id).
    let mut digest = FileDigest::new(m.chunks.len() == 1);
    while let Some(done) = chunks.next().await {
        let (i, at, got, n) = done?;
        fetched += n;
        let file = Arc::clone(&file);
        let path = part.clone();
        digest = tokio::task::spawn_blocking(move || {
            let mut g = file
                .lock()
                .map_err(|_| std::io::Error::other("part lock"))?;
            let (f, side) = &mut *g;
            f.seek(SeekFrom::Start(at))?;
            match got {
                Got::Fetched(data, chunk) => {
                    digest.add(&data, chunk);
                    f.write_all(&data)?;
                    side.write_all(&(i as u32).to_le_bytes())?;
                }
                Got::Local(len) => {
                    let mut data = vec![0u8; len as usize];
                    f.read_exact(&mut data)?;
                    let chunk = chunk_digest(&data);
                    digest.add(&data, chunk);
                }
            }
            Ok::<_, std::io::Error>(digest)
        })
        .await
        .map_err(|_| task_failed("write"))?
        .map_err(io_err(&path))?;
    }
    drop(chunks);
    let digest = digest.finish();

    let (target_owned, expected) = (target.to_owned(), version.sha256);
    tokio::task::spawn_blocking(move || {
        finish(
            &file,
            &part,
            &sidecar,
            &target_owned,
            digest == expected,
            overwrite,
        )
    })
    .await
    .map_err(|_| task_failed("download"))??;
    Ok(fetched)
}

/// A file's SHA-256 from its chunks in order.
enum FileDigest {
    /// A file of one chunk: that chunk's SHA-256, once it is known.
    One(Option<[u8; 32]>),
    /// Several chunks: hashed as they come.
    Many(Box<Sha256>),
}

impl FileDigest {
    /// For a file of one chunk (`one_chunk`), else of any number (none included).
    fn new(one_chunk: bool) -> Self {
        if one_chunk {
            FileDigest::One(None)
        } else {
            FileDigest::Many(Box::default())
        }
    }

    /// The next chunk in file order, and its SHA-256.
    fn add(&mut self, data: &[u8], chunk: [u8; 32]) {
        match self {
            FileDigest::One(d) => *d = Some(chunk),
            FileDigest::Many(h) => h.update(data),
        }
    }

    fn finish(self) -> [u8; 32] {
        match self {
            FileDigest::One(d) => d.unwrap_or_else(|| chunk_digest(b"")), // empty
            FileDigest::Many(h) => h.finalize().into(),
        }
    }
}

/// A chunk of a download, in file order.
enum Got {
    /// Fetched and verified now (with its SHA-256).
    Fetched(Vec<u8>, [u8; 32]),
    /// Verified in the part file by an earlier run (its length).
    Local(u32),
}

/// With the whole file's SHA-256 `matches`, makes the part file durable and renames it over
/// the target.
fn finish(
    file: &Mutex<(File, File)>,
    part: &Path,
    sidecar: &Path,
    target: &Path,
    matches: bool,
    overwrite: bool,
) -> Result<(), DriveError> {
    if !matches {
        // Every chunk had its id but the whole does not match: a member published a
        // version whose digest is not its contents. Start over next time.
        let _ = std::fs::remove_file(sidecar);
        return Err(DriveError::Chunk(ChunkError::Mismatch));
    }
    let io = io_err(part);
    let g = file
        .lock()
        .map_err(|_| io(std::io::Error::other("part lock")))?;
    g.0.sync_all().map_err(&io)?;
    drop(g);
    if !overwrite && std::fs::symlink_metadata(target).is_ok() {
        return Err(DriveError::Exists(target.to_owned()));
    }
    std::fs::rename(part, target).map_err(io_err(target))?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir).map_err(io_err(dir))?;
    }
    let _ = std::fs::remove_file(sidecar);
    Ok(())
}

/// The chunk list of a version (fetched and opened when it is in a blob).
pub async fn manifest(blobs: &BlobClient, manifest: &ManifestRef) -> Result<Manifest, DriveError> {
    match manifest {
        ManifestRef::Inline(m) => {
            m.validate()?;
            Ok(m.clone())
        }
        ManifestRef::Blob(sealed) => {
            let plain = get_sealed(blobs, sealed, MANIFEST_AAD, MAX_MANIFEST_BLOB).await?;
            Ok(Manifest::decode(&plain)?)
        }
    }
}

/// Seals `plaintext` under a new one-time key with `aad` and uploads it (kept).
pub async fn put_sealed(
    blobs: &BlobClient,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<SealedBlob, DriveError> {
    let key = FileSecret::generate(&mut rand::rngs::OsRng);
    let data = seal::seal(&key, aad, plaintext);
    let len = data.len() as u64;
    let blob = keeping(blobs).upload_bytes(data).await?;
    Ok(SealedBlob { blob, key, len })
}

/// Fetches and opens a sealed blob (at most `limit` bytes).
pub async fn get_sealed(
    blobs: &BlobClient,
    sealed: &SealedBlob,
    aad: &[u8],
    limit: u64,
) -> Result<Vec<u8>, DriveError> {
    if sealed.len > limit {
        return Err(DriveError::Transfer(TransferError::BlobTooLarge { limit }));
    }
    let data = blobs
        .download_bytes(sealed.blob, sealed.len)
        .await
        .map_err(|e| match e {
            TransferError::BlobTooLarge { .. } => DriveError::Seal(SealError),
            e => DriveError::Transfer(e),
        })?;
    if data.len() as u64 != sealed.len {
        return Err(DriveError::Seal(SealError));
    }
    let key = sealed.key.clone();
    let aad = aad.to_vec();
    tokio::task::spawn_blocking(move || seal::open(&key, &aad, &data))
        .await
        .map_err(|_| task_failed("open"))?
        .map_err(DriveError::Seal)
}

/// Every blob a version refers to (its chunks and its manifest blob), for deleting a purged
/// file's contents.
pub async fn blobs_of(
    blobs: &BlobClient,
    version: &FileVersion,
) -> Result<Vec<cove_wire::BlobId>, DriveError> {
    let m = manifest(blobs, &version.manifest).await?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    if let ManifestRef::Blob(sealed) = &version.manifest {
        seen.insert(sealed.blob);
        out.push(sealed.blob);
    }
    for c in m.chunks {
        if seen.insert(c.blob) {
            out.push(c.blob);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_secret_is_used_only_when_whole_and_checked() {
        let secret = FileSecret([5; 32]);
        let bytes = journal_secret_bytes(&secret);
        assert_eq!(bytes.len(), 64);
        assert!(open_journal_secret(&bytes) == Some(secret.clone()));
        // What a power cut can leave: zeros, a torn file, one flipped bit; and the bare
        // 32-byte secret of an older journal.
        assert!(open_journal_secret(&[0; 64]).is_none());
        assert!(open_journal_secret(&bytes[..40]).is_none());
        let mut flipped = bytes.clone();
        flipped[3] ^= 1;
        assert!(open_journal_secret(&flipped).is_none());
        assert!(open_journal_secret(&secret.0).is_none());
    }

    #[test]
    fn a_garbled_journal_starts_over_with_a_new_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (j, first, records) = Journal::open(dir.path(), None).unwrap();
        assert!(records.is_empty());
        drop(j);
        let mut rec = vec![1u8; 48];
        rec.extend_from_slice(&100u32.to_le_bytes());
        std::fs::write(dir.path().join("chunks"), rec).unwrap();
        // Reopened whole: the same secret and its record.
        let (j, again, records) = Journal::open(dir.path(), None).unwrap();
        assert!(again == first);
        assert_eq!(records.len(), 1);
        drop(j);
        // Garbled secret: never used; the records (of the old secret) are dropped.
        std::fs::write(dir.path().join("secret"), [0u8; 64]).unwrap();
        let (_, fresh, records) = Journal::open(dir.path(), None).unwrap();
        assert!(fresh != first && fresh.0 != [0; 32]);
        assert!(records.is_empty());
    }
}
