//! Group logs (`group_log`) and what a post does: checking and writing a batch's posts (a
//! commit also moves the epoch, the membership, departure records and the Welcome into the
//! added devices' inboxes), reading a log, and loading a group's cached state, including the
//! repeated-post window rebuilt from the log.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cove_wire::{
    DeviceId, EntryKind, Epoch, GroupEntry, GroupId, InboxKind, Payload, PostKind, Seq,
};
use rusqlite::{Connection, Transaction, params};

use super::directory::device_exists;
use super::groups::group_epoch;
use super::inbox::INBOX_WELCOME;
use super::rows::{
    clamp_i64, corrupt, device_id, id_list_from_blob, id_list_to_blob, to_i64, to_u64,
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
    conn: &Connection,
    group: GroupId,
    after: Seq,
    limit: u32,
    max_bytes: usize,
) -> Result<Vec<GroupEntry>, StoreError> {
    if group_epoch(conn, group)?.is_none() {
        return Err(StoreError::UnknownGroup);
    }
    let limit = rules::capped_limit(limit);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let after = i64::try_from(after.0).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, epoch, sender, kind, added, removed, received_at_ms, payload,
                length(payload)
         FROM group_log WHERE group_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![group.0.as_slice(), after, limit])?;
    let mut out = Vec::new();
    let mut used = 0usize;
    while let Some(r) = rows.next()? {
        // The byte budget is checked on the stored length, before the payload is loaded;
        // the rows past it are never read.
        let len = usize::try_from(r.get::<_, i64>(8)?).map_err(|_| corrupt("payload length"))?;
        if !rules::fits_budget(&mut used, len, max_bytes, out.is_empty()) {
            break;
        }
        let kind = match r.get::<_, i64>(3)? {
            KIND_APPLICATION => EntryKind::Application,
            KIND_PROPOSAL => EntryKind::Proposal,
            KIND_COMMIT => EntryKind::Commit {
                added: id_list_from_blob(r.get::<_, Option<Vec<u8>>>(4)?)?.into(),
                removed: id_list_from_blob(r.get::<_, Option<Vec<u8>>>(5)?)?.into(),
            },
            _ => return Err(corrupt("group entry kind")),
        };
        out.push(GroupEntry {
            group,
            seq: Seq(to_u64(r.get(0)?)?),
            epoch: Epoch(to_u64(r.get(1)?)?),
            sender: device_id(r.get(2)?)?,
            kind,
            received_at_ms: to_u64(r.get(6)?)?,
            payload: Payload(r.get(7)?),
        });
    }
    Ok(out)
}

/// Checks and, if accepted, writes one post inside the batch transaction.
pub(super) fn append_one(
    tx: &Transaction<'_>,
    cache: &RwLock<HashMap<GroupId, GroupState>>,
    touched: &mut HashMap<GroupId, GroupState>,
    post: NewPost,
) -> Result<Appended, StoreError> {
    let state = match touched.entry(post.group) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let cached = cache
                .read()
                .map_err(|_| StoreError::Backend("group cache lock poisoned".into()))?
                .get(&post.group)
                .cloned();
            let state = match cached {
                Some(state) => state,
                None => load_group(tx, post.group)?.ok_or(StoreError::UnknownGroup)?,
            };
            e.insert(state)
        }
    };
    let checked = state.check(&post, &mut |d| device_exists(tx, d))?;
    // From here on the post is accepted: any failure must fail the whole batch (the
    // transaction is rolled back), never leave this post half written.
    let (removed, welcomes, welcome) = write_post(tx, &post, checked).map_err(|e| match e {
        StoreError::Backend(msg) => StoreError::Backend(msg),
        other => StoreError::Backend(other.to_string()),
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
/// change, the new members' cursors and the Welcome in their inboxes. Returns the removed
/// devices and the inbox entries made.
fn write_post(
    tx: &Transaction<'_>,
    post: &NewPost,
    checked: rules::Checked,
) -> Result<Written, StoreError> {
    let seq = checked.seq;
    let group = post.group.0;
    let (kind, added, removed) = match &post.kind {
        PostKind::Application => (KIND_APPLICATION, None, None),
        PostKind::Proposal => (KIND_PROPOSAL, None, None),
        PostKind::Commit { added, removed, .. } => (
            KIND_COMMIT,
            Some(id_list_to_blob(added)),
            Some(id_list_to_blob(removed)),
        ),
    };
    tx.prepare_cached(
        "INSERT INTO group_log
         (group_id, seq, epoch, sender, kind, added, removed, received_at_ms, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        group.as_slice(),
        to_i64(seq.0)?,
        to_i64(post.epoch.0)?,
        to_i64(post.sender.0)?,
        kind,
        added,
        removed,
        clamp_i64(post.now_ms),
        post.payload,
    ])?;
    let mut welcomes = Vec::new();
    let mut shared_welcome = None;
    let mut removed_devices = Vec::new();
    if let Some(state) = &post.public_state {
        super::groups::put_public_state(tx, post.group, state)?;
    }
    if let PostKind::Commit {
        added,
        removed,
        welcome,
        ..
    } = &post.kind
    {
        tx.prepare_cached("UPDATE groups SET epoch = ?2 WHERE id = ?1")?
            .execute(params![group.as_slice(), to_i64(checked.epoch_after.0)?])?;
        let mut depart = tx.prepare_cached(
            "INSERT OR REPLACE INTO departures (group_id, device, cursor, removed_at)
             SELECT group_id, device, cursor, ?3 FROM members
             WHERE group_id = ?1 AND device = ?2",
        )?;
        let mut delete =
            tx.prepare_cached("DELETE FROM members WHERE group_id = ?1 AND device = ?2")?;
        let mut unleave =
            tx.prepare_cached("DELETE FROM group_left WHERE group_id = ?1 AND device = ?2")?;
        for d in removed.iter() {
            // A device that had left (no MLS state): its removal only ends that record.
            if unleave.execute(params![group.as_slice(), to_i64(d.0)?])? > 0 {
                continue;
            }
            depart.execute(params![group.as_slice(), to_i64(d.0)?, to_i64(seq.0)?])?;
            delete.execute(params![group.as_slice(), to_i64(d.0)?])?;
            removed_devices.push(*d);
        }
        for d in added.iter() {
            unleave.execute(params![group.as_slice(), to_i64(d.0)?])?;
        }
        if welcome.is_none() {
            // A new device's external join (the only commit that adds without a Welcome):
            // a member from this commit on, with nothing in its inbox.
            let mut add_member = tx.prepare_cached(
                "INSERT INTO members (group_id, device, cursor, joined) VALUES (?1, ?2, ?3, ?3)",
            )?;
            for d in added.iter() {
                add_member.execute(params![group.as_slice(), to_i64(d.0)?, to_i64(seq.0)?])?;
            }
        }
        if let Some(welcome) = welcome {
            tx.prepare_cached("INSERT INTO inbox_payloads (data) VALUES (?1)")?
                .execute(params![welcome.as_bytes()])?;
            let payload_id = tx.last_insert_rowid();
            let mut add_member = tx.prepare_cached(
                "INSERT INTO members (group_id, device, cursor, joined) VALUES (?1, ?2, ?3, ?3)",
            )?;
            let mut inbox_end = tx.prepare_cached(super::inbox::END_SQL)?;
            let mut inbox_insert = tx.prepare_cached(
                "INSERT INTO inbox
                 (device, seq, kind, group_id, commit_seq, sender, received_at_ms, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for d in added.iter() {
                let device = to_i64(d.0)?;
                add_member.execute(params![group.as_slice(), device, to_i64(seq.0)?])?;
                // A departure record stays: the device still receives the commit that
                // removed it (see `RelayStore::append_batch`).
                let end: i64 = inbox_end.query_row(params![device], |r| r.get(0))?;
                let inbox_seq = to_u64(end)?
                    .checked_add(1)
                    .ok_or(StoreError::Invalid("inbox is full"))?;
                inbox_insert.execute(params![
                    device,
                    to_i64(inbox_seq)?,
                    INBOX_WELCOME,
                    group.as_slice(),
                    to_i64(seq.0)?,
                    to_i64(post.sender.0)?,
                    clamp_i64(post.now_ms),
                    payload_id,
                ])?;
                welcomes.push((*d, Seq(inbox_seq)));
            }
            shared_welcome = Some(Welcome {
                kind: InboxKind::Welcome {
                    group: post.group,
                    commit_seq: seq,
                    sender: post.sender,
                },
                received_at_ms: post.now_ms,
                payload: Arc::from(welcome.as_bytes()),
            });
        }
    }
    Ok((removed_devices, welcomes, shared_welcome))
}

/// Loads a group's committed state (epoch, log head, members, repeated-post window) from
/// the file; `None` if there is no such group.
pub(super) fn load_group(
    conn: &Connection,
    group: GroupId,
) -> Result<Option<GroupState>, StoreError> {
    let Some(epoch) = group_epoch(conn, group)? else {
        return Ok(None);
    };
    // Pruning may have emptied the log: its head is then the highest seq pruned.
    let last_seq: i64 = conn
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM group_log WHERE group_id = ?1), 0),
                        (SELECT pruned_through FROM groups WHERE id = ?1))",
        )?
        .query_row(params![group.0.as_slice()], |r| r.get(0))?;
    let mut members = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT device FROM members WHERE group_id = ?1")?;
    let mut rows = stmt.query(params![group.0.as_slice()])?;
    while let Some(r) = rows.next()? {
        members.push(device_id(r.get(0)?)?);
    }
    members.sort_unstable();
    members.dedup();
    let mut left = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT device FROM group_left WHERE group_id = ?1")?;
    let mut rows = stmt.query(params![group.0.as_slice()])?;
    while let Some(r) = rows.next()? {
        left.push(device_id(r.get(0)?)?);
    }
    left.sort_unstable();
    left.dedup();
    let mut state = GroupState {
        epoch,
        last_seq: Seq(to_u64(last_seq)?),
        members,
        left,
        recent: std::collections::VecDeque::new(),
    };
    // The duplicate check's window: the latest application messages and proposals.
    let mut stmt = conn.prepare_cached(
        "SELECT seq, sender, payload FROM group_log
         WHERE group_id = ?1 AND kind IN (?2, ?3) ORDER BY seq DESC LIMIT ?4",
    )?;
    let window = i64::try_from(rules::RECENT_POSTS).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![
        group.0.as_slice(),
        KIND_APPLICATION,
        KIND_PROPOSAL,
        window
    ])?;
    let mut recent = Vec::new();
    while let Some(r) = rows.next()? {
        recent.push(rules::RecentPost {
            seq: Seq(to_u64(r.get(0)?)?),
            sender: device_id(r.get(1)?)?,
            digest: rules::payload_digest(&r.get::<_, Vec<u8>>(2)?),
        });
    }
    for post in recent.into_iter().rev() {
        state.remember(post);
    }
    Ok(Some(state))
}
