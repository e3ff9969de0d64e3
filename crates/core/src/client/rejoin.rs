//! Rejoining a group this device cannot follow (issue 10): when a commit of a group's log at
//! the device's current epoch fails MLS processing (its state no longer matches the group's,
//! e.g. it lost keys), or an active group's MLS state is missing, the device asks the relay
//! for the group's public state (`FetchGroupState`), deletes what it holds of the group,
//! joins by an external commit with its own credential and leaf (its device certificate and
//! the Cove capabilities, as in its KeyPackages) and posts it at the GroupInfo's epoch. The
//! relay accepts it only from the joiner's own device with its registered key, removing
//! only its own old leaf. Once `Posted`, the group is live again at the new epoch; the
//! entries parked for the epochs in between cannot be read: they are dropped and
//! acknowledged (the caller reports how many). When another member committed first
//! (`StaleEpoch`) the new state is thrown away and the public state fetched again, up to
//! [`MAX_REJOIN_ATTEMPTS`] times. One rejoin at a time per group.
//!
//! The same path **joins** a group this device was never in (`cove login` on a new machine,
//! [`Rejoins::start_join`]): a group where another device of its user is a member (the
//! relay lists them, `UserGroups`, and serves their public state to the user's devices). The
//! commit is posted with `added: [this device]`, which the relay takes only from a new
//! device of a user that has a member device. Once `Posted`, the group gets a record with a
//! placeholder name ([`placeholder_name`]: an external join carries no name; the history
//! backup's restore, or the user, sets the real one with `Client::set_group_name`), its
//! cursor is the commit's seq, and it is live like any group.

use std::collections::BTreeMap;

use cove_store::{Store, StoreError};
use cove_wire::{
    BoundedVec, Epoch, ErrorCode, ErrorReply, GroupEntry, GroupId, Payload, PostKind, Reply,
    Request, Seq, Stream,
};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    GroupId as MlsGroupId, LeafNodeParameters, MlsGroup, MlsMessageBodyIn, MlsMessageIn,
    MlsMessageOut, RatchetTreeIn,
};
use openmls_traits::OpenMlsProvider as _;

use cove_store::{GroupRecord, Membership};
use cove_wire::DeviceId;

use super::context::Cx;
use super::effects::{Effects, Pending};
use super::leaves::{self, LeafCheckError, RefusedLeaf};
use super::mls::{capabilities, certificate_extensions, join_config};
use super::own_list;
use crate::error::{RejoinError, Shared, Warning};
use crate::types::HandleError;

/// Attempts of one rejoin (each lost to another member's commit) before giving up until
/// the next trigger.
pub const MAX_REJOIN_ATTEMPTS: u32 = 3;

/// Rejoins in progress, by group.
#[derive(Default)]
pub(super) struct Rejoins {
    active: BTreeMap<GroupId, Rejoin>,
}

/// One rejoin in progress.
#[derive(Default)]
struct Rejoin {
    /// External commits posted so far.
    attempts: u32,
    /// Its request in flight was lost with the connection: it starts over after the next
    /// backlog.
    cut_off: bool,
    /// A first join of a group this device was never in (not a rejoin).
    joining: bool,
    /// A first join whose commit the relay refused as `InvalidCommit`: another device of
    /// the user may have added this one meanwhile (its Welcome still on the way), so it
    /// joins once more as a member would rejoin (`added` empty; openmls removes the leaf
    /// the other device added, which has the same key).
    as_member: bool,
}

/// What an accepted (re)join did, for the dispatcher to report.
pub(super) struct JoinedAgain {
    /// Entries of skipped epochs that other devices sent (unreadable).
    pub(super) unreadable: usize,
    /// Leaves of the relay's tree this device refuses.
    pub(super) refused: Vec<RefusedLeaf>,
    /// A first join (`Some` with the group's placeholder name), not a rejoin.
    pub(super) joined: Option<String>,
}

/// The name a group joined by an external commit gets until the real one is known: the
/// first 8 hex digits of its id, e.g. `group-1a2b3c4d`.
pub fn placeholder_name(group: &GroupId) -> String {
    let hex = group.to_hex();
    format!("group-{}", hex.get(..8).unwrap_or(&hex))
}

impl Rejoins {
    /// Whether `group` is being rejoined.
    pub(super) fn is_rejoining(&self, group: &GroupId) -> bool {
        self.active.contains_key(group)
    }

    /// Starts rejoining `group`, unless that is under way already.
    pub(super) fn start(&mut self, group: GroupId, fx: &mut Effects) {
        if self.active.contains_key(&group) {
            return;
        }
        self.active.insert(group, Rejoin::default());
        fetch(group, fx);
    }

    /// Starts joining `group`, which this device was never in, by an external commit (a new
    /// device of a user with a member device there), unless a (re)join is under way.
    pub(super) fn start_join(&mut self, group: GroupId, fx: &mut Effects) {
        if self.active.contains_key(&group) {
            return;
        }
        self.active.insert(
            group,
            Rejoin {
                joining: true,
                ..Rejoin::default()
            },
        );
        fetch(group, fx);
    }

    /// Whether any first join is under way.
    pub(super) fn joining(&self) -> bool {
        self.active.values().any(|r| r.joining)
    }

    /// The connection is gone, and with it the request of every rejoin in progress.
    pub(super) fn disconnected(&mut self) {
        for r in self.active.values_mut() {
            r.cut_off = true;
        }
    }

    /// After the backlog of a new connection: the rejoins cut off by the old one start over
    /// with a fresh fetch (one whose commit was accepted meanwhile rejoins once more; its
    /// earlier leaf, with the same key, is removed in the same commit). Those started on
    /// this connection are left alone.
    pub(super) fn restart(&mut self, fx: &mut Effects) {
        for (group, r) in self.active.iter_mut().filter(|(_, r)| r.cut_off) {
            r.cut_off = false;
            fetch(*group, fx);
        }
    }

    /// The relay's public state of `group`: deletes this device's state of the group,
    /// builds the external commit and posts it.
    pub(super) fn on_state<S: Store>(
        &mut self,
        mut cx: Cx<'_, S>,
        group: GroupId,
        result: Result<Reply, ErrorReply>,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        let (group_info, tree) = match result {
            Ok(Reply::GroupState {
                group: g,
                group_info,
                tree,
            }) if g == group => (group_info, tree),
            Ok(reply) => {
                self.fail(group, RejoinError::UnexpectedReply(reply), fx);
                return Ok(());
            }
            Err(e) => {
                self.fail(group, RejoinError::Refused(e), fx);
                return Ok(());
            }
        };
        let store = cx.provider.store();
        let joining = self.active.get(&group).is_some_and(|r| r.joining);
        if joining && cx.groups.membership(&group).is_some() {
            // Another device of the user added this one (a Welcome) meanwhile: joined.
            self.active.remove(&group);
            return Ok(());
        }
        let as_member = self.active.get(&group).is_some_and(|r| r.as_member);
        let added: Vec<DeviceId> = match (joining && !as_member, cx.me.device()) {
            (true, Some(me)) => vec![me],
            _ => Vec::new(),
        };
        store.begin()?;
        match build(cx.reborrow(), group, &group_info.0, &tree.0) {
            Ok((epoch, commit, info)) => {
                store.commit()?;
                // The group is not held until the relay took the commit: its entries park.
                cx.groups.unload(&group);
                if let Some(r) = self.active.get_mut(&group) {
                    r.attempts += 1;
                }
                fx.request(
                    Request::Post {
                        group,
                        epoch: Epoch(epoch),
                        kind: PostKind::Commit {
                            added: BoundedVec(added),
                            removed: BoundedVec::default(),
                            welcome: None,
                            group_info: Payload(info),
                        },
                        payload: Payload(commit),
                    },
                    Pending::PostRejoin { group },
                );
                Ok(())
            }
            Err(e) => {
                store.rollback()?;
                cx.groups.reload(store, &group);
                self.fail(group, e, fx);
                Ok(())
            }
        }
    }

    /// The answer to the external commit of `group`. `Some` when the relay accepted it:
    /// the new state is loaded, the parked entries of earlier epochs are dropped and
    /// acknowledged; returned are the number of them other devices sent (unread) and the
    /// leaves of the group (served by the relay, not by a member's Welcome) that this
    /// device refuses, to report and remove as after a Welcome. A leaf whose user's list
    /// this device does not hold is not held up for: its messages are checked as they come.
    pub(super) fn on_posted<S: Store>(
        &mut self,
        cx: Cx<'_, S>,
        group: GroupId,
        now_ms: u64,
        result: Result<Reply, ErrorReply>,
        fx: &mut Effects,
    ) -> Result<Option<JoinedAgain>, HandleError> {
        let store = cx.provider.store();
        match result {
            Ok(Reply::Posted { seq }) => {
                let joining = self.active.remove(&group).is_some_and(|r| r.joining);
                let joined = if joining {
                    // A first join: the group's record (no name travels with an external
                    // join) and its cursor at the commit, which this device made.
                    let name = placeholder_name(&group);
                    let record = GroupRecord {
                        id: group,
                        name: name.clone(),
                        membership: Membership::Active,
                        joined_at_ms: now_ms,
                    };
                    store.transaction(|s| -> Result<(), StoreError> {
                        s.put_group(&record)?;
                        if seq > s.cursor(&Stream::Group(group))? {
                            s.set_cursor(&Stream::Group(group), seq)?;
                        }
                        Ok(())
                    })?;
                    cx.groups.insert_record(record);
                    Some(name)
                } else {
                    None
                };
                cx.groups.reload(store, &group);
                let Some(epoch) = cx.groups.epoch(&group) else {
                    return Ok(None);
                };
                let unreadable = drop_skipped(store, cx.me, group, epoch, fx)?;
                let refused = match cx.groups.get(&group) {
                    Some(mls) => {
                        let own = mls.own_leaf_index();
                        let others = mls
                            .members()
                            .filter(|m| m.index != own)
                            .filter_map(|m| mls.public_group().leaf(m.index));
                        match leaves::check_all(store, others, &Default::default()) {
                            Ok((_, refused)) => refused,
                            Err(LeafCheckError::Store(e)) => return Err(e.into()),
                            // Not a Cove credential: its messages are refused as they come.
                            Err(LeafCheckError::Credential(_)) => Vec::new(),
                        }
                    }
                    None => Vec::new(),
                };
                Ok(Some(JoinedAgain {
                    unreadable,
                    refused,
                    joined,
                }))
            }
            Err(e) => {
                let joining = self.active.get(&group).is_some_and(|r| r.joining);
                if joining && cx.groups.membership(&group).is_some() {
                    // A Welcome from another device of the user made this one a member
                    // meanwhile (its commit won the epoch): joined, and that state is kept.
                    self.active.remove(&group);
                    return Ok(None);
                }
                delete_state(store, group)?;
                let attempts = self.active.get(&group).map_or(0, |r| r.attempts);
                if let Some(r) = self.active.get_mut(&group)
                    && r.joining
                    && !r.as_member
                    && e.code == ErrorCode::InvalidCommit
                    && attempts < MAX_REJOIN_ATTEMPTS
                {
                    r.as_member = true;
                    fetch(group, fx);
                    return Ok(None);
                }
                if e.code == ErrorCode::StaleEpoch && attempts < MAX_REJOIN_ATTEMPTS {
                    // Another member committed first: start over from the new state.
                    fetch(group, fx);
                } else if e.code == ErrorCode::StaleEpoch {
                    self.fail(group, RejoinError::TooManyRaces(attempts), fx);
                } else {
                    self.fail(group, RejoinError::Refused(e), fx);
                }
                Ok(None)
            }
            Ok(reply) => {
                delete_state(store, group)?;
                self.fail(group, RejoinError::UnexpectedReply(reply), fx);
                Ok(None)
            }
        }
    }

    /// Gives up on rejoining `group` for now, with a warning.
    fn fail(&mut self, group: GroupId, reason: RejoinError, fx: &mut Effects) {
        self.active.remove(&group);
        fx.warn(Warning::RejoinFailed {
            group,
            reason: Shared::new(reason),
        });
    }
}

/// Asks for `group`'s public state.
fn fetch(group: GroupId, fx: &mut Effects) {
    fx.request(
        Request::FetchGroupState { group },
        Pending::FetchGroupState { group },
    );
}

/// Deletes the stored MLS state of `group` (the old one, or a refused rejoin's).
fn delete_state(store: &impl Store, group: GroupId) -> Result<(), StoreError> {
    if let Ok(Some(mut old)) = MlsGroup::load(store, &MlsGroupId::from_slice(&group.0)) {
        old.delete(store)?;
    }
    Ok(())
}

/// Inside a transaction: deletes this device's state of `group` and joins it by an external
/// commit from the relay's GroupInfo (`group_info`) and ratchet tree (`tree`). Returns the
/// GroupInfo's epoch, the commit and the new epoch's GroupInfo (both MLSMessage encoded).
fn build<S: Store>(
    cx: Cx<'_, S>,
    group: GroupId,
    group_info: &[u8],
    tree: &[u8],
) -> Result<(u64, Vec<u8>, Vec<u8>), RejoinError> {
    let undecodable = |e: &dyn std::fmt::Display| RejoinError::Undecodable(e.to_string());
    let store = cx.provider.store();
    let device = cx.me.device().ok_or(RejoinError::NoCertificate)?;
    let cert = own_list::certificate(store, cx.me)?.ok_or(RejoinError::NoCertificate)?;
    let message = MlsMessageIn::tls_deserialize_exact(group_info).map_err(|e| undecodable(&e))?;
    let MlsMessageBodyIn::GroupInfo(info) = message.extract() else {
        return Err(RejoinError::Undecodable("not a GroupInfo".into()));
    };
    // A GroupInfo of another group would put that group's state under this one's id.
    if info.group_id().as_slice() != group.0.as_slice() {
        return Err(RejoinError::Undecodable(
            "the GroupInfo is of another group".into(),
        ));
    }
    let epoch = info.epoch().as_u64();
    let tree = RatchetTreeIn::tls_deserialize_exact(tree).map_err(|e| undecodable(&e))?;
    let extensions =
        certificate_extensions(&cert).map_err(|e| RejoinError::Build(e.to_string()))?;
    let leaf = LeafNodeParameters::builder()
        .with_capabilities(capabilities())
        .with_extensions(extensions)
        .build();
    delete_state(store, group)?;
    let build_error = |e: &dyn std::fmt::Display| RejoinError::Build(e.to_string());
    let (_, bundle) = MlsGroup::external_commit_builder()
        .with_config(join_config())
        .with_ratchet_tree(tree)
        .build_group(cx.provider, info, cx.me.credential_with_key(device))
        .map_err(|e| build_error(&e))?
        .leaf_node_parameters(leaf)
        .load_psks(store)
        .map_err(|e| build_error(&e))?
        .create_group_info(true)
        .build(
            cx.provider.rand(),
            cx.provider.crypto(),
            &cx.me.signer,
            |_| true,
        )
        .map_err(|e| build_error(&e))?
        .finalize(cx.provider)
        .map_err(|e| build_error(&e))?;
    let commit = bundle.commit().to_bytes().map_err(|e| build_error(&e))?;
    let info = bundle
        .group_info()
        .cloned()
        .ok_or_else(|| RejoinError::Build("no GroupInfo".into()))?;
    let info = MlsMessageOut::from(info)
        .to_bytes()
        .map_err(|e| build_error(&e))?;
    Ok((epoch, commit, info))
}

/// Drops the parked entries of `group` from epochs before `epoch` (the device skipped
/// them: they cannot be read), moves the cursor past them and acknowledges them. Returns how
/// many of them other devices sent.
fn drop_skipped<S: Store>(
    store: &S,
    me: &super::device::Me,
    group: GroupId,
    epoch: u64,
    fx: &mut Effects,
) -> Result<usize, StoreError> {
    let mut unreadable = 0;
    let mut last: Option<Seq> = None;
    store.transaction(|s| {
        for (seq, bytes) in s.pending(&group)? {
            let entry = postcard::from_bytes::<GroupEntry>(&bytes).ok();
            if entry.as_ref().is_some_and(|e| e.epoch.0 >= epoch) {
                // Made in the new epoch: readable (in seq order, so nothing later is older).
                break;
            }
            s.delete_pending(&group, seq)?;
            if entry.is_some_and(|e| !me.is(e.sender)) {
                unreadable += 1;
            }
            last = Some(seq);
        }
        if let Some(seq) = last
            && seq > s.cursor(&Stream::Group(group))?
        {
            s.set_cursor(&Stream::Group(group), seq)?;
        }
        Ok::<(), StoreError>(())
    })?;
    if let Some(seq) = last {
        fx.ack(Stream::Group(group), seq);
    }
    Ok(unreadable)
}
