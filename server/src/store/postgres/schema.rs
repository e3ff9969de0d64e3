//! The PostgreSQL schema and its migrations: a versioned list, append only, applied in one
//! transaction under an advisory lock the caller holds (`PostgresStore::migrate`, so nodes
//! starting together migrate once), with the same rule as SQLite's: a database written by a
//! newer relay is refused.

use super::rows::{R, Tx, corrupt};
use crate::store::StoreError;

/// Any constant: the advisory lock key that serialises migrations across nodes.
pub(super) const MIGRATION_LOCK: i64 = 0x636f_7665_7067;

/// The schema, one entry per version; entry `i` migrates from version `i` to `i + 1`.
/// Append only: a released migration is never edited.
pub(super) const MIGRATIONS: &[&str] = &[
    // Version 1: the whole relay state as of SQLite schema version 10.
    "
    CREATE TABLE users (
        name TEXT PRIMARY KEY
    );
    -- An identity: device ids are never reused.
    CREATE TABLE devices (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name),
        key BYTEA NOT NULL,
        inbox_cursor BIGINT NOT NULL DEFAULT 0,
        last_seen_ms BIGINT,
        inbox_pruned_through BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX devices_by_user ON devices(user_name, id);
    CREATE TABLE key_packages (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        device BIGINT NOT NULL REFERENCES devices(id),
        data BYTEA NOT NULL
    );
    CREATE INDEX key_packages_by_device ON key_packages(device, id);
    CREATE TABLE last_resort_key_packages (
        device BIGINT PRIMARY KEY REFERENCES devices(id),
        data BYTEA NOT NULL
    );
    CREATE TABLE groups (
        id BYTEA PRIMARY KEY,
        epoch BIGINT NOT NULL,
        pruned_through BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE members (
        group_id BYTEA NOT NULL REFERENCES groups(id),
        device BIGINT NOT NULL,
        cursor BIGINT NOT NULL,
        joined BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (group_id, device)
    );
    CREATE INDEX members_by_device ON members(device, group_id);
    -- kind: 0 application, 1 proposal, 2 commit (added/removed: 8-byte big-endian ids).
    -- digest: the repeated-post check's SHA-256 prefix of an application message or
    -- proposal payload (the window is read without the payloads).
    CREATE TABLE group_log (
        group_id BYTEA NOT NULL REFERENCES groups(id),
        seq BIGINT NOT NULL,
        epoch BIGINT NOT NULL,
        sender BIGINT NOT NULL,
        kind BIGINT NOT NULL,
        added BYTEA,
        removed BYTEA,
        received_at_ms BIGINT NOT NULL,
        payload BYTEA NOT NULL,
        digest BYTEA,
        PRIMARY KEY (group_id, seq)
    );
    -- One commit per epoch, whichever node appends it.
    CREATE UNIQUE INDEX group_log_one_commit_per_epoch ON group_log(group_id, epoch)
        WHERE kind = 2;
    CREATE TABLE inbox_payloads (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        data BYTEA NOT NULL
    );
    -- kind: 0 Welcome (group_id, commit_seq, sender set).
    CREATE TABLE inbox (
        device BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        kind BIGINT NOT NULL,
        group_id BYTEA,
        commit_seq BIGINT,
        sender BIGINT,
        received_at_ms BIGINT NOT NULL,
        payload BIGINT NOT NULL REFERENCES inbox_payloads(id),
        PRIMARY KEY (device, seq)
    );
    CREATE TABLE departures (
        group_id BYTEA NOT NULL,
        device BIGINT NOT NULL,
        cursor BIGINT NOT NULL,
        removed_at BIGINT NOT NULL,
        PRIMARY KEY (group_id, device)
    );
    CREATE INDEX departures_by_device ON departures(device, group_id);
    CREATE TABLE device_lists (
        user_name TEXT NOT NULL REFERENCES users(name),
        idx BIGINT NOT NULL,
        entry BYTEA NOT NULL,
        PRIMARY KEY (user_name, idx)
    );
    CREATE TABLE group_public_state (
        group_id BYTEA PRIMARY KEY REFERENCES groups(id),
        group_info BYTEA NOT NULL,
        tree BYTEA NOT NULL
    );
    CREATE TABLE group_left (
        group_id BYTEA NOT NULL REFERENCES groups(id),
        device BIGINT NOT NULL,
        PRIMARY KEY (group_id, device)
    );
    CREATE TABLE accounts (
        user_name TEXT PRIMARY KEY REFERENCES users(name),
        record BYTEA NOT NULL,
        ksf_version BIGINT NOT NULL,
        password_bundle BYTEA NOT NULL,
        recovery_bundle BYTEA NOT NULL,
        recovery_key BYTEA NOT NULL
    );
    CREATE TABLE backup_segments (
        user_name TEXT NOT NULL REFERENCES users(name),
        position BIGINT NOT NULL,
        blob BYTEA NOT NULL,
        size BIGINT NOT NULL,
        entry BYTEA NOT NULL,
        PRIMARY KEY (user_name, position),
        UNIQUE (user_name, blob)
    );
    ",
];

/// The schema version this build writes.
pub(super) fn version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Migrates the schema to this build's version in `tx`; refuses a database written by a
/// newer relay. The caller holds the advisory lock [`MIGRATION_LOCK`] since before `tx`
/// started.
pub(super) fn migrate(tx: &mut Tx<'_>) -> R<()> {
    tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let version: Option<i64> = tx
        .one("SELECT MAX(version) FROM schema_version", &[])?
        .try_get(0)?;
    let current = usize::try_from(version.unwrap_or(0)).map_err(|_| corrupt("schema version"))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {current} is newer than this relay's {}",
            MIGRATIONS.len()
        ))
        .into());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch(sql)?;
        let version = i64::try_from(i + 1).map_err(|_| corrupt("schema version"))?;
        tx.exec("DELETE FROM schema_version", &[])?;
        tx.exec(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )?;
    }
    Ok(())
}
