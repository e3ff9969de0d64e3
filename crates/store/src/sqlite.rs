//! The SQLite backend: one file (WAL mode), one table `kv(ns, key, value)`, and the search
//! index (FTS5: `text_rows(id, grp, seq)` and the contentless `text_fts(body)` with the
//! same rowids).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use cove_wire::{GroupId, Seq};

use crate::{Kv, KvPair, Namespace, StoreError, query_words};

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
        migrate(&conn)?;
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

/// Brings the schema from the file's `PRAGMA user_version` up to the newest, one step per
/// version, each in one transaction with its version bump. Version 0 is the `kv` table alone
/// (created by `setup`, as before versions existed); 1 adds the search index. A file from a
/// newer Cove is left as it is.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    if version < 1 {
        // The search index (issue 13). Contentless (the text is in the message records
        // already; only the tokens are here) with deletes, `secure-delete` so a delete
        // removes the tokens from the index pages at once, and words folded to lowercase
        // without diacritics. `text_rows` maps a rowid to its message.
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS text_rows (
                 id INTEGER PRIMARY KEY,
                 grp BLOB NOT NULL,
                 seq BLOB NOT NULL,
                 UNIQUE (grp, seq)
             );
             CREATE VIRTUAL TABLE IF NOT EXISTS text_fts USING fts5(
                 body,
                 content = '',
                 contentless_delete = 1,
                 tokenize = 'unicode61 remove_diacritics 2'
             );
             INSERT INTO text_fts (text_fts, rank) VALUES ('secure-delete', 1);
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            backend(e)
        })?;
    }
    Ok(())
}

/// Runs `f` inside a savepoint: its writes land together or not at all, inside or outside
/// an open transaction.
fn atomically<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT cove_text").map_err(backend)?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE cove_text").map_err(backend)?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO cove_text; RELEASE cove_text");
            Err(e)
        }
    }
}

/// The FTS5 query for `words` (from [`query_words`]): each word a quoted string with a
/// prefix star, all of them required. The words hold letters and digits only, but the
/// quoting does not rely on it.
fn fts_query(words: &[String]) -> String {
    let mut q = String::new();
    for w in words {
        if !q.is_empty() {
            q.push_str(" AND ");
        }
        q.push('"');
        q.push_str(&w.replace('"', "\"\""));
        q.push_str("\"*");
    }
    q
}

fn text_row(conn: &Connection, group: &GroupId, seq: Seq) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT id FROM text_rows WHERE grp = ?1 AND seq = ?2")
        .map_err(backend)?
        .query_row(params![&group.0[..], &seq.0.to_be_bytes()[..]], |r| {
            r.get(0)
        })
        .optional()
        .map_err(backend)
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

    fn text_index(&self, group: &GroupId, seq: Seq, text: &str) -> Result<(), StoreError> {
        let s = self.lock()?;
        atomically(&s.conn, |conn| {
            let id = match text_row(conn, group, seq)? {
                Some(id) => {
                    conn.prepare_cached("DELETE FROM text_fts WHERE rowid = ?1")
                        .map_err(backend)?
                        .execute(params![id])
                        .map_err(backend)?;
                    id
                }
                None => {
                    conn.prepare_cached("INSERT INTO text_rows (grp, seq) VALUES (?1, ?2)")
                        .map_err(backend)?
                        .execute(params![&group.0[..], &seq.0.to_be_bytes()[..]])
                        .map_err(backend)?;
                    conn.last_insert_rowid()
                }
            };
            conn.prepare_cached("INSERT INTO text_fts (rowid, body) VALUES (?1, ?2)")
                .map_err(backend)?
                .execute(params![id, text])
                .map_err(backend)?;
            Ok(())
        })
    }

    fn text_unindex(&self, group: &GroupId, seq: Seq) -> Result<(), StoreError> {
        let s = self.lock()?;
        atomically(&s.conn, |conn| {
            if let Some(id) = text_row(conn, group, seq)? {
                conn.prepare_cached("DELETE FROM text_fts WHERE rowid = ?1")
                    .map_err(backend)?
                    .execute(params![id])
                    .map_err(backend)?;
                conn.prepare_cached("DELETE FROM text_rows WHERE id = ?1")
                    .map_err(backend)?
                    .execute(params![id])
                    .map_err(backend)?;
            }
            Ok(())
        })
    }

    fn text_search(
        &self,
        query: &str,
        group: Option<&GroupId>,
        limit: usize,
    ) -> Result<Vec<(GroupId, Seq)>, StoreError> {
        let words = query_words(query)?;
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let fts = fts_query(&words);
        // CROSS JOIN keeps the FTS table the outer loop: the matches are found once, then
        // their rows looked up by id (the other way round, SQLite walks a group's rows and
        // runs the full-text query once per row: minutes on a large history).
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let s = self.lock()?;
        let map = |r: &rusqlite::Row<'_>| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?));
        let rows: Vec<(Vec<u8>, Vec<u8>)> = match group {
            Some(g) => s
                .conn
                .prepare_cached(
                    "SELECT r.grp, r.seq FROM text_fts CROSS JOIN text_rows r ON r.id = text_fts.rowid \
                     WHERE text_fts MATCH ?1 AND r.grp = ?2 ORDER BY r.seq DESC LIMIT ?3",
                )
                .map_err(backend)?
                .query_map(params![fts, &g.0[..], limit], map)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?,
            None => s
                .conn
                .prepare_cached(
                    "SELECT r.grp, r.seq FROM text_fts CROSS JOIN text_rows r ON r.id = text_fts.rowid \
                     WHERE text_fts MATCH ?1 ORDER BY r.seq DESC, r.grp DESC LIMIT ?2",
                )
                .map_err(backend)?
                .query_map(params![fts, limit], map)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?,
        };
        rows.into_iter()
            .map(|(g, seq)| {
                let g: [u8; 16] = g
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("text index group".into()))?;
                let seq: [u8; 8] = seq
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("text index seq".into()))?;
                Ok((GroupId(g), Seq(u64::from_be_bytes(seq))))
            })
            .collect()
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

    fn scrub(&self) -> Result<(), StoreError> {
        let s = self.lock()?;
        if s.in_tx {
            return Err(StoreError::Transaction("scrub inside a transaction"));
        }
        // Merge the index into one segment: the old segments (and their term lists) go,
        // their pages zeroed by secure_delete.
        s.conn
            .execute_batch("INSERT INTO text_fts (text_fts) VALUES ('optimize')")
            .map_err(backend)?;
        // Copy the WAL into the file and truncate it, so the old page images it holds go.
        let busy: i64 = s
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(backend)?;
        if busy != 0 {
            return Err(StoreError::Backend(
                "the write-ahead log could not be truncated: another connection is reading".into(),
            ));
        }
        Ok(())
    }
}

crate::impl_mls_storage!(SqliteStore);
