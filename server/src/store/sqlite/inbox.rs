//! Device inboxes (`inbox`, `inbox_payloads`): reading a device's inbox and its end. Welcomes
//! are written by the commit that carries them (`log.rs`), with the payload stored once.

use cove_wire::{DeviceId, GroupId, InboxEntry, InboxKind, Payload, Seq};
use rusqlite::{Connection, params};

use super::directory::existing_device;
use super::rows::{corrupt, device_id, group_id, to_u64};
use crate::store::rules;
use crate::store::{Heads, StoreError};

/// The seq of the last entry ever made in the inbox of device `?1`: pruning may have
/// emptied it, then it is the highest seq pruned.
pub(super) const END_SQL: &str =
    "SELECT MAX(COALESCE((SELECT MAX(seq) FROM inbox WHERE device = ?1), 0),
                COALESCE((SELECT inbox_pruned_through FROM devices WHERE id = ?1), 0))";

/// `inbox.kind` of a Welcome (with `group_id`, `commit_seq` and `sender` set).
pub(super) const INBOX_WELCOME: i64 = 0;

/// Inbox entries of `device` after `after` (see `RelayStore::read_inbox`).
pub(super) fn read(
    conn: &Connection,
    device: DeviceId,
    after: Seq,
    limit: u32,
    max_bytes: usize,
) -> Result<Vec<InboxEntry>, StoreError> {
    let id = existing_device(conn, device)?;
    let limit = rules::capped_limit(limit);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let after = i64::try_from(after.0).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT i.seq, i.kind, i.group_id, i.commit_seq, i.sender, i.received_at_ms, p.data,
                length(p.data)
         FROM inbox i JOIN inbox_payloads p ON p.id = i.payload
         WHERE i.device = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![id, after, limit])?;
    let mut out = Vec::new();
    let mut used = 0usize;
    while let Some(r) = rows.next()? {
        // As the group log: the budget is checked on the stored length before loading.
        let len = usize::try_from(r.get::<_, i64>(7)?).map_err(|_| corrupt("payload length"))?;
        if !rules::fits_budget(&mut used, len, max_bytes, out.is_empty()) {
            break;
        }
        let kind = match r.get::<_, i64>(1)? {
            INBOX_WELCOME => InboxKind::Welcome {
                group: group_id(&r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default())?,
                commit_seq: Seq(to_u64(r.get::<_, Option<i64>>(3)?.unwrap_or(-1))?),
                sender: device_id(r.get::<_, Option<i64>>(4)?.unwrap_or(-1))?,
            },
            _ => return Err(corrupt("inbox entry kind")),
        };
        out.push(InboxEntry {
            seq: Seq(to_u64(r.get(0)?)?),
            kind,
            received_at_ms: to_u64(r.get(5)?)?,
            payload: Payload(r.get(6)?),
        });
    }
    Ok(out)
}

/// The seq of the last entry in `device`'s inbox (0 when empty); UnknownDevice if no such
/// device.
pub(super) fn end(conn: &Connection, device: DeviceId) -> Result<Seq, StoreError> {
    let id = existing_device(conn, device)?;
    let end: i64 = conn
        .prepare_cached(END_SQL)?
        .query_row(params![id], |r| r.get(0))?;
    Ok(Seq(to_u64(end)?))
}

/// The heads of `groups`' logs and `devices`' inboxes (see `RelayStore::heads`).
pub(super) fn heads(
    conn: &Connection,
    groups: &[GroupId],
    devices: &[DeviceId],
) -> Result<Heads, StoreError> {
    let mut heads = Heads::default();
    let mut stmt = conn.prepare_cached(
        "SELECT MAX(COALESCE((SELECT MAX(seq) FROM group_log WHERE group_id = ?1), 0),
                    pruned_through)
         FROM groups WHERE id = ?1",
    )?;
    for group in groups {
        let mut rows = stmt.query(params![group.0.as_slice()])?;
        if let Some(r) = rows.next()? {
            heads.groups.push((*group, Seq(to_u64(r.get(0)?)?)));
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT MAX(COALESCE((SELECT MAX(seq) FROM inbox WHERE device = ?1), 0),
                    inbox_pruned_through)
         FROM devices WHERE id = ?1",
    )?;
    for device in devices {
        let Ok(id) = i64::try_from(device.0) else {
            continue;
        };
        let mut rows = stmt.query(params![id])?;
        if let Some(r) = rows.next()? {
            heads.inboxes.push((*device, Seq(to_u64(r.get(0)?)?)));
        }
    }
    Ok(heads)
}
