//! Device inboxes (`inbox`, `inbox_payloads`): reading a device's inbox and its end.
//! Welcomes are written by the commit that carries them (`log.rs`), the payload once.

use cove_wire::{DeviceId, GroupId, InboxEntry, InboxKind, Payload, Seq};

use super::directory::existing_device;
use super::rows::{R, Tx, corrupt, device_id, group_id, to_u64};
use crate::store::{Heads, rules};

/// `inbox.kind` of a Welcome (with `group_id`, `commit_seq` and `sender` set).
pub(super) const INBOX_WELCOME: i64 = 0;

/// Inbox entries of `device` after `after` (see `RelayStore::read_inbox`).
pub(super) fn read(
    tx: &mut Tx<'_>,
    device: DeviceId,
    after: Seq,
    limit: u32,
    max_bytes: usize,
) -> R<Vec<InboxEntry>> {
    let id = existing_device(tx, device)?;
    let limit = rules::capped_limit(limit);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let after = i64::try_from(after.0).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // The byte budget is checked on the stored lengths first; payloads past it are never
    // loaded.
    let sizes = tx.rows(
        "SELECT i.seq, octet_length(p.data)::BIGINT
         FROM inbox i JOIN inbox_payloads p ON p.id = i.payload
         WHERE i.device = $1 AND i.seq > $2 ORDER BY i.seq LIMIT $3",
        &[&id, &after, &limit],
    )?;
    let Some(last) = within_budget(&sizes, max_bytes)? else {
        return Ok(Vec::new());
    };
    let rows = tx.rows(
        "SELECT i.seq, i.kind, i.group_id, i.commit_seq, i.sender, i.received_at_ms, p.data
         FROM inbox i JOIN inbox_payloads p ON p.id = i.payload
         WHERE i.device = $1 AND i.seq > $2 AND i.seq <= $3 ORDER BY i.seq",
        &[&id, &after, &last],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let kind = match r.try_get::<_, i64>(1)? {
            INBOX_WELCOME => InboxKind::Welcome {
                group: group_id(&r.try_get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default())?,
                commit_seq: Seq(to_u64(r.try_get::<_, Option<i64>>(3)?.unwrap_or(-1))?),
                sender: device_id(r.try_get::<_, Option<i64>>(4)?.unwrap_or(-1))?,
            },
            _ => return Err(corrupt("inbox entry kind").into()),
        };
        out.push(InboxEntry {
            seq: Seq(to_u64(r.try_get(0)?)?),
            kind,
            received_at_ms: to_u64(r.try_get(5)?)?,
            payload: Payload(r.try_get(6)?),
        });
    }
    Ok(out)
}

/// Of rows `(seq, payload length)` in seq order, the seq of the last one within
/// `max_bytes` (the first always is); `None` for no rows.
pub(super) fn within_budget(rows: &[postgres::Row], max_bytes: usize) -> R<Option<i64>> {
    let mut used = 0usize;
    let mut last = None;
    for r in rows {
        let len: i64 = r.try_get(1)?;
        let len = usize::try_from(len).map_err(|_| corrupt("payload length"))?;
        if !rules::fits_budget(&mut used, len, max_bytes, last.is_none()) {
            break;
        }
        last = Some(r.try_get::<_, i64>(0)?);
    }
    Ok(last)
}

/// The seq of the last entry ever made in the inbox of the device with row id `id` (the
/// highest seq pruned when pruning emptied it; 0 when it never had one).
pub(super) fn end_of(tx: &mut Tx<'_>, id: i64) -> R<Seq> {
    let end: i64 = tx
        .one(
            "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM inbox WHERE device = $1), 0),
                             COALESCE((SELECT inbox_pruned_through FROM devices WHERE id = $1), 0))",
            &[&id],
        )?
        .try_get(0)?;
    Ok(Seq(to_u64(end)?))
}

/// The heads of `groups`' logs and `devices`' inboxes (see `RelayStore::heads`): one query
/// each, in the order asked.
pub(super) fn heads(tx: &mut Tx<'_>, groups: &[GroupId], devices: &[DeviceId]) -> R<Heads> {
    let mut heads = Heads::default();
    if !groups.is_empty() {
        let ids: Vec<&[u8]> = groups.iter().map(|g| g.0.as_slice()).collect();
        let rows = tx.rows(
            "SELECT g.id, GREATEST(COALESCE((SELECT MAX(seq) FROM group_log l
                                             WHERE l.group_id = g.id), 0), g.pruned_through)
             FROM groups g WHERE g.id = ANY($1)",
            &[&ids],
        )?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            let id: &[u8] = r.try_get(0)?;
            found.insert(group_id(id)?, Seq(to_u64(r.try_get(1)?)?));
        }
        heads.groups = groups
            .iter()
            .filter_map(|g| found.get(g).map(|seq| (*g, *seq)))
            .collect();
    }
    if !devices.is_empty() {
        let ids: Vec<i64> = devices
            .iter()
            .filter_map(|d| i64::try_from(d.0).ok())
            .collect();
        let rows = tx.rows(
            "SELECT d.id, GREATEST(COALESCE((SELECT MAX(seq) FROM inbox i
                                             WHERE i.device = d.id), 0), d.inbox_pruned_through)
             FROM devices d WHERE d.id = ANY($1)",
            &[&ids],
        )?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            found.insert(device_id(r.try_get(0)?)?, Seq(to_u64(r.try_get(1)?)?));
        }
        heads.inboxes = devices
            .iter()
            .filter_map(|d| found.get(d).map(|seq| (*d, *seq)))
            .collect();
    }
    Ok(heads)
}
