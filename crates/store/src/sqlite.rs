//! The SQLite backend: one file (WAL mode), one table `kv(ns, key, value)`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Kv, KvPair, Namespace, StoreError};

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL` (the default): a committed transaction survives a crash
    /// or `kill -9` of the process; after a power loss or OS crash the last transactions
    /// may be rolled back (the database stays consistent). Those entries were already acked,
    /// so a device could miss them; choose [`Durability::Full`] where that matters more than
    /// about 1 ms per message.
    #[default]
    Process,
    /// WAL with `synchronous=FULL`: every commit is fsynced before it returns.
    Full,
}

/// A [`crate::Store`] in one SQLite file (WAL mode).
///
/// Writes outside a transaction are each their own SQLite transaction.
pub struct SqliteStore {
    conn: Mutex<State>,
}

struct State {
    conn: Connection,
    in_tx: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (or creates) the store file at `path` with [`Durability::Process`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::default())
    }

    /// Opens (or creates) the store file at `path`.
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        Self::setup(conn, durability)
    }

    /// A store in a private in-memory SQLite database (for tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(
            Connection::open_in_memory().map_err(backend)?,
            Durability::Process,
        )
    }

    fn setup(conn: Connection, durability: Durability) -> Result<Self, StoreError> {
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};"
        ))
        .map_err(backend)?;
        conn.execute_batch(
            "PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS kv (
                 ns INTEGER NOT NULL,
                 key BLOB NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (ns, key)
             ) WITHOUT ROWID;",
        )
        .map_err(backend)?;
        Ok(SqliteStore {
            conn: Mutex::new(State { conn, in_tx: false }),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Backend("sqlite store lock poisoned".into()))
    }
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Kv for SqliteStore {
    fn kv_get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let s = self.lock()?;
        let mut stmt = s
            .conn
            .prepare_cached("SELECT value FROM kv WHERE ns = ?1 AND key = ?2")
            .map_err(backend)?;
        stmt.query_row(params![ns as u8, key], |r| r.get(0))
            .optional()
            .map_err(backend)
    }

    fn kv_put(&self, ns: Namespace, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let s = self.lock()?;
        let mut stmt = s
            .conn
            .prepare_cached("INSERT OR REPLACE INTO kv (ns, key, value) VALUES (?1, ?2, ?3)")
            .map_err(backend)?;
        stmt.execute(params![ns as u8, key, value])
            .map_err(backend)?;
        Ok(())
    }

    fn kv_delete(&self, ns: Namespace, key: &[u8]) -> Result<(), StoreError> {
        let s = self.lock()?;
        let mut stmt = s
            .conn
            .prepare_cached("DELETE FROM kv WHERE ns = ?1 AND key = ?2")
            .map_err(backend)?;
        stmt.execute(params![ns as u8, key]).map_err(backend)?;
        Ok(())
    }

    fn kv_scan_from(
        &self,
        ns: Namespace,
        prefix: &[u8],
        from: &[u8],
    ) -> Result<Vec<KvPair>, StoreError> {
        let s = self.lock()?;
        let map = |r: &rusqlite::Row<'_>| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?));
        let start = if from > prefix { from } else { prefix };
        match prefix_end(prefix) {
            Some(end) => {
                let mut stmt = s
                    .conn
                    .prepare_cached(
                        "SELECT key, value FROM kv WHERE ns = ?1 AND key >= ?2 AND key < ?3 \
                         ORDER BY key",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![ns as u8, start, end], map)
                    .map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)
            }
            None => {
                let mut stmt = s
                    .conn
                    .prepare_cached(
                        "SELECT key, value FROM kv WHERE ns = ?1 AND key >= ?2 ORDER BY key",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![ns as u8, start], map)
                    .map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)
            }
        }
    }

    fn begin(&self) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if s.in_tx {
            return Err(StoreError::Transaction("begin inside a transaction"));
        }
        s.conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
        s.in_tx = true;
        Ok(())
    }

    fn commit(&self) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if !s.in_tx {
            return Err(StoreError::Transaction("commit without a transaction"));
        }
        // Whatever happens, the transaction is over afterwards: a failed COMMIT is rolled
        // back, so callers never stay stuck inside a half-open transaction.
        s.in_tx = false;
        if let Err(e) = s.conn.execute_batch("COMMIT") {
            let _ = s.conn.execute_batch("ROLLBACK");
            return Err(backend(e));
        }
        Ok(())
    }

    fn rollback(&self) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if !s.in_tx {
            return Err(StoreError::Transaction("rollback without a transaction"));
        }
        s.in_tx = false;
        s.conn.execute_batch("ROLLBACK").map_err(backend)
    }

    fn in_transaction(&self) -> bool {
        self.lock().map(|s| s.in_tx).unwrap_or(false)
    }
}

crate::impl_mls_storage!(SqliteStore);
