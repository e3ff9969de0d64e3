//! [`SqliteStore`]: the embedded, durable [`RelayStore`] (one SQLite file in WAL mode).
//!
//! Durability: WAL with `synchronous=FULL` by default, so a transaction is on stable storage
//! (the WAL is fsynced) before the call that made it returns; an acknowledged post survives
//! `kill -9` and power loss. [`Synchronous::Normal`] is offered for deployments that accept
//! losing the last transactions on power loss (never on a process crash: in WAL mode a
//! committed transaction has been written to the OS before `COMMIT` returns).
//! [`RelayStore::append_batch`] writes all its posts in one transaction, so a batch costs one
//! fsync however many posts it carries; that is how the relay coalesces writes.
//!
//! Hot path: each group's epoch, log head and member list are cached in memory (loaded on
//! first use, replaced only after a transaction commits), so an application message costs
//! one indexed insert into the log and no per-recipient row. Per-device state in a group is
//! only its cursor (`members.cursor`).
//!
//! Acknowledgements are buffered: [`RelayStore::ack`] checks the ack, records it in memory
//! (where [`RelayStore::cursor`] sees it at once) and returns without a transaction. The
//! buffer is written by the next `append_batch` (in the same transaction, so it costs no
//! extra sync), by [`RelayStore::flush`], when it holds [`ACK_FLUSH_ENTRIES`] entries or
//! is [`ACK_FLUSH_AGE`] old, and on drop. [`RelayStore::try_ack_buffered`] is the same
//! for a member's group ack from the cache alone; it declines (so the relay calls `ack` off
//! its async runtime) whenever that would touch the file, including a due flush. A crash
//! loses at most the buffered acks, which only means those entries are delivered again
//! (delivery is at-least-once and clients drop duplicates); it never loses a post. Without
//! this every ack would cost a sync, and acks come once per delivered entry and device.
//!
//! Concurrency: one write connection behind a mutex (every write transaction is
//! `BEGIN IMMEDIATE`, so it also excludes other processes), a few read connections, whose
//! reads in WAL mode run beside the writer and each other, and the group cache behind a read-write lock,
//! so membership checks never wait for a sync. Lock order: writer, groups, acks. The cache
//! assumes this process is the only writer of the file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};
use std::time::{Duration, Instant};

use cove_wire::limits::MAX_DEVICES_PER_USER;
use cove_wire::{
    ClaimedKeyPackage, DeviceId, DeviceInfo, DeviceKey, EntryKind, Epoch, GroupEntry, GroupId,
    GroupSummary, InboxEntry, InboxKind, Payload, PostKind, Seq, Stream, UserName,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::rules::{self, GroupState};
use super::{Appended, NewPost, RelayStore, Stock, StoreError, Welcome};

/// How hard SQLite syncs a committed transaction to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync the WAL on every commit: survives process crashes and power loss (default).
    #[default]
    Full,
    /// fsync only at checkpoints: survives process crashes (`kill -9`); on power loss the
    /// last committed transactions may be lost (the database stays consistent).
    Normal,
}

/// Options for [`SqliteStore::open_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SqliteOptions {
    /// The sync level; see [`Synchronous`].
    pub synchronous: Synchronous,
}

/// Read connections per store (reads run side by side with each other and with the writer).
const READERS: usize = 4;

/// Buffered acknowledgements are written once this many are pending.
pub const ACK_FLUSH_ENTRIES: usize = 4096;
/// Buffered acknowledgements are written once the oldest is this old (checked on each ack).
pub const ACK_FLUSH_AGE: Duration = Duration::from_secs(1);

/// The SQLite relay store.
pub struct SqliteStore {
    /// The write connection.
    writer: Mutex<Connection>,
    /// The read connection.
    /// Read connections; a read takes a free one, so reads run side by side.
    readers: Vec<Mutex<Connection>>,
    /// Where the next read that finds no free connection waits.
    next_reader: AtomicUsize,
    /// Committed state of every group used since open. The writer replaces an entry after
    /// its transaction commits; a reader that loads a missing entry inserts it only if it is
    /// still missing, so a load that raced with a commit never overwrites newer state.
    groups: RwLock<HashMap<GroupId, GroupState>>,
    /// Acknowledgements not yet written.
    acks: Mutex<PendingAcks>,
}

/// Acknowledged cursors not yet written. An entry stays until a transaction that wrote it
/// (or a later value) has committed, so a cursor is always in the buffer or on disk.
#[derive(Default)]
struct PendingAcks {
    group: HashMap<(GroupId, DeviceId), Seq>,
    inbox: HashMap<DeviceId, Seq>,
    /// When the oldest pending ack arrived.
    since: Option<Instant>,
}

impl PendingAcks {
    fn len(&self) -> usize {
        self.group.len() + self.inbox.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> PendingAcks {
        PendingAcks {
            group: self.group.clone(),
            inbox: self.inbox.clone(),
            since: None,
        }
    }

    /// Drops the entries a committed transaction wrote (unless acked further since).
    fn written(&mut self, done: &PendingAcks) {
        for (k, seq) in &done.group {
            if self.group.get(k).is_some_and(|s| s <= seq) {
                self.group.remove(k);
            }
        }
        for (k, seq) in &done.inbox {
            if self.inbox.get(k).is_some_and(|s| s <= seq) {
                self.inbox.remove(k);
            }
        }
        if self.is_empty() {
            self.since = None;
        }
    }
}

/// The schema, one entry per version; entry `i` migrates from version `i` to `i + 1`.
/// Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "
    CREATE TABLE users (
        name TEXT PRIMARY KEY
    ) WITHOUT ROWID;
    -- AUTOINCREMENT: device ids are never reused.
    CREATE TABLE devices (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL REFERENCES users(name),
        key BLOB NOT NULL,
        inbox_cursor INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX devices_by_user ON devices(user, id);
    CREATE TABLE key_packages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device INTEGER NOT NULL REFERENCES devices(id),
        data BLOB NOT NULL
    );
    CREATE INDEX key_packages_by_device ON key_packages(device, id);
    CREATE TABLE last_resort_key_packages (
        device INTEGER PRIMARY KEY REFERENCES devices(id),
        data BLOB NOT NULL
    );
    CREATE TABLE groups (
        id BLOB PRIMARY KEY,
        epoch INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Current members and their cursor (last acknowledged seq) in the group.
    CREATE TABLE members (
        group_id BLOB NOT NULL,
        device INTEGER NOT NULL,
        cursor INTEGER NOT NULL,
        PRIMARY KEY (group_id, device)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_device ON members(device, group_id);
    -- kind: 0 application, 1 proposal, 2 commit (added/removed: 8-byte big-endian ids).
    -- Rows carry payloads up to 1 MiB: a rowid table (appends go to its last leaf) with a
    -- small unique index for reads by (group, seq), rather than a WITHOUT ROWID table.
    CREATE TABLE group_log (
        id INTEGER PRIMARY KEY,
        group_id BLOB NOT NULL,
        seq INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        sender INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        added BLOB,
        removed BLOB,
        received_at_ms INTEGER NOT NULL,
        payload BLOB NOT NULL,
        UNIQUE (group_id, seq)
    );
    -- A Welcome is stored once however many devices it adds.
    CREATE TABLE inbox_payloads (
        id INTEGER PRIMARY KEY,
        data BLOB NOT NULL
    );
    -- kind: 0 Welcome (group_id, commit_seq, sender set).
    CREATE TABLE inbox (
        device INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        group_id BLOB,
        commit_seq INTEGER,
        sender INTEGER,
        received_at_ms INTEGER NOT NULL,
        payload INTEGER NOT NULL REFERENCES inbox_payloads(id),
        PRIMARY KEY (device, seq)
    ) WITHOUT ROWID;
    ",
    // Version 2: join seqs, and removed devices that have not acknowledged their removal.
    "
    -- The seq of the commit that added the member (0 for the creator, and for members that
    -- joined before version 2); Fetch starts there.
    ALTER TABLE members ADD COLUMN joined INTEGER NOT NULL DEFAULT 0;
    -- A removed device's cursor, kept until it acks the commit that removed it (removed_at).
    CREATE TABLE departures (
        group_id BLOB NOT NULL,
        device INTEGER NOT NULL,
        cursor INTEGER NOT NULL,
        removed_at INTEGER NOT NULL,
        PRIMARY KEY (group_id, device)
    ) WITHOUT ROWID;
    CREATE INDEX departures_by_device ON departures(device, group_id);
    ",
];

const KIND_APPLICATION: i64 = 0;
const KIND_PROPOSAL: i64 = 1;
const KIND_COMMIT: i64 = 2;
const INBOX_WELCOME: i64 = 0;

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with the default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the store at `path`, migrating its schema to the current
    /// version. Fails if the file was written by a newer relay.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let mut conn = Connection::open(path)?;
        configure(&conn, options)?;
        migrate(&mut conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            configure(&reader, options)?;
            reader.pragma_update(None, "query_only", true)?;
            readers.push(Mutex::new(reader));
        }
        Ok(SqliteStore {
            writer: Mutex::new(conn),
            readers,
            next_reader: AtomicUsize::new(0),
            groups: RwLock::new(HashMap::new()),
            acks: Mutex::new(PendingAcks::default()),
        })
    }

    /// The schema version this build writes.
    pub fn schema_version() -> u32 {
        u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
    }

    fn writer(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Backend("writer lock poisoned".into()))
    }

    fn reader(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        let poisoned = || StoreError::Backend("reader lock poisoned".into());
        for reader in &self.readers {
            match reader.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len().max(1);
        self.readers
            .get(i)
            .ok_or_else(poisoned)?
            .lock()
            .map_err(|_| poisoned())
    }

    fn acks(&self) -> Result<MutexGuard<'_, PendingAcks>, StoreError> {
        self.acks
            .lock()
            .map_err(|_| StoreError::Backend("ack buffer lock poisoned".into()))
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the write connection and commits.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` on the committed state of `group`, loading it into the cache if needed.
    fn with_group<T>(
        &self,
        group: GroupId,
        f: impl FnOnce(&GroupState) -> T,
    ) -> Result<T, StoreError> {
        let poisoned = || StoreError::Backend("group cache lock poisoned".into());
        if let Some(state) = self.groups.read().map_err(|_| poisoned())?.get(&group) {
            return Ok(f(state));
        }
        let loaded = {
            let conn = self.reader()?;
            let tx = conn.unchecked_transaction()?;
            load_group(&tx, group)?.ok_or(StoreError::UnknownGroup)?
        };
        let mut cache = self.groups.write().map_err(|_| poisoned())?;
        Ok(f(cache.entry(group).or_insert(loaded)))
    }

    /// Writes the buffered acknowledgements now.
    /// An ack in a group `device` is not a member of: allowed up to the commit that removed
    /// it while its departure record lasts, written at once (rare), and dropping the record
    /// when it reaches that commit.
    fn ack_departure(&self, device: DeviceId, group: GroupId, seq: Seq) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = existing_device(&tx, device)?;
        let (_, removed_at) = departure(&tx, group, id)?.ok_or(StoreError::NotMember)?;
        if seq.0 > to_u64(removed_at)? {
            return Err(StoreError::Invalid("ack past the commit that removed it"));
        }
        let args = params![group.0.as_slice(), id, to_i64(seq.0)?];
        tx.prepare_cached(
            "UPDATE departures SET cursor = MAX(cursor, ?3) WHERE group_id = ?1 AND device = ?2",
        )?
        .execute(args)?;
        tx.prepare_cached(
            "DELETE FROM departures WHERE group_id = ?1 AND device = ?2 AND cursor >= removed_at",
        )?
        .execute(params![group.0.as_slice(), id])?;
        tx.commit()?;
        Ok(())
    }

    fn flush_acks(&self) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let pending = self.acks()?.snapshot();
        if pending.is_empty() {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        write_acks(&tx, &pending)?;
        tx.commit()?;
        self.acks()?.written(&pending);
        Ok(())
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush_acks() {
            tracing::error!(error = %e, "relay store: could not write buffered acks on close");
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        tracing::error!(error = %e, "relay store: SQLite failed");
        StoreError::Backend(e.to_string())
    }
}

impl RelayStore for SqliteStore {
    fn register_user(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.write(|tx| {
            if user_exists(tx, user)? {
                return Err(StoreError::UserTaken);
            }
            tx.prepare_cached("INSERT INTO users (name) VALUES (?1)")?
                .execute(params![user.as_str()])?;
            insert_device(tx, user, key)
        })
    }

    fn add_device(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.write(|tx| {
            if !user_exists(tx, user)? {
                return Err(StoreError::UnknownUser);
            }
            let count: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM devices WHERE user = ?1")?
                .query_row(params![user.as_str()], |r| r.get(0))?;
            if usize::try_from(count).map_or(true, |c| c >= MAX_DEVICES_PER_USER) {
                return Err(StoreError::TooManyDevices);
            }
            insert_device(tx, user, key)
        })
    }

    fn devices(&self, user: &UserName) -> Result<Vec<DeviceInfo>, StoreError> {
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        if !user_exists(&tx, user)? {
            return Err(StoreError::UnknownUser);
        }
        let mut stmt =
            tx.prepare_cached("SELECT id, key FROM devices WHERE user = ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![user.as_str()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, key) = row?;
            out.push(DeviceInfo {
                device: device_id(id)?,
                key: device_key(&key)?,
            });
        }
        Ok(out)
    }

    fn device(&self, device: DeviceId) -> Result<Option<(UserName, DeviceKey)>, StoreError> {
        let conn = self.reader()?;
        let Ok(id) = i64::try_from(device.0) else {
            return Ok(None);
        };
        let row = conn
            .prepare_cached("SELECT user, key FROM devices WHERE id = ?1")?
            .query_row(params![id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?;
        match row {
            None => Ok(None),
            Some((user, key)) => Ok(Some((
                UserName::new(user).map_err(|_| corrupt("user name"))?,
                device_key(&key)?,
            ))),
        }
    }

    fn upload_key_packages(
        &self,
        device: DeviceId,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Stock, StoreError> {
        self.write(|tx| {
            let id = existing_device(tx, device)?;
            let before = stock(tx, id)?;
            rules::check_upload(
                usize::try_from(before.remaining).unwrap_or(usize::MAX),
                &key_packages,
                last_resort.as_ref(),
            )?;
            let mut insert =
                tx.prepare_cached("INSERT INTO key_packages (device, data) VALUES (?1, ?2)")?;
            for kp in &key_packages {
                insert.execute(params![id, kp])?;
            }
            if let Some(kp) = &last_resort {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO last_resort_key_packages (device, data) VALUES (?1, ?2)",
                )?
                .execute(params![id, kp])?;
            }
            stock(tx, id)
        })
    }

    fn claim_key_packages(&self, user: &UserName) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        self.write(|tx| {
            if !user_exists(tx, user)? {
                return Err(StoreError::UnknownUser);
            }
            let ids: Vec<i64> = tx
                .prepare_cached("SELECT id FROM devices WHERE user = ?1 ORDER BY id")?
                .query_map(params![user.as_str()], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let normal = tx
                    .prepare_cached(
                        "SELECT id, data FROM key_packages WHERE device = ?1 ORDER BY id LIMIT 1",
                    )?
                    .query_row(params![id], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .optional()?;
                if let Some((kp_id, data)) = normal {
                    tx.prepare_cached("DELETE FROM key_packages WHERE id = ?1")?
                        .execute(params![kp_id])?;
                    out.push(ClaimedKeyPackage {
                        device: device_id(id)?,
                        key_package: Payload(data),
                        last_resort: false,
                    });
                    continue;
                }
                let fallback = tx
                    .prepare_cached("SELECT data FROM last_resort_key_packages WHERE device = ?1")?
                    .query_row(params![id], |r| r.get::<_, Vec<u8>>(0))
                    .optional()?;
                if let Some(data) = fallback {
                    out.push(ClaimedKeyPackage {
                        device: device_id(id)?,
                        key_package: Payload(data),
                        last_resort: true,
                    });
                }
            }
            Ok(out)
        })
    }

    fn key_package_stock(&self, device: DeviceId) -> Result<Stock, StoreError> {
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        let id = existing_device(&tx, device)?;
        stock(&tx, id)
    }

    fn create_group(&self, group: GroupId, creator: DeviceId) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let creator_id = existing_device(&tx, creator)?;
        if group_epoch(&tx, group)?.is_some() {
            return Err(StoreError::GroupExists);
        }
        tx.prepare_cached("INSERT INTO groups (id, epoch) VALUES (?1, 0)")?
            .execute(params![group.0.as_slice()])?;
        tx.prepare_cached("INSERT INTO members (group_id, device, cursor) VALUES (?1, ?2, 0)")?
            .execute(params![group.0.as_slice(), creator_id])?;
        tx.commit()?;
        self.groups
            .write()
            .map_err(|_| StoreError::Backend("group cache lock poisoned".into()))?
            .insert(group, GroupState::new(creator));
        Ok(())
    }

    fn is_member(&self, group: GroupId, device: DeviceId) -> Result<bool, StoreError> {
        self.with_group(group, |state| state.is_member(device))
    }

    fn groups_of(&self, device: DeviceId) -> Result<Vec<GroupSummary>, StoreError> {
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        let id = existing_device(&tx, device)?;
        let mut stmt = tx.prepare_cached(
            "SELECT g.id, g.epoch FROM members m JOIN groups g ON g.id = m.group_id
             WHERE m.device = ?1 ORDER BY g.id",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (group, epoch) = row?;
            out.push(GroupSummary {
                group: group_id(&group)?,
                epoch: Epoch(to_u64(epoch)?),
            });
        }
        Ok(out)
    }

    fn append_batch(&self, posts: Vec<NewPost>) -> Vec<Result<Appended, StoreError>> {
        let count = posts.len();
        let all_failed = |msg: String| -> Vec<Result<Appended, StoreError>> {
            (0..count)
                .map(|_| Err(StoreError::Backend(msg.clone())))
                .collect()
        };
        if count == 0 {
            return Vec::new();
        }
        let mut conn = match self.writer() {
            Ok(g) => g,
            Err(e) => return all_failed(e.to_string()),
        };
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return all_failed(StoreError::from(e).to_string()),
        };
        // Buffered acks ride along in this transaction (no extra sync).
        let acks = match self.acks() {
            Ok(acks) => acks.snapshot(),
            Err(e) => return all_failed(e.to_string()),
        };
        if let Err(e) = write_acks(&tx, &acks) {
            return all_failed(e.to_string());
        }
        // Group states as this transaction changes them; merged into the cache on commit.
        let mut touched: HashMap<GroupId, GroupState> = HashMap::new();
        let mut results = Vec::with_capacity(count);
        for post in posts {
            match append_one(&tx, &self.groups, &mut touched, post) {
                Err(StoreError::Backend(msg)) => {
                    // Dropping the transaction rolls back every post of the batch.
                    drop(tx);
                    return all_failed(msg);
                }
                other => results.push(other),
            }
        }
        if let Err(e) = tx.commit() {
            return all_failed(StoreError::from(e).to_string());
        }
        match self.groups.write() {
            Ok(mut cache) => cache.extend(touched),
            Err(_) => return all_failed("group cache lock poisoned".into()),
        }
        if let Ok(mut pending) = self.acks() {
            pending.written(&acks);
        }
        results
    }

    fn read_group(
        &self,
        group: GroupId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        if group_epoch(&tx, group)?.is_none() {
            return Err(StoreError::UnknownGroup);
        }
        let limit = rules::capped_limit(limit);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = i64::try_from(after.0).unwrap_or(i64::MAX);
        let mut stmt = tx.prepare_cached(
            "SELECT seq, epoch, sender, kind, added, removed, received_at_ms, payload
             FROM group_log WHERE group_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![group.0.as_slice(), after, limit])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let kind = match r.get::<_, i64>(3)? {
                KIND_APPLICATION => EntryKind::Application,
                KIND_PROPOSAL => EntryKind::Proposal,
                KIND_COMMIT => EntryKind::Commit {
                    added: id_list_from_blob(r.get::<_, Option<Vec<u8>>>(4)?)?.into(),
                    removed: id_list_from_blob(r.get::<_, Option<Vec<u8>>>(5)?)?.into(),
                },
                _ => return Err(corrupt("group entry kind")),
            };
            out.push(GroupEntry {
                group,
                seq: Seq(to_u64(r.get(0)?)?),
                epoch: Epoch(to_u64(r.get(1)?)?),
                sender: device_id(r.get(2)?)?,
                kind,
                received_at_ms: to_u64(r.get(6)?)?,
                payload: Payload(r.get(7)?),
            });
        }
        Ok(out)
    }

    fn read_inbox(
        &self,
        device: DeviceId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        let id = existing_device(&tx, device)?;
        let limit = rules::capped_limit(limit);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = i64::try_from(after.0).unwrap_or(i64::MAX);
        let mut stmt = tx.prepare_cached(
            "SELECT i.seq, i.kind, i.group_id, i.commit_seq, i.sender, i.received_at_ms, p.data
             FROM inbox i JOIN inbox_payloads p ON p.id = i.payload
             WHERE i.device = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![id, after, limit])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let kind = match r.get::<_, i64>(1)? {
                INBOX_WELCOME => InboxKind::Welcome {
                    group: group_id(&r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default())?,
                    commit_seq: Seq(to_u64(r.get::<_, Option<i64>>(3)?.unwrap_or(-1))?),
                    sender: device_id(r.get::<_, Option<i64>>(4)?.unwrap_or(-1))?,
                },
                _ => return Err(corrupt("inbox entry kind")),
            };
            out.push(InboxEntry {
                seq: Seq(to_u64(r.get(0)?)?),
                kind,
                received_at_ms: to_u64(r.get(5)?)?,
                payload: Payload(r.get(6)?),
            });
        }
        Ok(out)
    }

    fn joined(&self, group: GroupId, device: DeviceId) -> Result<Option<Seq>, StoreError> {
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        let id = existing_device(&tx, device)?;
        if group_epoch(&tx, group)?.is_none() {
            return Err(StoreError::UnknownGroup);
        }
        let joined: Option<i64> = tx
            .prepare_cached("SELECT joined FROM members WHERE group_id = ?1 AND device = ?2")?
            .query_row(params![group.0.as_slice(), id], |r| r.get(0))
            .optional()?;
        joined.map(|j| to_u64(j).map(Seq)).transpose()
    }

    fn departures(&self, device: DeviceId) -> Result<Vec<(GroupId, Seq)>, StoreError> {
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        let id = existing_device(&tx, device)?;
        let mut stmt = tx.prepare_cached(
            "SELECT group_id, removed_at FROM departures WHERE device = ?1 ORDER BY group_id",
        )?;
        let mut rows = stmt.query(params![id])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push((group_id(&r.get::<_, Vec<u8>>(0)?)?, Seq(to_u64(r.get(1)?)?)));
        }
        Ok(out)
    }

    fn departure_cursor(
        &self,
        device: DeviceId,
        group: GroupId,
    ) -> Result<Option<Seq>, StoreError> {
        // A re-added member's acks are buffered like any member's; they move the record's
        // cursor when written (and drop the record on reaching the removal commit).
        let pending = self.acks()?.group.get(&(group, device)).copied();
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        let id = existing_device(&tx, device)?;
        if group_epoch(&tx, group)?.is_none() {
            return Err(StoreError::UnknownGroup);
        }
        let Some((cursor, removed_at)) = departure(&tx, group, id)? else {
            return Ok(None);
        };
        let cursor = Seq(to_u64(cursor)?).max(pending.unwrap_or_default());
        Ok((cursor < Seq(to_u64(removed_at)?)).then_some(cursor))
    }

    fn cursor(&self, device: DeviceId, stream: Stream) -> Result<Seq, StoreError> {
        // The buffer first, then the file: an ack leaves the buffer only after it is on disk.
        let pending = {
            let acks = self.acks()?;
            match stream {
                Stream::Inbox => acks.inbox.get(&device).copied(),
                Stream::Group(g) => acks.group.get(&(g, device)).copied(),
            }
        };
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        let id = existing_device(&tx, device)?;
        let cursor = match stream {
            Stream::Inbox => tx
                .prepare_cached("SELECT inbox_cursor FROM devices WHERE id = ?1")?
                .query_row(params![id], |r| r.get::<_, i64>(0))?,
            Stream::Group(g) => {
                if group_epoch(&tx, g)?.is_none() {
                    return Err(StoreError::UnknownGroup);
                }
                match member_cursor(&tx, g, id)? {
                    Some(cursor) => cursor,
                    None => departure(&tx, g, id)?
                        .map(|(cursor, _)| cursor)
                        .ok_or(StoreError::NotMember)?,
                }
            }
        };
        Ok(Seq(to_u64(cursor)?).max(pending.unwrap_or_default()))
    }

    fn ack(&self, device: DeviceId, stream: Stream, seq: Seq) -> Result<(), StoreError> {
        match stream {
            Stream::Inbox => {
                let conn = self.reader()?;
                let tx = conn.unchecked_transaction()?;
                let id = existing_device(&tx, device)?;
                let end: i64 = tx
                    .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM inbox WHERE device = ?1")?
                    .query_row(params![id], |r| r.get(0))?;
                if seq.0 > to_u64(end)? {
                    return Err(StoreError::Invalid("ack past the end of the inbox"));
                }
            }
            Stream::Group(g) => {
                // The hot path: a member (so an existing device) acks from the cache alone.
                let (member, end) = match self.with_group(g, |s| (s.is_member(device), s.last_seq))
                {
                    Err(StoreError::UnknownGroup) => {
                        existing_device(&*self.reader()?, device)?;
                        return Err(StoreError::UnknownGroup);
                    }
                    other => other?,
                };
                if !member {
                    return self.ack_departure(device, g, seq);
                }
                if seq > end {
                    return Err(StoreError::Invalid("ack past the end of the group log"));
                }
            }
        }
        let flush_now = {
            let mut acks = self.acks()?;
            let slot = match stream {
                Stream::Inbox => acks.inbox.entry(device).or_default(),
                Stream::Group(g) => acks.group.entry((g, device)).or_default(),
            };
            *slot = (*slot).max(seq);
            let since = *acks.since.get_or_insert_with(Instant::now);
            acks.len() >= ACK_FLUSH_ENTRIES || since.elapsed() >= ACK_FLUSH_AGE
        };
        if flush_now {
            self.flush_acks()?;
        }
        Ok(())
    }

    fn try_ack_buffered(
        &self,
        device: DeviceId,
        stream: Stream,
        seq: Seq,
    ) -> Option<Result<(), StoreError>> {
        // Group acks of members only, from the cache alone; never waits for a lock (the
        // group cache is written after a commit, the ack buffer is locked only briefly).
        let Stream::Group(g) = stream else {
            return None;
        };
        let (member, end) = {
            let cache = self.groups.try_read().ok()?;
            let state = cache.get(&g)?;
            (state.is_member(device), state.last_seq)
        };
        if !member {
            return None;
        }
        if seq > end {
            return Some(Err(StoreError::Invalid(
                "ack past the end of the group log",
            )));
        }
        let mut acks = self.acks.try_lock().ok()?;
        // Leave a due flush (and the ack that makes it due) to `ack` off the runtime.
        let due = acks.len().saturating_add(1) >= ACK_FLUSH_ENTRIES
            || acks.since.is_some_and(|t| t.elapsed() >= ACK_FLUSH_AGE);
        if due {
            return None;
        }
        let slot = acks.group.entry((g, device)).or_default();
        *slot = (*slot).max(seq);
        acks.since.get_or_insert_with(Instant::now);
        Some(Ok(()))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flush_acks()
    }
}

/// Writes buffered acknowledgements (never moving a cursor backwards; a cursor of a device
/// that has left the group meanwhile has no row and is dropped).
fn write_acks(tx: &Transaction<'_>, acks: &PendingAcks) -> Result<(), StoreError> {
    if acks.is_empty() {
        return Ok(());
    }
    let mut group = tx.prepare_cached(
        "UPDATE members SET cursor = MAX(cursor, ?3) WHERE group_id = ?1 AND device = ?2",
    )?;
    for ((g, d), seq) in &acks.group {
        group.execute(params![g.0.as_slice(), to_i64(d.0)?, to_i64(seq.0)?])?;
    }
    let mut departed = tx.prepare_cached(
        "UPDATE departures SET cursor = MAX(cursor, ?3) WHERE group_id = ?1 AND device = ?2",
    )?;
    let mut done = tx.prepare_cached(
        "DELETE FROM departures WHERE group_id = ?1 AND device = ?2 AND cursor >= removed_at",
    )?;
    for ((g, d), seq) in &acks.group {
        departed.execute(params![g.0.as_slice(), to_i64(d.0)?, to_i64(seq.0)?])?;
        done.execute(params![g.0.as_slice(), to_i64(d.0)?])?;
    }
    let mut inbox =
        tx.prepare_cached("UPDATE devices SET inbox_cursor = MAX(inbox_cursor, ?2) WHERE id = ?1")?;
    for (d, seq) in &acks.inbox {
        inbox.execute(params![to_i64(d.0)?, to_i64(seq.0)?])?;
    }
    Ok(())
}

/// Checks and, if accepted, writes one post inside the batch transaction.
fn append_one(
    tx: &Transaction<'_>,
    cache: &RwLock<HashMap<GroupId, GroupState>>,
    touched: &mut HashMap<GroupId, GroupState>,
    post: NewPost,
) -> Result<Appended, StoreError> {
    let state = match touched.entry(post.group) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let cached = cache
                .read()
                .map_err(|_| StoreError::Backend("group cache lock poisoned".into()))?
                .get(&post.group)
                .cloned();
            let state = match cached {
                Some(state) => state,
                None => load_group(tx, post.group)?.ok_or(StoreError::UnknownGroup)?,
            };
            e.insert(state)
        }
    };
    let checked = state.check(&post, &mut |d| device_exists(tx, d))?;
    // From here on the post is accepted: any failure must fail the whole batch (the
    // transaction is rolled back), never leave this post half written.
    let (removed, welcomes, welcome) = write_post(tx, &post, checked).map_err(|e| match e {
        StoreError::Backend(msg) => StoreError::Backend(msg),
        other => StoreError::Backend(other.to_string()),
    })?;
    state.apply(&post, checked);
    let entry = GroupEntry {
        group: post.group,
        seq: checked.seq,
        epoch: post.epoch,
        sender: post.sender,
        kind: rules::entry_kind(&post.kind),
        received_at_ms: post.now_ms,
        payload: Payload(post.payload),
    };
    Ok(Appended {
        entry,
        members: state.members.clone(),
        removed,
        welcomes,
        welcome,
    })
}

/// What [`write_post`] made: the removed devices, the new inbox entries and their Welcome.
type Written = (Vec<DeviceId>, Vec<(DeviceId, Seq)>, Option<Welcome>);

/// Writes an accepted post: its log entry and, for a commit, the epoch, the membership
/// change, the new members' cursors and the Welcome in their inboxes. Returns the removed
/// devices and the inbox entries made.
fn write_post(
    tx: &Transaction<'_>,
    post: &NewPost,
    checked: rules::Checked,
) -> Result<Written, StoreError> {
    let seq = checked.seq;
    let group = post.group.0;
    let (kind, added, removed) = match &post.kind {
        PostKind::Application => (KIND_APPLICATION, None, None),
        PostKind::Proposal => (KIND_PROPOSAL, None, None),
        PostKind::Commit { added, removed, .. } => (
            KIND_COMMIT,
            Some(id_list_to_blob(added)),
            Some(id_list_to_blob(removed)),
        ),
    };
    tx.prepare_cached(
        "INSERT INTO group_log
         (group_id, seq, epoch, sender, kind, added, removed, received_at_ms, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        group.as_slice(),
        to_i64(seq.0)?,
        to_i64(post.epoch.0)?,
        to_i64(post.sender.0)?,
        kind,
        added,
        removed,
        clamp_i64(post.now_ms),
        post.payload,
    ])?;
    let mut welcomes = Vec::new();
    let mut shared_welcome = None;
    let mut removed_devices = Vec::new();
    if let PostKind::Commit {
        added,
        removed,
        welcome,
    } = &post.kind
    {
        tx.prepare_cached("UPDATE groups SET epoch = ?2 WHERE id = ?1")?
            .execute(params![group.as_slice(), to_i64(checked.epoch_after.0)?])?;
        let mut depart = tx.prepare_cached(
            "INSERT OR REPLACE INTO departures (group_id, device, cursor, removed_at)
             SELECT group_id, device, cursor, ?3 FROM members
             WHERE group_id = ?1 AND device = ?2",
        )?;
        let mut delete =
            tx.prepare_cached("DELETE FROM members WHERE group_id = ?1 AND device = ?2")?;
        for d in removed.iter() {
            depart.execute(params![group.as_slice(), to_i64(d.0)?, to_i64(seq.0)?])?;
            delete.execute(params![group.as_slice(), to_i64(d.0)?])?;
        }
        removed_devices = removed.0.clone();
        if let Some(welcome) = welcome {
            tx.prepare_cached("INSERT INTO inbox_payloads (data) VALUES (?1)")?
                .execute(params![welcome.as_bytes()])?;
            let payload_id = tx.last_insert_rowid();
            let mut add_member = tx.prepare_cached(
                "INSERT INTO members (group_id, device, cursor, joined) VALUES (?1, ?2, ?3, ?3)",
            )?;
            let mut inbox_end =
                tx.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM inbox WHERE device = ?1")?;
            let mut inbox_insert = tx.prepare_cached(
                "INSERT INTO inbox
                 (device, seq, kind, group_id, commit_seq, sender, received_at_ms, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for d in added.iter() {
                let device = to_i64(d.0)?;
                add_member.execute(params![group.as_slice(), device, to_i64(seq.0)?])?;
                // A departure record stays: the device still receives the commit that
                // removed it (see `RelayStore::append_batch`).
                let end: i64 = inbox_end.query_row(params![device], |r| r.get(0))?;
                let inbox_seq = to_u64(end)?
                    .checked_add(1)
                    .ok_or(StoreError::Invalid("inbox is full"))?;
                inbox_insert.execute(params![
                    device,
                    to_i64(inbox_seq)?,
                    INBOX_WELCOME,
                    group.as_slice(),
                    to_i64(seq.0)?,
                    to_i64(post.sender.0)?,
                    clamp_i64(post.now_ms),
                    payload_id,
                ])?;
                welcomes.push((*d, Seq(inbox_seq)));
            }
            shared_welcome = Some(Welcome {
                kind: InboxKind::Welcome {
                    group: post.group,
                    commit_seq: seq,
                    sender: post.sender,
                },
                received_at_ms: post.now_ms,
                payload: Arc::from(welcome.as_bytes()),
            });
        }
    }
    Ok((removed_devices, welcomes, shared_welcome))
}

fn load_group(conn: &Connection, group: GroupId) -> Result<Option<GroupState>, StoreError> {
    let Some(epoch) = group_epoch(conn, group)? else {
        return Ok(None);
    };
    let last_seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM group_log WHERE group_id = ?1")?
        .query_row(params![group.0.as_slice()], |r| r.get(0))?;
    let mut members = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT device FROM members WHERE group_id = ?1")?;
    let mut rows = stmt.query(params![group.0.as_slice()])?;
    while let Some(r) = rows.next()? {
        members.push(device_id(r.get(0)?)?);
    }
    members.sort_unstable();
    members.dedup();
    let mut state = GroupState {
        epoch,
        last_seq: Seq(to_u64(last_seq)?),
        members,
        recent: std::collections::VecDeque::new(),
    };
    // The duplicate check's window: the latest application messages and proposals.
    let mut stmt = conn.prepare_cached(
        "SELECT seq, sender, payload FROM group_log
         WHERE group_id = ?1 AND kind IN (?2, ?3) ORDER BY seq DESC LIMIT ?4",
    )?;
    let window = i64::try_from(rules::RECENT_POSTS).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![
        group.0.as_slice(),
        KIND_APPLICATION,
        KIND_PROPOSAL,
        window
    ])?;
    let mut recent = Vec::new();
    while let Some(r) = rows.next()? {
        recent.push(rules::RecentPost {
            seq: Seq(to_u64(r.get(0)?)?),
            sender: device_id(r.get(1)?)?,
            digest: rules::payload_digest(&r.get::<_, Vec<u8>>(2)?),
        });
    }
    for post in recent.into_iter().rev() {
        state.remember(post);
    }
    Ok(Some(state))
}

fn configure(conn: &Connection, options: SqliteOptions) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "could not enable WAL mode (got {mode})"
        )));
    }
    let sync = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let version: Option<i64> =
        tx.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
    let current = usize::try_from(version.unwrap_or(0)).map_err(|_| corrupt("schema version"))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {current} is newer than this relay's {}",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        let version = i64::try_from(i + 1).map_err(|_| corrupt("schema version"))?;
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn user_exists(conn: &Connection, user: &UserName) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
        .query_row(params![user.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

fn insert_device(
    tx: &Transaction<'_>,
    user: &UserName,
    key: &DeviceKey,
) -> Result<DeviceId, StoreError> {
    tx.prepare_cached("INSERT INTO devices (user, key) VALUES (?1, ?2)")?
        .execute(params![user.as_str(), key.0.as_slice()])?;
    device_id(tx.last_insert_rowid())
}

fn device_exists(conn: &Connection, device: DeviceId) -> Result<bool, StoreError> {
    let Ok(id) = i64::try_from(device.0) else {
        return Ok(false);
    };
    Ok(conn
        .prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The device's row id, or UnknownDevice.
fn existing_device(conn: &Connection, device: DeviceId) -> Result<i64, StoreError> {
    if device_exists(conn, device)? {
        i64::try_from(device.0).map_err(|_| StoreError::UnknownDevice)
    } else {
        Err(StoreError::UnknownDevice)
    }
}

fn stock(conn: &Connection, device: i64) -> Result<Stock, StoreError> {
    let remaining: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM key_packages WHERE device = ?1")?
        .query_row(params![device], |r| r.get(0))?;
    let has_last_resort = conn
        .prepare_cached("SELECT 1 FROM last_resort_key_packages WHERE device = ?1")?
        .query_row(params![device], |_| Ok(()))
        .optional()?
        .is_some();
    Ok(Stock {
        remaining: u32::try_from(remaining).map_err(|_| corrupt("key package count"))?,
        has_last_resort,
    })
}

fn group_epoch(conn: &Connection, group: GroupId) -> Result<Option<Epoch>, StoreError> {
    let epoch = conn
        .prepare_cached("SELECT epoch FROM groups WHERE id = ?1")?
        .query_row(params![group.0.as_slice()], |r| r.get::<_, i64>(0))
        .optional()?;
    epoch.map(|e| Ok(Epoch(to_u64(e)?))).transpose()
}

fn member_cursor(
    conn: &Connection,
    group: GroupId,
    device: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT cursor FROM members WHERE group_id = ?1 AND device = ?2")?
        .query_row(params![group.0.as_slice(), device], |r| r.get(0))
        .optional()?)
}

/// A departure record: (cursor, removal commit seq).
fn departure(
    conn: &Connection,
    group: GroupId,
    device: i64,
) -> Result<Option<(i64, i64)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT cursor, removed_at FROM departures WHERE group_id = ?1 AND device = ?2",
        )?
        .query_row(params![group.0.as_slice(), device], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

fn corrupt(what: &str) -> StoreError {
    tracing::error!(what, "relay store: corrupt row");
    StoreError::Backend(format!("corrupt {what} in the database"))
}

fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt("negative number"))
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid("number out of range"))
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn device_id(v: i64) -> Result<DeviceId, StoreError> {
    Ok(DeviceId(to_u64(v)?))
}

fn device_key(bytes: &[u8]) -> Result<DeviceKey, StoreError> {
    Ok(DeviceKey(
        bytes.try_into().map_err(|_| corrupt("device key"))?,
    ))
}

fn group_id(bytes: &[u8]) -> Result<GroupId, StoreError> {
    Ok(GroupId(bytes.try_into().map_err(|_| corrupt("group id"))?))
}

fn id_list_to_blob(ids: &[DeviceId]) -> Vec<u8> {
    ids.iter().flat_map(|d| d.0.to_be_bytes()).collect()
}

fn id_list_from_blob(blob: Option<Vec<u8>>) -> Result<Vec<DeviceId>, StoreError> {
    let blob = blob.unwrap_or_default();
    let chunks = blob.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return Err(corrupt("device id list"));
    }
    chunks
        .map(|c| {
            let bytes: [u8; 8] = c.try_into().map_err(|_| corrupt("device id list"))?;
            Ok(DeviceId(u64::from_be_bytes(bytes)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cove_wire::{DeviceId, Epoch, Seq, Stream};

    use super::{SqliteOptions, SqliteStore, Synchronous};
    use crate::store::conformance::{app, commit, device, gid, key, one, user};
    use crate::store::{RelayStore, StoreError};

    fn open_temp() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("relay.db")).unwrap();
        (dir, store)
    }

    crate::store::conformance::relay_store_conformance!(open_temp());

    /// The duplicate check survives a restart: its window is rebuilt from the log, so a
    /// post resent to a restarted relay is answered with its original seq, not stored twice.
    #[test]
    fn a_repeated_post_is_recognised_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (a, g) = {
            let store = SqliteStore::open(&path).unwrap();
            let a = device(&store, "alice", 1);
            let g = gid(1);
            store.create_group(g, a).unwrap();
            assert_eq!(one(&store, app(g, a, 0, b"m1")).unwrap().entry.seq, Seq(1));
            assert_eq!(one(&store, app(g, a, 0, b"m2")).unwrap().entry.seq, Seq(2));
            (a, g)
        };
        let store = SqliteStore::open(&path).unwrap();
        assert!(matches!(
            one(&store, app(g, a, 0, b"m1")),
            Err(StoreError::Duplicate { seq: Seq(1) })
        ));
        assert_eq!(one(&store, app(g, a, 0, b"m3")).unwrap().entry.seq, Seq(3));
        assert_eq!(store.read_group(g, Seq(0), 10).unwrap().len(), 3);
    }

    /// Everything written survives dropping the store and opening the same file again, and
    /// ids keep counting from where they were.
    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (a, b, c, g) = {
            let store = SqliteStore::open(&path).unwrap();
            let a = device(&store, "alice", 1);
            let b = device(&store, "bob", 2);
            let c = store.add_device(&user("bob"), &key(3)).unwrap();
            store
                .upload_key_packages(
                    c,
                    vec![b"kp1".to_vec(), b"kp2".to_vec()],
                    Some(b"lr".to_vec()),
                )
                .unwrap();
            store.claim_key_packages(&user("bob")).unwrap();
            let g = gid(1);
            store.create_group(g, a).unwrap();
            one(&store, app(g, a, 0, b"m1")).unwrap();
            one(&store, commit(g, a, 0, &[b, c], &[], Some(b"welcome"))).unwrap();
            one(&store, app(g, b, 1, b"m2")).unwrap();
            store.ack(a, Stream::Group(g), Seq(2)).unwrap();
            store.ack(b, Stream::Inbox, Seq(1)).unwrap();
            (a, b, c, g)
        };
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.device(c).unwrap(), Some((user("bob"), key(3))));
        assert_eq!(store.devices(&user("bob")).unwrap().len(), 2);
        assert!(matches!(
            store.register_user(&user("alice"), &key(9)),
            Err(StoreError::UserTaken)
        ));
        let stock = store.key_package_stock(c).unwrap();
        assert_eq!((stock.remaining, stock.has_last_resort), (1, true));
        let claimed = store.claim_key_packages(&user("bob")).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].key_package.as_bytes(), b"kp2");
        let log = store.read_group(g, Seq(0), 10).unwrap();
        let payloads: Vec<&[u8]> = log.iter().map(|e| e.payload.as_bytes()).collect();
        assert_eq!(payloads, vec![&b"m1"[..], b"commit", b"m2"]);
        assert_eq!(store.groups_of(b).unwrap()[0].epoch, Epoch(1));
        assert!(store.is_member(g, c).unwrap());
        assert_eq!(store.cursor(a, Stream::Group(g)).unwrap(), Seq(2));
        assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(2));
        assert_eq!(store.cursor(b, Stream::Inbox).unwrap(), Seq(1));
        assert_eq!(
            store.read_inbox(c, Seq(0), 10).unwrap()[0]
                .payload
                .as_bytes(),
            b"welcome"
        );
        // The epoch and log head were reloaded: a stale commit is refused, the next seq is 4.
        assert!(matches!(
            one(&store, commit(g, a, 0, &[], &[], None)),
            Err(StoreError::StaleEpoch { current: Epoch(1) })
        ));
        assert_eq!(one(&store, app(g, a, 1, b"m3")).unwrap().entry.seq, Seq(4));
        // Device ids are never reused.
        let d = device(&store, "dave", 4);
        assert!(d > c);
        assert!(d > DeviceId(3));
    }

    /// `kill -9` while posting loses no acknowledged post: a child process (this test binary,
    /// re-run on [`kill_child_posts_until_killed`]) appends and prints each seq once
    /// `append_batch` has returned; the parent kills it mid-stream and checks every printed
    /// seq is in the reopened file.
    #[test]
    fn kill_9_loses_no_acknowledged_post() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (a, g) = {
            let store = SqliteStore::open(&path).unwrap();
            let a = device(&store, "alice", 1);
            store.create_group(gid(1), a).unwrap();
            (a, gid(1))
        };
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sqlite::tests::kill_child_posts_until_killed",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("COVE_KILL_CHILD_DB", &path)
            .env("COVE_KILL_CHILD_DEVICE", a.0.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(seq) = line.strip_prefix("acked ") {
                acked.push(seq.parse::<u64>().unwrap());
                if acked.len() == 300 {
                    child.kill().unwrap(); // SIGKILL
                    break;
                }
            }
        }
        child.wait().unwrap();
        assert_eq!(acked.len(), 300, "the child stopped early");
        let store = SqliteStore::open(&path).unwrap();
        let mut stored = Vec::new();
        let mut after = Seq(0);
        loop {
            let page = store.read_group(g, after, 500).unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            stored.extend(page.iter().map(|e| (e.seq.0, e.payload.0.clone())));
        }
        for seq in &acked {
            let found = stored.iter().find(|(s, _)| s == seq);
            assert_eq!(
                found.map(|(_, p)| p.clone()),
                Some(seq.to_be_bytes().to_vec())
            );
        }
        // The log has no holes and the store keeps accepting posts after the crash.
        assert!(
            stored
                .iter()
                .enumerate()
                .all(|(i, (s, _))| *s == i as u64 + 1)
        );
        let next = one(&store, app(g, a, 0, b"after")).unwrap().entry.seq;
        assert_eq!(next.0, stored.len() as u64 + 1);
    }

    /// The child half of [`kill_9_loses_no_acknowledged_post`]; does nothing on its own.
    #[test]
    #[ignore = "run by kill_9_loses_no_acknowledged_post in a child process"]
    fn kill_child_posts_until_killed() {
        let (Some(path), Some(device)) = (
            std::env::var_os("COVE_KILL_CHILD_DB"),
            std::env::var_os("COVE_KILL_CHILD_DEVICE"),
        ) else {
            return;
        };
        let device = DeviceId(device.to_str().unwrap().parse().unwrap());
        let store = SqliteStore::open(path).unwrap();
        // Batches of 1 to 7 posts whose payload is their seq; bounded in case the parent
        // is gone (printing to a closed pipe also ends this process).
        let mut next = 1u64;
        for round in 0..20_000u64 {
            let count = round % 7 + 1;
            let posts = (0..count)
                .map(|i| app(gid(1), device, 0, &(next + i).to_be_bytes()))
                .collect();
            for result in store.append_batch(posts) {
                let seq = result.unwrap().entry.seq.0;
                assert_eq!(seq, next);
                next += 1;
                println!("acked {seq}");
            }
        }
    }

    /// Acks are buffered: visible through `cursor` at once, written to the file by the next
    /// batch of posts, by `flush`, or when the buffer is full.
    #[test]
    fn acks_are_buffered_and_written_with_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let store = SqliteStore::open(&path).unwrap();
        let a = device(&store, "alice", 1);
        let b = device(&store, "bob", 2);
        let g = gid(1);
        store.create_group(g, a).unwrap();
        one(&store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap();
        for i in 0..3u8 {
            one(&store, app(g, a, 1, &[b'm', i])).unwrap();
        }
        let raw = rusqlite::Connection::open(&path).unwrap();
        let on_disk = |device: DeviceId| -> (i64, i64) {
            let group: i64 = raw
                .query_row(
                    "SELECT cursor FROM members WHERE group_id = ?1 AND device = ?2",
                    rusqlite::params![g.0.as_slice(), device.0 as i64],
                    |r| r.get(0),
                )
                .unwrap();
            let inbox: i64 = raw
                .query_row(
                    "SELECT inbox_cursor FROM devices WHERE id = ?1",
                    rusqlite::params![device.0 as i64],
                    |r| r.get(0),
                )
                .unwrap();
            (group, inbox)
        };
        store.ack(a, Stream::Group(g), Seq(2)).unwrap();
        store.ack(b, Stream::Inbox, Seq(1)).unwrap();
        assert_eq!(store.cursor(a, Stream::Group(g)).unwrap(), Seq(2));
        assert_eq!(store.cursor(b, Stream::Inbox).unwrap(), Seq(1));
        assert_eq!(
            (on_disk(a), on_disk(b)),
            ((0, 0), (1, 0)),
            "buffered, not yet written"
        );
        one(&store, app(g, a, 1, b"m")).unwrap();
        assert_eq!(
            (on_disk(a), on_disk(b)),
            ((2, 0), (1, 1)),
            "written with the batch"
        );
        store.ack(b, Stream::Group(g), Seq(4)).unwrap();
        assert_eq!(on_disk(b).0, 1);
        store.flush().unwrap();
        assert_eq!(on_disk(b).0, 4);
        assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(4));
        // A full buffer is written without waiting for a post.
        let mut devices = Vec::new();
        for i in 0..super::ACK_FLUSH_ENTRIES {
            devices.push(device(&store, &format!("d{i}"), 3));
        }
        for d in &devices {
            store.ack(*d, Stream::Inbox, Seq(0)).unwrap();
        }
        assert!(store.acks().unwrap().is_empty());
    }

    /// `try_ack_buffered` applies a member's group ack from memory only and declines
    /// (`None`) whatever would need the disk: inbox acks, non-members, groups not cached,
    /// a due flush of the buffer.
    #[test]
    fn try_ack_buffered_declines_what_needs_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let store = SqliteStore::open(&path).unwrap();
        let a = device(&store, "alice", 1);
        let b = device(&store, "bob", 2);
        let c = device(&store, "carol", 3);
        let g = gid(1);
        store.create_group(g, a).unwrap();
        one(&store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap();
        let end = (0..3)
            .map(|i: u8| one(&store, app(g, a, 1, &[b'm', i])).unwrap().entry.seq)
            .last()
            .unwrap();
        assert!(store.try_ack_buffered(b, Stream::Inbox, Seq(0)).is_none());
        assert!(
            store
                .try_ack_buffered(c, Stream::Group(g), Seq(1))
                .is_none()
        );
        assert!(
            store
                .try_ack_buffered(b, Stream::Group(gid(9)), Seq(1))
                .is_none()
        );
        assert!(matches!(
            store.try_ack_buffered(b, Stream::Group(g), Seq(end.0 + 1)),
            Some(Err(StoreError::Invalid(_)))
        ));
        assert!(matches!(
            store.try_ack_buffered(b, Stream::Group(g), end),
            Some(Ok(()))
        ));
        assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), end);
        let raw = rusqlite::Connection::open(&path).unwrap();
        let on_disk = || -> i64 {
            raw.query_row(
                "SELECT cursor FROM members WHERE group_id = ?1 AND device = ?2",
                rusqlite::params![g.0.as_slice(), b.0 as i64],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert!(on_disk() < end.0 as i64, "buffered, not written inline");
        // A due flush (here: the buffer is old) is left to `ack`, off the async runtime.
        store.acks().unwrap().since = super::Instant::now().checked_sub(super::ACK_FLUSH_AGE);
        assert!(store.try_ack_buffered(a, Stream::Group(g), end).is_none());
        assert!(on_disk() < end.0 as i64, "nothing written by the decline");
        store.ack(a, Stream::Group(g), end).unwrap();
        assert!(store.acks().unwrap().is_empty());
        assert_eq!(on_disk(), end.0 as i64);
        // A full buffer is left to `ack` too.
        for i in 0..super::ACK_FLUSH_ENTRIES - 1 {
            store
                .acks()
                .unwrap()
                .inbox
                .insert(DeviceId(1000 + i as u64), Seq(0));
        }
        store.acks().unwrap().since = Some(super::Instant::now());
        assert!(store.try_ack_buffered(a, Stream::Group(g), end).is_none());
        assert!(store.try_ack_buffered(b, Stream::Group(g), end).is_none());
    }

    /// Corrupt rows give Backend errors, never a panic.
    #[test]
    fn corrupt_rows_are_backend_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let store = SqliteStore::open(&path).unwrap();
        let a = device(&store, "alice", 1);
        let g = gid(1);
        store.create_group(g, a).unwrap();
        one(&store, commit(g, a, 0, &[], &[], None)).unwrap();
        one(&store, app(g, a, 1, b"m")).unwrap();
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(
            "UPDATE group_log SET added = x'0102' WHERE seq = 1;
             UPDATE group_log SET kind = 77 WHERE seq = 2;
             UPDATE devices SET key = x'00';",
        )
        .unwrap();
        assert!(matches!(
            store.read_group(g, Seq(0), 1),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            store.read_group(g, Seq(1), 1),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(store.device(a), Err(StoreError::Backend(_))));
        assert!(matches!(
            store.devices(&user("alice")),
            Err(StoreError::Backend(_))
        ));
        raw.execute_batch(
            "UPDATE group_log SET payload = 42 WHERE seq = 2; UPDATE group_log SET kind = 0;",
        )
        .unwrap();
        assert!(matches!(
            store.read_group(g, Seq(1), 1),
            Err(StoreError::Backend(_))
        ));
        raw.execute_batch("UPDATE groups SET epoch = -5").unwrap();
        drop(store);
        // A fresh store loads the corrupt group state lazily: an error, not a panic.
        let store = SqliteStore::open(&path).unwrap();
        assert!(matches!(store.groups_of(a), Err(StoreError::Backend(_))));
        let results = store.append_batch(vec![app(g, a, 1, b"m")]);
        assert!(matches!(results[0], Err(StoreError::Backend(_))));
    }

    /// A file written by a newer schema is refused rather than misread.
    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        drop(SqliteStore::open(&path).unwrap());
        let raw = rusqlite::Connection::open(&path).unwrap();
        let version: i64 = raw
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, i64::from(SqliteStore::schema_version()));
        raw.execute("UPDATE schema_version SET version = version + 1", [])
            .unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Backend(_))
        ));
    }

    /// A version-1 file (no join seqs, no departures) is upgraded in place: its members
    /// count as joined at 0 and keep their cursors, and removals then leave departures.
    #[test]
    fn version_1_file_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let g = gid(1);
        {
            let raw = rusqlite::Connection::open(&path).unwrap();
            raw.execute_batch(super::MIGRATIONS[0]).unwrap();
            raw.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1);
                 INSERT INTO users (name) VALUES ('alice'), ('bob');",
            )
            .unwrap();
            for (user, k) in [("alice", 1u8), ("bob", 2u8)] {
                raw.execute(
                    "INSERT INTO devices (user, key) VALUES (?1, ?2)",
                    rusqlite::params![user, vec![k; 32]],
                )
                .unwrap();
            }
            raw.execute(
                "INSERT INTO groups (id, epoch) VALUES (?1, 1)",
                rusqlite::params![g.0.as_slice()],
            )
            .unwrap();
            for (device, cursor) in [(1i64, 0i64), (2, 1)] {
                raw.execute(
                    "INSERT INTO members (group_id, device, cursor) VALUES (?1, ?2, ?3)",
                    rusqlite::params![g.0.as_slice(), device, cursor],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let (a, b) = (DeviceId(1), DeviceId(2));
        assert_eq!(store.joined(g, a).unwrap(), Some(Seq(0)));
        assert_eq!(store.joined(g, b).unwrap(), Some(Seq(0)));
        assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(1));
        assert!(store.departures(b).unwrap().is_empty());
        let removal = one(&store, commit(g, a, 1, &[], &[b], None)).unwrap();
        assert_eq!(store.departures(b).unwrap(), vec![(g, removal.entry.seq)]);
        assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(1));
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.departures(b).unwrap(), vec![(g, removal.entry.seq)]);
    }

    /// The file is in WAL mode with the requested sync level on the write connection.
    #[test]
    fn wal_and_sync_level() {
        let dir = tempfile::tempdir().unwrap();
        for (sync, expected) in [(Synchronous::Full, 2), (Synchronous::Normal, 1)] {
            let path = dir.path().join(format!("relay-{expected}.db"));
            let store = SqliteStore::open_with(&path, SqliteOptions { synchronous: sync }).unwrap();
            let writer = store.writer().unwrap();
            let mode: String = writer
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            let level: i64 = writer
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!((mode.as_str(), level), ("wal", expected));
        }
    }
}
