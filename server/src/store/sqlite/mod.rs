//! [`SqliteStore`]: the embedded, durable [`RelayStore`] (one SQLite file in WAL mode).
//!
//! Durability: WAL with `synchronous=FULL` by default, so a transaction is on stable storage
//! (the WAL is fsynced) before the call that made it returns; an acknowledged post survives
//! `kill -9` and power loss. [`Synchronous::Normal`] is offered for deployments that accept
//! losing the last transactions on power loss (never on a process crash: in WAL mode a
//! committed transaction has been written to the OS before `COMMIT` returns).
//! [`RelayStore::append_batch`] writes all its posts in one transaction, so a batch costs one
//! fsync however many posts it carries; that is how the relay coalesces writes. The sync is
//! `fdatasync(2)` (the workspace's `.cargo/config.toml` builds the bundled SQLite with
//! `HAVE_FDATASYNC`): the data and a changed size reach the disk, not the file's mtime.
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
//!
//! Layout: this file owns [`SqliteStore`] (connections, the group cache, the ack buffer,
//! locking) and implements [`RelayStore`] by taking the right connection or transaction and
//! calling the table modules, which hold the SQL and never use this file: `schema`
//! (migrations, connection settings), `directory` (users, devices), `key_packages`, `groups`
//! (groups, members), `device_lists`, `inbox`, `cursors` (cursors on disk, departure records), `log` (group
//! logs, commits, the repeated-post window), `retention` (pruning) and `acks` (the ack buffer). They use each other
//! only downward (`log` uses `groups`, `inbox` and `directory`; all use `rows`, the column
//! conversions).

mod accounts;
mod acks;
mod backups;
mod cursors;
mod device_lists;
mod directory;
mod groups;
mod inbox;
mod key_packages;
mod log;
mod retention;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, TryLockError};
use std::time::Instant;

use cove_wire::identity::ListEntry;
use cove_wire::{
    ClaimedKeyPackage, DeviceId, DeviceInfo, DeviceKey, GroupEntry, GroupId, GroupSummary,
    InboxEntry, Seq, Stream, UserName,
};
use rusqlite::{Connection, Transaction, TransactionBehavior};

use self::acks::PendingAcks;
use super::rules::GroupState;
use super::{
    Account, Appended, Heads, NewPost, Pruned, PublicGroupState, RelayStore, Stock, StoreError,
};

pub use self::acks::{ACK_FLUSH_AGE, ACK_FLUSH_ENTRIES};
pub use self::schema::{SqliteOptions, Synchronous};

/// Read connections per store (reads run side by side with each other and with the writer).
const READERS: usize = 4;

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
        schema::configure(&conn, options)?;
        schema::migrate(&mut conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            schema::configure(&reader, options)?;
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
        schema::version()
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
            log::load_group(&tx, group)?.ok_or(StoreError::UnknownGroup)?
        };
        let mut cache = self.groups.write().map_err(|_| poisoned())?;
        Ok(f(cache.entry(group).or_insert(loaded)))
    }

    /// Runs `f` in a read transaction on a read connection (the transaction is rolled back:
    /// it only gives `f` one consistent snapshot).
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader()?;
        let tx = conn.unchecked_transaction()?;
        f(&tx)
    }

    /// Writes the buffered acknowledgements now.
    fn flush_acks(&self) -> Result<(), StoreError> {
        self.write_pending_acks(false)
    }

    /// Writes the buffered acks; with `only_if_due`, only if they are still due once the
    /// write connection is ours (acks that found the buffer due while another flush was
    /// writing it do not each write it again).
    fn write_pending_acks(&self, only_if_due: bool) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let pending = {
            let acks = self.acks()?;
            if only_if_due && !acks.due() {
                return Ok(());
            }
            acks.snapshot()
        };
        if pending.is_empty() {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        acks::write_acks(&tx, &pending)?;
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

impl RelayStore for SqliteStore {
    fn register_user(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.write(|tx| directory::register_user(tx, user, key))
    }

    fn add_device(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.write(|tx| directory::add_device(tx, user, key))
    }

    fn devices(&self, user: &UserName) -> Result<Vec<DeviceInfo>, StoreError> {
        self.read(|conn| directory::devices(conn, user))
    }

    fn device(&self, device: DeviceId) -> Result<Option<(UserName, DeviceKey)>, StoreError> {
        directory::device(&*self.reader()?, device)
    }

    fn record_seen(&self, device: DeviceId, now_ms: u64) -> Result<(), StoreError> {
        self.write(|tx| directory::record_seen(tx, device, now_ms))
    }

    fn last_seen(&self, user: &UserName) -> Result<Vec<(DeviceId, Option<u64>)>, StoreError> {
        self.read(|conn| directory::last_seen(conn, user))
    }

    fn create_account(&self, user: &UserName, account: Account) -> Result<(), StoreError> {
        self.write(|tx| accounts::create(tx, user, &account))
    }

    fn account(&self, user: &UserName) -> Result<Option<Account>, StoreError> {
        self.read(|conn| accounts::read(conn, user))
    }

    fn replace_password(
        &self,
        user: &UserName,
        record: Vec<u8>,
        ksf_version: u8,
        password_bundle: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            accounts::replace_password(tx, user, &record, ksf_version, &password_bundle)
        })
    }

    fn delete_user(&self, user: &UserName) -> Result<Vec<DeviceId>, StoreError> {
        // Buffered acks first, so none is written for a deleted device afterwards.
        self.flush_acks()?;
        // Under the writer lock until the cache holds the new states, as `leave_group`.
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (devices, groups) = accounts::delete_user(&tx, user)?;
        let mut states = Vec::with_capacity(groups.len());
        for group in groups {
            let state = log::load_group(&tx, group)?.ok_or(StoreError::UnknownGroup)?;
            states.push((group, state));
        }
        tx.commit()?;
        let mut cache = self
            .groups
            .write()
            .map_err(|_| StoreError::Backend("group cache lock poisoned".into()))?;
        for (group, state) in states {
            cache.insert(group, state);
        }
        Ok(devices)
    }

    fn append_backup_segment(
        &self,
        user: &UserName,
        segment: cove_wire::NewBackupSegment,
        caps: super::BackupCaps,
    ) -> Result<u64, StoreError> {
        super::check_backup_entry(&segment)?;
        self.write(|tx| backups::append(tx, user, &segment, caps))
    }

    fn backup_segments(
        &self,
        user: &UserName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<cove_wire::BackupSegment>, StoreError> {
        self.read(|conn| backups::list(conn, user, after, limit))
    }

    fn backup_holds_blob(
        &self,
        user: &UserName,
        blob: &cove_wire::BlobId,
    ) -> Result<bool, StoreError> {
        self.read(|conn| backups::holds(conn, user, blob))
    }

    fn delete_backup_index(&self, user: &UserName) -> Result<Vec<cove_wire::BlobId>, StoreError> {
        self.write(|tx| backups::delete(tx, user))
    }

    fn device_list(&self, user: &UserName) -> Result<Vec<ListEntry>, StoreError> {
        self.read(|conn| device_lists::read(conn, user))
    }

    fn append_device_list(
        &self,
        user: &UserName,
        expected_len: u64,
        entries: Vec<ListEntry>,
    ) -> Result<u64, StoreError> {
        self.write(|tx| device_lists::append(tx, user, expected_len, &entries))
    }

    fn upload_key_packages(
        &self,
        device: DeviceId,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Stock, StoreError> {
        self.write(|tx| key_packages::upload(tx, device, key_packages, last_resort))
    }

    fn claim_key_packages(&self, user: &UserName) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        self.write(|tx| key_packages::claim(tx, user))
    }

    fn key_package_stock(&self, device: DeviceId) -> Result<Stock, StoreError> {
        self.read(|conn| key_packages::device_stock(conn, device))
    }

    fn create_group_with_state(
        &self,
        group: GroupId,
        creator: DeviceId,
        state: Option<PublicGroupState>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            groups::create(tx, group, creator)?;
            match &state {
                Some(state) => groups::put_public_state(tx, group, state),
                None => Ok(()),
            }
        })?;
        self.groups
            .write()
            .map_err(|_| StoreError::Backend("group cache lock poisoned".into()))?
            .insert(group, GroupState::new(creator));
        Ok(())
    }

    fn public_state(&self, group: GroupId) -> Result<Option<PublicGroupState>, StoreError> {
        self.read(|conn| groups::public_state(conn, group))
    }

    fn leave_group(&self, group: GroupId, device: DeviceId) -> Result<(), StoreError> {
        // Under the writer lock until the cache holds the new state, as `append_batch` does,
        // so no batch checks a post against the state from before the leave.
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        groups::leave(&tx, group, device)?;
        let state = log::load_group(&tx, group)?.ok_or(StoreError::UnknownGroup)?;
        tx.commit()?;
        self.groups
            .write()
            .map_err(|_| StoreError::Backend("group cache lock poisoned".into()))?
            .insert(group, state);
        Ok(())
    }

    fn is_member(&self, group: GroupId, device: DeviceId) -> Result<bool, StoreError> {
        self.with_group(group, |state| state.is_member(device))
    }

    fn groups_of(&self, device: DeviceId) -> Result<Vec<GroupSummary>, StoreError> {
        self.read(|conn| groups::groups_of(conn, device))
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
        if let Err(e) = acks::write_acks(&tx, &acks) {
            return all_failed(e.to_string());
        }
        // Group states as this transaction changes them; merged into the cache on commit.
        let mut touched: HashMap<GroupId, GroupState> = HashMap::new();
        let mut results = Vec::with_capacity(count);
        for post in posts {
            match log::append_one(&tx, &self.groups, &mut touched, post) {
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
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        self.read(|conn| log::read(conn, group, after, limit, max_bytes))
    }

    fn read_inbox(
        &self,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        self.read(|conn| inbox::read(conn, device, after, limit, max_bytes))
    }

    fn heads(&self, groups: &[GroupId], devices: &[DeviceId]) -> Result<Heads, StoreError> {
        self.read(|conn| inbox::heads(conn, groups, devices))
    }

    fn joined(&self, group: GroupId, device: DeviceId) -> Result<Option<Seq>, StoreError> {
        self.read(|conn| groups::joined(conn, group, device))
    }

    fn departures(&self, device: DeviceId) -> Result<Vec<(GroupId, Seq)>, StoreError> {
        self.read(|conn| cursors::departures(conn, device))
    }

    fn departure_cursor(
        &self,
        device: DeviceId,
        group: GroupId,
    ) -> Result<Option<Seq>, StoreError> {
        // A re-added member's acks are buffered like any member's; they move the record's
        // cursor when written (and drop the record on reaching the removal commit).
        let pending = self.acks()?.group.get(&(group, device)).copied();
        let Some((cursor, removed_at)) =
            self.read(|conn| cursors::departure_record(conn, device, group))?
        else {
            return Ok(None);
        };
        let cursor = cursor.max(pending.unwrap_or_default());
        Ok((cursor < removed_at).then_some(cursor))
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
        let cursor = self.read(|conn| cursors::cursor(conn, device, stream))?;
        Ok(cursor.max(pending.unwrap_or_default()))
    }

    fn ack(&self, device: DeviceId, stream: Stream, seq: Seq) -> Result<(), StoreError> {
        match stream {
            Stream::Inbox => {
                if seq > self.read(|conn| inbox::end(conn, device))? {
                    return Err(StoreError::Invalid("ack past the end of the inbox"));
                }
            }
            Stream::Group(g) => {
                // The hot path: a member (so an existing device) acks from the cache alone.
                let (member, end) = match self.with_group(g, |s| (s.is_member(device), s.last_seq))
                {
                    Err(StoreError::UnknownGroup) => {
                        directory::existing_device(&*self.reader()?, device)?;
                        return Err(StoreError::UnknownGroup);
                    }
                    other => other?,
                };
                if !member {
                    return self.write(|tx| cursors::ack_departure(tx, device, g, seq));
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
            acks.since.get_or_insert_with(Instant::now);
            acks.due()
        };
        if flush_now {
            self.write_pending_acks(true)?;
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

    fn prune(&self, now_ms: u64, max_age_ms: u64) -> Result<Pruned, StoreError> {
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let groups = self.read(retention::group_ids)?;
        let mut pruned = Pruned::default();
        // A transaction per chunk of groups, then one for the inboxes, each writing the
        // buffered acks first (they count).
        let mut chunks = groups.chunks(retention::GROUPS_PER_TRANSACTION);
        loop {
            let chunk = chunks.next();
            let mut conn = self.writer()?;
            let pending = self.acks()?.snapshot();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            acks::write_acks(&tx, &pending)?;
            match chunk {
                Some(chunk) => {
                    let n = retention::prune_groups(&tx, chunk, cutoff)?;
                    pruned.group_entries = pruned.group_entries.saturating_add(n);
                }
                None => pruned.inbox_entries = retention::prune_inboxes(&tx, cutoff)?,
            }
            tx.commit()?;
            self.acks()?.written(&pending);
            if chunk.is_none() {
                // Copy the WAL into the file and empty it, so the WAL does not keep the
                // size of the deletes (a reader in the way only makes it partial).
                let (busy, wal_pages): (i64, i64) =
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                tracing::debug!(
                    group_entries = pruned.group_entries,
                    inbox_entries = pruned.inbox_entries,
                    checkpoint_busy = busy,
                    wal_pages,
                    "pruned"
                );
                return Ok(pruned);
            }
        }
    }
}
