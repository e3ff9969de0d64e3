//! The outbox: messages encrypted and persisted before they are posted, each posted once per
//! connection, completed by its `Posted` reply or its own copy in the log, resent after a
//! retryable refusal (with backoff) and encrypted again at the current epoch when the group
//! moved past the epoch it was made in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cove_store::{Membership, OutboxItem, Store, StoreError, StoredMessage};
use cove_wire::{
    DeviceId, Epoch, ErrorCode, ErrorReply, GroupId, Payload, PostKind, Reply, Request, Seq,
};

use super::chat_log::{self, Recorded};
use super::context::Cx;
use super::device::Me;
use super::effects::{Effects, Pending};
use super::group_settings;
use crate::content::{Content, ENVELOPE_VERSION, Envelope};
use crate::error::{ProtocolViolation, Shared, Warning};
use crate::types::{CommandError, Event, HandleError, OpError, OpId};

/// First delay before resending a post the relay refused as retryable (when it gave no
/// `retry_after_ms`); doubles per attempt up to [`MAX_RETRY_DELAY_MS`].
pub const MIN_RETRY_DELAY_MS: u64 = 500;
/// Longest delay before resending a post refused as retryable.
pub const MAX_RETRY_DELAY_MS: u64 = 30_000;

/// The outbox items in flight and their retry state (the items themselves are in the store).
#[derive(Default)]
pub(super) struct Outbox {
    /// Outbox items with a command waiting for them: local id -> the command.
    ops: HashMap<u64, OpId>,
    /// Outbox items refused with a retryable error: local id -> when to resend.
    retries: BTreeMap<u64, Retry>,
    /// Outbox items the relay refused as `StaleEpoch` while this device was not ahead of
    /// their epoch: they are encrypted again at this device's next epoch change (or at the
    /// next connection's backlog end). Cleared on disconnect.
    stale: BTreeSet<u64>,
    /// Outbox items not posted because their group's log is held (waiting for device
    /// lists): a commit behind the hold may move the epoch, and a message made at the
    /// epoch before it cannot be read by the devices that commit adds. Posted (encrypted
    /// again if the epoch moved) when the hold is released ([`Outbox::release`]).
    held_back: BTreeSet<u64>,
}

/// A post to resend after a retryable refusal.
#[derive(Clone, Copy, Debug)]
struct Retry {
    /// Refusals so far on this connection (for the backoff).
    attempts: u32,
    /// When to resend (ms); `None` while the resent post is in flight.
    due_ms: Option<u64>,
}

/// What the dispatcher does after a post's reply: forget the group (our leave request was
/// accepted, or we were removed while offline), then tell the user `then`.
#[derive(Default)]
pub(super) struct PostOutcome {
    /// The group to forget, and why.
    pub(super) forget: Option<(GroupId, Membership)>,
    /// Events after the group is forgotten.
    pub(super) then: Vec<Event>,
}

impl Outbox {
    /// The connection is gone: the whole outbox goes out again after the next backlog.
    pub(super) fn disconnected(&mut self) {
        self.retries.clear();
        self.stale.clear();
        self.held_back.clear();
    }

    /// Whether a command or a retry is waiting.
    pub(super) fn busy(&self) -> bool {
        !self.ops.is_empty() || !self.retries.is_empty()
    }

    /// When the next retry is due.
    pub(super) fn next_retry(&self) -> Option<u64> {
        self.retries.values().filter_map(|r| r.due_ms).min()
    }

    /// The command waiting for item `local_id` (which is done), if any.
    pub(super) fn complete(&mut self, local_id: u64) -> Option<OpId> {
        self.ops.remove(&local_id)
    }

    /// Encrypts and persists a new message with `content` (under a fresh random message
    /// id) for command `op`, and posts it if the connection is ready and the group's log is
    /// not `held` (then it is posted when the hold ends).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send<S: Store>(
        &mut self,
        cx: Cx<'_, S>,
        op: OpId,
        now_ms: u64,
        group: GroupId,
        content: Content,
        held: bool,
        fx: &mut Effects,
    ) -> Result<(), CommandError> {
        let mut message_id = [0u8; 16];
        cx.provider.rng().fill(&mut message_id)?;
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            id: message_id,
            sent_at_ms: now_ms,
            content,
        };
        let bytes = envelope.encode()?;
        let ready = cx.ready;
        let item = seal(cx, None, group, message_id, now_ms, bytes)?;
        self.ops.insert(item.local_id, op);
        if held {
            self.held_back.insert(item.local_id);
        } else if ready {
            post(&item, fx);
        }
        Ok(())
    }

    /// The log of `group` is no longer held and all of it that could be applied was: its
    /// held-back items are posted, encrypted again first if the epoch moved meanwhile.
    pub(super) fn release<S: Store>(
        &mut self,
        mut cx: Cx<'_, S>,
        group: GroupId,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        let ids: Vec<u64> = self.held_back.iter().copied().collect();
        for local_id in ids {
            match cx.provider.store().outbox_item(local_id)? {
                Some(item) if item.group == group => {
                    self.held_back.remove(&local_id);
                    if cx.groups.epoch(&group).is_some_and(|e| e > item.epoch.0) {
                        self.reseal_and_post(cx.reborrow(), &item, fx)?;
                    } else if cx.ready {
                        post(&item, fx);
                    }
                }
                Some(_) => {}
                None => {
                    self.held_back.remove(&local_id);
                }
            }
        }
        Ok(())
    }

    /// Time has reached `now_ms`: resends the posts whose retry delay is over.
    pub(super) fn on_timeout(
        &mut self,
        store: &impl Store,
        now_ms: u64,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        let due: Vec<u64> = self
            .retries
            .iter()
            .filter(|(_, r)| r.due_ms.is_some_and(|d| d <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        for local_id in due {
            match store.outbox_item(local_id)? {
                Some(item) => {
                    if let Some(r) = self.retries.get_mut(&local_id) {
                        r.due_ms = None;
                    }
                    post(&item, fx);
                }
                // Moved to the history by its echo meanwhile.
                None => {
                    self.retries.remove(&local_id);
                }
            }
        }
        Ok(())
    }

    /// Resends the outbox after the backlog (items whose echo was in it are done). Not the
    /// items in `in_flight` (posted on this connection, waiting for their reply), nor those
    /// waiting for a retry: a second copy of the same ciphertext in the log cannot be
    /// decrypted by the other members (its MLS generation is used up).
    pub(super) fn resend_all<S: Store>(
        &mut self,
        mut cx: Cx<'_, S>,
        in_flight: &BTreeSet<u64>,
        held: impl Fn(&GroupId) -> bool,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        for item in cx.provider.store().outbox()? {
            if in_flight.contains(&item.local_id) || self.retries.contains_key(&item.local_id) {
                continue;
            }
            if held(&item.group) {
                self.held_back.insert(item.local_id);
                continue;
            }
            self.resend(cx.reborrow(), item, fx)?;
        }
        Ok(())
    }

    /// Posts a queued item once the backlog is in. The relay accepts an application message
    /// only in its current epoch or the one before, and its epoch is at least ours: an item
    /// older than that (queued while offline across commits) is encrypted again at our
    /// current epoch first. It was not stored: its echo would have been in the backlog.
    fn resend<S: Store>(
        &mut self,
        cx: Cx<'_, S>,
        item: OutboxItem,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        match cx.groups.epoch(&item.group) {
            Some(ours) if item.epoch.0.saturating_add(1) < ours => {
                self.reseal_and_post(cx, &item, fx)
            }
            _ => {
                post(&item, fx);
                Ok(())
            }
        }
    }

    /// After an epoch change in `group`: the queued items the relay refused as stale are
    /// encrypted at the new epoch and posted.
    pub(super) fn reseal_stale<S: Store>(
        &mut self,
        mut cx: Cx<'_, S>,
        group: GroupId,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        let ids: Vec<u64> = self.stale.iter().copied().collect();
        for local_id in ids {
            match cx.provider.store().outbox_item(local_id)? {
                Some(item) if item.group == group => {
                    if cx.groups.epoch(&group).is_some_and(|e| e > item.epoch.0) {
                        self.reseal_and_post(cx.reborrow(), &item, fx)?;
                    }
                }
                Some(_) => {}
                None => {
                    self.stale.remove(&local_id);
                }
            }
        }
        Ok(())
    }

    /// Encrypts a queued item again at the group's current epoch (same envelope, so the
    /// same message id) and posts it. If that fails (e.g. a commit of ours is pending), it
    /// waits for the next epoch change.
    fn reseal_and_post<S: Store>(
        &mut self,
        cx: Cx<'_, S>,
        item: &OutboxItem,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        let ready = cx.ready;
        match seal(
            cx,
            Some(item.local_id),
            item.group,
            item.message_id,
            item.sent_at_ms,
            item.content.clone(),
        ) {
            Ok(resealed) => {
                self.stale.remove(&item.local_id);
                if ready {
                    post(&resealed, fx);
                }
                Ok(())
            }
            Err(CommandError::Store(e)) => Err(e.into()),
            Err(e) => {
                self.stale.insert(item.local_id);
                fx.warn(Warning::QueuedNotEncrypted(Shared::new(e)));
                Ok(())
            }
        }
    }

    /// The relay's answer to the post of item `local_id`.
    pub(super) fn on_posted<S: Store>(
        &mut self,
        mut cx: Cx<'_, S>,
        now_ms: u64,
        local_id: u64,
        result: Result<Reply, ErrorReply>,
        fx: &mut Effects,
    ) -> Result<PostOutcome, HandleError> {
        let retry = self.retries.remove(&local_id);
        let store = cx.provider.store();
        let mut out = PostOutcome::default();
        let Some(item) = store.outbox_item(local_id)? else {
            // Already moved to history by its echo.
            return Ok(out);
        };
        match result {
            Ok(Reply::Posted { seq }) => {
                let Some(device) = cx.me.device() else {
                    // Posts are sent only once authenticated, hence registered.
                    return Err(HandleError::Protocol(
                        ProtocolViolation::PostedBeforeRegistration,
                    ));
                };
                let msg = own_message(cx.me, device, seq, &item);
                let name = cx.groups.name(&item.group);
                let by_admin = own_delete_by_admin(cx.groups.get(&item.group), cx.me, &item);
                let recorded = store
                    .transaction(|store| record_own(store, &item, &msg, &name, by_admin, now_ms))?;
                for ev in recorded.events {
                    fx.event(ev);
                }
                if recorded.scrub
                    && let Err(e) = store.scrub()
                {
                    fx.warn(Warning::ScrubFailed(Shared::new(e)));
                }
                if is_leave_request(&item) {
                    out.forget = Some((item.group, Membership::Left));
                }
                if let Some(op) = self.ops.remove(&local_id) {
                    out.then.push(Event::OpDone { op, result: Ok(()) });
                }
            }
            Err(e)
                if matches!(
                    e.code,
                    ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
                ) =>
            {
                // Retryable: it stays in the outbox and goes out again when the relay's
                // delay (or our backoff) is over, or after the next (re)connection.
                let attempts = retry.map_or(0, |r| r.attempts);
                let backoff = MIN_RETRY_DELAY_MS
                    .saturating_mul(1u64 << attempts.min(16))
                    .min(MAX_RETRY_DELAY_MS);
                let delay = e
                    .retry_after_ms
                    .map_or(backoff, |ms| u64::from(ms).min(MAX_RETRY_DELAY_MS));
                self.retries.insert(
                    local_id,
                    Retry {
                        attempts: attempts.saturating_add(1),
                        due_ms: Some(now_ms.saturating_add(delay)),
                    },
                );
                fx.warn(Warning::Resending {
                    delay_ms: delay,
                    error: e,
                });
            }
            Err(e) if e.code == ErrorCode::StaleEpoch && cx.groups.holds(&item.group) => {
                // Not stored: the group moved past the message's epoch while it waited
                // (offline, or racing a commit). It is not dropped: it is encrypted again at
                // our current epoch, now if we are ahead of it, else after our next epoch
                // change (the commit that made it stale is on its way to us).
                if cx
                    .groups
                    .epoch(&item.group)
                    .is_some_and(|ours| ours > item.epoch.0)
                {
                    self.reseal_and_post(cx.reborrow(), &item, fx)?;
                } else {
                    self.stale.insert(local_id);
                }
            }
            Err(e) => {
                // Refused for good (not a member, too large...): drop it from the outbox.
                store.delete_outbox(local_id)?;
                if e.code == ErrorCode::NotMember
                    && cx.groups.membership(&item.group) == Some(Membership::Active)
                {
                    // We were removed while offline and missed the commit.
                    out.forget = Some((item.group, Membership::Removed));
                    out.then.push(Event::RemovedFromGroup { group: item.group });
                }
                match self.ops.remove(&local_id) {
                    Some(op) => out.then.push(Event::OpDone {
                        op,
                        result: Err(OpError::Relay(e)),
                    }),
                    None => out.then.push(Event::Warning(Warning::QueuedRefused(e))),
                }
            }
            Ok(other) => fx.warn(Warning::UnexpectedPostReply(other)),
        }
        Ok(out)
    }
}

/// Encrypts `content` (an encoded envelope) at the group's current epoch and persists it in
/// the outbox, in one transaction: under `local_id` when given (a queued message encrypted
/// again), else under a fresh local id.
fn seal<S: Store>(
    cx: Cx<'_, S>,
    local_id: Option<u64>,
    group: GroupId,
    message_id: [u8; 16],
    sent_at_ms: u64,
    content: Vec<u8>,
) -> Result<OutboxItem, CommandError> {
    let store = cx.provider.store();
    let mls = cx
        .groups
        .get_mut(&group)
        .ok_or_else(|| CommandError::NotMember(group.to_hex()))?;
    store.begin()?;
    let result = (|| -> Result<OutboxItem, CommandError> {
        let out = mls
            .create_message(cx.provider, &cx.me.signer, &content)
            .map_err(CommandError::Seal)?;
        let payload = out.to_bytes().map_err(CommandError::Encode)?;
        let local_id = match local_id {
            Some(id) => id,
            None => store.next_local_id()?,
        };
        let item = OutboxItem {
            local_id,
            group,
            epoch: Epoch(mls.epoch().as_u64()),
            message_id,
            sent_at_ms,
            content,
            payload,
        };
        store.put_outbox(&item)?;
        Ok(item)
    })();
    match result {
        Ok(item) => {
            store.commit()?;
            Ok(item)
        }
        Err(e) => {
            let _ = store.rollback();
            cx.groups.reload(store, &group);
            Err(e)
        }
    }
}

/// Posts an outbox item.
fn post(item: &OutboxItem, fx: &mut Effects) {
    fx.request(
        Request::Post {
            group: item.group,
            epoch: item.epoch,
            kind: PostKind::Application,
            payload: Payload(item.payload.clone()),
        },
        Pending::PostApplication {
            local_id: item.local_id,
        },
    );
}

/// Whether an outbox item is our leave request.
pub(super) fn is_leave_request(item: &OutboxItem) -> bool {
    matches!(
        Envelope::decode(&item.content).map(|e| e.content),
        Ok(Content::LeaveRequest)
    )
}

/// Our own message `item`, sent by this `device`, as stored at `seq`.
pub(super) fn own_message(me: &Me, device: DeviceId, seq: Seq, item: &OutboxItem) -> StoredMessage {
    StoredMessage {
        group: item.group,
        seq,
        from: me.user().clone(),
        from_device: device,
        message_id: item.message_id,
        sent_at_ms: item.sent_at_ms,
        content: item.content.clone(),
    }
}

/// Moves our own message from the outbox to the history (inside the caller's transaction)
/// and records it in the chat log (see [`chat_log::record`]; `by_admin`: see
/// [`own_delete_by_admin`]). Read receipts and typing are not kept in the history; a
/// message of a group whose disappearing timer is on expires that long after `now_ms`.
pub(super) fn record_own(
    store: &impl Store,
    item: &OutboxItem,
    msg: &StoredMessage,
    group_name: &str,
    by_admin: bool,
    now_ms: u64,
) -> Result<Recorded, StoreError> {
    let ephemeral = matches!(
        Envelope::decode(&item.content).map(|e| e.content),
        Ok(Content::ReadReceipt { .. } | Content::Typing { .. })
    );
    if ephemeral {
        store.mark_seen(&item.group, &item.message_id)?;
        store.delete_outbox(item.local_id)?;
        return Ok(Recorded::default());
    }
    store.put_message(msg)?;
    let expires_at_ms = group_settings::schedule_expiry(store, msg, now_ms)?;
    store.mark_seen(&item.group, &item.message_id)?;
    store.delete_outbox(item.local_id)?;
    let mut recorded = chat_log::record(store, msg, group_name, by_admin)?;
    group_settings::mark_expiry(&mut recorded.events, msg.seq, expires_at_ms);
    Ok(recorded)
}

/// Whether our own outbox item is a delete sent as an admin of its group (`mls`).
pub(super) fn own_delete_by_admin(
    mls: Option<&openmls::group::MlsGroup>,
    me: &Me,
    item: &OutboxItem,
) -> bool {
    let is_delete = matches!(
        Envelope::decode(&item.content).map(|e| e.content),
        Ok(Content::Delete { .. })
    );
    is_delete && mls.is_some_and(|mls| super::admins::is_admin(mls, me.user()))
}
