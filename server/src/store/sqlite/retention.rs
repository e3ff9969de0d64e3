//! Retention (`RelayStore::prune`): removing acknowledged and expired group-log and inbox
//! entries, and recording the highest seq pruned (`groups.pruned_through`,
//! `devices.inbox_pruned_through`) so that an emptied log or inbox never reuses a seq.
//!
//! Freed pages go to SQLite's free list and are reused by later inserts, so a relay whose
//! traffic is steady keeps a file of steady size (it does not shrink).

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, params};

use super::rows::clamp_i64;
use crate::store::StoreError;

/// Groups pruned per transaction: the writer lock is let go between chunks, so posts are
/// not held up by a prune of a large store.
pub(super) const GROUPS_PER_TRANSACTION: usize = 256;

/// The ids of every group, in id order.
pub(super) fn group_ids(conn: &Connection) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id FROM groups ORDER BY id")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Prunes the logs of `groups`; `cutoff` is relay time in ms: entries received before it
/// have expired. Returns the entries removed.
pub(super) fn prune_groups(
    tx: &Transaction<'_>,
    groups: &[Vec<u8>],
    cutoff: u64,
) -> Result<u64, StoreError> {
    let cutoff = clamp_i64(cutoff);
    let mut pruned = 0u64;
    for group in groups {
        pruned = pruned.saturating_add(prune_group(tx, group, cutoff)?);
    }
    Ok(pruned)
}

/// Prunes one group log up to the higher of its acknowledged floor and its expired prefix.
fn prune_group(tx: &Transaction<'_>, group: &[u8], cutoff: i64) -> Result<u64, StoreError> {
    // The lowest cursor of any reader; none: every entry is read by everyone there is.
    let acked: Option<i64> = tx
        .prepare_cached(
            "SELECT MIN(c) FROM (SELECT cursor AS c FROM members WHERE group_id = ?1
                                 UNION ALL
                                 SELECT cursor AS c FROM departures WHERE group_id = ?1)",
        )?
        .query_row(params![group], |r| r.get(0))?;
    let acked = acked.unwrap_or(i64::MAX);
    // The expired prefix: entries in seq order while they are older than the cutoff (reads
    // only the pruned rows and one more).
    let mut expired = 0i64;
    {
        let mut stmt = tx.prepare_cached(
            "SELECT seq, received_at_ms FROM group_log WHERE group_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![group])?;
        while let Some(r) = rows.next()? {
            if r.get::<_, i64>(1)? >= cutoff {
                break;
            }
            expired = r.get(0)?;
        }
    }
    let floor = acked.max(expired);
    if floor <= 0 {
        return Ok(0);
    }
    let highest: Option<i64> = tx
        .prepare_cached("SELECT MAX(seq) FROM group_log WHERE group_id = ?1 AND seq <= ?2")?
        .query_row(params![group, floor], |r| r.get(0))?;
    let Some(highest) = highest else {
        return Ok(0);
    };
    let n = tx
        .prepare_cached("DELETE FROM group_log WHERE group_id = ?1 AND seq <= ?2")?
        .execute(params![group, floor])?;
    tx.prepare_cached("UPDATE groups SET pruned_through = MAX(pruned_through, ?2) WHERE id = ?1")?
        .execute(params![group, highest])?;
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Removes acknowledged and expired inbox entries (received before `cutoff`), and the
/// Welcome payloads no entry uses any more. Returns the entries removed.
pub(super) fn prune_inboxes(tx: &Transaction<'_>, cutoff: u64) -> Result<u64, StoreError> {
    let cutoff = clamp_i64(cutoff);
    let doomed: Vec<(i64, i64)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT i.device, i.seq FROM inbox i JOIN devices d ON d.id = i.device
             WHERE i.seq <= d.inbox_cursor OR i.received_at_ms < ?1",
        )?;
        let rows = stmt.query_map(params![cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    if doomed.is_empty() {
        return Ok(0);
    }
    let mut highest: HashMap<i64, i64> = HashMap::new();
    {
        let mut delete = tx.prepare_cached("DELETE FROM inbox WHERE device = ?1 AND seq = ?2")?;
        for &(device, seq) in &doomed {
            delete.execute(params![device, seq])?;
            let top = highest.entry(device).or_insert(seq);
            *top = (*top).max(seq);
        }
    }
    let mut mark = tx.prepare_cached(
        "UPDATE devices SET inbox_pruned_through = MAX(inbox_pruned_through, ?2) WHERE id = ?1",
    )?;
    for (device, seq) in highest {
        mark.execute(params![device, seq])?;
    }
    tx.prepare_cached("DELETE FROM inbox_payloads WHERE id NOT IN (SELECT payload FROM inbox)")?
        .execute([])?;
    Ok(u64::try_from(doomed.len()).unwrap_or(u64::MAX))
}
