//! Where blob bytes and their metadata live: the [`BlobStore`] trait and its embedded
//! backend, [`FsBlobStore`] (one file per blob under `DATA/blobs/`, metadata in
//! `DATA/blobs/meta.sqlite`). [`super::s3::S3BlobStore`] implements it on an S3-compatible
//! object store that several relay nodes share.
//!
//! Calls block on disk; the service calls them from `spawn_blocking`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cove_wire::{BlobId, UserName};
use rusqlite::{Connection, OptionalExtension, params};

/// Metadata of a stored blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// The blob.
    pub id: BlobId,
    /// The user who created it (quota is charged to this user).
    pub owner: UserName,
    /// Declared total length in bytes.
    pub length: u64,
    /// Bytes stored so far (the next upload offset).
    pub offset: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// When the sweep deletes it, ms since the Unix epoch.
    pub expires_ms: u64,
}

impl BlobMeta {
    /// All declared bytes are stored.
    pub fn complete(&self) -> bool {
        self.offset == self.length
    }
}

/// Why a complete blob that was here is gone (the share page says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// Swept after its expiry.
    Expired,
    /// Deleted by its owner (a revoked drive link, emptied trash, a deleted account).
    Revoked,
}

/// How long [`FsBlobStore`] remembers why a complete blob went (a tombstone: the blob's id,
/// the reason and the time; nothing else).
pub const TOMBSTONE_RETENTION_MS: u64 = 90 * 24 * 3600 * 1000;

/// Why a blob-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    /// No such blob.
    #[error("unknown blob")]
    NotFound,
    /// Creating the blob would take the owner over the quota.
    #[error("quota exceeded: {used} bytes in use of {quota}, this upload needs {needed}")]
    QuotaExceeded {
        /// Bytes charged to the owner now.
        used: u64,
        /// The owner's quota.
        quota: u64,
        /// The new blob's length.
        needed: u64,
    },
    /// An append at an offset other than the stored length.
    #[error("offset mismatch: {stored} bytes stored")]
    OffsetMismatch {
        /// Bytes stored.
        stored: u64,
    },
    /// Another append to the same blob is running.
    #[error("another upload to this blob is in progress")]
    Busy,
    /// An append past the declared length.
    #[error("upload past the declared length of {length} bytes")]
    PastEnd {
        /// Declared length.
        length: u64,
    },
    /// Disk or database failure.
    #[error("blob storage I/O: {0}")]
    Io(#[from] io::Error),
    /// Database failure.
    #[error("blob metadata database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The S3-compatible object store failed or refused a request.
    #[error("object store: {0}")]
    ObjectStore(object_store::Error),
}

/// An append in progress; bytes become durable and count as stored at [`BlobWriter::commit`].
pub trait BlobWriter: Send {
    /// Appends bytes (fails with `PastEnd` beyond the declared length).
    fn write(&mut self, data: &[u8]) -> Result<(), BlobStoreError>;
    /// Makes what was written durable and records the new offset; returns it. When the blob
    /// is now complete, its expiry becomes `complete_expires_ms`. `NotFound` if the blob's
    /// record is gone.
    fn commit(self: Box<Self>, complete_expires_ms: u64) -> Result<BlobMeta, BlobStoreError>;
}

/// Storage of encrypted blobs.
pub trait BlobStore: Send + Sync + 'static {
    /// Creates an empty blob of declared `length` owned by `owner`, atomically checking that
    /// the owner's blobs (complete or not) plus `length` fit in `quota`.
    fn create(
        &self,
        id: BlobId,
        owner: &UserName,
        length: u64,
        quota: u64,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<BlobMeta, BlobStoreError>;
    /// A blob's metadata.
    fn meta(&self, id: &BlobId) -> Result<Option<BlobMeta>, BlobStoreError>;
    /// Starts an append at `offset`, which must equal the stored length. One writer per blob
    /// at a time (`Busy` otherwise).
    fn writer(&self, id: &BlobId, offset: u64) -> Result<Box<dyn BlobWriter>, BlobStoreError>;
    /// Reads the stored bytes from `start`. The service reads complete blobs only; the S3
    /// store serves nothing else (`NotFound` before completion, as its parts are assembled
    /// then).
    fn reader(&self, id: &BlobId, start: u64) -> Result<Box<dyn Read + Send>, BlobStoreError>;
    /// Bytes charged to `owner` (declared lengths of all its blobs).
    fn usage(&self, owner: &UserName) -> Result<u64, BlobStoreError>;
    /// Deletes a blob (no error if absent); `Busy` while an append to it is running.
    fn delete(&self, id: &BlobId) -> Result<(), BlobStoreError>;
    /// Deletes every blob whose expiry is at or before `now_ms`, except those with an append
    /// running (a later sweep gets them); returns how many were deleted.
    fn sweep(&self, now_ms: u64) -> Result<usize, BlobStoreError> {
        self.sweep_keeping(now_ms, &|_| false)
    }
    /// [`BlobStore::sweep`], but also keeps the expired blobs for which `keep` says so (the
    /// relay keeps the blobs a user's history-backup index holds).
    fn sweep_keeping(
        &self,
        now_ms: u64,
        keep: &dyn Fn(&BlobMeta) -> bool,
    ) -> Result<usize, BlobStoreError>;
    /// Deletes every blob `owner` created (its account is being deleted); one with an
    /// append running is made to expire now instead, so the next sweep deletes it. Returns
    /// how many were deleted now.
    fn delete_owner(&self, owner: &UserName) -> Result<usize, BlobStoreError>;
    /// Why blob `id` went, when it was complete and went within [`TOMBSTONE_RETENTION_MS`];
    /// `None` for a blob this store never had, forgot, or (the default, a store that keeps
    /// no tombstones) cannot tell.
    fn gone(&self, _id: &BlobId) -> Result<Option<Gone>, BlobStoreError> {
        Ok(None)
    }
}

/// Blob files under a directory, metadata in a SQLite file beside them.
pub struct FsBlobStore {
    dir: PathBuf,
    db: Arc<Mutex<Connection>>,
    /// Blobs with an append in progress.
    writing: Arc<Mutex<HashSet<BlobId>>>,
}

impl FsBlobStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, BlobStoreError> {
        std::fs::create_dir_all(dir)?;
        let db = Connection::open(dir.join("meta.sqlite"))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS blobs (
                 id BLOB PRIMARY KEY,
                 owner TEXT NOT NULL,
                 length INTEGER NOT NULL,
                 stored INTEGER NOT NULL,
                 created_ms INTEGER NOT NULL,
                 expires_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS blobs_owner ON blobs(owner);
             CREATE INDEX IF NOT EXISTS blobs_expiry ON blobs(expires_ms);
             CREATE TABLE IF NOT EXISTS gone (
                 id BLOB PRIMARY KEY,
                 reason INTEGER NOT NULL,
                 at_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS gone_at ON gone(at_ms);",
        )?;
        Ok(FsBlobStore {
            dir: dir.to_owned(),
            db: Arc::new(Mutex::new(db)),
            writing: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// Deletes a blob (no error if absent; `Busy` while an append runs); a complete one
    /// leaves a tombstone saying why, at `now_ms`.
    fn remove(&self, id: &BlobId, why: Gone, now_ms: u64) -> Result<(), BlobStoreError> {
        // Held throughout, so that no append starts between the check and the removal.
        let writing = self.writing()?;
        if writing.contains(id) {
            return Err(BlobStoreError::Busy);
        }
        let reason = match why {
            Gone::Expired => 1,
            Gone::Revoked => 2,
        };
        // The tombstone first: a crash before the removal leaves the blob served as before.
        self.db()?.execute(
            "INSERT OR REPLACE INTO gone (id, reason, at_ms)
             SELECT id, ?2, ?3 FROM blobs WHERE id = ?1 AND stored = length",
            params![id.0.as_slice(), reason, clamp_i64(now_ms)],
        )?;
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.db()?
            .execute("DELETE FROM blobs WHERE id = ?1", params![id.0.as_slice()])?;
        drop(writing);
        Ok(())
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    fn writing(&self) -> Result<std::sync::MutexGuard<'_, HashSet<BlobId>>, BlobStoreError> {
        self.writing
            .lock()
            .map_err(|_| BlobStoreError::Io(io::Error::other("lock poisoned")))
    }

    fn db(&self) -> Result<std::sync::MutexGuard<'_, Connection>, BlobStoreError> {
        self.db
            .lock()
            .map_err(|_| BlobStoreError::Io(io::Error::other("metadata lock poisoned")))
    }
}

/// Now, ms since the Unix epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_i64(v: u64) -> Result<i64, BlobStoreError> {
    i64::try_from(v).map_err(|_| BlobStoreError::Io(io::Error::other("value out of range")))
}

fn row_meta(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, String, i64, i64, i64, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn parse_meta(raw: (Vec<u8>, String, i64, i64, i64, i64)) -> Result<BlobMeta, BlobStoreError> {
    let bad = || BlobStoreError::Io(io::Error::other("corrupt blob metadata"));
    let (id, owner, length, stored, created, expires) = raw;
    Ok(BlobMeta {
        id: BlobId(id.as_slice().try_into().map_err(|_| bad())?),
        owner: UserName::new(owner).map_err(|_| bad())?,
        length: u64::try_from(length).map_err(|_| bad())?,
        offset: u64::try_from(stored).map_err(|_| bad())?,
        created_ms: u64::try_from(created).map_err(|_| bad())?,
        expires_ms: u64::try_from(expires).map_err(|_| bad())?,
    })
}

const SELECT: &str = "SELECT id, owner, length, stored, created_ms, expires_ms FROM blobs";

impl BlobStore for FsBlobStore {
    fn create(
        &self,
        id: BlobId,
        owner: &UserName,
        length: u64,
        quota: u64,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<BlobMeta, BlobStoreError> {
        let mut db = self.db()?;
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let used: i64 = tx.query_row(
            "SELECT COALESCE(SUM(length), 0) FROM blobs WHERE owner = ?1",
            params![owner.as_str()],
            |r| r.get(0),
        )?;
        let used = u64::try_from(used).unwrap_or(u64::MAX);
        if used.checked_add(length).is_none_or(|total| total > quota) {
            return Err(BlobStoreError::QuotaExceeded {
                used,
                quota,
                needed: length,
            });
        }
        File::create(self.path(&id))?;
        tx.execute(
            "INSERT INTO blobs (id, owner, length, stored, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, 0, ?4, ?5)",
            params![
                id.0.as_slice(),
                owner.as_str(),
                to_i64(length)?,
                to_i64(now_ms)?,
                to_i64(expires_ms)?
            ],
        )?;
        tx.commit()?;
        Ok(BlobMeta {
            id,
            owner: owner.clone(),
            length,
            offset: 0,
            created_ms: now_ms,
            expires_ms,
        })
    }

    fn meta(&self, id: &BlobId) -> Result<Option<BlobMeta>, BlobStoreError> {
        let db = self.db()?;
        let raw = db
            .query_row(
                &format!("{SELECT} WHERE id = ?1"),
                params![id.0.as_slice()],
                row_meta,
            )
            .optional()?;
        raw.map(parse_meta).transpose()
    }

    fn writer(&self, id: &BlobId, offset: u64) -> Result<Box<dyn BlobWriter>, BlobStoreError> {
        let meta = self.meta(id)?.ok_or(BlobStoreError::NotFound)?;
        if meta.offset != offset {
            return Err(BlobStoreError::OffsetMismatch {
                stored: meta.offset,
            });
        }
        if !self.writing()?.insert(*id) {
            return Err(BlobStoreError::Busy);
        }
        let guard = WritingGuard {
            set: Arc::clone(&self.writing),
            id: *id,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .open(self.path(id))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => BlobStoreError::NotFound,
                _ => BlobStoreError::Io(e),
            })?;
        // Bytes past the recorded offset (a crash between write and commit) are dropped.
        file.set_len(offset)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(FsWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            meta,
            written: 0,
            committed: false,
            db: Arc::clone(&self.db),
            _guard: guard,
        }))
    }

    fn reader(&self, id: &BlobId, start: u64) -> Result<Box<dyn Read + Send>, BlobStoreError> {
        let mut f = File::open(self.path(id)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BlobStoreError::NotFound,
            _ => BlobStoreError::Io(e),
        })?;
        f.seek(SeekFrom::Start(start))?;
        Ok(Box::new(f))
    }

    fn usage(&self, owner: &UserName) -> Result<u64, BlobStoreError> {
        let db = self.db()?;
        let used: i64 = db.query_row(
            "SELECT COALESCE(SUM(length), 0) FROM blobs WHERE owner = ?1",
            params![owner.as_str()],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(used).unwrap_or(0))
    }

    fn delete(&self, id: &BlobId) -> Result<(), BlobStoreError> {
        self.remove(id, Gone::Revoked, wall_ms())
    }

    fn gone(&self, id: &BlobId) -> Result<Option<Gone>, BlobStoreError> {
        let reason: Option<i64> = self
            .db()?
            .query_row(
                "SELECT reason FROM gone WHERE id = ?1",
                params![id.0.as_slice()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(reason.map(|r| if r == 1 { Gone::Expired } else { Gone::Revoked }))
    }

    fn delete_owner(&self, owner: &UserName) -> Result<usize, BlobStoreError> {
        let owned: Vec<Vec<u8>> = {
            let db = self.db()?;
            let mut stmt = db.prepare("SELECT id FROM blobs WHERE owner = ?1")?;
            let rows = stmt.query_map(params![owner.as_str()], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut n = 0;
        for raw in owned {
            let Ok(arr) = <[u8; 16]>::try_from(raw.as_slice()) else {
                continue;
            };
            match self.delete(&BlobId(arr)) {
                Ok(()) => n += 1,
                Err(BlobStoreError::Busy) => {
                    self.db()?.execute(
                        "UPDATE blobs SET expires_ms = 0 WHERE id = ?1",
                        params![raw.as_slice()],
                    )?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn sweep_keeping(
        &self,
        now_ms: u64,
        keep: &dyn Fn(&BlobMeta) -> bool,
    ) -> Result<usize, BlobStoreError> {
        let expired: Vec<BlobMeta> = {
            let db = self.db()?;
            let mut stmt = db.prepare(&format!("{SELECT} WHERE expires_ms <= ?1"))?;
            let rows = stmt.query_map(params![to_i64(now_ms)?], row_meta)?;
            let raw: Vec<_> = rows.collect::<Result<_, _>>()?;
            raw.into_iter().map(parse_meta).collect::<Result<_, _>>()?
        };
        self.db()?.execute(
            "DELETE FROM gone WHERE at_ms < ?1",
            params![clamp_i64(now_ms.saturating_sub(TOMBSTONE_RETENTION_MS))],
        )?;
        let mut n = 0;
        for meta in expired {
            if keep(&meta) {
                continue;
            }
            match self.remove(&meta.id, Gone::Expired, now_ms) {
                Ok(()) => n += 1,
                // An append is running: the next sweep deletes it if it is still
                // expired then (a completed upload gets a new expiry).
                Err(BlobStoreError::Busy) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

struct WritingGuard {
    set: Arc<Mutex<HashSet<BlobId>>>,
    id: BlobId,
}

impl Drop for WritingGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.id);
        }
    }
}

struct FsWriter {
    file: BufWriter<File>,
    meta: BlobMeta,
    written: u64,
    /// Set once the offset was recorded; otherwise `Drop` records it (a handler cancelled
    /// mid-request still keeps what reached the disk).
    committed: bool,
    db: Arc<Mutex<Connection>>,
    _guard: WritingGuard,
}

impl BlobWriter for FsWriter {
    fn write(&mut self, data: &[u8]) -> Result<(), BlobStoreError> {
        let room = self.meta.length - self.meta.offset - self.written;
        if data.len() as u64 > room {
            return Err(BlobStoreError::PastEnd {
                length: self.meta.length,
            });
        }
        self.file.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn commit(mut self: Box<Self>, complete_expires_ms: u64) -> Result<BlobMeta, BlobStoreError> {
        self.persist(complete_expires_ms)
    }
}

impl FsWriter {
    fn persist(&mut self, complete_expires_ms: u64) -> Result<BlobMeta, BlobStoreError> {
        self.committed = true;
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        let mut meta = self.meta.clone();
        meta.offset += self.written;
        let db = self
            .db
            .lock()
            .map_err(|_| BlobStoreError::Io(io::Error::other("metadata lock poisoned")))?;
        // A complete blob gets its new expiry, unless `delete_owner` made it expire now
        // (zero) while this append ran: it stays doomed.
        let expires: Option<i64> = db
            .query_row(
                "UPDATE blobs SET stored = ?2,
                     expires_ms = CASE WHEN expires_ms = 0 THEN 0
                                       WHEN ?4 THEN ?3 ELSE expires_ms END
                 WHERE id = ?1 RETURNING expires_ms",
                params![
                    meta.id.0.as_slice(),
                    to_i64(meta.offset)?,
                    to_i64(complete_expires_ms)?,
                    meta.complete()
                ],
                |r| r.get(0),
            )
            .optional()?;
        let expires = expires.ok_or(BlobStoreError::NotFound)?;
        meta.expires_ms = u64::try_from(expires).unwrap_or(0);
        Ok(meta)
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Keeps the current expiry: a blob completed this way expires like an
            // unfinished upload unless re-committed; best effort.
            let expires = self.meta.expires_ms;
            let _ = self.persist(expires);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn alice() -> UserName {
        UserName::new("alice").unwrap()
    }

    #[test]
    fn a_blob_being_appended_is_neither_swept_nor_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let id = BlobId([1; 16]);
        store.create(id, &alice(), 4, 100, 0, 10).unwrap();
        let mut writer = store.writer(&id, 0).unwrap();
        writer.write(b"ab").unwrap();
        // Expired, but an append is running: kept.
        assert_eq!(store.sweep(1_000).unwrap(), 0);
        assert!(matches!(store.delete(&id), Err(BlobStoreError::Busy)));
        assert!(dir.path().join(id.to_hex()).exists());
        // The append's bytes are recorded (an incomplete blob keeps its expiry).
        let meta = writer.commit(50).unwrap();
        assert_eq!((meta.offset, meta.expires_ms), (2, 10));
        assert_eq!(store.meta(&id).unwrap(), Some(meta));
        // Once the append is over, the next sweep deletes it.
        assert_eq!(store.sweep(1_000).unwrap(), 1);
        assert_eq!(store.meta(&id).unwrap(), None);
        assert!(!dir.path().join(id.to_hex()).exists());
        assert_eq!(store.usage(&alice()).unwrap(), 0);
    }

    #[test]
    fn an_incomplete_blob_is_swept_at_its_expiry_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let (stale, done) = (BlobId([2; 16]), BlobId([3; 16]));
        store.create(stale, &alice(), 4, 100, 0, 10).unwrap();
        store.create(done, &alice(), 2, 100, 0, 10).unwrap();
        let mut w = store.writer(&stale, 0).unwrap();
        w.write(b"a").unwrap();
        w.commit(500).unwrap();
        let mut w = store.writer(&done, 0).unwrap();
        w.write(b"ok").unwrap();
        assert_eq!(
            w.commit(500).unwrap().expires_ms,
            500,
            "complete: new expiry"
        );
        assert_eq!(store.sweep(9).unwrap(), 0);
        assert_eq!(store.sweep(10).unwrap(), 1);
        assert_eq!(store.meta(&stale).unwrap(), None);
        assert!(!dir.path().join(stale.to_hex()).exists());
        assert!(store.meta(&done).unwrap().is_some_and(|m| m.complete()));
        assert_eq!(store.usage(&alice()).unwrap(), 2);
    }

    /// A complete blob leaves a tombstone saying why it went (its owner's delete: revoked;
    /// the sweep: expired), kept 90 days; an incomplete one, or one never here, leaves none.
    #[test]
    fn complete_blobs_leave_a_tombstone_saying_why_they_went() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let (revoked, expired, partial) = (BlobId([4; 16]), BlobId([5; 16]), BlobId([6; 16]));
        for id in [revoked, expired, partial] {
            store.create(id, &alice(), 2, 100, 0, 10).unwrap();
        }
        for id in [revoked, expired] {
            let mut w = store.writer(&id, 0).unwrap();
            w.write(b"ok").unwrap();
            w.commit(500).unwrap();
        }
        store.delete(&revoked).unwrap();
        store.delete(&partial).unwrap();
        assert_eq!(store.sweep(500).unwrap(), 1);
        assert_eq!(store.gone(&revoked).unwrap(), Some(Gone::Revoked));
        assert_eq!(store.gone(&expired).unwrap(), Some(Gone::Expired));
        assert_eq!(store.gone(&partial).unwrap(), None);
        assert_eq!(store.gone(&BlobId([7; 16])).unwrap(), None);
        // The expired one's tombstone (at 500) is kept 90 days, then forgotten.
        store.sweep(500 + TOMBSTONE_RETENTION_MS).unwrap();
        assert_eq!(store.gone(&expired).unwrap(), Some(Gone::Expired));
        store.sweep(501 + TOMBSTONE_RETENTION_MS).unwrap();
        assert_eq!(store.gone(&expired).unwrap(), None);
    }
}
