//! The SQLite schema and its migrations (the versioned list, append only, and bringing a
//! file up to this build's version), and the connection settings: the open options and the
//! pragmas every connection gets (WAL, sync level).

use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};

use super::rows::corrupt;
use crate::store::StoreError;

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

/// Options for [`SqliteStore::open_with`](super::SqliteStore::open_with).
#[derive(Clone, Copy, Debug, Default)]
pub struct SqliteOptions {
    /// The sync level; see [`Synchronous`].
    pub synchronous: Synchronous,
}

/// The schema, one entry per version; entry `i` migrates from version `i` to `i + 1`.
/// Append only: a released migration is never edited.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // Version 3: users' signed device lists (entry: the postcard-encoded `ListEntry`).
    "
    CREATE TABLE device_lists (
        user TEXT NOT NULL REFERENCES users(name),
        idx INTEGER NOT NULL,
        entry BLOB NOT NULL,
        PRIMARY KEY (user, idx)
    ) WITHOUT ROWID;
    ",
    // Version 4: when each device last authenticated (relay ms; NULL: not recorded yet).
    "
    ALTER TABLE devices ADD COLUMN last_seen_ms INTEGER;
    ",
    // Version 5: retention. The highest seq pruned from a group log and from a device's
    // inbox, so that seqs are never reused once a log or inbox is emptied.
    "
    ALTER TABLE groups ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN inbox_pruned_through INTEGER NOT NULL DEFAULT 0;
    ",
    // Version 6: each group's latest public MLS state (GroupInfo and ratchet tree, opaque to
    // the store), replaced with every validated commit.
    "
    CREATE TABLE group_public_state (
        group_id BLOB PRIMARY KEY NOT NULL REFERENCES groups(id),
        group_info BLOB NOT NULL,
        tree BLOB NOT NULL
    ) WITHOUT ROWID;
    ",
    // Version 7: devices that left a group without MLS state (`RelayStore::leave_group`):
    // no longer members, still MLS leaves until a commit removes them.
    "
    CREATE TABLE group_left (
        group_id BLOB NOT NULL REFERENCES groups(id),
        device INTEGER NOT NULL REFERENCES devices(id),
        PRIMARY KEY (group_id, device)
    ) WITHOUT ROWID;
    ",
    // Version 8: password accounts (the OPAQUE record, the KSF version, the two wrapped
    // bundles and the recovery public key), one row per user that registered a password.
    "
    CREATE TABLE accounts (
        user TEXT PRIMARY KEY NOT NULL REFERENCES users(name),
        record BLOB NOT NULL,
        ksf_version INTEGER NOT NULL,
        password_bundle BLOB NOT NULL,
        recovery_bundle BLOB NOT NULL,
        recovery_key BLOB NOT NULL
    ) WITHOUT ROWID;
    ",
    // Version 9: the history-backup index, per user: position, blob, size, opaque entry.
    "
    CREATE TABLE backup_segments (
        user TEXT NOT NULL REFERENCES users(name),
        position INTEGER NOT NULL,
        blob BLOB NOT NULL,
        size INTEGER NOT NULL,
        entry BLOB NOT NULL,
        PRIMARY KEY (user, position)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX backup_segments_blob ON backup_segments(user, blob);
    ",
    // Version 10: account deletion. A deleted user's devices are gone but stay left leaves
    // of their groups (`RelayStore::delete_user`), so `group_left.device` no longer
    // references `devices`.
    "
    CREATE TABLE group_left_v10 (
        group_id BLOB NOT NULL REFERENCES groups(id),
        device INTEGER NOT NULL,
        PRIMARY KEY (group_id, device)
    ) WITHOUT ROWID;
    INSERT INTO group_left_v10 (group_id, device) SELECT group_id, device FROM group_left;
    DROP TABLE group_left;
    ALTER TABLE group_left_v10 RENAME TO group_left;
    ",
];

/// The schema version this build writes.
pub(super) fn version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Sets a connection's pragmas: WAL mode, the sync level, foreign keys, secure delete, a
/// busy timeout.
pub(super) fn configure(conn: &Connection, options: SqliteOptions) -> Result<(), StoreError> {
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
    // Pruned entries (ciphertext, issue 13: a disappearing message's copy) are overwritten
    // with zeros, not left in the file's free pages.
    conn.pragma_update(None, "secure_delete", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Migrates the schema to this build's version in one transaction; refuses a file written by
/// a newer relay.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
