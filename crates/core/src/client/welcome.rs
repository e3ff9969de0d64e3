//! Welcomes (the inbox stream): joining a group, in one transaction with the inbox cursor,
//! pinning the members' keys and checking every member's leaf certificate (a Welcome naming
//! a user whose device list this device does not hold yet is not taken until it does; one
//! sent by a refused leaf is not taken at all, see [`JoinOutcome::AdderRefused`]); a
//! Welcome into a later epoch of a group this device still holds (it missed its removal)
//! replaces the stale state, an older one is a replay.

use std::collections::BTreeSet;

use cove_store::{GroupRecord, Membership, Store};
use cove_wire::{DeviceId, GroupId, InboxEntry, InboxKind, Seq, Stream, UserName};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider as _, StagedWelcome};
use zeroize::Zeroizing;

use super::context::Cx;
use super::effects::Effects;
use super::leaves::{self, LeafCheckError, RefusedLeaf};
use super::mls::{join_config, member_id, parse_credential};
use super::trust::{self, Trust};
use crate::error::{Shared, Warning, WelcomeError};
use crate::types::{Event, HandleError};
use crate::welcome_envelope::{GROUP_NAME_KEY_LEN, GROUP_NAME_LABEL, WelcomeEnvelope, open_name};

/// What became of an inbox entry.
pub(super) enum Inboxed {
    /// Seen before: only to acknowledge again.
    Seen,
    /// Joined this group (its parked entries may now apply), refusing these leaves.
    Joined(GroupId, Vec<RefusedLeaf>),
    /// Not joined: the adder's leaf (the member that signed the Welcome) is refused (see
    /// [`JoinOutcome::AdderRefused`]). The group is recorded as left, so that its log is
    /// acknowledged and ignored.
    AdderRefused(GroupId, RefusedLeaf),
    /// Not taken yet: these users' device lists are needed first (nothing was stored, the
    /// cursor did not move).
    NeedLists(BTreeSet<UserName>),
    /// Skipped with a warning.
    Skipped,
}

/// Handles one inbox entry: joins the group of a Welcome, or skips it with a warning. The
/// caller acknowledges it.
pub(super) fn on_inbox_entry<S: Store>(
    mut cx: Cx<'_, S>,
    trust: &mut Trust,
    now_ms: u64,
    entry: &InboxEntry,
    answered: &BTreeSet<UserName>,
    fx: &mut Effects,
) -> Result<Inboxed, HandleError> {
    let store = cx.provider.store();
    if entry.seq <= store.cursor(&Stream::Inbox)? {
        return Ok(Inboxed::Seen);
    }
    let InboxKind::Welcome {
        group,
        commit_seq,
        sender,
    } = entry.kind.clone();
    store.begin()?;
    let result = join(
        cx.reborrow(),
        trust,
        now_ms,
        entry,
        group,
        commit_seq,
        sender,
        answered,
    );
    let store = cx.provider.store();
    match result {
        Ok(JoinOutcome::NeedLists(users)) => {
            store.rollback()?;
            cx.groups.unload(&group);
            cx.groups.reload(store, &group);
            Ok(Inboxed::NeedLists(users))
        }
        Ok(JoinOutcome::AdderRefused(adder)) => {
            store.rollback()?;
            cx.groups.unload(&group);
            cx.groups.reload(store, &group);
            store.begin()?;
            let recorded = (|| {
                if cx.groups.membership(&group).is_none() {
                    // Neither the name nor anything else of the group is kept: it all came
                    // from the impostor.
                    let record = GroupRecord {
                        id: group,
                        name: String::new(),
                        membership: Membership::Left,
                        joined_at_ms: now_ms,
                    };
                    store.put_group(&record)?;
                    cx.groups.insert_record(record);
                }
                store.set_cursor(&Stream::Inbox, entry.seq)?;
                store.commit()
            })();
            if let Err(e) = recorded {
                let _ = store.rollback();
                cx.groups.restore(store, &group);
                return Err(e.into());
            }
            fx.leave_group(group);
            Ok(Inboxed::AdderRefused(group, adder))
        }
        Ok(JoinOutcome::Joined(events, refused)) => {
            if let Err(e) = store
                .set_cursor(&Stream::Inbox, entry.seq)
                .and_then(|_| store.commit())
            {
                let _ = store.rollback();
                cx.groups.restore(store, &group);
                return Err(e.into());
            }
            for e in events {
                fx.event(e);
            }
            Ok(Inboxed::Joined(group, refused))
        }
        Err(reason) => {
            let _ = store.rollback();
            cx.groups.unload(&group);
            cx.groups.reload(store, &group);
            store.set_cursor(&Stream::Inbox, entry.seq)?;
            fx.warn(Warning::WelcomeSkipped {
                group,
                reason: Shared::new(reason),
            });
            // Without the Welcome this device has no state for the group: unless it is an
            // active member from before (a Welcome for a group it is in), it leaves at the
            // relay.
            if cx.groups.membership(&group) != Some(Membership::Active) {
                fx.leave_group(group);
            }
            Ok(Inboxed::Skipped)
        }
    }
}

/// What [`join`] did.
enum JoinOutcome {
    /// Joined: the events to report once committed, and the leaves refused.
    Joined(Vec<Event>, Vec<RefusedLeaf>),
    /// Not joined: the caller rolls back; these users' lists are needed first.
    NeedLists(BTreeSet<UserName>),
    /// Not joined: the adder's leaf (the member that signed the Welcome's GroupInfo, as MLS
    /// checked) is refused.
    ///
    /// The adder is the only one who vouches for the group: its name, its members and its
    /// tree all come from them. A Welcome sent by a forged leaf (one claiming to be alice
    /// without alice's certificate), by another identity's or by a revoked device is an
    /// impostor's invitation, and a serious messenger does not show it as anyone's group:
    /// no `Joined { by: alice }` (which would name the user the impostor claims to be), no
    /// group to write in. The user is told once ([`crate::IdentityEvent::LeafRefused`]); the
    /// Welcome is acknowledged and the group's log ignored. A real member can add this
    /// device again with a Welcome of its own.
    AdderRefused(RefusedLeaf),
}

/// Joins `group` from the Welcome in `entry` (inside the caller's transaction); returns the
/// events to report once it is committed.
#[allow(clippy::too_many_arguments)]
fn join<S: Store>(
    cx: Cx<'_, S>,
    trust: &mut Trust,
    now_ms: u64,
    entry: &InboxEntry,
    group: GroupId,
    commit_seq: Seq,
    sender: DeviceId,
    answered: &BTreeSet<UserName>,
) -> Result<JoinOutcome, WelcomeError> {
    // A Cove Welcome envelope: the MLS Welcome and the group name sealed under a key of
    // the epoch it joins (the relay never sees the name).
    let envelope = WelcomeEnvelope::decode(entry.payload.as_bytes())?;
    let msg =
        MlsMessageIn::tls_deserialize_exact(envelope.welcome).map_err(WelcomeError::Undecodable)?;
    let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
        return Err(WelcomeError::NotWelcome);
    };
    let held = cx.groups.epoch(&group);
    let mut builder = StagedWelcome::build_from_welcome(cx.provider, &join_config(), welcome)
        .map_err(WelcomeError::Rejected)?;
    if held.is_some() {
        builder = builder.replace_old_group();
    }
    let staged = builder.build().map_err(WelcomeError::Rejected)?;
    if staged.group_context().group_id().as_slice() != group.0 {
        return Err(WelcomeError::OtherGroup);
    }
    let mut events = Vec::new();
    if let Some(ours) = held {
        // We still hold the group: we were removed and added again while we did not see
        // the removal. A Welcome into a later epoch replaces the stale state (with which
        // nothing of the group can be read or sent any more); one into our epoch or an
        // earlier one is a replay.
        let offered = staged.group_context().epoch().as_u64();
        if offered <= ours {
            return Err(WelcomeError::AlreadyMember { offered, ours });
        }
        if let Some(mut old) = cx.groups.unload(&group) {
            old.delete(cx.provider.store())
                .map_err(WelcomeError::DropStale)?;
        }
        events.push(Event::Warning(Warning::ReAddedAfterMissedRemoval {
            group,
            offered,
            ours,
        }));
    }
    // The adder is the member who signed the Welcome's GroupInfo (MLS checked that
    // signature against its leaf), whoever the relay names as the sender.
    let adder = staged
        .welcome_sender()
        .map_err(|_| WelcomeError::SenderNotMember)?;
    let adder_key = adder.signature_key().as_slice().to_vec();
    let adder_user = parse_credential(adder.credential())?.user;
    let mls = staged.into_group(cx.provider).map_err(WelcomeError::Join)?;
    // The name opens only with the key of the epoch joined, for this group (inside the
    // caller's transaction: a name that does not open leaves nothing joined).
    let key = Zeroizing::new(
        mls.export_secret(
            cx.provider.crypto(),
            GROUP_NAME_LABEL,
            &group.0,
            GROUP_NAME_KEY_LEN,
        )
        .map_err(WelcomeError::NameKey)?,
    );
    let name = open_name(&key, &group, envelope.sealed_name)?;
    // Every member's leaf but our own carries a certificate of its user's identity.
    let own = mls.own_leaf_index();
    let others: Vec<&openmls::prelude::LeafNode> = mls
        .members()
        .filter(|m| m.index != own)
        .filter_map(|m| mls.public_group().leaf(m.index))
        .collect();
    let (need, refused) = match leaves::check_all(cx.provider.store(), others, answered) {
        Ok(checked) => checked,
        Err(LeafCheckError::Credential(e)) => return Err(e.into()),
        Err(LeafCheckError::Store(e)) => return Err(e.into()),
    };
    if !need.is_empty() {
        return Ok(JoinOutcome::NeedLists(need));
    }
    // The adder's leaf is checked before anything names them.
    if let Some(adder) = refused.iter().find(|r| r.key.0.as_slice() == adder_key) {
        return Ok(JoinOutcome::AdderRefused(adder.clone()));
    }
    let mut sender_is_member = false;
    for m in mls.members() {
        let id = member_id(&m)?;
        sender_is_member |= id.device == sender;
        if refused
            .iter()
            .any(|r| r.key.0.as_slice() == id.key.as_slice())
        {
            // Reported (`LeafRefused`) and removed: not pinned as what it claims to be.
            continue;
        }
        trust::check_pin(
            cx.provider.store(),
            cx.me.device(),
            now_ms,
            &id,
            &mut events,
        )?;
        if !cx.me.is(id.device) {
            trust.verify_later(&id.user);
        }
    }
    if !sender_is_member {
        return Err(WelcomeError::SenderNotMember);
    }
    let by = adder_user;
    let record = GroupRecord {
        id: group,
        name: name.clone(),
        membership: Membership::Active,
        joined_at_ms: now_ms,
    };
    let store = cx.provider.store();
    store.put_group(&record)?;
    store.set_cursor(&Stream::Group(group), commit_seq)?;
    cx.groups.insert(record, mls);
    events.insert(0, Event::Joined { group, name, by });
    Ok(JoinOutcome::Joined(events, refused))
}
