//! The commands that change groups, as state machines: creating a group (then adding the
//! user's other devices), adding users (directory look-up with key pinning, KeyPackage
//! claims and their validation), removing users or devices (also for other members' leave
//! requests), key updates; building the commit, posting it, and rebuilding it after losing
//! a commit race.

use std::collections::{BTreeMap, BTreeSet};

use cove_store::{GroupRecord, Membership, Store};
use cove_wire::{
    BoundedVec, ClaimedKeyPackage, DeviceId, DeviceInfo, DeviceKey, Epoch, ErrorCode, ErrorReply,
    GroupId, Payload, PostKind, Reply, Request, Stream, UserName,
};
use openmls::messages::group_info::GroupInfo;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    GroupId as MlsGroupId, KeyPackage, LeafNodeIndex, LeafNodeParameters,
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsMessageOut,
    OpenMlsProvider as _,
};

use super::context::Cx;
use super::effects::{Effects, Lookup, Pending};
use super::key_packages::validate_key_package;
use super::mls::{
    CIPHERSUITE, MAX_PAST_EPOCHS, MemberId, PADDING_BUCKET, capabilities, certificate_extensions,
    member_id, parse_credential, roles_extensions, roles_of,
};
use super::own_list;
use super::trust::{self, Pin};
use crate::error::{
    CommitBuildError, MlsStepError, NotApplicable, OwnDevicesSkipped, Shared, Warning,
};
use crate::types::{HandleError, OpError, OpId};

/// How often a commit is rebuilt after losing a race before giving up.
pub const MAX_COMMIT_RETRIES: u32 = 20;
/// Most entries asked for per Fetch.
const FETCH_LIMIT: u32 = 100;

/// The group commands in progress.
#[derive(Default)]
pub(super) struct Changes {
    /// Group creations waiting for the relay.
    creating: BTreeMap<OpId, Creation>,
    /// Membership changes and key updates.
    changes: BTreeMap<OpId, Change>,
    /// Device lists verified while looking users up, with what they changed, for the
    /// dispatcher (devices added and revoked: events, removals, own devices to add).
    observed: Vec<(UserName, crate::identity::ListVerdict)>,
}

/// A group creation waiting for the relay's `GroupCreated`.
struct Creation {
    group: GroupId,
    name: String,
    /// `CreateGroup` was sent on this connection.
    requested: bool,
    /// The MLS group, made before asking the relay (whose `CreateGroup` carries its
    /// GroupInfo and ratchet tree); stored, but without a group record until the relay
    /// created the group, and deleted if it refuses.
    mls: Option<MlsGroup>,
}

/// What a change is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Goal {
    /// Add every device of these users (and our own missing devices).
    Add(Vec<UserName>),
    /// Add our own other devices to a group just created, in place of the creation command
    /// (which completes when it does): a failure is a warning, the group exists.
    OwnDevices,
    /// Remove every device of these users.
    Remove(Vec<UserName>),
    /// Remove exactly these devices (for leave requests).
    RemoveDevices(Vec<DeviceId>),
    /// Remove the leaves with these signature keys (refused leaves, revoked devices).
    RemoveKeys(Vec<DeviceKey>),
    /// A key update (self-update commit).
    UpdateKeys,
    /// Make this user an admin (a roles change, issue 13).
    Promote(UserName),
    /// Take admin away from this user (a roles change).
    Demote(UserName),
    /// Before leaving: take admin away from our own user, handing it to the
    /// longest-standing other member (lowest leaf index) if no admin would be left.
    HandOver,
}

/// An add / remove / key update in progress.
struct Change {
    group: GroupId,
    goal: Goal,
    stage: ChangeStage,
    /// The directory answer per user to add (`None` until it is in).
    directory: BTreeMap<UserName, Option<Vec<DeviceInfo>>>,
    /// The KeyPackages claimed per user (`None` until the claim is answered).
    claims: BTreeMap<UserName, Option<Vec<ClaimedKeyPackage>>>,
    /// The validated KeyPackages of the devices to add.
    key_packages: Vec<(UserName, DeviceId, KeyPackage)>,
    /// The commit posted (kept to resend after a reconnect).
    posted: Option<(Epoch, PostKind, Vec<u8>)>,
    /// The directory requests of the current connection were sent.
    directory_requested: bool,
    /// Commits rebuilt after lost races.
    retries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeStage {
    /// Waiting for directory answers.
    Directory,
    /// Waiting for KeyPackage claims.
    Claim,
    /// Ready to build and post the commit (waits for a connection / other commits).
    Commit,
    /// Commit posted, waiting for the relay.
    Posting,
    /// Lost a race at this epoch: wait until the group moved past it, then rebuild.
    AwaitEpoch(u64),
}

impl Changes {
    /// Whether no command is running.
    pub(super) fn is_empty(&self) -> bool {
        self.creating.is_empty() && self.changes.is_empty()
    }

    /// The device lists verified by look-ups since the last call, with their verdicts.
    pub(super) fn take_observed(&mut self) -> Vec<(UserName, crate::identity::ListVerdict)> {
        std::mem::take(&mut self.observed)
    }

    /// Whether a group of that name is being created.
    pub(super) fn creating(&self, name: &str) -> bool {
        self.creating.values().any(|c| c.name == name)
    }

    /// Starts creating a group.
    pub(super) fn create<S: Store>(
        &mut self,
        op: OpId,
        group: GroupId,
        name: String,
        cx: Cx<'_, S>,
        fx: &mut Effects,
    ) {
        self.creating.insert(
            op,
            Creation {
                group,
                name,
                requested: false,
                mls: None,
            },
        );
        self.drive(op, cx, fx);
    }

    /// Starts a membership change or key update of `group`.
    pub(super) fn start<S: Store>(
        &mut self,
        op: OpId,
        group: GroupId,
        goal: Goal,
        cx: Cx<'_, S>,
        fx: &mut Effects,
    ) {
        let directory: BTreeMap<UserName, Option<Vec<DeviceInfo>>> = match &goal {
            // Our own other devices belong in every group we add people to.
            Goal::Add(users) => users
                .iter()
                .chain([cx.me.user()])
                .map(|u| (u.clone(), None))
                .collect(),
            Goal::OwnDevices => BTreeMap::from([(cx.me.user().clone(), None)]),
            _ => BTreeMap::new(),
        };
        let stage = if directory.is_empty() {
            ChangeStage::Commit
        } else {
            ChangeStage::Directory
        };
        self.changes.insert(
            op,
            Change {
                group,
                goal,
                stage,
                directory,
                claims: BTreeMap::new(),
                key_packages: Vec::new(),
                posted: None,
                directory_requested: false,
                retries: 0,
            },
        );
        self.drive(op, cx, fx);
    }

    /// The connection is gone: look-ups and claims will never be answered, so changes in
    /// those stages start their directory stage again on the next connection.
    pub(super) fn disconnected(&mut self) {
        for c in self.creating.values_mut() {
            c.requested = false;
        }
        for c in self.changes.values_mut() {
            if matches!(c.stage, ChangeStage::Directory | ChangeStage::Claim) {
                c.stage = ChangeStage::Directory;
                c.directory.values_mut().for_each(|v| *v = None);
                c.claims.clear();
            }
            c.directory_requested = false;
        }
    }

    /// The groups with a commit of ours posted and not yet settled.
    pub(super) fn posting_groups(&self) -> BTreeSet<GroupId> {
        self.changes
            .values()
            .filter(|c| c.stage == ChangeStage::Posting)
            .map(|c| c.group)
            .collect()
    }

    /// The command whose commit in `group` is posted (its echo has come).
    pub(super) fn posting_in(&self, group: GroupId) -> Option<OpId> {
        self.changes
            .iter()
            .find(|(_, c)| c.group == group && c.stage == ChangeStage::Posting)
            .map(|(op, _)| *op)
    }

    /// After the backlog: resends the commits not seen in it, and moves every other
    /// command on.
    pub(super) fn restart<S: Store>(&mut self, mut cx: Cx<'_, S>, fx: &mut Effects) {
        let mut ops: Vec<OpId> = self
            .creating
            .keys()
            .chain(self.changes.keys())
            .copied()
            .collect();
        ops.sort();
        for op in ops {
            // A change in its directory or claim stage is driven, not reset: it was reset
            // when the last connection was lost, and if it sent its look-ups on this
            // connection (it was started or driven before the backlog ended), their replies
            // are still coming: resetting it here would send them twice and drop the claims
            // of the first round (wasting the KeyPackages the relay handed out).
            if let Some(c) = self.changes.get(&op)
                && c.stage == ChangeStage::Posting
            {
                // Not in the backlog, so not accepted (yet): resend the same commit. (If the
                // relay took it meanwhile, it answers StaleEpoch and the echo that follows
                // merges it.)
                if let Some((epoch, kind, payload)) = c.posted.clone() {
                    post_commit(op, c.group, epoch, kind, payload, fx);
                }
                continue;
            }
            self.drive(op, cx.reborrow(), fx);
        }
    }

    /// Moves the changes of `group` on (after an epoch change).
    pub(super) fn drive_group<S: Store>(
        &mut self,
        group: GroupId,
        mut cx: Cx<'_, S>,
        fx: &mut Effects,
    ) {
        for op in self.ops_of(group) {
            self.drive(op, cx.reborrow(), fx);
        }
    }

    /// Fails the changes of `group` (we left it or were removed).
    pub(super) fn fail_group(&mut self, group: GroupId, why: NotApplicable, fx: &mut Effects) {
        for op in self.ops_of(group) {
            self.finish(op, Err(OpError::NotApplicable(why)), fx);
        }
    }

    /// Completes a command (a failure of adding our own devices after creating a group is
    /// only a warning).
    pub(super) fn finish(&mut self, op: OpId, result: Result<(), OpError>, fx: &mut Effects) {
        let best_effort = match self.changes.remove(&op) {
            Some(c) => c.goal == Goal::OwnDevices,
            None if self.creating.remove(&op).is_some() => false,
            None => return,
        };
        let result = match result {
            Err(e) if best_effort => {
                fx.warn(Warning::OwnDevicesNotAdded(e));
                Ok(())
            }
            r => r,
        };
        fx.op_done(op, result);
    }

    /// The relay's answer to `CreateGroup`: creates the MLS group and goes on with adding
    /// our own other devices.
    pub(super) fn on_group_created<S: Store>(
        &mut self,
        op: OpId,
        now_ms: u64,
        result: Result<Reply, ErrorReply>,
        cx: Cx<'_, S>,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        let Some(creation) = self.creating.get(&op) else {
            return Ok(());
        };
        let (group, name) = (creation.group, creation.name.clone());
        let Some(mut mls) = self.creating.get_mut(&op).and_then(|c| c.mls.take()) else {
            return Ok(());
        };
        let store = cx.provider.store();
        match result {
            Ok(Reply::GroupCreated) => {}
            other => {
                // The relay did not create it: the MLS group made for it goes.
                store.begin()?;
                if let Err(e) = mls.delete(store).and_then(|()| store.commit()) {
                    let _ = store.rollback();
                    return Err(e.into());
                }
                let why = match other {
                    Err(e) => OpError::Relay(e),
                    Ok(_) => OpError::UnexpectedReply {
                        to: "group creation",
                    },
                };
                self.finish(op, Err(why), fx);
                return Ok(());
            }
        }
        let record = GroupRecord {
            id: group,
            name,
            membership: Membership::Active,
            joined_at_ms: now_ms,
        };
        store.begin()?;
        if let Err(e) = store.put_group(&record).and_then(|_| store.commit()) {
            let _ = store.rollback();
            return Err(e.into());
        }
        cx.groups.insert(record, mls);
        // Our own other devices join at once (first commit); the creation command
        // completes when that is done.
        self.creating.remove(&op);
        self.start(op, group, Goal::OwnDevices, cx, fx);
        Ok(())
    }

    /// Makes the MLS group of a creation (stored, without a group record yet) and its
    /// GroupInfo and ratchet tree for the relay.
    fn build_group<S: Store>(
        cx: &Cx<'_, S>,
        group: GroupId,
    ) -> Result<(MlsGroup, Vec<u8>, Vec<u8>), OpError> {
        let device = cx
            .me
            .device()
            .ok_or(OpError::NotApplicable(NotApplicable::NotRegistered))?;
        // The creator's leaf carries this device's certificate, as its KeyPackages do.
        let cert = own_list::certificate(cx.provider.store(), cx.me)
            .map_err(|e| OpError::Storage(Shared::new(e)))?
            .ok_or(OpError::NotApplicable(NotApplicable::NoCertificate))?;
        // The group context carries no name: the relay sees every GroupInfo. The name goes
        // to joiners sealed in the Welcome envelope (`crate::welcome_envelope`).
        let config = (|| -> Result<MlsGroupCreateConfig, MlsStepError> {
            Ok(MlsGroupCreateConfig::builder()
                .ciphersuite(CIPHERSUITE)
                // Handshakes as PublicMessage: the relay validates them.
                .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
                .use_ratchet_tree_extension(true)
                .max_past_epochs(MAX_PAST_EPOCHS)
                .padding_size(PADDING_BUCKET)
                .capabilities(capabilities())
                .with_leaf_node_extensions(certificate_extensions(&cert)?)?
                // The creator's user is the group's first and only admin.
                .with_group_context_extensions(roles_extensions(std::slice::from_ref(
                    cx.me.user(),
                ))?)
                .build())
        })()
        .map_err(mls_failure)?;
        let store = cx.provider.store();
        store
            .begin()
            .map_err(|e| OpError::Storage(Shared::new(e)))?;
        let built = (|| -> Result<(MlsGroup, Vec<u8>, Vec<u8>), MlsStepError> {
            let mls = MlsGroup::new_with_group_id(
                cx.provider,
                &cx.me.signer,
                &config,
                MlsGroupId::from_slice(&group.0),
                cx.me.credential_with_key(device),
            )?;
            let group_info = mls
                .export_group_info(cx.provider.crypto(), &cx.me.signer, false)?
                .to_bytes()?;
            let tree = mls.export_ratchet_tree().tls_serialize_detached()?;
            store.commit()?;
            Ok((mls, group_info, tree))
        })();
        built.map_err(|e| {
            let _ = store.rollback();
            mls_failure(e)
        })
    }

    /// The relay's answer to a directory look-up or a KeyPackage claim for `user`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_lookup<S: Store>(
        &mut self,
        op: OpId,
        lookup: Lookup,
        user: UserName,
        now_ms: u64,
        result: Result<Reply, ErrorReply>,
        mut cx: Cx<'_, S>,
        fx: &mut Effects,
    ) {
        let Some(reply) = self.lookup_reply(op, &user, result, cx.reborrow(), fx) else {
            return;
        };
        match (lookup, reply) {
            (Lookup::List, Reply::DeviceList { entries }) => {
                self.on_device_list(op, user, entries.0, now_ms, cx, fx)
            }
            (Lookup::Directory, Reply::Devices { user: u, devices }) if u == user => {
                self.on_devices(op, user, devices.0, now_ms, cx, fx)
            }
            (
                Lookup::Claim,
                Reply::KeyPackages {
                    user: u,
                    key_packages,
                },
            ) if u == user => self.on_key_packages(op, user, key_packages.0, cx, fx),
            (lookup, _) => {
                let to = lookup.request();
                self.finish(op, Err(OpError::UnexpectedReply { to }), fx);
            }
        }
    }

    /// `user`'s signed device list as the relay serves it: checked against what this device
    /// pinned (`crate::identity::observe_list`); then the directory is asked. A user who
    /// never published a list (and whom this device never saw with one) is looked up in the
    /// directory alone.
    fn on_device_list<S: Store>(
        &mut self,
        op: OpId,
        user: UserName,
        entries: Vec<cove_wire::identity::ListEntry>,
        now_ms: u64,
        cx: Cx<'_, S>,
        fx: &mut Effects,
    ) {
        let store = cx.provider.store();
        let observed = if entries.is_empty() {
            match store.identity_pin(&user) {
                // A list seen before and none now: the relay dropped it.
                Ok(Some(pin)) => match pin.head {
                    Some(head) => Err(crate::identity::IdentityError::History {
                        user: user.clone(),
                        source: cove_identity::ListError::Rollback {
                            pinned: head.index,
                            got: 0,
                        },
                    }),
                    None => Ok(None),
                },
                Ok(None) => Ok(None),
                Err(e) => Err(e.into()),
            }
        } else {
            crate::identity::observe_list(store, &user, &entries, now_ms).map(Some)
        };
        match observed {
            Ok(verdict) => {
                if let Some(crate::identity::ListVerdict::NewIdentity { .. }) = verdict {
                    fx.event(crate::identity::changed_event(&user, false));
                }
                if let Some(verdict) = verdict {
                    self.observed.push((user.clone(), verdict));
                }
                let body = Request::ListDevices { user: user.clone() };
                fx.request(body, Lookup::Directory.pending(op, &user));
            }
            Err(e) if &user == cx.me.user() => {
                let e = OpError::DeviceList(Shared::new(e));
                self.drop_own_user(op, Some(OwnDevicesSkipped::List(e)), cx, fx);
            }
            Err(e) => {
                if let crate::identity::IdentityError::VerifiedIdentityChanged { .. } = e {
                    fx.event(crate::identity::changed_event(&user, true));
                }
                self.finish(op, Err(OpError::DeviceList(Shared::new(e))), fx)
            }
        }
    }

    /// The relay's directory answer for `user`: keeps only devices the user's signed list
    /// names (when the user has one), pins unknown devices, refuses changed keys, then claims
    /// KeyPackages once every answer is in.
    fn on_devices<S: Store>(
        &mut self,
        op: OpId,
        user: UserName,
        devices: Vec<DeviceInfo>,
        now_ms: u64,
        cx: Cx<'_, S>,
        fx: &mut Effects,
    ) {
        let own = &user == cx.me.user();
        if devices.is_empty() && !own {
            self.finish(op, Err(OpError::NoDevices(user)), fx);
            return;
        }
        // Our own user: only devices not yet in the group (never this one) are added.
        let devices = if own {
            let present = self
                .changes
                .get(&op)
                .map(|c| cx.groups.member_devices(&c.group))
                .unwrap_or_default();
            let missing: Vec<DeviceInfo> = devices
                .into_iter()
                .filter(|d| !cx.me.is(d.device) && !present.contains(&d.device))
                .collect();
            if missing.is_empty() {
                self.drop_own_user(op, None, cx, fx);
                return;
            }
            missing
        } else {
            devices
        };
        // Only devices in the user's signed list (the relay cannot add one). A device
        // pinned before with another key goes on to the pin check, which reports the change.
        let store = cx.provider.store();
        let pinned: Vec<(DeviceId, cove_wire::DeviceKey)> = match store.pinned_devices(&user) {
            Ok(p) => p.into_iter().map(|p| (p.device, p.key)).collect(),
            Err(e) => {
                self.finish(op, Err(OpError::Storage(Shared::new(e))), fx);
                return;
            }
        };
        let devices = match store.device_list(&user) {
            Ok(Some(entries)) => match cove_identity::DeviceList::verify(&user, &entries) {
                Ok(list) => devices
                    .into_iter()
                    .filter(|d| {
                        let changed = pinned.iter().any(|(id, k)| *id == d.device && *k != d.key);
                        let listed = list.is_listed(&d.key) || changed;
                        if !listed {
                            fx.warn(Warning::UnlistedDevice {
                                user: user.clone(),
                                device: d.device,
                            });
                        }
                        listed
                    })
                    .collect(),
                Err(_) => devices,
            },
            Ok(None) => devices,
            Err(e) => {
                self.finish(op, Err(OpError::Storage(Shared::new(e))), fx);
                return;
            }
        };
        if devices.is_empty() {
            if own {
                self.drop_own_user(op, None, cx, fx);
            } else {
                self.finish(op, Err(OpError::NoDevices(user)), fx);
            }
            return;
        }
        // Trust on first use: pin unknown devices, refuse changed keys.
        let mut events = Vec::new();
        let mut changed = false;
        for d in &devices {
            let m = MemberId {
                user: user.clone(),
                device: d.device,
                key: d.key.0.to_vec(),
            };
            match trust::check_pin(cx.provider.store(), cx.me.device(), now_ms, &m, &mut events) {
                Ok(Pin::Trusted) => {}
                Ok(Pin::Changed) => changed = true,
                Err(e) => {
                    self.finish(op, Err(OpError::Storage(Shared::new(e))), fx);
                    return;
                }
            }
        }
        for e in events {
            fx.event(e);
        }
        if changed {
            if own {
                let why = OwnDevicesSkipped::KeyChanged(user);
                self.drop_own_user(op, Some(why), cx, fx);
            } else {
                self.finish(op, Err(OpError::KeyChanged(user)), fx);
            }
            return;
        }
        let Some(c) = self.changes.get_mut(&op) else {
            return;
        };
        c.directory.insert(user, Some(devices));
        self.directory_progress(op, cx, fx);
    }

    /// The KeyPackages the relay handed out for `user`: validated once every claim is in.
    fn on_key_packages<S: Store>(
        &mut self,
        op: OpId,
        user: UserName,
        claimed: Vec<ClaimedKeyPackage>,
        cx: Cx<'_, S>,
        fx: &mut Effects,
    ) {
        let own = &user == cx.me.user();
        let Some(c) = self.changes.get_mut(&op) else {
            return;
        };
        // Only KeyPackages of the devices looked up count (for our own user the relay
        // also hands out one of this device's, which is not added).
        let wanted = c.looked_up(&user);
        let claimed: Vec<ClaimedKeyPackage> = claimed
            .into_iter()
            .filter(|k| wanted.iter().any(|d| d.device == k.device))
            .collect();
        if claimed.is_empty() {
            if own {
                let why = OwnDevicesSkipped::NoKeyPackage;
                self.drop_own_user(op, Some(why), cx, fx);
            } else {
                self.finish(op, Err(OpError::NoDevices(user)), fx);
            }
            return;
        }
        c.claims.insert(user, Some(claimed));
        self.claims_progress(op, cx, fx);
    }

    /// The relay's answer to a posted commit. Returns the group when its epoch changed.
    pub(super) fn on_commit_posted<S: Store>(
        &mut self,
        op: OpId,
        result: Result<Reply, ErrorReply>,
        cx: Cx<'_, S>,
        fx: &mut Effects,
    ) -> Result<Option<GroupId>, HandleError> {
        let Some(c) = self.changes.get_mut(&op) else {
            return Ok(None);
        };
        let group = c.group;
        match result {
            Ok(Reply::Posted { .. }) => {
                c.posted = None;
                if let Some(mls) = cx.groups.get_mut(&group)
                    && mls.pending_commit().is_some()
                {
                    let store = cx.provider.store();
                    let roles_before = roles_of(mls.extensions());
                    store.begin()?;
                    match mls.merge_pending_commit(cx.provider) {
                        Ok(()) => {
                            store.commit()?;
                            let me = cx.me.user();
                            if let Some(e) = super::roles::roles_event(roles_before, mls, group, me)
                            {
                                fx.event(e);
                            }
                        }
                        Err(e) => {
                            let _ = store.rollback();
                            cx.groups.reload(store, &group);
                            self.finish(op, Err(mls_failure(e)), fx);
                            return Ok(None);
                        }
                    }
                }
                self.finish(op, Ok(()), fx);
                Ok(Some(group))
            }
            Err(e) if e.code == ErrorCode::StaleEpoch => {
                // Lost the race. Keep our pending commit until we see the winner (it might
                // be our own, accepted before a reconnect); then rebuild.
                let current = cx.groups.epoch(&group).unwrap_or(0);
                let lost_at = c.posted.as_ref().map(|p| p.0.0).unwrap_or(current);
                c.stage = ChangeStage::AwaitEpoch(lost_at);
                c.posted = None;
                let after = cx.provider.store().cursor(&Stream::Group(group))?;
                fx.request(
                    Request::Fetch {
                        group,
                        after,
                        limit: FETCH_LIMIT,
                    },
                    Pending::Fetch,
                );
                // The winner may already be processed (it can arrive before this reply).
                self.drive(op, cx, fx);
                Ok(None)
            }
            other => {
                if let Some(mls) = cx.groups.get_mut(&group) {
                    mls.clear_pending_commit(cx.provider.store())?;
                }
                let why = match other {
                    Err(e) => OpError::Relay(e),
                    Ok(_) => OpError::UnexpectedReply { to: "commit" },
                };
                self.finish(op, Err(why), fx);
                Ok(None)
            }
        }
    }

    /// The changes of `group`, in command order.
    fn ops_of(&self, group: GroupId) -> Vec<OpId> {
        self.changes
            .iter()
            .filter(|(_, c)| c.group == group)
            .map(|(op, _)| *op)
            .collect()
    }

    /// Moves a command forward as far as it can go now.
    fn drive<S: Store>(&mut self, op: OpId, cx: Cx<'_, S>, fx: &mut Effects) {
        let ready = cx.ready;
        if let Some(c) = self.creating.get_mut(&op) {
            if ready && !c.requested {
                // Made once; a CreateGroup resent on a later connection carries the same.
                let built = match c.mls.as_ref() {
                    Some(mls) => export_state(&cx, mls).map(|(gi, tree)| (None, gi, tree)),
                    None => {
                        Self::build_group(&cx, c.group).map(|(mls, gi, tree)| (Some(mls), gi, tree))
                    }
                };
                match built {
                    Ok((mls, group_info, tree)) => {
                        if mls.is_some() {
                            c.mls = mls;
                        }
                        c.requested = true;
                        fx.request(
                            Request::CreateGroup {
                                group: c.group,
                                group_info: Payload(group_info),
                                tree: Payload(tree),
                            },
                            Pending::CreateGroup { op },
                        );
                    }
                    Err(e) => self.finish(op, Err(e), fx),
                }
            }
            return;
        }
        let Some(c) = self.changes.get_mut(&op) else {
            return;
        };
        match c.stage {
            ChangeStage::Directory => {
                if ready && !c.directory_requested {
                    c.directory_requested = true;
                    // The signed device list first; the directory once it is checked.
                    for user in c.directory.keys() {
                        let body = Request::FetchDeviceList { user: user.clone() };
                        fx.request(body, Lookup::List.pending(op, user));
                    }
                }
            }
            ChangeStage::Claim | ChangeStage::Posting => {}
            ChangeStage::Commit => {
                if ready {
                    self.try_commit(op, cx, fx);
                }
            }
            ChangeStage::AwaitEpoch(lost_at) => {
                if cx.groups.epoch(&c.group).is_some_and(|e| e > lost_at) {
                    c.stage = ChangeStage::Commit;
                    c.retries += 1;
                    if c.retries > MAX_COMMIT_RETRIES {
                        let n = c.retries;
                        self.finish(op, Err(OpError::TooManyRetries(n)), fx);
                    } else if ready {
                        self.try_commit(op, cx, fx);
                    }
                }
            }
        }
    }

    /// The relay's answer to a directory look-up or a claim for `user`, or `None` when it
    /// failed: a failure for our own user only drops our own devices from the change (with a
    /// warning), a failure for anyone else fails the operation.
    fn lookup_reply<S: Store>(
        &mut self,
        op: OpId,
        user: &UserName,
        result: Result<Reply, ErrorReply>,
        cx: Cx<'_, S>,
        fx: &mut Effects,
    ) -> Option<Reply> {
        match result {
            Ok(reply) => Some(reply),
            Err(e) if user == cx.me.user() => {
                self.drop_own_user(op, Some(OwnDevicesSkipped::Refused(e)), cx, fx);
                None
            }
            Err(e) => {
                let user = user.clone();
                self.finish(op, Err(OpError::UserRefused { user, reply: e }), fx);
                None
            }
        }
    }

    /// Drops our own user from a change (nothing to add, or its look-up failed: the change
    /// goes on for the other users), then moves the change on if it was waiting only for it.
    fn drop_own_user<S: Store>(
        &mut self,
        op: OpId,
        why: Option<OwnDevicesSkipped>,
        cx: Cx<'_, S>,
        fx: &mut Effects,
    ) {
        if let Some(why) = why {
            fx.warn(Warning::OwnDevicesSkipped(why));
        }
        let Some(c) = self.changes.get_mut(&op) else {
            return;
        };
        c.directory.remove(cx.me.user());
        c.claims.remove(cx.me.user());
        match c.stage {
            ChangeStage::Directory => self.directory_progress(op, cx, fx),
            ChangeStage::Claim => self.claims_progress(op, cx, fx),
            _ => {}
        }
    }

    /// Claims KeyPackages once every directory answer is in (commits at once when no user
    /// is left to add).
    fn directory_progress<S: Store>(&mut self, op: OpId, cx: Cx<'_, S>, fx: &mut Effects) {
        let Some(c) = self.changes.get_mut(&op) else {
            return;
        };
        if c.stage != ChangeStage::Directory || !c.directory.values().all(|v| v.is_some()) {
            return;
        }
        if c.directory.is_empty() {
            c.stage = ChangeStage::Commit;
            self.drive(op, cx, fx);
            return;
        }
        c.stage = ChangeStage::Claim;
        for user in c.directory.keys() {
            let body = Request::ClaimKeyPackages { user: user.clone() };
            fx.request(body, Lookup::Claim.pending(op, user));
        }
    }

    /// Validates the claimed KeyPackages once every claim is in, then commits.
    fn claims_progress<S: Store>(&mut self, op: OpId, cx: Cx<'_, S>, fx: &mut Effects) {
        let Some(c) = self.changes.get_mut(&op) else {
            return;
        };
        if c.stage != ChangeStage::Claim
            || c.claims.len() < c.directory.len()
            || c.claims.values().any(|v| v.is_none())
        {
            return;
        }
        // All claims in: validate each KeyPackage against the directory.
        let mut kps = Vec::new();
        let mut failure = None;
        for (user, claimed) in &c.claims {
            let devices = c.looked_up(user);
            for ck in claimed.iter().flatten() {
                match validate_key_package(cx.provider, user, ck, &devices) {
                    Ok(kp) => kps.push((user.clone(), ck.device, kp)),
                    Err(reason) => {
                        failure = Some(OpError::InvalidKeyMaterial {
                            user: user.clone(),
                            reason: Shared::new(reason),
                        });
                    }
                }
            }
        }
        if let Some(f) = failure {
            self.finish(op, Err(f), fx);
            return;
        }
        c.key_packages = kps;
        c.stage = ChangeStage::Commit;
        self.drive(op, cx, fx);
    }

    /// Builds and posts the commit of a change, if the group has no commit in flight.
    fn try_commit<S: Store>(&mut self, op: OpId, cx: Cx<'_, S>, fx: &mut Effects) {
        let Some(c) = self.changes.get_mut(&op) else {
            return;
        };
        let group = c.group;
        let Some(mls) = cx.groups.get_mut(&group) else {
            let why = NotApplicable::NotMember;
            self.finish(op, Err(OpError::NotApplicable(why)), fx);
            return;
        };
        if mls.pending_commit().is_some() {
            return; // another command's commit is in flight; retried after it settles
        }
        let members: Vec<(LeafNodeIndex, MemberId)> = mls
            .members()
            .filter_map(|m| member_id(&m).ok().map(|id| (m.index, id)))
            .collect();
        let present: BTreeSet<DeviceId> = members.iter().map(|(_, m)| m.device).collect();
        let to_add: Vec<(DeviceId, KeyPackage)> = c
            .key_packages
            .iter()
            .filter(|(_, d, _)| !present.contains(d))
            .map(|(_, d, kp)| (*d, kp.clone()))
            .collect();
        // Never this device's own leaf (but a leaf that only claims its device id, yes).
        let own_leaf = mls.own_leaf_index();
        let to_remove: Vec<(LeafNodeIndex, DeviceId)> = members
            .iter()
            .filter(|(_, m)| c.goal.removes(m))
            .filter(|(i, _)| *i != own_leaf)
            .map(|(i, m)| (*i, m.device))
            .collect();
        let update_keys = c.goal == Goal::UpdateKeys;
        // A roles change: the admins after it, from the roles of the current epoch (so a
        // rebuilt commit after a lost race starts from the winner's roles).
        let roles = match &c.goal {
            Goal::Promote(_) | Goal::Demote(_) | Goal::HandOver => {
                let me = cx.me.user();
                if !super::roles::is_admin(mls, me) {
                    let why = NotApplicable::NotAdmin;
                    self.finish(op, Err(OpError::NotApplicable(why)), fx);
                    return;
                }
                // A group without roles (made before them): everyone was an admin.
                let mut admins = roles_of(mls.extensions()).unwrap_or_else(|| {
                    let ids: Vec<MemberId> = members.iter().map(|(_, m)| m.clone()).collect();
                    super::mls::users_of(&ids)
                });
                let (user, promote) = match &c.goal {
                    Goal::Promote(user) => (user, true),
                    Goal::Demote(user) => (user, false),
                    _ => (me, false),
                };
                if admins.contains(user) == promote {
                    self.finish(op, Ok(()), fx); // already so
                    return;
                }
                if promote {
                    admins.push(user.clone());
                } else {
                    admins.retain(|a| a != user);
                }
                if admins.is_empty() && c.goal == Goal::HandOver {
                    // The longest-standing other member's user.
                    if let Some((_, m)) = members
                        .iter()
                        .filter(|(_, m)| &m.user != me)
                        .min_by_key(|(i, _)| *i)
                    {
                        admins.push(m.user.clone());
                    }
                }
                if admins.is_empty() {
                    let why = NotApplicable::LastAdmin;
                    self.finish(op, Err(OpError::NotApplicable(why)), fx);
                    return;
                }
                Some(admins)
            }
            _ => None,
        };
        // Only an admin adds or removes other users' devices: a member that is not one
        // removes only its own user's devices and devices that asked to leave (issue 13).
        let to_remove = if super::roles::is_admin(mls, cx.me.user()) {
            to_remove
        } else {
            let mine: BTreeSet<DeviceId> = members
                .iter()
                .filter(|(_, m)| &m.user == cx.me.user())
                .map(|(_, m)| m.device)
                .collect();
            let leaving = match &c.goal {
                Goal::RemoveDevices(devices) => devices.clone(),
                _ => Vec::new(),
            };
            to_remove
                .into_iter()
                .filter(|(_, d)| mine.contains(d) || leaving.contains(d))
                .collect()
        };
        if !to_add.is_empty()
            && !super::roles::is_admin(mls, cx.me.user())
            && c.key_packages.iter().any(|(u, _, _)| u != cx.me.user())
        {
            let why = NotApplicable::NotAdmin;
            self.finish(op, Err(OpError::NotApplicable(why)), fx);
            return;
        }
        if to_add.is_empty() && to_remove.is_empty() && !update_keys && roles.is_none() {
            let result = match c.goal {
                Goal::Remove(_) => Err(OpError::NotApplicable(NotApplicable::NoneAreMembers)),
                _ => Ok(()),
            };
            self.finish(op, result, fx);
            return;
        }
        let epoch = Epoch(mls.epoch().as_u64());
        // The name sealed into an add's Welcome envelope (the group's current one).
        let name = cx.groups.name(&group);
        let Some(mls) = cx.groups.get_mut(&group) else {
            let why = NotApplicable::NotMember;
            self.finish(op, Err(OpError::NotApplicable(why)), fx);
            return;
        };
        let store = cx.provider.store();
        if let Err(e) = store.begin() {
            self.finish(op, Err(OpError::Storage(Shared::new(e))), fx);
            return;
        }
        // Every commit carries the GroupInfo of the epoch it starts, for the relay.
        let group_info_bytes = |gi: Option<GroupInfo>| -> Result<Vec<u8>, CommitBuildError> {
            let gi = gi.ok_or(CommitBuildError::NoGroupInfo)?;
            Ok(MlsMessageOut::from(gi).to_bytes()?)
        };
        type Built = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);
        let built = (|| -> Result<Built, CommitBuildError> {
            if let Some(admins) = &roles {
                let extensions = roles_extensions(admins)?;
                let (commit, _, gi) = mls
                    .update_group_context_extensions(cx.provider, extensions, &cx.me.signer)
                    .map_err(CommitBuildError::Roles)?;
                Ok((commit.to_bytes()?, None, group_info_bytes(gi)?))
            } else if !to_add.is_empty() {
                let kps: Vec<KeyPackage> = to_add.iter().map(|(_, kp)| kp.clone()).collect();
                let (commit, welcome, gi) = mls
                    .add_members(cx.provider, &cx.me.signer, &kps)
                    .map_err(CommitBuildError::Add)?;
                let welcome = welcome_envelope(cx.provider, mls, &group, &name, &welcome)?;
                Ok((commit.to_bytes()?, Some(welcome), group_info_bytes(gi)?))
            } else if !to_remove.is_empty() {
                let leaves: Vec<LeafNodeIndex> = to_remove.iter().map(|(i, _)| *i).collect();
                let (commit, _, gi) = mls
                    .remove_members(cx.provider, &cx.me.signer, &leaves)
                    .map_err(CommitBuildError::Remove)?;
                Ok((commit.to_bytes()?, None, group_info_bytes(gi)?))
            } else {
                let bundle = mls
                    .self_update(cx.provider, &cx.me.signer, LeafNodeParameters::default())
                    .map_err(CommitBuildError::SelfUpdate)?;
                let gi = bundle.group_info().cloned();
                Ok((bundle.commit().to_bytes()?, None, group_info_bytes(gi)?))
            }
        })();
        let committed = match built {
            Ok(built) => store
                .commit()
                .map(|()| built)
                .map_err(|e| OpError::Storage(Shared::new(e))),
            Err(e) => Err(mls_failure(e)),
        };
        let (commit, welcome, group_info) = match committed {
            Ok(built) => built,
            Err(failure) => {
                let _ = store.rollback();
                cx.groups.reload(store, &group);
                self.finish(op, Err(failure), fx);
                return;
            }
        };
        let kind = PostKind::Commit {
            added: BoundedVec(to_add.iter().map(|(d, _)| *d).collect()),
            removed: BoundedVec(to_remove.iter().map(|(_, d)| *d).collect()),
            welcome: welcome.map(Payload),
            group_info: Payload(group_info),
        };
        c.stage = ChangeStage::Posting;
        c.posted = Some((epoch, kind.clone(), commit.clone()));
        post_commit(op, group, epoch, kind, commit, fx);
    }
}

impl Change {
    /// The devices the directory lists for `user` (none before its answer).
    fn looked_up(&self, user: &UserName) -> Vec<DeviceInfo> {
        self.directory
            .get(user)
            .cloned()
            .flatten()
            .unwrap_or_default()
    }
}

impl Goal {
    /// Whether the change removes member `m`.
    fn removes(&self, m: &MemberId) -> bool {
        match self {
            Goal::Remove(users) => users.contains(&m.user),
            Goal::RemoveDevices(devices) => devices.contains(&m.device),
            Goal::RemoveKeys(keys) => keys.iter().any(|k| k.0.as_slice() == m.key.as_slice()),
            _ => false,
        }
    }
}

/// Whether this device is the one to commit the removal of `leaver` from `mls` (after its
/// leave request): the remaining admin device with the lowest leaf index does (any
/// remaining member's when no admin remains); the others would only lose the commit race.
pub(super) fn commits_leave(mls: &MlsGroup, leaver: DeviceId) -> bool {
    let remaining: Vec<(LeafNodeIndex, UserName)> = mls
        .members()
        .filter_map(|m| {
            parse_credential(&m.credential)
                .ok()
                .filter(|c| c.device != leaver)
                .map(|c| (m.index, c.user))
        })
        .collect();
    let admin = remaining
        .iter()
        .filter(|(_, u)| super::roles::is_admin(mls, u))
        .map(|(i, _)| *i)
        .min();
    let first = admin.or_else(|| remaining.iter().map(|(i, _)| *i).min());
    first == Some(mls.own_leaf_index())
}

/// The GroupInfo and ratchet tree of a group just made (for `CreateGroup`).
fn export_state<S: Store>(cx: &Cx<'_, S>, mls: &MlsGroup) -> Result<(Vec<u8>, Vec<u8>), OpError> {
    (|| -> Result<(Vec<u8>, Vec<u8>), MlsStepError> {
        let group_info = mls
            .export_group_info(cx.provider.crypto(), &cx.me.signer, false)?
            .to_bytes()?;
        let tree = mls.export_ratchet_tree().tls_serialize_detached()?;
        Ok((group_info, tree))
    })()
    .map_err(mls_failure)
}

/// A failed MLS step of a command.
fn mls_failure(e: impl Into<MlsStepError>) -> OpError {
    OpError::Mls(Shared::new(e.into()))
}

/// Posts the commit of change `op`.
fn post_commit(
    op: OpId,
    group: GroupId,
    epoch: Epoch,
    kind: PostKind,
    payload: Vec<u8>,
    fx: &mut Effects,
) {
    fx.request(
        Request::Post {
            group,
            epoch,
            kind,
            payload: Payload(payload),
        },
        Pending::PostCommit { op },
    );
}

/// The Welcome of an add as a Cove Welcome envelope (`crate::welcome_envelope`): the MLS
/// Welcome and the group's `name` sealed under the group-name key of the epoch `mls`'s
/// pending commit creates (never in the group context, which the relay sees).
fn welcome_envelope<S: Store>(
    provider: &crate::provider::CoveProvider<S>,
    mls: &MlsGroup,
    group: &GroupId,
    name: &str,
    welcome: &MlsMessageOut,
) -> Result<Vec<u8>, CommitBuildError> {
    use crate::welcome_envelope::{
        GROUP_NAME_KEY_LEN, GROUP_NAME_LABEL, NAME_NONCE_LEN, WelcomeEnvelope, seal_name,
    };
    let staged = mls
        .pending_commit()
        .ok_or(CommitBuildError::NoPendingCommit)?;
    let key = zeroize::Zeroizing::new(
        staged
            .export_secret(
                provider.crypto(),
                GROUP_NAME_LABEL,
                &group.0,
                GROUP_NAME_KEY_LEN,
            )
            .map_err(CommitBuildError::NameKey)?,
    );
    let mut nonce = [0u8; NAME_NONCE_LEN];
    provider
        .rng()
        .fill(&mut nonce)
        .map_err(|_| CommitBuildError::Rng)?;
    let sealed_name = seal_name(&key, nonce, group, name).map_err(CommitBuildError::SealName)?;
    let welcome = welcome.to_bytes()?;
    WelcomeEnvelope {
        welcome: &welcome,
        sealed_name: &sealed_name,
    }
    .encode()
    .map_err(CommitBuildError::SealName)
}
