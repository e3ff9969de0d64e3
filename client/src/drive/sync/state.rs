//! The sync engine's local state: per path, what was last synced (the last common version
//! of the local file and the drive's node). One SQLite file per (home, local folder, drive
//! folder), under `<home>/drive-sync/`, encrypted with the home's database key (SQLCipher)
//! when the home has one. Each completed action changes it in one transaction, so a
//! `kill -9` at any point loses nothing done and redoes nothing done.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use cove_core::drive::NodeId;
use cove_store::DatabaseKey;

/// What was last synced at one path (relative to the synced folder, `/`-separated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// A folder (else a file).
    pub dir: bool,
    /// The drive's node.
    pub node: NodeId,
    /// A file's version id last synced.
    pub version: Option<[u8; 16]>,
    /// The local file's size then.
    pub size: u64,
    /// The local file's modification time then (ns since the Unix epoch).
    pub mtime_ns: i64,
    /// SHA-256 of the file's contents then.
    pub sha256: Option<[u8; 32]>,
}

/// One change to the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateChange {
    /// Sets the entry at a path.
    Put(String, Known),
    /// Removes a path and everything below it.
    Remove(String),
    /// Renames a path and everything below it.
    Rename {
        /// The old path.
        from: String,
        /// The new path.
        to: String,
    },
}

/// Why the state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite (or the key does not open the file).
    #[error("sync state: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row that does not decode (the file was edited or damaged).
    #[error("sync state: a damaged row")]
    Damaged,
}

/// The open state file.
pub struct SyncState {
    conn: Connection,
}

impl std::fmt::Debug for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncState")
    }
}

impl SyncState {
    /// Opens (or creates) the state file at `path`, encrypted with `key` when given.
    pub fn open(path: &Path, key: Option<&DatabaseKey>) -> Result<SyncState, StateError> {
        let conn = Connection::open(path)?;
        if let Some(key) = key {
            let mut literal = Zeroizing::new(String::with_capacity(80));
            literal.push_str("PRAGMA key = \"x'");
            literal.push_str(&hex::encode(key.as_bytes()));
            literal.push_str("'\";");
            conn.execute_batch(&literal)?;
        }
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS entries (
                 path TEXT PRIMARY KEY,
                 dir INTEGER NOT NULL,
                 node BLOB NOT NULL,
                 version BLOB,
                 size INTEGER NOT NULL,
                 mtime_ns INTEGER NOT NULL,
                 sha256 BLOB
             ) WITHOUT ROWID;",
        )?;
        Ok(SyncState { conn })
    }

    /// Every entry, by path.
    pub fn load(&self) -> Result<BTreeMap<String, Known>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, dir, node, version, size, mtime_ns, sha256 FROM entries")?;
        let mut rows = stmt.query([])?;
        let mut out = BTreeMap::new();
        while let Some(row) = rows.next()? {
            let path: String = row.get(0)?;
            let dir: bool = row.get(1)?;
            let node: Vec<u8> = row.get(2)?;
            let version: Option<Vec<u8>> = row.get(3)?;
            let size: i64 = row.get(4)?;
            let mtime_ns: i64 = row.get(5)?;
            let sha: Option<Vec<u8>> = row.get(6)?;
            let known = Known {
                dir,
                node: node.try_into().map_err(|_| StateError::Damaged)?,
                version: version
                    .map(|v| v.try_into().map_err(|_| StateError::Damaged))
                    .transpose()?,
                size: u64::try_from(size).map_err(|_| StateError::Damaged)?,
                mtime_ns,
                sha256: sha
                    .map(|v| v.try_into().map_err(|_| StateError::Damaged))
                    .transpose()?,
            };
            out.insert(path, known);
        }
        Ok(out)
    }

    /// One entry.
    pub fn get(&self, path: &str) -> Result<Option<Known>, StateError> {
        let row = self
            .conn
            .query_row(
                "SELECT node FROM entries WHERE path = ?1",
                params![path],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some(_) => Ok(self.load()?.remove(path)),
        }
    }

    /// Applies `changes` in one transaction.
    pub fn apply(&mut self, changes: &[StateChange]) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        for change in changes {
            match change {
                StateChange::Put(path, k) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO entries
                         (path, dir, node, version, size, mtime_ns, sha256)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            path,
                            k.dir,
                            &k.node[..],
                            k.version.as_ref().map(|v| &v[..]),
                            i64::try_from(k.size).unwrap_or(i64::MAX),
                            k.mtime_ns,
                            k.sha256.as_ref().map(|v| &v[..]),
                        ],
                    )?;
                }
                StateChange::Remove(path) => {
                    tx.execute(
                        "DELETE FROM entries WHERE path = ?1 OR substr(path, 1, ?2) = ?3",
                        params![path, below(path).len() as i64, below(path)],
                    )?;
                }
                StateChange::Rename { from, to } => {
                    // Below first (a child path never equals its parent's new path).
                    let from_below = below(from);
                    let to_below = below(to);
                    tx.execute(
                        "DELETE FROM entries WHERE path = ?1 OR substr(path, 1, ?2) = ?3",
                        params![to, to_below.len() as i64, to_below],
                    )?;
                    tx.execute(
                        "UPDATE entries SET path = ?1 || substr(path, ?2)
                         WHERE substr(path, 1, ?3) = ?4",
                        params![
                            to_below,
                            from_below.len() as i64 + 1,
                            from_below.len() as i64,
                            from_below
                        ],
                    )?;
                    tx.execute(
                        "UPDATE entries SET path = ?1 WHERE path = ?2",
                        params![to, from],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// The prefix of the paths below `path`.
fn below(path: &str) -> String {
    format!("{path}/")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(node: u8, sha: u8) -> Known {
        Known {
            dir: false,
            node: [node; 16],
            version: Some([node; 16]),
            size: 3,
            mtime_ns: 7,
            sha256: Some([sha; 32]),
        }
    }

    #[test]
    fn puts_renames_and_removes_subtrees_in_one_transaction_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let key = DatabaseKey::from_bytes([9; 32]);
        let mut state = SyncState::open(&path, Some(&key)).unwrap();
        let mut d = file(1, 0);
        d.dir = true;
        d.version = None;
        d.sha256 = None;
        state
            .apply(&[
                StateChange::Put("a".into(), d.clone()),
                StateChange::Put("a/x".into(), file(2, 2)),
                StateChange::Put("ab".into(), file(3, 3)),
            ])
            .unwrap();
        state
            .apply(&[StateChange::Rename {
                from: "a".into(),
                to: "b/c".into(),
            }])
            .unwrap();
        drop(state);
        let state = SyncState::open(&path, Some(&key)).unwrap();
        let all = state.load().unwrap();
        assert_eq!(
            all.keys().cloned().collect::<Vec<_>>(),
            vec!["ab", "b/c", "b/c/x"]
        );
        assert_eq!(all["b/c/x"], file(2, 2));
        let mut state = state;
        state.apply(&[StateChange::Remove("b".into())]).unwrap();
        assert_eq!(state.load().unwrap().len(), 1);
        assert_eq!(state.get("ab").unwrap(), Some(file(3, 3)));
        drop(state);
        // The file is encrypted: another key does not open it.
        let wrong = DatabaseKey::from_bytes([8; 32]);
        assert!(SyncState::open(&path, Some(&wrong)).is_err());
    }
}
