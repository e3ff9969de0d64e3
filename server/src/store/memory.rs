//! [`MemoryStore`]: the in-memory [`RelayStore`], for tests and for running a relay without
//! a data directory. Everything lives behind one mutex; nothing survives a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use cove_wire::identity::ListEntry;
use cove_wire::limits::MAX_DEVICES_PER_USER;
use cove_wire::{
    BackupSegment, BlobId, ClaimedKeyPackage, DeviceId, DeviceInfo, DeviceKey, GroupEntry, GroupId,
    GroupSummary, InboxEntry, InboxKind, NewBackupSegment, Payload, PostKind, Seq, Stream,
    UserName,
};

use super::rules::{self, GroupState};
use super::{
    Account, Appended, BackupCaps, Heads, NewPost, Pruned, PublicGroupState, RelayStore, Stock,
    StoreError, Welcome, backup_fits, check_backup_entry, check_list_append, revoked_keys,
};

/// The in-memory relay store. Same semantics as the SQLite one, minus durability.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }
}

#[derive(Default)]
struct Inner {
    users: HashMap<UserName, Vec<DeviceId>>,
    devices: BTreeMap<DeviceId, Device>,
    last_device: u64,
    groups: HashMap<GroupId, Group>,
    /// Device lists by user (only users that published one).
    device_lists: HashMap<UserName, Vec<ListEntry>>,
    /// Password accounts by user.
    accounts: HashMap<UserName, Account>,
    /// History-backup indexes by user, in position order.
    backups: HashMap<UserName, Vec<BackupSegment>>,
}

struct Device {
    user: UserName,
    key: DeviceKey,
    /// When it last authenticated (relay ms), if ever recorded.
    last_seen_ms: Option<u64>,
    key_packages: VecDeque<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
    /// Inbox entries by seq; a Welcome's payload is shared by every device it added.
    inbox: Vec<(Seq, Welcome)>,
    /// The seq of the last inbox entry ever made (pruning does not move it back).
    inbox_end: Seq,
    inbox_cursor: Seq,
    groups: BTreeSet<GroupId>,
    /// Groups with a departure record of this device.
    departing: BTreeSet<GroupId>,
}

struct Group {
    state: GroupState,
    log: Vec<GroupEntry>,
    cursors: HashMap<DeviceId, Seq>,
    /// Each member's join seq.
    joined: HashMap<DeviceId, Seq>,
    /// Removed devices that have not acked their removal: (cursor, removal commit seq).
    departed: HashMap<DeviceId, (Seq, Seq)>,
    /// The latest public MLS state (opaque).
    public_state: Option<PublicGroupState>,
}

impl Inner {
    fn new_device(&mut self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        let next = self
            .last_device
            .checked_add(1)
            .ok_or(StoreError::Invalid("device ids used up"))?;
        self.last_device = next;
        let id = DeviceId(next);
        self.devices.insert(
            id,
            Device {
                user: user.clone(),
                key: *key,
                last_seen_ms: None,
                key_packages: VecDeque::new(),
                last_resort: None,
                inbox: Vec::new(),
                inbox_end: Seq(0),
                inbox_cursor: Seq(0),
                groups: BTreeSet::new(),
                departing: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    fn device(&self, device: DeviceId) -> Result<&Device, StoreError> {
        self.devices.get(&device).ok_or(StoreError::UnknownDevice)
    }

    fn device_mut(&mut self, device: DeviceId) -> Result<&mut Device, StoreError> {
        self.devices
            .get_mut(&device)
            .ok_or(StoreError::UnknownDevice)
    }

    fn append(&mut self, post: NewPost) -> Result<Appended, StoreError> {
        let devices = &self.devices;
        let group = self
            .groups
            .get_mut(&post.group)
            .ok_or(StoreError::UnknownGroup)?;
        let checked = group
            .state
            .check(&post, &mut |d| Ok(devices.contains_key(&d)))?;
        // Removed devices that had left (no MLS state): nothing to deliver, no record.
        let had_left: Vec<DeviceId> = match &post.kind {
            PostKind::Commit { removed, .. } => removed
                .iter()
                .copied()
                .filter(|d| group.state.has_left(*d))
                .collect(),
            _ => Vec::new(),
        };
        group.state.apply(&post, checked);
        if let Some(state) = &post.public_state {
            group.public_state = Some(state.clone());
        }
        let seq = checked.seq;
        let entry = rules::entry_of(post.group, seq, &post);
        group.log.push(entry.clone());
        let mut appended = Appended {
            entry,
            members: group.state.members.clone(),
            removed: Vec::new(),
            welcomes: Vec::new(),
            welcome: None,
        };
        if let PostKind::Commit {
            added,
            removed,
            welcome,
            ..
        } = post.kind
        {
            for d in removed.iter().filter(|d| !had_left.contains(d)) {
                let cursor = group.cursors.remove(d).unwrap_or_default();
                group.joined.remove(d);
                group.departed.insert(*d, (cursor, seq));
                if let Some(dev) = self.devices.get_mut(d) {
                    dev.groups.remove(&post.group);
                    dev.departing.insert(post.group);
                }
            }
            let has_welcome = welcome.is_some();
            let welcome = Welcome {
                kind: InboxKind::Welcome {
                    group: post.group,
                    commit_seq: seq,
                    sender: post.sender,
                },
                received_at_ms: post.now_ms,
                payload: Arc::from(welcome.unwrap_or_default().0),
            };
            for d in added.iter() {
                group.cursors.insert(*d, seq);
                group.joined.insert(*d, seq);
                // `check` made sure every added device exists. A departure record stays: the
                // device still receives the commit that removed it.
                if let Some(dev) = self.devices.get_mut(d) {
                    dev.groups.insert(post.group);
                    if !has_welcome {
                        // A new device's external join: no Welcome to deliver.
                        continue;
                    }
                    let inbox_seq = Seq(dev.inbox_end.0.saturating_add(1));
                    dev.inbox_end = inbox_seq;
                    dev.inbox.push((inbox_seq, welcome.clone()));
                    appended.welcomes.push((*d, inbox_seq));
                }
            }
            if has_welcome {
                appended.welcome = Some(welcome);
            }
            appended.removed = removed.0;
            appended.removed.retain(|d| !had_left.contains(d));
        }
        Ok(appended)
    }
}

impl RelayStore for MemoryStore {
    fn register_user(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        let mut inner = self.lock()?;
        if inner.users.contains_key(user) {
            return Err(StoreError::UserTaken);
        }
        let id = inner.new_device(user, key)?;
        inner.users.insert(user.clone(), vec![id]);
        Ok(id)
    }

    fn add_device(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        let mut inner = self.lock()?;
        let ids = inner.users.get(user).ok_or(StoreError::UnknownUser)?;
        let revoked = revoked_keys(inner.device_lists.get(user).map_or(&[][..], Vec::as_slice));
        let count = ids
            .iter()
            .filter(|id| {
                inner
                    .devices
                    .get(id)
                    .is_some_and(|d| !revoked.contains(&d.key))
            })
            .count();
        if count >= MAX_DEVICES_PER_USER {
            return Err(StoreError::TooManyDevices);
        }
        let id = inner.new_device(user, key)?;
        inner.users.entry(user.clone()).or_default().push(id);
        Ok(id)
    }

    fn create_account(&self, user: &UserName, account: Account) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if !inner.users.contains_key(user) {
            return Err(StoreError::UnknownUser);
        }
        if inner.accounts.contains_key(user) {
            return Err(StoreError::Invalid("the user already has an account"));
        }
        inner.accounts.insert(user.clone(), account);
        Ok(())
    }

    fn account(&self, user: &UserName) -> Result<Option<Account>, StoreError> {
        Ok(self.lock()?.accounts.get(user).cloned())
    }

    fn replace_password(
        &self,
        user: &UserName,
        record: Vec<u8>,
        ksf_version: u8,
        password_bundle: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if !inner.users.contains_key(user) {
            return Err(StoreError::UnknownUser);
        }
        let account = inner
            .accounts
            .get_mut(user)
            .ok_or(StoreError::Invalid("the user has no account"))?;
        account.record = record;
        account.ksf_version = ksf_version;
        account.password_bundle = password_bundle;
        Ok(())
    }

    fn delete_user(&self, user: &UserName) -> Result<Vec<DeviceId>, StoreError> {
        let mut inner = self.lock()?;
        let Inner {
            users,
            devices,
            groups,
            device_lists,
            accounts,
            backups,
            ..
        } = &mut *inner;
        let mut deleted = users.remove(user).ok_or(StoreError::UnknownUser)?;
        deleted.sort();
        device_lists.remove(user);
        accounts.remove(user);
        backups.remove(user);
        for id in &deleted {
            let Some(device) = devices.remove(id) else {
                continue;
            };
            for g in &device.groups {
                if let Some(group) = groups.get_mut(g) {
                    // A member: becomes a left leaf (as `leave_group`).
                    if group.state.is_member(*id) {
                        group.state.leave(*id)?;
                    }
                    group.cursors.remove(id);
                    group.joined.remove(id);
                }
            }
            for g in &device.departing {
                if let Some(group) = groups.get_mut(g) {
                    group.departed.remove(id);
                }
            }
        }
        Ok(deleted)
    }

    fn append_backup_segment(
        &self,
        user: &UserName,
        segment: NewBackupSegment,
        caps: BackupCaps,
    ) -> Result<u64, StoreError> {
        check_backup_entry(&segment)?;
        let mut inner = self.lock()?;
        if !inner.users.contains_key(user) {
            return Err(StoreError::UnknownUser);
        }
        let index = inner.backups.entry(user.clone()).or_default();
        if index.iter().any(|s| s.blob == segment.blob) {
            return Err(StoreError::Invalid(
                "the blob is already in the backup index",
            ));
        }
        let count = u64::try_from(index.len()).unwrap_or(u64::MAX);
        let bytes = index.iter().fold(0u64, |b, s| b.saturating_add(s.size));
        if !backup_fits(caps, count, bytes, segment.size) {
            return Err(StoreError::BackupFull);
        }
        let position = index.last().map_or(1, |s| s.position.saturating_add(1));
        index.push(BackupSegment {
            position,
            blob: segment.blob,
            size: segment.size,
            entry: segment.entry,
        });
        Ok(position)
    }

    fn backup_segments(
        &self,
        user: &UserName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BackupSegment>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .backups
            .get(user)
            .map(|index| {
                index
                    .iter()
                    .filter(|s| s.position > after)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    fn backup_holds_blob(&self, user: &UserName, blob: &BlobId) -> Result<bool, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .backups
            .get(user)
            .is_some_and(|index| index.iter().any(|s| &s.blob == blob)))
    }

    fn delete_backup_index(&self, user: &UserName) -> Result<Vec<BlobId>, StoreError> {
        let mut inner = self.lock()?;
        Ok(inner
            .backups
            .remove(user)
            .map(|index| index.into_iter().map(|s| s.blob).collect())
            .unwrap_or_default())
    }

    fn device_list(&self, user: &UserName) -> Result<Vec<ListEntry>, StoreError> {
        let inner = self.lock()?;
        if !inner.users.contains_key(user) {
            return Err(StoreError::UnknownUser);
        }
        Ok(inner.device_lists.get(user).cloned().unwrap_or_default())
    }

    fn append_device_list(
        &self,
        user: &UserName,
        expected_len: u64,
        entries: Vec<ListEntry>,
    ) -> Result<u64, StoreError> {
        let mut inner = self.lock()?;
        if !inner.users.contains_key(user) {
            return Err(StoreError::UnknownUser);
        }
        let list = inner.device_lists.entry(user.clone()).or_default();
        let stored = list.len() as u64;
        if stored != expected_len {
            return Err(StoreError::ListChanged { stored });
        }
        check_list_append(user, stored, &entries)?;
        let withdrawn = revoked_keys(&entries);
        list.extend(entries);
        let len = list.len() as u64;
        // Revoked devices' KeyPackages are withdrawn with the entry that revokes them.
        let ids = inner.users.get(user).cloned().unwrap_or_default();
        for id in ids {
            if let Some(dev) = inner.devices.get_mut(&id)
                && withdrawn.contains(&dev.key)
            {
                dev.key_packages.clear();
                dev.last_resort = None;
            }
        }
        Ok(len)
    }

    fn devices(&self, user: &UserName) -> Result<Vec<DeviceInfo>, StoreError> {
        let inner = self.lock()?;
        let ids = inner.users.get(user).ok_or(StoreError::UnknownUser)?;
        ids.iter()
            .map(|id| {
                Ok(DeviceInfo {
                    device: *id,
                    key: inner.device(*id)?.key,
                })
            })
            .collect()
    }

    fn device(&self, device: DeviceId) -> Result<Option<(UserName, DeviceKey)>, StoreError> {
        let inner = self.lock()?;
        Ok(inner.devices.get(&device).map(|d| (d.user.clone(), d.key)))
    }

    fn record_seen(&self, device: DeviceId, now_ms: u64) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let dev = inner.device_mut(device)?;
        dev.last_seen_ms = Some(dev.last_seen_ms.map_or(now_ms, |seen| seen.max(now_ms)));
        Ok(())
    }

    fn last_seen(&self, user: &UserName) -> Result<Vec<(DeviceId, Option<u64>)>, StoreError> {
        let inner = self.lock()?;
        let ids = inner.users.get(user).ok_or(StoreError::UnknownUser)?;
        ids.iter()
            .map(|id| Ok((*id, inner.device(*id)?.last_seen_ms)))
            .collect()
    }

    fn upload_key_packages(
        &self,
        device: DeviceId,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Stock, StoreError> {
        let mut inner = self.lock()?;
        let dev = inner.device_mut(device)?;
        rules::check_upload(dev.key_packages.len(), &key_packages, last_resort.as_ref())?;
        dev.key_packages.extend(key_packages);
        if last_resort.is_some() {
            dev.last_resort = last_resort;
        }
        Ok(stock_of(dev))
    }

    fn claim_key_packages(&self, user: &UserName) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        let mut inner = self.lock()?;
        let ids = inner
            .users
            .get(user)
            .ok_or(StoreError::UnknownUser)?
            .clone();
        let revoked = revoked_keys(inner.device_lists.get(user).map_or(&[][..], Vec::as_slice));
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let dev = inner.device_mut(id)?;
            if revoked.contains(&dev.key) {
                continue;
            }
            if let Some(kp) = dev.key_packages.pop_front() {
                out.push(ClaimedKeyPackage {
                    device: id,
                    key_package: Payload(kp),
                    last_resort: false,
                });
            } else if let Some(kp) = &dev.last_resort {
                out.push(ClaimedKeyPackage {
                    device: id,
                    key_package: Payload(kp.clone()),
                    last_resort: true,
                });
            }
        }
        Ok(out)
    }

    fn key_package_stock(&self, device: DeviceId) -> Result<Stock, StoreError> {
        let inner = self.lock()?;
        Ok(stock_of(inner.device(device)?))
    }

    fn create_group_with_state(
        &self,
        group: GroupId,
        creator: DeviceId,
        state: Option<PublicGroupState>,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        inner.device(creator)?;
        if inner.groups.contains_key(&group) {
            return Err(StoreError::GroupExists);
        }
        inner.device_mut(creator)?.groups.insert(group);
        inner.groups.insert(
            group,
            Group {
                state: GroupState::new(creator),
                log: Vec::new(),
                cursors: HashMap::from([(creator, Seq(0))]),
                joined: HashMap::from([(creator, Seq(0))]),
                departed: HashMap::new(),
                public_state: state,
            },
        );
        Ok(())
    }

    fn public_state(&self, group: GroupId) -> Result<Option<PublicGroupState>, StoreError> {
        let inner = self.lock()?;
        let group = inner.groups.get(&group).ok_or(StoreError::UnknownGroup)?;
        Ok(group.public_state.clone())
    }

    fn leave_group(&self, group: GroupId, device: DeviceId) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        inner.device(device)?;
        let grp = inner
            .groups
            .get_mut(&group)
            .ok_or(StoreError::UnknownGroup)?;
        grp.state.leave(device)?;
        grp.cursors.remove(&device);
        grp.joined.remove(&device);
        inner.device_mut(device)?.groups.remove(&group);
        Ok(())
    }

    fn is_member(&self, group: GroupId, device: DeviceId) -> Result<bool, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .groups
            .get(&group)
            .ok_or(StoreError::UnknownGroup)?
            .state
            .is_member(device))
    }

    fn groups_of(&self, device: DeviceId) -> Result<Vec<GroupSummary>, StoreError> {
        let inner = self.lock()?;
        let dev = inner.device(device)?;
        Ok(dev
            .groups
            .iter()
            .filter_map(|g| {
                inner.groups.get(g).map(|grp| GroupSummary {
                    group: *g,
                    epoch: grp.state.epoch,
                })
            })
            .collect())
    }

    fn append_batch(&self, posts: Vec<NewPost>) -> Vec<Result<Appended, StoreError>> {
        let mut inner = match self.lock() {
            Ok(inner) => inner,
            Err(e) => {
                let msg = e.to_string();
                return posts
                    .iter()
                    .map(|_| Err(StoreError::Backend(msg.clone())))
                    .collect();
            }
        };
        posts.into_iter().map(|post| inner.append(post)).collect()
    }

    fn read_group(
        &self,
        group: GroupId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        let inner = self.lock()?;
        let grp = inner.groups.get(&group).ok_or(StoreError::UnknownGroup)?;
        Ok(read_after(&grp.log, after, limit, max_bytes, |e| {
            (e.seq, e.payload.len())
        }))
    }

    fn read_inbox(
        &self,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        let inner = self.lock()?;
        Ok(
            read_after(&inner.device(device)?.inbox, after, limit, max_bytes, |e| {
                (e.0, e.1.payload.len())
            })
            .into_iter()
            .map(|(seq, welcome)| welcome.entry(seq))
            .collect(),
        )
    }

    fn heads(&self, groups: &[GroupId], devices: &[DeviceId]) -> Result<Heads, StoreError> {
        let inner = self.lock()?;
        Ok(Heads {
            groups: groups
                .iter()
                .filter_map(|g| inner.groups.get(g).map(|grp| (*g, grp.state.last_seq)))
                .collect(),
            inboxes: devices
                .iter()
                .filter_map(|d| inner.devices.get(d).map(|dev| (*d, dev.inbox_end)))
                .collect(),
        })
    }

    fn joined(&self, group: GroupId, device: DeviceId) -> Result<Option<Seq>, StoreError> {
        let inner = self.lock()?;
        inner.device(device)?;
        let grp = inner.groups.get(&group).ok_or(StoreError::UnknownGroup)?;
        Ok(grp.joined.get(&device).copied())
    }

    fn departures(&self, device: DeviceId) -> Result<Vec<(GroupId, Seq)>, StoreError> {
        let inner = self.lock()?;
        let dev = inner.device(device)?;
        Ok(dev
            .departing
            .iter()
            .filter_map(|g| {
                let (_, removed_at) = inner.groups.get(g)?.departed.get(&device)?;
                Some((*g, *removed_at))
            })
            .collect())
    }

    fn departure_cursor(
        &self,
        device: DeviceId,
        group: GroupId,
    ) -> Result<Option<Seq>, StoreError> {
        let inner = self.lock()?;
        inner.device(device)?;
        let grp = inner.groups.get(&group).ok_or(StoreError::UnknownGroup)?;
        Ok(grp.departed.get(&device).map(|(cursor, _)| *cursor))
    }

    fn cursor(&self, device: DeviceId, stream: Stream) -> Result<Seq, StoreError> {
        let inner = self.lock()?;
        let dev = inner.device(device)?;
        match stream {
            Stream::Inbox => Ok(dev.inbox_cursor),
            Stream::Group(g) => {
                let grp = inner.groups.get(&g).ok_or(StoreError::UnknownGroup)?;
                grp.cursors
                    .get(&device)
                    .or_else(|| grp.departed.get(&device).map(|(cursor, _)| cursor))
                    .copied()
                    .ok_or(StoreError::NotMember)
            }
        }
    }

    fn try_ack_buffered(
        &self,
        device: DeviceId,
        stream: Stream,
        seq: Seq,
    ) -> Option<Result<(), StoreError>> {
        // All in memory: group acks apply inline (inbox acks keep the ack thread's path).
        match stream {
            Stream::Group(_) => Some(self.ack(device, stream, seq)),
            Stream::Inbox => None,
        }
    }

    fn prune(&self, now_ms: u64, max_age_ms: u64) -> Result<Pruned, StoreError> {
        Ok(self.lock()?.prune(now_ms, max_age_ms))
    }

    fn ack(&self, device: DeviceId, stream: Stream, seq: Seq) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        match stream {
            Stream::Inbox => {
                let dev = inner.device_mut(device)?;
                if seq > dev.inbox_end {
                    return Err(StoreError::Invalid("ack past the end of the inbox"));
                }
                dev.inbox_cursor = dev.inbox_cursor.max(seq);
                Ok(())
            }
            Stream::Group(g) => {
                inner.device(device)?;
                let grp = inner.groups.get_mut(&g).ok_or(StoreError::UnknownGroup)?;
                let end = grp.state.last_seq;
                if let Some(cursor) = grp.cursors.get_mut(&device) {
                    if seq > end {
                        return Err(StoreError::Invalid("ack past the end of the group log"));
                    }
                    *cursor = (*cursor).max(seq);
                    // Added again before it acked its removal: the record moves along.
                    if let Some((cursor, removed_at)) = grp.departed.get_mut(&device) {
                        *cursor = (*cursor).max(seq);
                        if *cursor >= *removed_at {
                            grp.departed.remove(&device);
                            if let Some(dev) = inner.devices.get_mut(&device) {
                                dev.departing.remove(&g);
                            }
                        }
                    }
                    return Ok(());
                }
                let (cursor, removed_at) =
                    grp.departed.get_mut(&device).ok_or(StoreError::NotMember)?;
                if seq > *removed_at {
                    return Err(StoreError::Invalid("ack past the commit that removed it"));
                }
                *cursor = (*cursor).max(seq);
                if *cursor >= *removed_at {
                    grp.departed.remove(&device);
                    if let Some(dev) = inner.devices.get_mut(&device) {
                        dev.departing.remove(&g);
                    }
                }
                Ok(())
            }
        }
    }
}

impl Inner {
    fn prune(&mut self, now_ms: u64, max_age_ms: u64) -> Pruned {
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let mut pruned = Pruned::default();
        for grp in self.groups.values_mut() {
            let acked = grp
                .cursors
                .values()
                .chain(grp.departed.values().map(|(cursor, _)| cursor))
                .min()
                .copied()
                .unwrap_or(grp.state.last_seq);
            let expired = grp
                .log
                .iter()
                .take_while(|e| e.received_at_ms < cutoff)
                .last()
                .map_or(Seq(0), |e| e.seq);
            let floor = acked.max(expired);
            let n = grp.log.partition_point(|e| e.seq <= floor);
            grp.log.drain(..n);
            pruned.group_entries = pruned
                .group_entries
                .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        }
        for dev in self.devices.values_mut() {
            let before = dev.inbox.len();
            let cursor = dev.inbox_cursor;
            dev.inbox
                .retain(|(seq, w)| *seq > cursor && w.received_at_ms >= cutoff);
            let n = before.saturating_sub(dev.inbox.len());
            pruned.inbox_entries = pruned
                .inbox_entries
                .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        }
        pruned
    }
}

fn stock_of(dev: &Device) -> Stock {
    Stock {
        remaining: u32::try_from(dev.key_packages.len()).unwrap_or(u32::MAX),
        has_last_resort: dev.last_resort.is_some(),
    }
}

/// Entries of a seq-ordered log (seqs 1, 2, ...) after `after`, at most the capped `limit`.
/// The entries of `log` after `after`, at most `limit` and `max_bytes` of payload (the
/// first always); `key` gives an entry's seq and payload length.
fn read_after<T: Clone>(
    log: &[T],
    after: Seq,
    limit: u32,
    max_bytes: usize,
    key: impl Fn(&T) -> (Seq, usize),
) -> Vec<T> {
    let start = log.partition_point(|e| key(e).0 <= after);
    let mut used = 0usize;
    log.get(start..)
        .unwrap_or_default()
        .iter()
        .take(rules::capped_limit(limit))
        .enumerate()
        .take_while(|(i, e)| rules::fits_budget(&mut used, key(e).1, max_bytes, *i == 0))
        .map(|(_, e)| e.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;

    crate::relay_store_conformance!(conformance, || ((), MemoryStore::new()));
}
