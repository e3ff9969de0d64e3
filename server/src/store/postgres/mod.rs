//! [`PostgresStore`]: the [`RelayStore`] on PostgreSQL, for relays that share one database
//! between several nodes.
//!
//! Each call runs in one transaction on a connection of a small pool: writes at
//! `SERIALIZABLE`, reads at `REPEATABLE READ, READ ONLY` (one consistent snapshot). A write
//! that loses a race with another node's transaction (serialization failure, deadlock, or a
//! unique key taken meanwhile) is run again from the start, on fresh data, up to
//! [`RETRIES`] times. The guarantees SQLite gets from its single writer come from the
//! database here: a KeyPackage is deleted as it is claimed (`FOR UPDATE SKIP LOCKED`,
//! `DELETE ... RETURNING`), a group's posts take its row lock and the log has a unique key
//! on `(group, seq)` and a unique index on `(group, epoch)` of commits, a device-list append
//! takes the user's row lock and checks the expected length, and an account is created by
//! an insert that does nothing if the row exists. Nothing is cached between calls, and
//! acknowledgements are written at once (no ack buffer): other nodes read the same rows.
//!
//! The API is synchronous (the relay calls stores from blocking threads): the `postgres`
//! crate runs each connection's `tokio-postgres` client on a small runtime of its own, so
//! a call must not come from inside an async task (the relay's are on `spawn_blocking` or
//! its writer thread). Each connection keeps its prepared statements (`rows::Tx`).
//!
//! Layout as the SQLite backend: this file owns the pool and the transactions and
//! implements [`RelayStore`] by calling the table modules, which hold the SQL: `schema`,
//! `directory`, `key_packages`, `groups`, `device_lists`, `inbox`, `cursors`, `log`,
//! `retention`, `accounts`, `backups`; `rows` has the conversions, the error type and the
//! transaction wrapper.

mod accounts;
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

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use cove_wire::identity::ListEntry;
use cove_wire::{
    BackupSegment, BlobId, ClaimedKeyPackage, DeviceId, DeviceInfo, DeviceKey, GroupEntry, GroupId,
    GroupSummary, InboxEntry, NewBackupSegment, Seq, Stream, UserName,
};
use postgres::{Client, IsolationLevel, NoTls, Statement};

use self::rows::{PgError, R, Tx};
use super::{
    Account, Appended, BackupCaps, Heads, NewPost, Pruned, PublicGroupState, RelayStore, Stock,
    StoreError,
};

/// How many times a transaction that lost a race is run again before the call fails with
/// `Backend`.
pub const RETRIES: usize = 64;

/// Connections per store unless [`PostgresOptions::connections`] says otherwise.
pub const DEFAULT_CONNECTIONS: usize = 4;

/// Options for [`PostgresStore::connect_with`].
#[derive(Clone, Copy, Debug)]
pub struct PostgresOptions {
    /// Connections in the pool (at least 1): calls beyond it wait for a free one.
    pub connections: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            connections: DEFAULT_CONNECTIONS,
        }
    }
}

/// One pooled connection and its prepared statements.
struct Conn {
    client: Client,
    stmts: HashMap<&'static str, Statement>,
}

/// The PostgreSQL relay store.
pub struct PostgresStore {
    /// Where to connect (to replace a connection the server closed).
    config: postgres::Config,
    /// The pool; a call takes a free connection.
    pool: Vec<Mutex<Conn>>,
    /// Where the next call that finds no free connection waits.
    next: AtomicUsize,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    tracing::error!(error = %e, "relay store: PostgreSQL failed");
    StoreError::Backend(e.to_string())
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgresql://user@host:port/db`), with the
    /// default options, and migrates its schema to this build's version.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default())
    }

    /// Connects with `options` and migrates the schema (in one transaction, under an
    /// advisory lock taken before it, so nodes starting together migrate once). Fails if the database was
    /// written by a newer relay. Must not be called from inside an async task.
    pub fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let config = postgres::Config::from_str(url).map_err(backend)?;
        let mut pool = Vec::with_capacity(options.connections.max(1));
        for _ in 0..options.connections.max(1) {
            pool.push(Mutex::new(Conn {
                client: config.connect(NoTls).map_err(backend)?,
                stmts: HashMap::new(),
            }));
        }
        let store = PostgresStore {
            config,
            pool,
            next: AtomicUsize::new(0),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Migrates the schema while holding the migration advisory lock at session level.
    ///
    /// The lock is taken before the migration's transaction starts, not inside it: a
    /// serialisable transaction's snapshot is taken at its first statement, so a node that
    /// waited for the lock inside its transaction would not see the tables the winner just
    /// created, and its `CREATE TABLE` would fail. Taken first, the waiting node's
    /// transaction starts after the winner's commit and finds the schema current.
    fn migrate(&self) -> Result<(), StoreError> {
        // Lock and unlock on the first connection (one session); the migration runs on
        // whichever connection is free, which does not matter to a session-level lock.
        let on_first = |sql: &str| -> Result<(), StoreError> {
            let first = self
                .pool
                .first()
                .ok_or_else(|| StoreError::Backend("no connection".into()))?;
            let mut conn = first
                .lock()
                .map_err(|_| StoreError::Backend("connection lock poisoned".into()))?;
            conn.client
                .execute(sql, &[&schema::MIGRATION_LOCK])
                .map(|_| ())
                .map_err(backend)
        };
        on_first("SELECT pg_advisory_lock($1)")?;
        let migrated = self.write(schema::migrate);
        // On an error the store is dropped, closing the session, which releases it too.
        let unlocked = on_first("SELECT pg_advisory_unlock($1)");
        migrated?;
        unlocked
    }

    /// The schema version this build writes.
    pub fn schema_version() -> u32 {
        schema::version()
    }

    /// A free connection (or the next one in turn), reconnected if the server closed it.
    fn conn(&self) -> Result<MutexGuard<'_, Conn>, StoreError> {
        let poisoned = || StoreError::Backend("connection lock poisoned".into());
        let mut guard = None;
        for conn in &self.pool {
            match conn.try_lock() {
                Ok(g) => {
                    guard = Some(g);
                    break;
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len().max(1);
                self.pool
                    .get(i)
                    .ok_or_else(poisoned)?
                    .lock()
                    .map_err(|_| poisoned())?
            }
        };
        if guard.client.is_closed() {
            guard.client = self.config.connect(NoTls).map_err(backend)?;
            guard.stmts.clear();
        }
        Ok(guard)
    }

    /// Runs `f` in a serialisable transaction and commits, running it again (from the
    /// start, on fresh data) while it loses races with concurrent transactions.
    fn write<T>(&self, f: impl FnMut(&mut Tx<'_>) -> R<T>) -> Result<T, StoreError> {
        self.write_at(IsolationLevel::Serializable, f)
    }

    /// [`Self::write`] at `level`.
    fn write_at<T>(
        &self,
        level: IsolationLevel,
        mut f: impl FnMut(&mut Tx<'_>) -> R<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Conn { client, stmts } = &mut *conn;
            let result: R<T> = (|| {
                let tx = client.build_transaction().isolation_level(level).start()?;
                let mut tx = Tx::new(tx, stmts);
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            })();
            match result {
                Ok(out) => return Ok(out),
                Err(e) if e.is_conflict() && attempt < RETRIES => {
                    tracing::debug!(attempt, "relay store: transaction conflict, retrying");
                    std::thread::yield_now();
                }
                Err(e) => return Err(e.into_store()),
            }
        }
    }

    /// Runs `f` in a read-only transaction on one snapshot (rolled back at the end).
    fn read<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> R<T>) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let Conn { client, stmts } = &mut *conn;
        let result: R<T> = (|| {
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let mut tx = Tx::new(tx, stmts);
            f(&mut tx)
        })();
        result.map_err(PgError::into_store)
    }
}

/// Closing a connection blocks on the connection's own runtime, which must not happen on an
/// async task's thread: dropped there (the relay's last handle may go on one), the pool is
/// closed on a thread of its own.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        let pool = std::mem::take(&mut self.pool);
        if tokio::runtime::Handle::try_current().is_err() {
            return drop(pool);
        }
        let closer = std::thread::Builder::new()
            .name("cove-pg-close".into())
            .spawn(move || drop(pool));
        if let Err(e) = closer {
            tracing::error!(error = %e, "relay store: could not close the PostgreSQL pool");
        }
    }
}

impl RelayStore for PostgresStore {
    fn register_user(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.write(|tx| directory::register_user(tx, user, key))
    }

    fn add_device(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.write(|tx| directory::add_device(tx, user, key))
    }

    fn devices(&self, user: &UserName) -> Result<Vec<DeviceInfo>, StoreError> {
        self.read(|tx| directory::devices(tx, user))
    }

    fn device(&self, device: DeviceId) -> Result<Option<(UserName, DeviceKey)>, StoreError> {
        self.read(|tx| directory::device(tx, device))
    }

    fn record_seen(&self, device: DeviceId, now_ms: u64) -> Result<(), StoreError> {
        self.write(|tx| directory::record_seen(tx, device, now_ms))
    }

    fn last_seen(&self, user: &UserName) -> Result<Vec<(DeviceId, Option<u64>)>, StoreError> {
        self.read(|tx| directory::last_seen(tx, user))
    }

    fn upload_key_packages(
        &self,
        device: DeviceId,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Stock, StoreError> {
        self.write(|tx| key_packages::upload(tx, device, &key_packages, last_resort.as_ref()))
    }

    fn claim_key_packages(&self, user: &UserName) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        self.write(|tx| key_packages::claim(tx, user))
    }

    fn key_package_stock(&self, device: DeviceId) -> Result<Stock, StoreError> {
        self.read(|tx| key_packages::device_stock(tx, device))
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
        })
    }

    fn public_state(&self, group: GroupId) -> Result<Option<PublicGroupState>, StoreError> {
        self.read(|tx| groups::public_state(tx, group))
    }

    fn leave_group(&self, group: GroupId, device: DeviceId) -> Result<(), StoreError> {
        self.write(|tx| groups::leave(tx, group, device))
    }

    fn is_member(&self, group: GroupId, device: DeviceId) -> Result<bool, StoreError> {
        self.read(|tx| groups::is_member(tx, group, device))
    }

    fn groups_of(&self, device: DeviceId) -> Result<Vec<GroupSummary>, StoreError> {
        self.read(|tx| groups::groups_of(tx, device))
    }

    fn append_batch(&self, posts: Vec<NewPost>) -> Vec<Result<Appended, StoreError>> {
        let count = posts.len();
        if count == 0 {
            return Vec::new();
        }
        let outcome = self.write(|tx| {
            // Group states as this transaction changes them (each post sees the ones
            // before it in the batch).
            let mut touched = HashMap::new();
            let mut results = Vec::with_capacity(count);
            for post in posts.iter().cloned() {
                match log::append_one(tx, &mut touched, post) {
                    Ok(appended) => results.push(Ok(appended)),
                    // A post refused by the rules; the batch goes on.
                    Err(PgError::Store(e)) if !matches!(e, StoreError::Backend(_)) => {
                        results.push(Err(e))
                    }
                    // The database failed (or lost a race): the whole batch is rolled back.
                    Err(e) => return Err(e),
                }
            }
            Ok(results)
        });
        match outcome {
            Ok(results) => results,
            Err(e) => {
                let msg = e.to_string();
                (0..count)
                    .map(|_| Err(StoreError::Backend(msg.clone())))
                    .collect()
            }
        }
    }

    fn read_group(
        &self,
        group: GroupId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        self.read(|tx| log::read(tx, group, after, limit, max_bytes))
    }

    fn joined(&self, group: GroupId, device: DeviceId) -> Result<Option<Seq>, StoreError> {
        self.read(|tx| groups::joined(tx, group, device))
    }

    fn fetch(
        &self,
        group: GroupId,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        // The join seq and the entries from one snapshot.
        self.read(|tx| {
            let joined = groups::joined(tx, group, device)?.ok_or(StoreError::NotMember)?;
            log::read(tx, group, after.max(joined), limit, max_bytes)
        })
    }

    fn heads(&self, groups: &[GroupId], devices: &[DeviceId]) -> Result<Heads, StoreError> {
        self.read(|tx| inbox::heads(tx, groups, devices))
    }

    fn departures(&self, device: DeviceId) -> Result<Vec<(GroupId, Seq)>, StoreError> {
        self.read(|tx| cursors::departures(tx, device))
    }

    fn departure_cursor(
        &self,
        device: DeviceId,
        group: GroupId,
    ) -> Result<Option<Seq>, StoreError> {
        self.read(|tx| cursors::departure_cursor(tx, device, group))
    }

    fn read_inbox(
        &self,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        self.read(|tx| inbox::read(tx, device, after, limit, max_bytes))
    }

    fn cursor(&self, device: DeviceId, stream: Stream) -> Result<Seq, StoreError> {
        self.read(|tx| cursors::cursor(tx, device, stream))
    }

    fn ack(&self, device: DeviceId, stream: Stream, seq: Seq) -> Result<(), StoreError> {
        // READ COMMITTED, not SERIALIZABLE: an ack reads the log's head and writes a
        // member's cursor while a post reads the members and writes the log, a read/write
        // cycle that made PostgreSQL abort the posts of a busy group (every batch, past
        // the retries, under the fan-out bench's load). Each of its statements only
        // raises a cursor (`GREATEST`) and sees what committed before it (a concurrent
        // removal's departure record included), so it needs no serialisable snapshot.
        self.write_at(IsolationLevel::ReadCommitted, |tx| {
            cursors::ack(tx, device, stream, seq)
        })
    }

    fn device_list(&self, user: &UserName) -> Result<Vec<ListEntry>, StoreError> {
        self.read(|tx| device_lists::read(tx, user))
    }

    fn append_device_list(
        &self,
        user: &UserName,
        expected_len: u64,
        entries: Vec<ListEntry>,
    ) -> Result<u64, StoreError> {
        self.write(|tx| device_lists::append(tx, user, expected_len, &entries))
    }

    fn create_account(&self, user: &UserName, account: Account) -> Result<(), StoreError> {
        self.write(|tx| accounts::create(tx, user, &account))
    }

    fn account(&self, user: &UserName) -> Result<Option<Account>, StoreError> {
        self.read(|tx| accounts::read(tx, user))
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
        self.write(|tx| accounts::delete_user(tx, user))
    }

    fn append_backup_segment(
        &self,
        user: &UserName,
        segment: NewBackupSegment,
        caps: BackupCaps,
    ) -> Result<u64, StoreError> {
        super::check_backup_entry(&segment)?;
        self.write(|tx| backups::append(tx, user, &segment, caps))
    }

    fn backup_segments(
        &self,
        user: &UserName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BackupSegment>, StoreError> {
        self.read(|tx| backups::list(tx, user, after, limit))
    }

    fn backup_holds_blob(&self, user: &UserName, blob: &BlobId) -> Result<bool, StoreError> {
        self.read(|tx| backups::holds(tx, user, blob))
    }

    fn delete_backup_index(&self, user: &UserName) -> Result<Vec<BlobId>, StoreError> {
        self.write(|tx| backups::delete(tx, user))
    }

    fn prune(&self, now_ms: u64, max_age_ms: u64) -> Result<Pruned, StoreError> {
        let cutoff = rows::clamp_i64(now_ms.saturating_sub(max_age_ms));
        let groups = self.read(retention::group_ids)?;
        let mut pruned = Pruned::default();
        // A transaction per group (each group's pruning is atomic), then one for inboxes.
        for group in groups {
            let n = self.write(|tx| retention::prune_group(tx, group, cutoff))?;
            pruned.group_entries = pruned.group_entries.saturating_add(n);
        }
        pruned.inbox_entries = self.write(|tx| retention::prune_inboxes(tx, cutoff))?;
        Ok(pruned)
    }
}
