//! Buffered acknowledgements: the in-memory buffer of acked cursors not yet written, when it
//! is due to be written, and writing it inside a transaction (member cursors, departure
//! records, inbox cursors).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cove_wire::{DeviceId, GroupId, Seq};
use rusqlite::{Transaction, params};

use super::rows::to_i64;
use crate::store::StoreError;

/// Buffered acknowledgements are written once this many are pending.
pub const ACK_FLUSH_ENTRIES: usize = 4096;
/// Buffered acknowledgements are written once the oldest is this old (checked on each ack).
pub const ACK_FLUSH_AGE: Duration = Duration::from_secs(1);

/// Acknowledged cursors not yet written. An entry stays until a transaction that wrote it
/// (or a later value) has committed, so a cursor is always in the buffer or on disk.
#[derive(Default)]
pub(super) struct PendingAcks {
    /// Group cursors by (group, device).
    pub(super) group: HashMap<(GroupId, DeviceId), Seq>,
    /// Inbox cursors by device.
    pub(super) inbox: HashMap<DeviceId, Seq>,
    /// When the oldest pending ack arrived.
    pub(super) since: Option<Instant>,
}

impl PendingAcks {
    /// How many cursors are pending.
    pub(super) fn len(&self) -> usize {
        self.group.len() + self.inbox.len()
    }

    /// Whether nothing is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the buffer is due to be written: [`ACK_FLUSH_ENTRIES`] cursors pending, or
    /// the oldest unwritten one [`ACK_FLUSH_AGE`] old.
    pub(super) fn due(&self) -> bool {
        self.len() >= ACK_FLUSH_ENTRIES || self.since.is_some_and(|t| t.elapsed() >= ACK_FLUSH_AGE)
    }

    /// A copy of the pending cursors, to write in a transaction; `since` of the copy is the
    /// moment it was taken. Every entry left after [`PendingAcks::written`] was acked at or
    /// after that moment (entries are only dropped once written).
    pub(super) fn snapshot(&self) -> PendingAcks {
        PendingAcks {
            group: self.group.clone(),
            inbox: self.inbox.clone(),
            since: Some(Instant::now()),
        }
    }

    /// Drops the entries a committed transaction wrote (unless acked further since). What is
    /// left was acked after `done` was taken, so its age counts from then: a stream of acks
    /// arriving while a flush runs does not leave the buffer looking old (which made every
    /// later ack flush the buffer on its own).
    pub(super) fn written(&mut self, done: &PendingAcks) {
        for (k, seq) in &done.group {
            if self.group.get(k).is_some_and(|s| s <= seq) {
                self.group.remove(k);
            }
        }
        for (k, seq) in &done.inbox {
            if self.inbox.get(k).is_some_and(|s| s <= seq) {
                self.inbox.remove(k);
            }
        }
        self.since = if self.is_empty() {
            None
        } else {
            done.since.or(self.since)
        };
    }
}

/// Writes buffered acknowledgements (never moving a cursor backwards; a cursor of a device
/// that has left the group meanwhile has no row and is dropped).
pub(super) fn write_acks(tx: &Transaction<'_>, acks: &PendingAcks) -> Result<(), StoreError> {
    if acks.is_empty() {
        return Ok(());
    }
    let mut group = tx.prepare_cached(
        "UPDATE members SET cursor = MAX(cursor, ?3) WHERE group_id = ?1 AND device = ?2",
    )?;
    for ((g, d), seq) in &acks.group {
        group.execute(params![g.0.as_slice(), to_i64(d.0)?, to_i64(seq.0)?])?;
    }
    // A member with a departure record in the same group (removed, then added again) moves
    // that record too. Departure records are rare: with none, that is one query, not two
    // statements per cursor.
    let any_departures: bool = !acks.group.is_empty()
        && tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM departures)")?
            .query_row([], |r| r.get(0))?;
    if any_departures {
        let mut departed = tx.prepare_cached(
            "UPDATE departures SET cursor = MAX(cursor, ?3) WHERE group_id = ?1 AND device = ?2",
        )?;
        let mut done = tx.prepare_cached(
            "DELETE FROM departures WHERE group_id = ?1 AND device = ?2 AND cursor >= removed_at",
        )?;
        for ((g, d), seq) in &acks.group {
            departed.execute(params![g.0.as_slice(), to_i64(d.0)?, to_i64(seq.0)?])?;
            done.execute(params![g.0.as_slice(), to_i64(d.0)?])?;
        }
    }
    let mut inbox =
        tx.prepare_cached("UPDATE devices SET inbox_cursor = MAX(inbox_cursor, ?2) WHERE id = ?1")?;
    for (d, seq) in &acks.inbox {
        inbox.execute(params![to_i64(d.0)?, to_i64(seq.0)?])?;
    }
    Ok(())
}
