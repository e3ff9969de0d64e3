//! Cursors and departures: a member's cursor (`members.cursor`), a device's inbox cursor
//! (`devices.inbox_cursor`), and departure records (`departures`). Acknowledgements are
//! written at once (no buffer: several nodes share the database).

use cove_wire::{DeviceId, GroupId, Seq, Stream};

use super::directory::existing_device;
use super::groups::group_epoch;
use super::rows::{R, Tx, group_id, to_i64, to_u64};
use crate::store::StoreError;

/// The device's cursor in `stream` (see `RelayStore::cursor`).
pub(super) fn cursor(tx: &mut Tx<'_>, device: DeviceId, stream: Stream) -> R<Seq> {
    let id = existing_device(tx, device)?;
    let cursor: i64 = match stream {
        Stream::Inbox => tx
            .one("SELECT inbox_cursor FROM devices WHERE id = $1", &[&id])?
            .try_get(0)?,
        Stream::Group(g) => {
            if group_epoch(tx, g)?.is_none() {
                return Err(StoreError::UnknownGroup.into());
            }
            match member_cursor(tx, g, id)? {
                Some(cursor) => cursor,
                None => departure(tx, g, id)?
                    .map(|(cursor, _)| cursor)
                    .ok_or(StoreError::NotMember)?,
            }
        }
    };
    Ok(Seq(to_u64(cursor)?))
}

/// The groups `device` has a departure record in, with the removal commit's seq.
pub(super) fn departures(tx: &mut Tx<'_>, device: DeviceId) -> R<Vec<(GroupId, Seq)>> {
    let id = existing_device(tx, device)?;
    let rows = tx.rows(
        "SELECT group_id, removed_at FROM departures WHERE device = $1 ORDER BY group_id",
        &[&id],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push((
            group_id(r.try_get::<_, &[u8]>(0)?)?,
            Seq(to_u64(r.try_get(1)?)?),
        ));
    }
    Ok(out)
}

/// The cursor of `device`'s departure record in `group` while it is below the removal
/// commit (see `RelayStore::departure_cursor`).
pub(super) fn departure_cursor(
    tx: &mut Tx<'_>,
    device: DeviceId,
    group: GroupId,
) -> R<Option<Seq>> {
    let id = existing_device(tx, device)?;
    if group_epoch(tx, group)?.is_none() {
        return Err(StoreError::UnknownGroup.into());
    }
    let Some((cursor, removed_at)) = departure(tx, group, id)? else {
        return Ok(None);
    };
    Ok((cursor < removed_at).then_some(Seq(to_u64(cursor)?)))
}

/// Moves `device`'s cursor in `stream` to `seq` (see `RelayStore::ack`).
pub(super) fn ack(tx: &mut Tx<'_>, device: DeviceId, stream: Stream, seq: Seq) -> R<()> {
    let id = existing_device(tx, device)?;
    let to = to_i64(seq.0)?;
    match stream {
        Stream::Inbox => {
            if seq > super::inbox::end_of(tx, id)? {
                return Err(StoreError::Invalid("ack past the end of the inbox").into());
            }
            tx.exec(
                "UPDATE devices SET inbox_cursor = GREATEST(inbox_cursor, $2) WHERE id = $1",
                &[&id, &to],
            )?;
        }
        Stream::Group(g) => {
            if group_epoch(tx, g)?.is_none() {
                return Err(StoreError::UnknownGroup.into());
            }
            if member_cursor(tx, g, id)?.is_none() {
                return ack_departure(tx, id, g, seq);
            }
            if seq > super::log::last_seq(tx, g)? {
                return Err(StoreError::Invalid("ack past the end of the group log").into());
            }
            let group = g.0.as_slice();
            tx.exec(
                "UPDATE members SET cursor = GREATEST(cursor, $3) \
                 WHERE group_id = $1 AND device = $2",
                &[&group, &id, &to],
            )?;
            // A member removed before and added again moves its departure record too.
            tx.exec(
                "UPDATE departures SET cursor = GREATEST(cursor, $3) \
                 WHERE group_id = $1 AND device = $2",
                &[&group, &id, &to],
            )?;
            tx.exec(
                "DELETE FROM departures \
                 WHERE group_id = $1 AND device = $2 AND cursor >= removed_at",
                &[&group, &id],
            )?;
        }
    }
    Ok(())
}

/// An ack in a group the device (row id `id`) is not a member of: allowed up to the commit
/// that removed it while its departure record lasts, dropping the record when it reaches
/// that commit. NotMember without a record.
fn ack_departure(tx: &mut Tx<'_>, id: i64, group: GroupId, seq: Seq) -> R<()> {
    let (_, removed_at) = departure(tx, group, id)?.ok_or(StoreError::NotMember)?;
    if seq.0 > to_u64(removed_at)? {
        return Err(StoreError::Invalid("ack past the commit that removed it").into());
    }
    let group = group.0.as_slice();
    tx.exec(
        "UPDATE departures SET cursor = GREATEST(cursor, $3) WHERE group_id = $1 AND device = $2",
        &[&group, &id, &to_i64(seq.0)?],
    )?;
    tx.exec(
        "DELETE FROM departures WHERE group_id = $1 AND device = $2 AND cursor >= removed_at",
        &[&group, &id],
    )?;
    Ok(())
}

/// A member's cursor (row id `device`), `None` if it is not a member.
fn member_cursor(tx: &mut Tx<'_>, group: GroupId, device: i64) -> R<Option<i64>> {
    let row = tx.opt(
        "SELECT cursor FROM members WHERE group_id = $1 AND device = $2",
        &[&group.0.as_slice(), &device],
    )?;
    Ok(match row {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    })
}

/// A departure record: (cursor, removal commit seq).
fn departure(tx: &mut Tx<'_>, group: GroupId, device: i64) -> R<Option<(i64, i64)>> {
    let row = tx.opt(
        "SELECT cursor, removed_at FROM departures WHERE group_id = $1 AND device = $2",
        &[&group.0.as_slice(), &device],
    )?;
    Ok(match row {
        Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
        None => None,
    })
}
