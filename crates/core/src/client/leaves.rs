//! Every member checks every leaf (issue 9): the device certificate a leaf carries
//! ([`super::mls::DEVICE_CERTIFICATE_EXTENSION`]) must chain to its user's pinned identity
//! key and be in the user's verified, unrevoked device list
//! ([`crate::identity::check_leaf`]). Checked are all leaves of a group joined by Welcome,
//! the leaves a commit adds or updates, and the sender of every application message.
//!
//! A leaf whose user's list this device does not hold yet (or holds in an older version
//! than the certificate) holds what named it: the Welcome (and the inbox behind it) or the
//! group's log (later entries park), unacknowledged, until that user's list has been
//! fetched and pinned; then it is applied again, and a leaf whose list still does not hold
//! its certificate is refused. A refused leaf is reported once ([`Leaves::first_report`]),
//! its application messages are shown as nobody's, and this device removes it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cove_store::{Store, StoreError};
use cove_wire::{DeviceId, DeviceKey, GroupId, InboxEntry, Request, UserName};
use openmls::prelude::LeafNode;

use super::effects::{Effects, Pending};
use super::mls::{leaf_certificate, parse_credential};
use crate::error::CredentialError;
use crate::identity::{LeafRefusal, LeafVerdict, check_leaf};

/// A leaf this device refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RefusedLeaf {
    /// The user its credential names.
    pub(super) user: UserName,
    /// The device id its credential names.
    pub(super) device: DeviceId,
    /// Its signature key (what a removal matches).
    pub(super) key: DeviceKey,
    /// Why.
    pub(super) reason: LeafRefusal,
}

/// What a leaf's certificate says.
pub(super) enum LeafCheck {
    /// Certified by its user's pinned identity, listed, not revoked.
    Trusted,
    /// This user's list is needed first.
    NeedList(UserName),
    /// Refused.
    Refused(RefusedLeaf),
}

/// Why a leaf could not even be checked (its credential is not a Cove one).
#[derive(Debug, thiserror::Error)]
pub(super) enum LeafCheckError {
    /// Not a Cove credential: the peer that made the leaf is at fault.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `leaf`. A user in `answered` had its list fetched for this very check: if that
/// list still does not decide, the leaf is refused ([`LeafRefusal::NoList`]).
pub(super) fn check_leaf_node(
    store: &impl Store,
    leaf: &LeafNode,
    answered: &BTreeSet<UserName>,
) -> Result<LeafCheck, LeafCheckError> {
    let id = parse_credential(leaf.credential())?;
    let refuse = |key: DeviceKey, reason: LeafRefusal| {
        Ok(LeafCheck::Refused(RefusedLeaf {
            user: id.user.clone(),
            device: id.device,
            key,
            reason,
        }))
    };
    let Ok(raw) = <[u8; 32]>::try_from(leaf.signature_key().as_slice()) else {
        return refuse(
            DeviceKey([0; 32]),
            LeafRefusal::Certificate(cove_identity::CertificateError::WrongDevice),
        );
    };
    let key = DeviceKey(raw);
    let cert = match leaf_certificate(leaf) {
        Ok(cert) => cert,
        Err(reason) => return refuse(key, reason),
    };
    match check_leaf(store, &id.user, &key, &cert)? {
        LeafVerdict::Trusted => Ok(LeafCheck::Trusted),
        LeafVerdict::NeedList if answered.contains(&id.user) => refuse(key, LeafRefusal::NoList),
        LeafVerdict::NeedList => Ok(LeafCheck::NeedList(id.user)),
        LeafVerdict::Refused(reason) => refuse(key, reason),
    }
}

/// The leaves of `leaves` checked: the users whose lists are needed first, and the leaves
/// refused.
pub(super) fn check_all<'a>(
    store: &impl Store,
    leaves: impl IntoIterator<Item = &'a LeafNode>,
    answered: &BTreeSet<UserName>,
) -> Result<(BTreeSet<UserName>, Vec<RefusedLeaf>), LeafCheckError> {
    let mut need = BTreeSet::new();
    let mut refused = Vec::new();
    for leaf in leaves {
        match check_leaf_node(store, leaf, answered)? {
            LeafCheck::Trusted => {}
            LeafCheck::NeedList(user) => {
                need.insert(user);
            }
            LeafCheck::Refused(r) => refused.push(r),
        }
    }
    Ok((need, refused))
}

/// What is held until device lists arrive, and the refusals reported.
#[derive(Default)]
pub(super) struct Leaves {
    /// Groups whose log is held (entries park) until these users' lists are in.
    held_groups: BTreeMap<GroupId, BTreeSet<UserName>>,
    /// The inbox, held at a Welcome until these users' lists are in: the users, then the
    /// entries from the held Welcome on, in order.
    held_inbox: Option<(BTreeSet<UserName>, VecDeque<InboxEntry>)>,
    /// Lists requested for a hold on this connection, not yet answered.
    fetching: BTreeSet<UserName>,
    /// Users whose list has just been answered, while what waited for it is applied again.
    answered: BTreeSet<UserName>,
    /// Refused leaves already reported (and whose removal was started), by group and key.
    reported: BTreeSet<(GroupId, DeviceKey)>,
    /// Senders found trusted, by group and key, until a device list changes (so that a
    /// message costs no list verification).
    trusted: BTreeSet<(GroupId, DeviceKey)>,
    /// Devices whose leave request this device saw, by group: a member that is no admin
    /// may commit their removal (issue 13). Kept for this run of the client.
    asked_to_leave: BTreeMap<GroupId, BTreeSet<DeviceId>>,
}

/// What an answered list releases.
#[derive(Default)]
pub(super) struct Released {
    /// Groups whose log may go on.
    pub(super) groups: Vec<GroupId>,
    /// Inbox entries to handle again, in order (the held Welcome first).
    pub(super) inbox: Vec<InboxEntry>,
}

impl Leaves {
    /// `device` asked to leave `group` (its leave request was applied).
    pub(super) fn asked_to_leave(&mut self, group: GroupId, device: DeviceId) {
        self.asked_to_leave.entry(group).or_default().insert(device);
    }

    /// The devices that asked to leave `group`.
    pub(super) fn leavers(&self, group: &GroupId) -> BTreeSet<DeviceId> {
        self.asked_to_leave.get(group).cloned().unwrap_or_default()
    }

    /// The connection is gone: nothing held stays held (the entries were not acknowledged,
    /// so the relay delivers them again, and they are checked again).
    pub(super) fn reset(&mut self) {
        self.held_groups.clear();
        self.held_inbox = None;
        self.fetching.clear();
        self.answered.clear();
    }

    /// Whether the leaf with `key` in `group` was found trusted since lists last changed.
    pub(super) fn is_trusted(&self, group: GroupId, key: DeviceKey) -> bool {
        self.trusted.contains(&(group, key))
    }

    /// The leaf with `key` in `group` was found trusted.
    pub(super) fn trusted(&mut self, group: GroupId, key: DeviceKey) {
        self.trusted.insert((group, key));
    }

    /// A device list changed (a device added or revoked, an identity changed): every leaf
    /// is checked again.
    pub(super) fn lists_changed(&mut self) {
        self.trusted.clear();
    }

    /// Users whose list was just fetched for the check being repeated.
    pub(super) fn answered(&self) -> &BTreeSet<UserName> {
        &self.answered
    }

    /// Whether `group`'s log is held.
    pub(super) fn holds_group(&self, group: &GroupId) -> bool {
        self.held_groups.contains_key(group)
    }

    /// Whether the inbox is held.
    pub(super) fn holds_inbox(&self) -> bool {
        self.held_inbox.is_some()
    }

    /// Holds `group`'s log until `users`' lists are in, and fetches them.
    pub(super) fn hold_group(
        &mut self,
        group: GroupId,
        users: BTreeSet<UserName>,
        fx: &mut Effects,
    ) {
        for user in &users {
            self.fetch(user, fx);
        }
        self.held_groups.entry(group).or_default().extend(users);
    }

    /// Holds the inbox at `entry` (a Welcome) until `users`' lists are in, and fetches them.
    pub(super) fn hold_inbox(
        &mut self,
        entry: InboxEntry,
        users: BTreeSet<UserName>,
        fx: &mut Effects,
    ) {
        for user in &users {
            self.fetch(user, fx);
        }
        self.held_inbox = Some((users, VecDeque::from([entry])));
    }

    /// Queues an inbox entry behind the held Welcome.
    pub(super) fn queue_inbox(&mut self, entry: InboxEntry) {
        if let Some((_, queue)) = &mut self.held_inbox
            && !queue.iter().any(|e| e.seq == entry.seq)
        {
            queue.push_back(entry);
        }
    }

    /// `user`'s list was answered (pinned, unchanged or refused): releases what waited only
    /// for it. Until [`Leaves::done`], the user counts as answered for the repeated checks.
    pub(super) fn on_list(&mut self, user: &UserName) -> Released {
        self.fetching.remove(user);
        self.answered.insert(user.clone());
        let mut released = Released::default();
        self.held_groups.retain(|group, users| {
            users.remove(user);
            if users.is_empty() {
                released.groups.push(*group);
            }
            !users.is_empty()
        });
        if let Some((users, _)) = &mut self.held_inbox {
            users.remove(user);
            if users.is_empty()
                && let Some((_, queue)) = self.held_inbox.take()
            {
                released.inbox = queue.into();
            }
        }
        released
    }

    /// What waited for `user`'s list was applied again.
    pub(super) fn done(&mut self, user: &UserName) {
        self.answered.remove(user);
    }

    /// Whether leaf `key` of `group` was refused and reported.
    pub(super) fn was_refused(&self, group: GroupId, key: &[u8]) -> bool {
        <[u8; 32]>::try_from(key).is_ok_and(|k| self.reported.contains(&(group, DeviceKey(k))))
    }

    /// Whether refused leaf `key` of `group` is reported for the first time (then it is
    /// reported and removed; later messages from it are only skipped). It is no longer
    /// trusted either way.
    pub(super) fn first_report(&mut self, group: GroupId, key: DeviceKey) -> bool {
        self.trusted.remove(&(group, key));
        self.reported.insert((group, key))
    }

    /// Fetches `user`'s list again (a commit removed one of their leaves: maybe revoked).
    pub(super) fn refresh(&mut self, user: &UserName, fx: &mut Effects) {
        self.fetch(user, fx);
    }

    /// Fetches `user`'s list for a hold, unless that is in flight already.
    fn fetch(&mut self, user: &UserName, fx: &mut Effects) {
        if self.fetching.insert(user.clone()) {
            fx.request(
                Request::FetchDeviceList { user: user.clone() },
                Pending::ObserveList { user: user.clone() },
            );
        }
    }
}
