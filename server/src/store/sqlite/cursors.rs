//! Cursors and departures on disk: a member's cursor (`members.cursor`), a device's inbox
//! cursor (`devices.inbox_cursor`), and departure records (`departures`: the cursor of a
//! removed device until it acknowledges the commit that removed it). Buffered acks not yet
//! written are merged in by the caller (see `acks.rs`).

use cove_wire::{DeviceId, GroupId, Seq, Stream};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::directory::existing_device;
use super::groups::group_epoch;
use super::rows::{group_id, to_i64, to_u64};
use crate::store::StoreError;

/// The device's cursor in `stream` as written to the file (see `RelayStore::cursor`; the
/// caller takes the maximum with a buffered ack).
pub(super) fn cursor(
    conn: &Connection,
    device: DeviceId,
    stream: Stream,
) -> Result<Seq, StoreError> {
    let id = existing_device(conn, device)?;
    let cursor = match stream {
        Stream::Inbox => conn
            .prepare_cached("SELECT inbox_cursor FROM devices WHERE id = ?1")?
            .query_row(params![id], |r| r.get::<_, i64>(0))?,
        Stream::Group(g) => {
            if group_epoch(conn, g)?.is_none() {
                return Err(StoreError::UnknownGroup);
            }
            match member_cursor(conn, g, id)? {
                Some(cursor) => cursor,
                None => departure(conn, g, id)?
                    .map(|(cursor, _)| cursor)
                    .ok_or(StoreError::NotMember)?,
            }
        }
    };
    Ok(Seq(to_u64(cursor)?))
}

/// The groups `device` has a departure record in, with the removal commit's seq, ordered by
/// group id (see `RelayStore::departures`).
pub(super) fn departures(
    conn: &Connection,
    device: DeviceId,
) -> Result<Vec<(GroupId, Seq)>, StoreError> {
    let id = existing_device(conn, device)?;
    let mut stmt = conn.prepare_cached(
        "SELECT group_id, removed_at FROM departures WHERE device = ?1 ORDER BY group_id",
    )?;
    let mut rows = stmt.query(params![id])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push((group_id(&r.get::<_, Vec<u8>>(0)?)?, Seq(to_u64(r.get(1)?)?)));
    }
    Ok(out)
}

/// `device`'s departure record in `group` as written to the file: (cursor, removal commit
/// seq), `None` without a record. UnknownDevice, UnknownGroup.
pub(super) fn departure_record(
    conn: &Connection,
    device: DeviceId,
    group: GroupId,
) -> Result<Option<(Seq, Seq)>, StoreError> {
    let id = existing_device(conn, device)?;
    if group_epoch(conn, group)?.is_none() {
        return Err(StoreError::UnknownGroup);
    }
    let Some((cursor, removed_at)) = departure(conn, group, id)? else {
        return Ok(None);
    };
    Ok(Some((Seq(to_u64(cursor)?), Seq(to_u64(removed_at)?))))
}

/// An ack in a group `device` is not a member of: allowed up to the commit that removed
/// it while its departure record lasts, written at once (rare), and dropping the record
/// when it reaches that commit. NotMember without a record.
pub(super) fn ack_departure(
    tx: &Transaction<'_>,
    device: DeviceId,
    group: GroupId,
    seq: Seq,
) -> Result<(), StoreError> {
    let id = existing_device(tx, device)?;
    let (_, removed_at) = departure(tx, group, id)?.ok_or(StoreError::NotMember)?;
    if seq.0 > to_u64(removed_at)? {
        return Err(StoreError::Invalid("ack past the commit that removed it"));
    }
    let args = params![group.0.as_slice(), id, to_i64(seq.0)?];
    tx.prepare_cached(
        "UPDATE departures SET cursor = MAX(cursor, ?3) WHERE group_id = ?1 AND device = ?2",
    )?
    .execute(args)?;
    tx.prepare_cached(
        "DELETE FROM departures WHERE group_id = ?1 AND device = ?2 AND cursor >= removed_at",
    )?
    .execute(params![group.0.as_slice(), id])?;
    Ok(())
}

/// A member's cursor (row id `device`), `None` if it is not a member.
fn member_cursor(
    conn: &Connection,
    group: GroupId,
    device: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT cursor FROM members WHERE group_id = ?1 AND device = ?2")?
        .query_row(params![group.0.as_slice(), device], |r| r.get(0))
        .optional()?)
}

/// A departure record: (cursor, removal commit seq).
fn departure(
    conn: &Connection,
    group: GroupId,
    device: i64,
) -> Result<Option<(i64, i64)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT cursor, removed_at FROM departures WHERE group_id = ?1 AND device = ?2",
        )?
        .query_row(params![group.0.as_slice(), device], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}
