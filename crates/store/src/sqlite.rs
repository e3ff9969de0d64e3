//! The SQLite backend: one file (WAL mode), one table `kv(ns, key, value)`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

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

/// The 256-bit key of an encrypted store (SQLCipher's raw key: no passphrase stretching,
/// the caller holds a random key). Zeroed on drop; its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseKey(Zeroizing<[u8; 32]>);

impl DatabaseKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> DatabaseKey {
        DatabaseKey(Zeroizing::new(bytes))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SQLCipher's raw-key literal, `"x'<64 hex digits>'"`.
    fn literal(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(69));
        s.push_str("\"x'");
        for b in self.0.iter() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s.push_str("'\"");
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl std::fmt::Debug for DatabaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseKey(..)")
    }
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

    /// Opens (or creates) the store file at `path`, encrypted with `key` (SQLCipher 4: every
    /// page, the WAL and the schema; nothing in the file is readable without the key).
    /// [`StoreError::WrongKey`] if the file exists and `key` does not open it (or it is not
    /// a database).
    pub fn open_encrypted(
        path: impl AsRef<Path>,
        key: &DatabaseKey,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        apply_key(&conn, key)?;
        Self::setup(conn, durability)
    }

    /// Encrypts the plaintext store at `path` with `key` in place (SQLCipher's
    /// `sqlcipher_export` into a new file beside it, then an atomic rename over the old
    /// one), for homes created before the database was encrypted. The old file's free pages
    /// go with it.
    pub fn encrypt_in_place(path: impl AsRef<Path>, key: &DatabaseKey) -> Result<(), StoreError> {
        let path = path.as_ref();
        let tmp = path.with_extension("encrypting");
        let _ = std::fs::remove_file(&tmp);
        {
            let conn = Connection::open(path).map_err(backend)?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(backend)?;
            let tmp_str = tmp
                .to_str()
                .ok_or_else(|| StoreError::Backend("database path is not UTF-8".into()))?;
            // SQLCipher reads a key of the form x'<hex>' as a raw key.
            let raw = key.literal();
            let raw = raw.trim_matches('"');
            conn.execute(
                "ATTACH DATABASE ?1 AS encrypted KEY ?2",
                params![tmp_str, raw],
            )
            .map_err(backend)?;
            conn.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))
                .map_err(backend)?;
            conn.execute_batch("DETACH DATABASE encrypted;")
                .map_err(backend)?;
        }
        std::fs::rename(&tmp, path).map_err(|e| StoreError::Backend(e.to_string()))?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let _ = std::fs::remove_file(std::path::PathBuf::from(side));
        }
        Ok(())
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
        // Deleted rows (old epoch secrets, removed messages) are overwritten, not left in
        // free pages.
        conn.execute_batch(
            "PRAGMA busy_timeout=5000;
             PRAGMA secure_delete=ON;
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

/// Keys `conn` and checks the key opens it (SQLCipher only reports a wrong key at the first
/// read).
fn apply_key(conn: &Connection, key: &DatabaseKey) -> Result<(), StoreError> {
    // A wrong key makes SQLCipher log an HMAC failure to stderr; the caller reports it.
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")
        .map_err(backend)?;
    conn.execute_batch(&format!("PRAGMA key = {};", key.literal().as_str()))
        .map_err(backend)?;
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            Err(StoreError::WrongKey)
        }
        Err(e) => Err(backend(e)),
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

    fn kv_first(&self, ns: Namespace, prefix: &[u8]) -> Result<Option<KvPair>, StoreError> {
        let s = self.lock()?;
        let map = |r: &rusqlite::Row<'_>| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?));
        match prefix_end(prefix) {
            Some(end) => s
                .conn
                .prepare_cached(
                    "SELECT key, value FROM kv WHERE ns = ?1 AND key >= ?2 AND key < ?3 \
                     ORDER BY key LIMIT 1",
                )
                .map_err(backend)?
                .query_row(params![ns as u8, prefix, end], map)
                .optional()
                .map_err(backend),
            None => s
                .conn
                .prepare_cached(
                    "SELECT key, value FROM kv WHERE ns = ?1 AND key >= ?2 ORDER BY key LIMIT 1",
                )
                .map_err(backend)?
                .query_row(params![ns as u8, prefix], map)
                .optional()
                .map_err(backend),
        }
    }

    // Until the search index lands (its merge belongs here too): deleted rows are zeroed
    // in the database file (`secure_delete`, set at open); the write-ahead log, which still
    // holds the pages as they were, is checkpointed into it and truncated.
    fn scrub(&self) -> Result<(), StoreError> {
        let s = self.lock()?;
        if s.in_tx {
            return Err(StoreError::Transaction("scrub inside a transaction"));
        }
        s.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(backend)
    }
}

crate::impl_mls_storage!(SqliteStore);
