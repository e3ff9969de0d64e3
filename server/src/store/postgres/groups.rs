//! Groups and their members (`groups`, `members`, `group_left`, `group_public_state`):
//! creating a group, a group's epoch, leaving without MLS state, the groups a device is in,
//! and a member's join seq.

use cove_wire::{DeviceId, Epoch, GroupId, GroupSummary, Seq};

use super::directory::existing_device;
use super::rows::{R, Tx, group_id, to_u64};
use crate::store::{PublicGroupState, StoreError};

/// Writes a new group at epoch 0 with `creator` as its only member.
pub(super) fn create(tx: &mut Tx<'_>, group: GroupId, creator: DeviceId) -> R<()> {
    let creator_id = existing_device(tx, creator)?;
    let created = tx.exec(
        "INSERT INTO groups (id, epoch) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING",
        &[&group.0.as_slice()],
    )?;
    if created == 0 {
        return Err(StoreError::GroupExists.into());
    }
    tx.exec(
        "INSERT INTO members (group_id, device, cursor) VALUES ($1, $2, 0)",
        &[&group.0.as_slice(), &creator_id],
    )?;
    Ok(())
}

/// Replaces the group's public state.
pub(super) fn put_public_state(tx: &mut Tx<'_>, group: GroupId, state: &PublicGroupState) -> R<()> {
    tx.exec(
        "INSERT INTO group_public_state (group_id, group_info, tree) VALUES ($1, $2, $3)
         ON CONFLICT (group_id) DO UPDATE
         SET group_info = EXCLUDED.group_info, tree = EXCLUDED.tree",
        &[&group.0.as_slice(), &state.group_info, &state.tree],
    )?;
    Ok(())
}

/// The group's public state.
pub(super) fn public_state(tx: &mut Tx<'_>, group: GroupId) -> R<Option<PublicGroupState>> {
    if group_epoch(tx, group)?.is_none() {
        return Err(StoreError::UnknownGroup.into());
    }
    let row = tx.opt(
        "SELECT group_info, tree FROM group_public_state WHERE group_id = $1",
        &[&group.0.as_slice()],
    )?;
    Ok(match row {
        None => None,
        Some(r) => Some(PublicGroupState {
            group_info: r.try_get(0)?,
            tree: r.try_get(1)?,
        }),
    })
}

/// Takes `device` out of `group`'s members and records that it left without MLS state.
pub(super) fn leave(tx: &mut Tx<'_>, group: GroupId, device: DeviceId) -> R<()> {
    let id = existing_device(tx, device)?;
    // Takes the group's row lock, as an append does: a leave and a post take turns.
    if lock_group(tx, group)?.is_none() {
        return Err(StoreError::UnknownGroup.into());
    }
    let was_member = tx.exec(
        "DELETE FROM members WHERE group_id = $1 AND device = $2",
        &[&group.0.as_slice(), &id],
    )?;
    if was_member == 0 {
        return Err(StoreError::NotMember.into());
    }
    tx.exec(
        "INSERT INTO group_left (group_id, device) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&group.0.as_slice(), &id],
    )?;
    Ok(())
}

/// Whether `device` is a current member (UnknownGroup if no such group).
pub(super) fn is_member(tx: &mut Tx<'_>, group: GroupId, device: DeviceId) -> R<bool> {
    if group_epoch(tx, group)?.is_none() {
        return Err(StoreError::UnknownGroup.into());
    }
    let Ok(id) = i64::try_from(device.0) else {
        return Ok(false);
    };
    Ok(tx
        .opt(
            "SELECT 1 FROM members WHERE group_id = $1 AND device = $2",
            &[&group.0.as_slice(), &id],
        )?
        .is_some())
}

/// The groups `device` is a member of, ordered by group id.
pub(super) fn groups_of(tx: &mut Tx<'_>, device: DeviceId) -> R<Vec<GroupSummary>> {
    let id = existing_device(tx, device)?;
    let rows = tx.rows(
        "SELECT g.id, g.epoch FROM members m JOIN groups g ON g.id = m.group_id
         WHERE m.device = $1 ORDER BY g.id",
        &[&id],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(GroupSummary {
            group: group_id(r.try_get::<_, &[u8]>(0)?)?,
            epoch: Epoch(to_u64(r.try_get(1)?)?),
        });
    }
    Ok(out)
}

/// A member's join seq, `None` if it is not a current member.
pub(super) fn joined(tx: &mut Tx<'_>, group: GroupId, device: DeviceId) -> R<Option<Seq>> {
    let id = existing_device(tx, device)?;
    if group_epoch(tx, group)?.is_none() {
        return Err(StoreError::UnknownGroup.into());
    }
    let row = tx.opt(
        "SELECT joined FROM members WHERE group_id = $1 AND device = $2",
        &[&group.0.as_slice(), &id],
    )?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(Seq(to_u64(r.try_get(0)?)?))),
    }
}

/// The group's current epoch, `None` if there is no such group.
pub(super) fn group_epoch(tx: &mut Tx<'_>, group: GroupId) -> R<Option<Epoch>> {
    let row = tx.opt(
        "SELECT epoch FROM groups WHERE id = $1",
        &[&group.0.as_slice()],
    )?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(Epoch(to_u64(r.try_get(0)?)?))),
    }
}

/// The group's epoch with its row locked until the transaction ends (posts to one group
/// from any node take turns), `None` if there is no such group.
pub(super) fn lock_group(tx: &mut Tx<'_>, group: GroupId) -> R<Option<Epoch>> {
    let row = tx.opt(
        "SELECT epoch FROM groups WHERE id = $1 FOR UPDATE",
        &[&group.0.as_slice()],
    )?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(Epoch(to_u64(r.try_get(0)?)?))),
    }
}
