//! The rules both backends share: input bounds and the in-memory state of a group (epoch,
//! last sequence number, members) against which posts are checked and then applied.
//!
//! Both backends keep a [`GroupState`] per group in memory, so the hot path (an application
//! message to a large group) needs no per-recipient work in storage: membership checks and
//! the member list for fan-out come from here.

use cove_wire::limits::{
    MAX_GROUP_DEVICES, MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGE_STOCK, MAX_KEY_PACKAGES_PER_UPLOAD,
    MAX_MEMBERSHIP_CHANGE, MAX_PAYLOAD_BYTES,
};
use std::collections::VecDeque;

use cove_wire::{DeviceId, EntryKind, Epoch, GroupEntry, GroupId, Payload, PostKind, Seq};
use sha2::{Digest as _, Sha256};

use super::{NewPost, StoreError};

/// How many of a group's latest application messages and proposals the duplicate check
/// remembers (32 bytes each). A client resends a post only when it missed the reply, soon
/// after (at its next connection), so a short window per group suffices.
pub(crate) const RECENT_POSTS: usize = 256;

/// A post remembered by the duplicate check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecentPost {
    /// Who posted it.
    pub sender: DeviceId,
    /// The first 16 bytes of the SHA-256 of its payload.
    pub digest: [u8; 16],
    /// Where it is in the log.
    pub seq: Seq,
}

/// A group's epoch, log head and members, as both backends hold it in memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupState {
    /// The current epoch.
    pub epoch: Epoch,
    /// The seq of the last entry in the log (0 when empty).
    pub last_seq: Seq,
    /// Current members, sorted and without duplicates.
    pub members: Vec<DeviceId>,
    /// Devices that left the group at the relay without MLS state (`LeaveGroup`), sorted:
    /// no longer members (nothing is delivered to them, they cannot read or post), but
    /// still leaves of the MLS tree until a member's commit removes them, so such a commit
    /// may name them among its removed devices (their removal is then a no-op here).
    pub left: Vec<DeviceId>,
    /// The group's last [`RECENT_POSTS`] application messages and proposals, oldest first,
    /// for the duplicate check.
    pub recent: VecDeque<RecentPost>,
}

/// What a checked post will do when applied.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checked {
    /// The seq the post gets.
    pub seq: Seq,
    /// The group's epoch after the post.
    pub epoch_after: Epoch,
    /// The payload digest of an application message or proposal (for the duplicate check).
    pub digest: Option<[u8; 16]>,
}

impl GroupState {
    /// A fresh group at epoch 0 with one member.
    pub fn new(creator: DeviceId) -> Self {
        GroupState {
            epoch: Epoch(0),
            last_seq: Seq(0),
            members: vec![creator],
            left: Vec::new(),
            recent: VecDeque::new(),
        }
    }

    /// Whether `device` left the group without MLS state and no commit has removed it yet.
    pub fn has_left(&self, device: DeviceId) -> bool {
        self.left.binary_search(&device).is_ok()
    }

    /// Records that `device`, a current member, left without MLS state.
    pub fn leave(&mut self, device: DeviceId) -> Result<(), StoreError> {
        let at = self
            .members
            .binary_search(&device)
            .map_err(|_| StoreError::NotMember)?;
        self.members.remove(at);
        if let Err(at) = self.left.binary_search(&device) {
            self.left.insert(at, device);
        }
        Ok(())
    }

    /// Remembers an application message or proposal for the duplicate check.
    pub fn remember(&mut self, post: RecentPost) {
        if self.recent.len() >= RECENT_POSTS {
            self.recent.pop_front();
        }
        self.recent.push_back(post);
    }

    /// Whether `device` is a current member.
    pub fn is_member(&self, device: DeviceId) -> bool {
        self.members.binary_search(&device).is_ok()
    }

    /// Checks `post` against the group rules without changing anything. `device_exists` is
    /// asked about every device a commit adds.
    pub fn check(
        &self,
        post: &NewPost,
        device_exists: &mut dyn FnMut(DeviceId) -> Result<bool, StoreError>,
    ) -> Result<Checked, StoreError> {
        // A non-member's post is refused, except a new device's external join: a commit
        // adding exactly its sender, with no Welcome, taken only from the relay's handshake
        // validation (which checked the MLS external commit and that a device of the
        // sender's user is a member), i.e. with a public state (below, after the epoch
        // rule, so that a join that lost a race gets `StaleEpoch` like any commit).
        let joining = !self.is_member(post.sender) && is_join(post);
        if !self.is_member(post.sender) && !joining {
            return Err(StoreError::NotMember);
        }
        if post.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(StoreError::Invalid("payload too large"));
        }
        let seq = self
            .last_seq
            .0
            .checked_add(1)
            .map(Seq)
            .ok_or(StoreError::Invalid("group log is full"))?;
        let stale = StoreError::StaleEpoch {
            current: self.epoch,
        };
        match &post.kind {
            PostKind::Application | PostKind::Proposal => {
                // A resend of a post already stored (its reply was lost): answered with the
                // original's seq, before the epoch rule (the group may have moved on since).
                let digest = payload_digest(&post.payload);
                if let Some(original) = self
                    .recent
                    .iter()
                    .rev()
                    .find(|r| r.sender == post.sender && r.digest == digest)
                {
                    return Err(StoreError::Duplicate { seq: original.seq });
                }
                // Accepted in the current epoch, and in the one just before it: a message
                // made just before a commit it raced with is still readable by members, who
                // keep the previous epoch's secrets for a short while.
                let previous = self.epoch.0.checked_sub(1);
                if post.epoch != self.epoch && Some(post.epoch.0) != previous {
                    return Err(stale);
                }
                Ok(Checked {
                    seq,
                    epoch_after: self.epoch,
                    digest: Some(digest),
                })
            }
            PostKind::Commit {
                added,
                removed,
                welcome,
                ..
            } => {
                if post.epoch != self.epoch {
                    return Err(stale);
                }
                if joining && post.public_state.is_none() {
                    return Err(StoreError::Invalid(
                        "an external join is taken only from a validated commit",
                    ));
                }
                let epoch_after = self
                    .epoch
                    .0
                    .checked_add(1)
                    .map(Epoch)
                    .ok_or(StoreError::Invalid("epoch overflow"))?;
                if added.len() > MAX_MEMBERSHIP_CHANGE || removed.len() > MAX_MEMBERSHIP_CHANGE {
                    return Err(StoreError::Invalid("membership change too large"));
                }
                if !strictly_unique(added) || !strictly_unique(removed) {
                    return Err(StoreError::Invalid("duplicate device in membership change"));
                }
                if added.iter().any(|d| removed.contains(d)) {
                    return Err(StoreError::Invalid("device both added and removed"));
                }
                if removed
                    .iter()
                    .any(|d| !self.is_member(*d) && !self.has_left(*d))
                {
                    return Err(StoreError::Invalid(
                        "removing a device that is not a member",
                    ));
                }
                if added.iter().any(|d| self.is_member(*d)) {
                    return Err(StoreError::Invalid(
                        "adding a device that is already a member",
                    ));
                }
                match (welcome, added.is_empty()) {
                    (None, false) if joining => {}
                    (Some(_), true) => {
                        return Err(StoreError::Invalid("welcome without added devices"));
                    }
                    (None, false) => {
                        return Err(StoreError::Invalid("added devices without a welcome"));
                    }
                    (Some(w), false) if w.len() > MAX_PAYLOAD_BYTES => {
                        return Err(StoreError::Invalid("welcome too large"));
                    }
                    _ => {}
                }
                let removed_members = removed.iter().filter(|d| self.is_member(**d)).count();
                let size = self.members.len() - removed_members + added.len();
                if size > MAX_GROUP_DEVICES {
                    return Err(StoreError::Invalid("group would exceed its size cap"));
                }
                for d in added.iter() {
                    if !device_exists(*d)? {
                        return Err(StoreError::UnknownDevice);
                    }
                }
                Ok(Checked {
                    seq,
                    epoch_after,
                    digest: None,
                })
            }
        }
    }

    /// Applies a post that [`GroupState::check`] accepted.
    pub fn apply(&mut self, post: &NewPost, checked: Checked) {
        self.last_seq = checked.seq;
        self.epoch = checked.epoch_after;
        if let Some(digest) = checked.digest {
            self.remember(RecentPost {
                sender: post.sender,
                digest,
                seq: checked.seq,
            });
        }
        if let PostKind::Commit { added, removed, .. } = &post.kind {
            self.members.retain(|d| !removed.contains(d));
            self.left
                .retain(|d| !removed.contains(d) && !added.contains(d));
            self.members.extend(added.iter().copied());
            self.members.sort_unstable();
            self.members.dedup();
        }
    }
}

/// Whether `post` is shaped as a new device's external join: a commit adding exactly its
/// sender, removing no one, with no Welcome.
fn is_join(post: &NewPost) -> bool {
    matches!(
        &post.kind,
        PostKind::Commit { added, removed, welcome: None, .. }
            if added.len() == 1 && added.first() == Some(&post.sender) && removed.is_empty()
    )
}

/// The duplicate check's digest of a payload: the first 16 bytes of its SHA-256.
pub(crate) fn payload_digest(payload: &[u8]) -> [u8; 16] {
    let full = Sha256::digest(payload);
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&full[..16]);
    digest
}

/// True when no item occurs twice.
fn strictly_unique(items: &[DeviceId]) -> bool {
    let mut sorted = items.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).all(|w| w.first() != w.get(1))
}

/// The stored entry for an accepted post (the Welcome is not part of it).
pub(crate) fn entry_of(group: GroupId, seq: Seq, post: &NewPost) -> GroupEntry {
    GroupEntry {
        group,
        seq,
        epoch: post.epoch,
        sender: post.sender,
        kind: entry_kind(&post.kind),
        received_at_ms: post.now_ms,
        payload: Payload(post.payload.clone()),
    }
}

/// The stored kind of a post kind.
pub(crate) fn entry_kind(kind: &PostKind) -> EntryKind {
    match kind {
        PostKind::Application => EntryKind::Application,
        PostKind::Proposal => EntryKind::Proposal,
        PostKind::Commit { added, removed, .. } => EntryKind::Commit {
            added: added.clone(),
            removed: removed.clone(),
        },
    }
}

/// Checks an upload against the bounds, given the stock already on file.
pub(crate) fn check_upload(
    remaining: usize,
    key_packages: &[Vec<u8>],
    last_resort: Option<&Vec<u8>>,
) -> Result<(), StoreError> {
    if key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(StoreError::Invalid("too many key packages in one upload"));
    }
    if key_packages
        .iter()
        .chain(last_resort)
        .any(|kp| kp.is_empty())
    {
        return Err(StoreError::Invalid("empty key package"));
    }
    if key_packages
        .iter()
        .chain(last_resort)
        .any(|kp| kp.len() > MAX_KEY_PACKAGE_BYTES)
    {
        return Err(StoreError::Invalid("key package too large"));
    }
    if remaining.saturating_add(key_packages.len()) > MAX_KEY_PACKAGE_STOCK {
        return Err(StoreError::StockFull);
    }
    Ok(())
}

/// The most entries one read returns: `limit`, capped by the protocol's fetch limit.
pub(crate) fn capped_limit(limit: u32) -> usize {
    usize::try_from(limit.min(cove_wire::limits::MAX_FETCH_ENTRIES)).unwrap_or(0)
}

/// Payload bytes one store read returns by default (`[limits] max_read_bytes`): a few MiB, so
/// a `Fetch` or a backlog step never holds hundreds of large entries at once.
pub const DEFAULT_READ_BYTES: usize = 4 * 1024 * 1024;

/// Counts the payload bytes of a read against its budget: whether an entry of `len` bytes
/// is returned after `used` bytes already were (the first entry always is, so a reader
/// makes progress). A read stops at the first entry that does not fit, keeping order.
pub(crate) fn fits_budget(used: &mut usize, len: usize, max_bytes: usize, first: bool) -> bool {
    let total = used.saturating_add(len);
    if !first && total > max_bytes {
        return false;
    }
    *used = total;
    true
}
