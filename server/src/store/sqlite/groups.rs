//! Groups and their members (`groups`, `members`): creating a group, a group's epoch, the
//! groups a device is in, and a member's join seq.

use cove_wire::{DeviceId, Epoch, GroupId, GroupSummary, Seq};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::directory::existing_device;
use super::rows::{group_id, to_u64};
use crate::store::{PublicGroupState, StoreError};

/// Writes a new group at epoch 0 with `creator` as its only member (see
/// `RelayStore::create_group`); the caller commits and updates the group cache.
pub(super) fn create(
    tx: &Transaction<'_>,
    group: GroupId,
    creator: DeviceId,
) -> Result<(), StoreError> {
    let creator_id = existing_device(tx, creator)?;
    if group_epoch(tx, group)?.is_some() {
        return Err(StoreError::GroupExists);
    }
    tx.prepare_cached("INSERT INTO groups (id, epoch) VALUES (?1, 0)")?
        .execute(params![group.0.as_slice()])?;
    tx.prepare_cached("INSERT INTO members (group_id, device, cursor) VALUES (?1, ?2, 0)")?
        .execute(params![group.0.as_slice(), creator_id])?;
    Ok(())
}

/// Replaces the group's public state (see `RelayStore::public_state`); the caller commits.
pub(super) fn put_public_state(
    tx: &Transaction<'_>,
    group: GroupId,
    state: &PublicGroupState,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO group_public_state (group_id, group_info, tree)
         VALUES (?1, ?2, ?3)",
    )?
    .execute(params![group.0.as_slice(), state.group_info, state.tree])?;
    Ok(())
}

/// The group's public state (see `RelayStore::public_state`).
pub(super) fn public_state(
    conn: &Connection,
    group: GroupId,
) -> Result<Option<PublicGroupState>, StoreError> {
    if group_epoch(conn, group)?.is_none() {
        return Err(StoreError::UnknownGroup);
    }
    Ok(conn
        .prepare_cached("SELECT group_info, tree FROM group_public_state WHERE group_id = ?1")?
        .query_row(params![group.0.as_slice()], |r| {
            Ok(PublicGroupState {
                group_info: r.get(0)?,
                tree: r.get(1)?,
            })
        })
        .optional()?)
}

/// Takes `device` out of `group`'s members and records that it left without MLS state (see
/// `RelayStore::leave_group`); the caller commits and refreshes the group cache.
pub(super) fn leave(
    tx: &Transaction<'_>,
    group: GroupId,
    device: DeviceId,
) -> Result<(), StoreError> {
    let id = existing_device(tx, device)?;
    if group_epoch(tx, group)?.is_none() {
        return Err(StoreError::UnknownGroup);
    }
    let was_member = tx
        .prepare_cached("DELETE FROM members WHERE group_id = ?1 AND device = ?2")?
        .execute(params![group.0.as_slice(), id])?;
    if was_member == 0 {
        return Err(StoreError::NotMember);
    }
    tx.prepare_cached("INSERT OR IGNORE INTO group_left (group_id, device) VALUES (?1, ?2)")?
        .execute(params![group.0.as_slice(), id])?;
    Ok(())
}

/// The groups `device` is a member of, ordered by group id (see `RelayStore::groups_of`).
pub(super) fn groups_of(
    conn: &Connection,
    device: DeviceId,
) -> Result<Vec<GroupSummary>, StoreError> {
    let id = existing_device(conn, device)?;
    let mut stmt = conn.prepare_cached(
        "SELECT g.id, g.epoch FROM members m JOIN groups g ON g.id = m.group_id
         WHERE m.device = ?1 ORDER BY g.id",
    )?;
    let rows = stmt.query_map(params![id], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (group, epoch) = row?;
        out.push(GroupSummary {
            group: group_id(&group)?,
            epoch: Epoch(to_u64(epoch)?),
        });
    }
    Ok(out)
}

/// A member's join seq, `None` if it is not a current member (see `RelayStore::joined`).
pub(super) fn joined(
    conn: &Connection,
    group: GroupId,
    device: DeviceId,
) -> Result<Option<Seq>, StoreError> {
    let id = existing_device(conn, device)?;
    if group_epoch(conn, group)?.is_none() {
        return Err(StoreError::UnknownGroup);
    }
    let joined: Option<i64> = conn
        .prepare_cached("SELECT joined FROM members WHERE group_id = ?1 AND device = ?2")?
        .query_row(params![group.0.as_slice(), id], |r| r.get(0))
        .optional()?;
    joined.map(|j| to_u64(j).map(Seq)).transpose()
}

/// The group's current epoch, `None` if there is no such group.
pub(super) fn group_epoch(conn: &Connection, group: GroupId) -> Result<Option<Epoch>, StoreError> {
    let epoch = conn
        .prepare_cached("SELECT epoch FROM groups WHERE id = ?1")?
        .query_row(params![group.0.as_slice()], |r| r.get::<_, i64>(0))
        .optional()?;
    epoch.map(|e| Ok(Epoch(to_u64(e)?))).transpose()
}
