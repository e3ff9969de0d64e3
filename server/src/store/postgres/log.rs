//! Group logs (`group_log`) and what a post does: checking and writing a batch's posts (a
//! commit also moves the epoch, the membership, departure records and the Welcome into the
//! added devices' inboxes), reading a log, and loading a group's state from the database.
//!
//! Nothing is cached between transactions (other nodes write the same tables): a batch
//! loads each group it posts to with its row locked (`SELECT ... FOR UPDATE`), so posts to
//! one group from any node take turns, and `(group_id, seq)` and the one-commit-per-epoch
//! index make a lost race fail (and be retried) rather than fork the log.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use cove_wire::{
    DeviceId, EntryKind, Epoch, GroupEntry, GroupId, InboxKind, Payload, PostKind, Seq,
};

use super::directory::device_exists;
use super::groups::{group_epoch, lock_group};
use super::inbox::{INBOX_WELCOME, end_of, within_budget};
use super::rows::{
    PgError, R, Tx, clamp_i64, corrupt, device_id, id_list_from_blob, id_list_to_blob, to_i64,
    to_u64,
};
use crate::store::rules::{self, GroupState};
use crate::store::{Appended, NewPost, StoreError, Welcome};

/// `group_log.kind` of an application message.
const KIND_APPLICATION: i64 = 0;
/// `group_log.kind` of a proposal.
const KIND_PROPOSAL: i64 = 1;
/// `group_log.kind` of a commit (with `added` and `removed` set).
const KIND_COMMIT: i64 = 2;

/// Group entries after `after` (see `RelayStore::read_group`).
pub(super) fn read(
    tx: &mut Tx<'_>,
    group: GroupId,
    after: Seq,
    limit: u32,
    max_bytes: usize,
) -> R<Vec<GroupEntry>> {
    if group_epoch(tx, group)?.is_none() {
        return Err(StoreError::UnknownGroup.into());
    }
    let limit = rules::capped_limit(limit);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let after = i64::try_from(after.0).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let g = group.0.as_slice();
    // Lengths first: the rows past the byte budget are never loaded.
    let sizes = tx.rows(
        "SELECT seq, octet_length(payload)::BIGINT FROM group_log
         WHERE group_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &[&g, &after, &limit],
    )?;
    let Some(last) = within_budget(&sizes, max_bytes)? else {
        return Ok(Vec::new());
    };
    let rows = tx.rows(
        "SELECT seq, epoch, sender, kind, added, removed, received_at_ms, payload
         FROM group_log WHERE group_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
        &[&g, &after, &last],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let kind = match r.try_get::<_, i64>(3)? {
            KIND_APPLICATION => EntryKind::Application,
            KIND_PROPOSAL => EntryKind::Proposal,
            KIND_COMMIT => EntryKind::Commit {
                added: id_list_from_blob(r.try_get(4)?)?.into(),
                removed: id_list_from_blob(r.try_get(5)?)?.into(),
            },
            _ => return Err(corrupt("group entry kind").into()),
        };
        out.push(GroupEntry {
            group,
            seq: Seq(to_u64(r.try_get(0)?)?),
            epoch: Epoch(to_u64(r.try_get(1)?)?),
            sender: device_id(r.try_get(2)?)?,
            kind,
            received_at_ms: to_u64(r.try_get(6)?)?,
            payload: Payload(r.try_get(7)?),
        });
    }
    Ok(out)
}

/// Checks and, if accepted, writes one post inside the batch transaction. `touched` holds
/// the states of the groups this batch already loaded (with the batch's effects).
pub(super) fn append_one(
    tx: &mut Tx<'_>,
    touched: &mut HashMap<GroupId, GroupState>,
    post: NewPost,
) -> R<Appended> {
    let state = match touched.entry(post.group) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(load_group(tx, post.group, true)?.ok_or(StoreError::UnknownGroup)?)
        }
    };
    let mut exists = |d: DeviceId| -> Result<bool, StoreError> {
        device_exists(tx, d).map_err(PgError::into_store)
    };
    let checked = state.check(&post, &mut exists)?;
    // From here on the post is accepted: any failure fails the whole batch (the
    // transaction is rolled back), never leaves this post half written.
    let (removed, welcomes, welcome) = write_post(tx, &post, checked).map_err(|e| match e {
        PgError::Store(StoreError::Backend(msg)) => PgError::Store(StoreError::Backend(msg)),
        PgError::Store(other) => PgError::Store(StoreError::Backend(other.to_string())),
        db => db,
    })?;
    state.apply(&post, checked);
    let entry = GroupEntry {
        group: post.group,
        seq: checked.seq,
        epoch: post.epoch,
        sender: post.sender,
        kind: rules::entry_kind(&post.kind),
        received_at_ms: post.now_ms,
        payload: Payload(post.payload),
    };
    Ok(Appended {
        entry,
        members: state.members.clone(),
        removed,
        welcomes,
        welcome,
    })
}

/// What [`write_post`] made: the removed devices, the new inbox entries and their Welcome.
type Written = (Vec<DeviceId>, Vec<(DeviceId, Seq)>, Option<Welcome>);

/// Writes an accepted post: its log entry and, for a commit, the epoch, the membership
/// change, the new members' cursors and the Welcome in their inboxes.
fn write_post(tx: &mut Tx<'_>, post: &NewPost, checked: rules::Checked) -> R<Written> {
    let seq = to_i64(checked.seq.0)?;
    let group = post.group.0.as_slice();
    let (kind, added, removed) = match &post.kind {
        PostKind::Application => (KIND_APPLICATION, None, None),
        PostKind::Proposal => (KIND_PROPOSAL, None, None),
        PostKind::Commit { added, removed, .. } => (
            KIND_COMMIT,
            Some(id_list_to_blob(added)),
            Some(id_list_to_blob(removed)),
        ),
    };
    let digest = checked.digest.map(|d| d.to_vec());
    tx.exec(
        "INSERT INTO group_log
         (group_id, seq, epoch, sender, kind, added, removed, received_at_ms, payload, digest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &group,
            &seq,
            &to_i64(post.epoch.0)?,
            &to_i64(post.sender.0)?,
            &kind,
            &added,
            &removed,
            &clamp_i64(post.now_ms),
            &post.payload,
            &digest,
        ],
    )?;
    let mut welcomes = Vec::new();
    let mut shared_welcome = None;
    let mut removed_devices = Vec::new();
    if let Some(state) = &post.public_state {
        super::groups::put_public_state(tx, post.group, state)?;
    }
    let PostKind::Commit {
        added,
        removed,
        welcome,
        ..
    } = &post.kind
    else {
        return Ok((removed_devices, welcomes, shared_welcome));
    };
    tx.exec(
        "UPDATE groups SET epoch = $2 WHERE id = $1",
        &[&group, &to_i64(checked.epoch_after.0)?],
    )?;
    for d in removed.iter() {
        let d_id = to_i64(d.0)?;
        // A device that had left (no MLS state): its removal only ends that record.
        if tx.exec(
            "DELETE FROM group_left WHERE group_id = $1 AND device = $2",
            &[&group, &d_id],
        )? > 0
        {
            continue;
        }
        tx.exec(
            "INSERT INTO departures (group_id, device, cursor, removed_at)
             SELECT group_id, device, cursor, $3 FROM members
             WHERE group_id = $1 AND device = $2
             ON CONFLICT (group_id, device)
             DO UPDATE SET cursor = EXCLUDED.cursor, removed_at = EXCLUDED.removed_at",
            &[&group, &d_id, &seq],
        )?;
        tx.exec(
            "DELETE FROM members WHERE group_id = $1 AND device = $2",
            &[&group, &d_id],
        )?;
        removed_devices.push(*d);
    }
    for d in added.iter() {
        let d_id = to_i64(d.0)?;
        tx.exec(
            "DELETE FROM group_left WHERE group_id = $1 AND device = $2",
            &[&group, &d_id],
        )?;
        tx.exec(
            "INSERT INTO members (group_id, device, cursor, joined) VALUES ($1, $2, $3, $3)",
            &[&group, &d_id, &seq],
        )?;
    }
    // A commit that adds without a Welcome is a new device's external join: a member from
    // this commit on, with nothing in its inbox.
    if let Some(welcome) = welcome {
        let payload_id: i64 = tx
            .one(
                "INSERT INTO inbox_payloads (data) VALUES ($1) RETURNING id",
                &[&welcome.as_bytes()],
            )?
            .try_get(0)?;
        for d in added.iter() {
            let device = to_i64(d.0)?;
            // The device's row lock: Welcomes from commits of several groups at once take
            // turns for its inbox seqs.
            tx.exec("SELECT 1 FROM devices WHERE id = $1 FOR UPDATE", &[&device])?;
            let inbox_seq = end_of(tx, device)?
                .0
                .checked_add(1)
                .ok_or(StoreError::Invalid("inbox is full"))?;
            tx.exec(
                "INSERT INTO inbox
                 (device, seq, kind, group_id, commit_seq, sender, received_at_ms, payload)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &device,
                    &to_i64(inbox_seq)?,
                    &INBOX_WELCOME,
                    &group,
                    &seq,
                    &to_i64(post.sender.0)?,
                    &clamp_i64(post.now_ms),
                    &payload_id,
                ],
            )?;
            welcomes.push((*d, Seq(inbox_seq)));
        }
        shared_welcome = Some(Welcome {
            kind: InboxKind::Welcome {
                group: post.group,
                commit_seq: checked.seq,
                sender: post.sender,
            },
            received_at_ms: post.now_ms,
            payload: Arc::from(welcome.as_bytes()),
        });
    }
    Ok((removed_devices, welcomes, shared_welcome))
}

/// The seq of the last entry ever appended to `group`'s log (the highest seq pruned when
/// pruning emptied it; 0 when empty).
pub(super) fn last_seq(tx: &mut Tx<'_>, group: GroupId) -> R<Seq> {
    let last: i64 = tx
        .one(
            "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM group_log WHERE group_id = $1), 0),
                             COALESCE((SELECT pruned_through FROM groups WHERE id = $1), 0))",
            &[&group.0.as_slice()],
        )?
        .try_get(0)?;
    Ok(Seq(to_u64(last)?))
}

/// Loads a group's committed state (epoch, log head, members, repeated-post window); with
/// `lock`, its row stays locked until the transaction ends. `None` if there is no such
/// group.
pub(super) fn load_group(tx: &mut Tx<'_>, group: GroupId, lock: bool) -> R<Option<GroupState>> {
    let epoch = if lock {
        lock_group(tx, group)?
    } else {
        group_epoch(tx, group)?
    };
    let Some(epoch) = epoch else {
        return Ok(None);
    };
    let last_seq = last_seq(tx, group)?;
    let g = group.0.as_slice();
    let mut members = Vec::new();
    for r in tx.rows("SELECT device FROM members WHERE group_id = $1", &[&g])? {
        members.push(device_id(r.try_get(0)?)?);
    }
    members.sort_unstable();
    members.dedup();
    let mut left = Vec::new();
    for r in tx.rows("SELECT device FROM group_left WHERE group_id = $1", &[&g])? {
        left.push(device_id(r.try_get(0)?)?);
    }
    left.sort_unstable();
    left.dedup();
    let mut state = GroupState {
        epoch,
        last_seq,
        members,
        left,
        recent: VecDeque::new(),
    };
    // The duplicate check's window, from the stored digests (payloads are not read).
    let window = i64::try_from(rules::RECENT_POSTS).unwrap_or(i64::MAX);
    let rows = tx.rows(
        "SELECT seq, sender, digest FROM group_log
         WHERE group_id = $1 AND kind IN (0, 1) ORDER BY seq DESC LIMIT $2",
        &[&g, &window],
    )?;
    let mut recent = Vec::with_capacity(rows.len());
    for r in rows {
        let digest: Vec<u8> = r
            .try_get::<_, Option<Vec<u8>>>(2)?
            .ok_or_else(|| corrupt("post digest"))?;
        recent.push(rules::RecentPost {
            seq: Seq(to_u64(r.try_get(0)?)?),
            sender: device_id(r.try_get(1)?)?,
            digest: digest.try_into().map_err(|_| corrupt("post digest"))?,
        });
    }
    for post in recent.into_iter().rev() {
        state.remember(post);
    }
    Ok(Some(state))
}
