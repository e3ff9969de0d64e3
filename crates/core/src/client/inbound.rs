//! Entries of the group logs: which to apply, acknowledge again or park (future epochs, and
//! groups whose Welcome has not been processed yet); applying one entry in one transaction
//! with its plaintext and the cursor (messages with duplicate suppression, our own echoes,
//! commits with their membership changes and key checks); a bad entry is skipped with a
//! warning. Every leaf a commit adds or updates, and the sender of every application
//! message, is checked against its user's device list (`leaves`): an entry that needs a list
//! this device does not hold yet is not applied (the caller parks it and holds the group),
//! a message from a refused leaf is skipped.

use std::collections::{BTreeMap, BTreeSet};

use cove_store::{Membership, Store, StoreError, StoredMessage};
use cove_wire::{DeviceId, EntryKind, GroupEntry, GroupId, Stream, UserName};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{LeafNode, MlsMessageIn, ProcessedMessageContent, Sender};

use super::chat_log;
use super::context::Cx;
use super::effects::Effects;
use super::group_settings;
use super::groups::Groups;
use super::leaves::{self, LeafCheck, LeafCheckError, Leaves, RefusedLeaf};
use super::mls::{MAX_GROUP_NAME, MemberId, member_id, parse_credential, roles_of, users_of};
use super::outbox::{is_leave_request, own_delete_by_admin, own_message, record_own};
use super::roles;
use super::trust::{self, Trust};
use crate::content::{Content, ContentError, Decoded, Envelope};
use crate::error::{EntryError, KeptBecause, Shared, Warning};
use crate::types::{Event, HandleError, MessageId, ReceivedContent};

/// Most parked (future-epoch or not-yet-joined) entries kept per group.
pub const MAX_PENDING_PER_GROUP: usize = 10_000;

/// Most bytes of parked entries kept, all groups together.
pub const MAX_PARKED_BYTES: u64 = 64 * 1024 * 1024;

/// How long entries of a group this device never joined (no Welcome came, and no record of
/// the group exists) stay parked, counted from the first backlog end that found them
/// (on this run of the client), before they are dropped and acknowledged, and the device
/// leaves the group at the relay (`LeaveGroup`) so nothing more of it arrives.
pub const UNJOINED_PARK_MS: u64 = 24 * 60 * 60 * 1000;

/// The parking area's bookkeeping (the parked entries themselves are in the store).
#[derive(Default)]
pub(super) struct Inbound {
    /// Groups that had entries parked on this connection (reported at `BacklogDone` if
    /// they are still parked; groups with a record are checked anyway).
    parked_groups: BTreeSet<GroupId>,
    /// The total size of the parked entries, when known (read from the store once, then
    /// kept up to date by `park`; forgotten whenever parked entries are deleted).
    parked_bytes: Option<u64>,
    /// Groups without a record that have parked entries: when a backlog end first found
    /// them so.
    unjoined_since: BTreeMap<GroupId, u64>,
}

/// What to do with an entry that just arrived.
pub(super) enum Route {
    /// Seen before, or of a group we left: acknowledge it again.
    Ack,
    /// Not applicable yet: keep it, unacknowledged, until it is.
    Park,
    /// Apply it.
    Apply,
}

/// What applying an entry asks of the other parts (its events are already reported).
#[derive(Default)]
pub(super) struct Applied {
    /// The group moved to a new epoch.
    pub(super) merged: bool,
    /// Our own commit was accepted: the command that posted it is done.
    pub(super) own_commit: bool,
    /// The echo of this outbox item: its command is done.
    pub(super) own_message: Option<u64>,
    /// Our own leave request was accepted.
    pub(super) left: bool,
    /// A commit removed this device.
    pub(super) removed: bool,
    /// Devices that asked to leave the group.
    pub(super) leave_requests: Vec<DeviceId>,
    /// Not applied: the device lists of these users are needed first (nothing else in
    /// this value is set, the transaction was rolled back).
    pub(super) need_lists: BTreeSet<UserName>,
    /// Leaves refused (added or updated by a commit, or the sender of a message).
    pub(super) refused: Vec<RefusedLeaf>,
    /// Users whose leaves a commit removed: their lists are fetched again (a revocation
    /// is told to everyone in the group that way).
    pub(super) refresh: BTreeSet<UserName>,
    /// The key of the sender's leaf of a message, found trusted.
    pub(super) trusted_sender: Option<cove_wire::DeviceKey>,
    /// A commit at this device's current epoch that MLS could not process: this device's
    /// state no longer matches the group's (it rejoins).
    pub(super) unprocessable_commit: bool,
    /// A message was deleted for everyone: the store is scrubbed after the transaction.
    pub(super) scrub: bool,
}

impl Inbound {
    /// Where an entry goes.
    pub(super) fn route(
        &self,
        store: &impl Store,
        groups: &Groups,
        entry: &GroupEntry,
    ) -> Result<Route, StoreError> {
        let group = entry.group;
        let seen = || -> Result<bool, StoreError> {
            Ok(entry.seq <= store.cursor(&Stream::Group(group))?)
        };
        // Not (yet) a member locally: either the Welcome has not been processed yet (park
        // it; after a removal, later entries mean we were added again), or we left (ignore).
        // A parked entry is not acknowledged: until it is applied, the relay delivers it
        // (and what it depends on) again on the next connection.
        match groups.membership(&group) {
            Some(Membership::Left) => return Ok(Route::Ack),
            Some(Membership::Removed) if seen()? => return Ok(Route::Ack),
            Some(Membership::Active) if groups.holds(&group) => {}
            _ => return Ok(Route::Park),
        }
        if seen()? {
            return Ok(Route::Ack);
        }
        let epoch = groups.epoch(&group).unwrap_or(0);
        if entry.epoch.0 > epoch {
            // A commit before it is missing (yet).
            return Ok(Route::Park);
        }
        Ok(Route::Apply)
    }

    /// Keeps an entry until it can be applied (dropped with a warning when the group has
    /// too many parked, or all parked entries together reach [`MAX_PARKED_BYTES`]; an entry
    /// of a group this device has no record of is then acknowledged as well, so the relay
    /// stops sending it).
    pub(super) fn park(
        &mut self,
        store: &impl Store,
        groups: &Groups,
        entry: &GroupEntry,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        self.parked_groups.insert(entry.group);
        let parked = store.pending(&entry.group)?;
        if parked.iter().any(|(seq, _)| *seq == entry.seq) {
            // Sent again (not acknowledged yet): parked already.
            return Ok(());
        }
        if parked.len() >= MAX_PENDING_PER_GROUP {
            fx.warn(Warning::ParkedOverflow {
                group: entry.group,
                seq: entry.seq,
            });
            return Ok(());
        }
        let bytes = postcard::to_stdvec(entry).map_err(HandleError::Encode)?;
        let total = match self.parked_bytes {
            Some(total) => total,
            None => store.pending_bytes()?,
        };
        let len = bytes.len() as u64;
        if total.saturating_add(len) > MAX_PARKED_BYTES {
            self.parked_bytes = Some(total);
            if groups.membership(&entry.group).is_none() {
                fx.ack(Stream::Group(entry.group), entry.seq);
            }
            fx.warn(Warning::ParkedBytesOverflow {
                group: entry.group,
                seq: entry.seq,
            });
            return Ok(());
        }
        store.put_pending(&entry.group, entry.seq, &bytes)?;
        self.parked_bytes = Some(total + len);
        Ok(())
    }

    /// Parked entries were deleted elsewhere: the total is read again when next needed.
    pub(super) fn forget_bytes(&mut self) {
        self.parked_bytes = None;
    }

    /// The parked entries of `group` that can be applied now, in seq order (up to the first
    /// of a later epoch). Parked entries already applied or undecodable are deleted.
    pub(super) fn applicable(
        &self,
        store: &impl Store,
        groups: &Groups,
        group: GroupId,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        let Some(epoch) = groups.epoch(&group) else {
            return Ok(Vec::new());
        };
        let cursor = store.cursor(&Stream::Group(group))?;
        let mut ready = Vec::new();
        for (seq, bytes) in store.pending(&group)? {
            let entry: GroupEntry = match postcard::from_bytes::<GroupEntry>(&bytes) {
                Ok(e) if e.seq > cursor => e,
                _ => {
                    store.delete_pending(&group, seq)?;
                    continue;
                }
            };
            if entry.epoch.0 > epoch {
                break;
            }
            ready.push(entry);
        }
        Ok(ready)
    }

    /// After the backlog every entry should be applicable: the ones still parked are kept
    /// (applied as soon as the commit or Welcome they wait for arrives), and the user is
    /// told, once per group and connection. Groups for which `waiting` holds (they wait for
    /// device lists, which are on their way) are not reported.
    /// Entries of a group this device has no record of (never joined: no Welcome came) are
    /// dropped and acknowledged once they have been found so for [`UNJOINED_PARK_MS`].
    pub(super) fn report_parked(
        &mut self,
        store: &impl Store,
        groups: &Groups,
        now_ms: u64,
        waiting: impl Fn(&GroupId) -> bool,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let mut ids: BTreeSet<GroupId> = groups.ids().collect();
        ids.extend(std::mem::take(&mut self.parked_groups));
        // Also what was parked on an earlier run and is not sent again.
        ids.extend(store.pending_groups()?);
        for group in ids.into_iter().filter(|g| !waiting(g)) {
            let pending = store.pending(&group)?;
            let parked = pending.len();
            if parked == 0 {
                self.unjoined_since.remove(&group);
                continue;
            }
            if groups.membership(&group).is_none() {
                let since = *self.unjoined_since.entry(group).or_insert(now_ms);
                if now_ms.saturating_sub(since) >= UNJOINED_PARK_MS {
                    store.transaction(|s| {
                        for (seq, _) in &pending {
                            s.delete_pending(&group, *seq)?;
                        }
                        Ok::<(), StoreError>(())
                    })?;
                    self.parked_bytes = None;
                    self.unjoined_since.remove(&group);
                    if let Some((last, _)) = pending.last() {
                        fx.ack(Stream::Group(group), *last);
                    }
                    fx.leave_group(group);
                    fx.warn(Warning::UnjoinedDropped {
                        group,
                        count: parked,
                    });
                    continue;
                }
            } else {
                self.unjoined_since.remove(&group);
            }
            let why = match groups.epoch(&group) {
                Some(epoch) => KeptBecause::LaterEpoch(epoch),
                None => KeptBecause::NotMember,
            };
            fx.warn(Warning::EntriesKept {
                group,
                count: parked,
                why,
            });
        }
        Ok(())
    }
}

/// Applies one entry (epoch ≤ ours) in one transaction together with its plaintext and the
/// cursor (and its removal from the parking area when `parked`), then reports its events. A
/// bad entry is skipped (cursor advanced) with a warning.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply<S: Store>(
    mut cx: Cx<'_, S>,
    trust: &mut Trust,
    now_ms: u64,
    entry: &GroupEntry,
    parked: bool,
    leaves: &Leaves,
    fx: &mut Effects,
) -> Result<Applied, HandleError> {
    let group = entry.group;
    let stream = Stream::Group(group);
    let epoch_before = cx.groups.epoch(&group);
    cx.provider.store().begin()?;
    let result = apply_in_tx(cx.reborrow(), trust, now_ms, entry, leaves);
    let store = cx.provider.store();
    let advance = |store: &S| -> Result<(), StoreError> {
        store.set_cursor(&stream, entry.seq)?;
        if parked {
            store.delete_pending(&group, entry.seq)?;
        }
        Ok(())
    };
    match result {
        Ok((applied, _)) if !applied.need_lists.is_empty() => {
            // Not applied yet: nothing of it stays, the cursor does not move.
            store.rollback()?;
            cx.groups.reload(store, &group);
            Ok(applied)
        }
        Ok((applied, events)) => {
            if let Err(e) = advance(store).and_then(|_| store.commit()) {
                let _ = store.rollback();
                cx.groups.reload(store, &group);
                return Err(e.into());
            }
            for e in events {
                fx.event(e);
            }
            if applied.scrub
                && let Err(e) = store.scrub()
            {
                // Committed: what was erased is gone from the records, not yet from the
                // files.
                fx.warn(Warning::ScrubFailed(Shared::new(e)));
            }
            Ok(applied)
        }
        Err(reason) => {
            let _ = store.rollback();
            cx.groups.reload(store, &group);
            store.transaction(advance)?;
            let mut applied = Applied {
                unprocessable_commit: matches!(entry.kind, EntryKind::Commit { .. })
                    && matches!(reason, EntryError::Process(_))
                    && !cx.me.is(entry.sender)
                    && epoch_before == Some(entry.epoch.0),
                ..Applied::default()
            };
            if let EntryError::RefusedSender {
                user,
                device,
                key,
                reason,
            } = &reason
            {
                applied.refused.push(RefusedLeaf {
                    user: user.clone(),
                    device: *device,
                    key: *key,
                    reason: reason.clone(),
                });
            }
            fx.warn(Warning::EntrySkipped {
                group,
                seq: entry.seq,
                sender: entry.sender,
                reason: Shared::new(reason),
            });
            Ok(applied)
        }
    }
}

/// The body of [`apply`]'s transaction: what the entry changes, and the events to report.
fn apply_in_tx<S: Store>(
    cx: Cx<'_, S>,
    trust: &mut Trust,
    now_ms: u64,
    entry: &GroupEntry,
    leaves: &Leaves,
) -> Result<(Applied, Vec<Event>), EntryError> {
    let answered = leaves.answered();
    let group = entry.group;
    let mut out = Applied::default();
    let mut events = Vec::new();
    let store = cx.provider.store();
    let (mls, mut record) = cx
        .groups
        .get_with_record(&group)
        .ok_or(EntryError::NotMember)?;
    let our_epoch = mls.epoch().as_u64();

    if cx.me.is(entry.sender) {
        match &entry.kind {
            EntryKind::Commit { .. } => {
                if mls.pending_commit().is_some() && entry.epoch.0 == our_epoch {
                    // Our own commit, accepted (its Posted reply may be lost or later).
                    let roles_before = roles_of(mls.extensions());
                    mls.merge_pending_commit(cx.provider)
                        .map_err(EntryError::MergePending)?;
                    events.extend(roles::roles_event(roles_before, mls, group, cx.me.user()));
                    out.merged = true;
                    // The Posted (or StaleEpoch, after a resend) reply, if it still comes,
                    // finds the command finished and is ignored.
                    out.own_commit = true;
                }
                return Ok((out, events));
            }
            EntryKind::Application => {
                // Our own message: move it from the outbox to the history at this seq.
                let echoed = store
                    .outbox()?
                    .into_iter()
                    .find(|item| item.group == group && item.payload == entry.payload.as_bytes());
                if let Some(item) = echoed {
                    let msg = own_message(cx.me, entry.sender, entry.seq, &item);
                    let name = record.as_ref().map(|r| r.name.clone()).unwrap_or_default();
                    let by_admin = own_delete_by_admin(Some(&*mls), cx.me, &item);
                    let recorded = record_own(store, &item, &msg, &name, by_admin, now_ms)?;
                    events.extend(recorded.events);
                    out.scrub = recorded.scrub;
                    out.own_message = Some(item.local_id);
                    out.left = is_leave_request(&item);
                }
                return Ok((out, events));
            }
            EntryKind::Proposal => return Ok((out, events)),
        }
    }

    let msg = MlsMessageIn::tls_deserialize_exact(entry.payload.as_bytes())
        .map_err(EntryError::Undecodable)?;
    let protocol = msg
        .try_into_protocol_message()
        .map_err(EntryError::NotGroupMessage)?;
    let is_commit = matches!(entry.kind, EntryKind::Commit { .. });
    if is_commit && mls.pending_commit().is_some() {
        // Another member's commit won this epoch: drop ours (the command retries).
        mls.clear_pending_commit(store)?;
    }
    let processed = mls
        .process_message(cx.provider, protocol)
        .map_err(EntryError::Process)?;
    let external = matches!(processed.sender(), Sender::NewMemberCommit);
    let (sender_leaf, sender_id) = match (processed.sender(), processed.content()) {
        (Sender::Member(idx), _) => (
            idx.u32(),
            mls.member_at(*idx)
                .and_then(|m| member_id(&m).ok())
                .ok_or(EntryError::UnknownSender)?,
        ),
        // A member rejoining by an external commit: the joiner is its new leaf, checked
        // below like every leaf a commit brings in.
        (Sender::NewMemberCommit, ProcessedMessageContent::StagedCommitMessage(staged)) => {
            let leaf = staged
                .update_path_leaf_node()
                .ok_or(EntryError::UnknownSender)?;
            let mut id = parse_credential(leaf.credential())?;
            id.key = leaf.signature_key().as_slice().to_vec();
            (u32::MAX, id)
        }
        _ => return Err(EntryError::NotFromMember),
    };
    if sender_id.device != entry.sender {
        return Err(EntryError::SenderMismatch {
            relay: entry.sender,
            mls: sender_id.device,
        });
    }
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => {
            // Shown as someone's only from a leaf certified by its user's identity.
            let leaf = mls
                .public_group()
                .leaf(openmls::prelude::LeafNodeIndex::new(sender_leaf))
                .ok_or(EntryError::UnknownSender)?;
            let key = <[u8; 32]>::try_from(leaf.signature_key().as_slice())
                .ok()
                .map(cove_wire::DeviceKey);
            let known = key.is_some_and(|k| leaves.is_trusted(group, k));
            let check = if known {
                LeafCheck::Trusted
            } else {
                leaves::check_leaf_node(store, leaf, answered).map_err(leaf_check_error)?
            };
            match check {
                LeafCheck::Trusted => out.trusted_sender = key,
                LeafCheck::NeedList(user) => {
                    out.need_lists.insert(user);
                    return Ok((out, events));
                }
                LeafCheck::Refused(r) => {
                    return Err(EntryError::RefusedSender {
                        user: r.user,
                        device: r.device,
                        key: r.key,
                        reason: r.reason,
                    });
                }
            }
            let bytes = app.into_bytes();
            // A content kind of a newer client is stored and shown as unsupported; garbage
            // and invalid known kinds are skipped with a warning.
            let (id, sent_at_ms, content) = match Envelope::decode_lenient(&bytes)? {
                Decoded::Known(env) => {
                    env.content.validate()?;
                    if chat_log::target_of(&env.content) == Some(env.id) {
                        return Err(ContentError::Invalid("refers to itself").into());
                    }
                    (env.id, env.sent_at_ms, Some(env.content))
                }
                Decoded::Unsupported { id, sent_at_ms, .. } => (id, sent_at_ms, None),
            };
            if store.is_seen(&group, &id)? {
                return Err(EntryError::Duplicate);
            }
            store.mark_seen(&group, &id)?;
            // Receipts, typing, the timer, the profile and renames (admins only).
            // A drive group (issue 14) has no name to change and no timer: its log is the
            // tree's, and a timer would delete the operations.
            let drive = record
                .as_deref()
                .is_some_and(|r| crate::drive::is_drive_group(&r.name));
            let settings = match &content {
                Some(
                    Content::GroupInfo { .. }
                    | Content::GroupProfile { .. }
                    | Content::Disappearing { .. },
                ) if drive => group_settings::Received {
                    store: true,
                    handled: true,
                    rename: None,
                    events: vec![Event::Warning(crate::error::Warning::SettingRefused {
                        group,
                        from: sender_id.user.clone(),
                        what: "a rename, profile or timer",
                        why: "a Cove Drive group",
                    })],
                },
                Some(content) => group_settings::on_received(
                    store,
                    group,
                    &sender_id.user,
                    super::admins::is_admin(mls, &sender_id.user),
                    cx.me.user(),
                    content,
                    sent_at_ms,
                    now_ms,
                    MAX_GROUP_NAME,
                )?,
                None => group_settings::Received::unhandled(),
            };
            if let (Some(name), Some(r)) = (&settings.rename, record.as_deref_mut()) {
                r.name = name.clone();
                store.put_group(r)?;
            }
            if let Some(Content::LeaveRequest) = &content {
                out.leave_requests.push(sender_id.device);
            }
            let stored = StoredMessage {
                group,
                seq: entry.seq,
                from: sender_id.user.clone(),
                from_device: sender_id.device,
                message_id: id,
                sent_at_ms,
                content: bytes,
            };
            let mut expires_at_ms = None;
            if settings.store {
                store.put_message(&stored)?;
                expires_at_ms = group_settings::schedule_expiry(store, &stored, now_ms)?;
            }
            events.extend(settings.events);
            if settings.handled {
                return Ok((out, events));
            }
            // The chat (texts, files, replies, reactions, edits, deletes, unsupported kinds)
            // goes through the chat log; anything else goes to the module that handles it
            // as Content.
            match content {
                Some(content) if !chat_log::is_chat(&content) => {
                    events.push(Event::Content(ReceivedContent {
                        group,
                        from: sender_id.user,
                        from_device: sender_id.device,
                        sender_leaf,
                        id: MessageId(id),
                        sent_at_ms,
                        seq: entry.seq,
                        content,
                    }));
                }
                content => {
                    let by_admin = matches!(content, Some(Content::Delete { .. }))
                        && super::admins::is_admin(mls, &sender_id.user);
                    let name = record.as_ref().map(|r| r.name.clone()).unwrap_or_default();
                    let mut recorded = chat_log::record(store, &stored, &name, by_admin)?;
                    group_settings::mark_expiry(&mut recorded.events, stored.seq, expires_at_ms);
                    events.extend(recorded.events);
                    out.scrub = recorded.scrub;
                }
            }
        }
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            let removed_self = staged.self_removed();
            // The membership change, from the commit itself (O(changes), not O(group)).
            let mut added = Vec::new();
            for p in staged.add_proposals() {
                let leaf = p.add_proposal().key_package().leaf_node();
                let mut id = parse_credential(leaf.credential())?;
                id.key = leaf.signature_key().as_slice().to_vec();
                added.push(id);
            }
            let removed: Vec<MemberId> = staged
                .remove_proposals()
                .filter_map(|p| mls.member_at(p.remove_proposal().removed()))
                .filter_map(|m| member_id(&m).ok())
                .collect();
            // A rejoin removes at most the joiner's own old leaf.
            if external
                && removed
                    .iter()
                    .any(|m| m.device != sender_id.device || m.user != sender_id.user)
            {
                return Err(EntryError::ExternalRemovesOthers);
            }
            // Only admins add or remove other users' devices or change the roles (issue 13),
            // by the roles of the epoch the commit starts from.
            roles::check_commit(
                mls,
                &sender_id.user,
                &added,
                &removed,
                &leaves.leavers(&group),
                staged.group_context().extensions(),
            )?;
            let roles_before = roles_of(mls.extensions());
            // A committer's new leaf (update path) must keep its credential and key.
            let updated = match staged.update_path_leaf_node() {
                Some(leaf) => {
                    let mut id = parse_credential(leaf.credential())?;
                    id.key = leaf.signature_key().as_slice().to_vec();
                    if id.device != sender_id.device || id.user != sender_id.user {
                        return Err(EntryError::IdentityChanged);
                    }
                    Some(id)
                }
                None => None,
            };
            // Every leaf the commit brings in (added, or a member's new leaf) is checked
            // before anything of it is merged.
            let new_leaves: Vec<LeafNode> = staged
                .add_proposals()
                .map(|p| p.add_proposal().key_package().leaf_node().clone())
                .chain(staged.update_path_leaf_node().cloned())
                .chain(
                    staged
                        .update_proposals()
                        .map(|p| p.update_proposal().leaf_node().clone()),
                )
                .collect();
            let (need, refused) =
                leaves::check_all(store, new_leaves.iter(), answered).map_err(leaf_check_error)?;
            if !need.is_empty() {
                out.need_lists = need;
                return Ok((out, events));
            }
            out.refused = refused;
            out.refresh = removed
                .iter()
                .filter(|m| !cx.me.is(m.device) && !external)
                .map(|m| m.user.clone())
                .collect();
            mls.merge_staged_commit(cx.provider, *staged)
                .map_err(EntryError::Merge)?;
            out.merged = true;
            events.extend(roles::roles_event(
                roles_before,
                mls,
                group,
                &sender_id.user,
            ));
            if removed_self {
                out.removed = true;
                if let Some(r) = record {
                    r.membership = Membership::Removed;
                    store.put_group(r)?;
                }
                events.push(Event::RemovedFromGroup { group });
                return Ok((out, events));
            }
            let mut pin_events = Vec::new();
            let me = cx.me.device();
            // A refused leaf is reported (`LeafRefused`) and removed: its key is not pinned
            // as the device it claims to be, and it raises no "new device" warning besides.
            let refused = |id: &&MemberId| {
                out.refused
                    .iter()
                    .any(|r| r.key.0.as_slice() == id.key.as_slice())
            };
            for id in updated.iter().chain(&added).filter(|id| !refused(id)) {
                trust::check_pin(store, me, now_ms, id, &mut pin_events)?;
            }
            if !cx.me.is(sender_id.device) {
                for m in added.iter().filter(|id| !refused(id)) {
                    trust.verify_later(&m.user);
                }
            }
            // A refused leaf is nobody's: it is not reported as its claimed user joining, nor
            // its removal as that user leaving.
            let trusted_added: Vec<MemberId> =
                added.iter().filter(|id| !refused(id)).cloned().collect();
            let trusted_removed: Vec<MemberId> = removed
                .iter()
                .filter(|id| !leaves.was_refused(group, &id.key))
                .cloned()
                .collect();
            // A rejoin changes no membership: the same device has a new leaf.
            if !external && (!trusted_added.is_empty() || !trusted_removed.is_empty()) {
                events.push(Event::MembersChanged {
                    group,
                    by: sender_id.user.clone(),
                    added: users_of(&trusted_added),
                    removed: users_of(&trusted_removed),
                });
            }
            events.extend(pin_events);
        }
        _ => {
            return Err(EntryError::Proposal);
        }
    }
    Ok((out, events))
}

/// A leaf that could not be checked is an entry that cannot be applied.
fn leaf_check_error(e: LeafCheckError) -> EntryError {
    match e {
        LeafCheckError::Credential(e) => EntryError::Credential(e),
        LeafCheckError::Store(e) => EntryError::Store(e),
    }
}
