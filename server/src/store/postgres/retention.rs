//! Retention (`RelayStore::prune`): removing acknowledged and expired group-log and inbox
//! entries, and recording the highest seq pruned (`groups.pruned_through`,
//! `devices.inbox_pruned_through`) so that an emptied log or inbox never reuses a seq.

use cove_wire::GroupId;

use super::groups::lock_group;
use super::rows::{R, Tx, group_id};

/// The ids of every group, in id order.
pub(super) fn group_ids(tx: &mut Tx<'_>) -> R<Vec<GroupId>> {
    let rows = tx.rows("SELECT id FROM groups ORDER BY id", &[])?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(group_id(r.try_get::<_, &[u8]>(0)?)?);
    }
    Ok(out)
}

/// Prunes one group log up to the higher of its acknowledged floor and its expired prefix
/// (`cutoff`: relay ms; entries received before it have expired). Returns the entries
/// removed.
pub(super) fn prune_group(tx: &mut Tx<'_>, group: GroupId, cutoff: i64) -> R<u64> {
    // The group's row lock: a prune and a post to the same group take turns.
    if lock_group(tx, group)?.is_none() {
        return Ok(0);
    }
    let g = group.0.as_slice();
    // The lowest cursor of any reader; none: every entry is read by everyone there is.
    let acked: Option<i64> = tx
        .one(
            "SELECT MIN(c) FROM (SELECT cursor AS c FROM members WHERE group_id = $1
                                 UNION ALL
                                 SELECT cursor AS c FROM departures WHERE group_id = $1) r",
            &[&g],
        )?
        .try_get(0)?;
    let acked = acked.unwrap_or(i64::MAX);
    // The expired prefix: the entries before the first one received at or after the
    // cutoff (all of them when there is none).
    let expired: Option<i64> = tx
        .one(
            "SELECT COALESCE(
                 (SELECT MIN(seq) FROM group_log WHERE group_id = $1 AND received_at_ms >= $2) - 1,
                 (SELECT MAX(seq) FROM group_log WHERE group_id = $1))",
            &[&g, &cutoff],
        )?
        .try_get(0)?;
    let floor = acked.max(expired.unwrap_or(0));
    if floor <= 0 {
        return Ok(0);
    }
    let rows = tx.rows(
        "DELETE FROM group_log WHERE group_id = $1 AND seq <= $2 RETURNING seq",
        &[&g, &floor],
    )?;
    let mut highest = None;
    for r in &rows {
        let seq: i64 = r.try_get(0)?;
        highest = highest.max(Some(seq));
    }
    let Some(highest) = highest else {
        return Ok(0);
    };
    tx.exec(
        "UPDATE groups SET pruned_through = GREATEST(pruned_through, $2) WHERE id = $1",
        &[&g, &highest],
    )?;
    Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
}

/// Removes acknowledged and expired inbox entries (received before `cutoff`), and the
/// Welcome payloads no entry uses any more. Returns the entries removed.
pub(super) fn prune_inboxes(tx: &mut Tx<'_>, cutoff: i64) -> R<u64> {
    let rows = tx.rows(
        "DELETE FROM inbox i USING devices d
         WHERE d.id = i.device AND (i.seq <= d.inbox_cursor OR i.received_at_ms < $1)
         RETURNING i.device, i.seq",
        &[&cutoff],
    )?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut highest: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    for r in &rows {
        let (device, seq): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
        let top = highest.entry(device).or_insert(seq);
        *top = (*top).max(seq);
    }
    for (device, seq) in highest {
        tx.exec(
            "UPDATE devices SET inbox_pruned_through = GREATEST(inbox_pruned_through, $2) \
             WHERE id = $1",
            &[&device, &seq],
        )?;
    }
    tx.exec(
        "DELETE FROM inbox_payloads p WHERE NOT EXISTS \
         (SELECT 1 FROM inbox i WHERE i.payload = p.id)",
        &[],
    )?;
    Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
}
