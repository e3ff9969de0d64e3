//! The groups this device is or was in: the loaded MLS state of the active ones and the
//! records (name, membership) of all, cached from the store; name resolution and the group
//! queries of the API (members, epochs, exported secrets for calls).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cove_store::{GroupRecord, Membership, Store, StoreError};
use cove_wire::{DeviceId, GroupId, UserName};
use openmls::prelude::{GroupId as MlsGroupId, MlsGroup};
use openmls_traits::OpenMlsProvider as _;

use super::mls::{member_id, parse_credential};
use crate::provider::CoveProvider;
use crate::types::{CommandError, GroupInfo, OpenError, QueryError};

/// The groups of this device.
pub(super) struct Groups {
    /// Loaded MLS groups of which this device is an active member.
    mls: HashMap<GroupId, MlsGroup>,
    /// Group records (names, membership), cached from the store.
    records: BTreeMap<GroupId, GroupRecord>,
}

impl Groups {
    /// Loads every group record and the MLS state of the active groups.
    pub(super) fn load<S: Store>(provider: &CoveProvider<S>) -> Result<Self, OpenError> {
        let mut mls = HashMap::new();
        let mut records = BTreeMap::new();
        for record in provider.store().groups()? {
            if record.membership == Membership::Active {
                let mls_id = MlsGroupId::from_slice(&record.id.0);
                if let Some(g) =
                    MlsGroup::load(provider.storage(), &mls_id).map_err(OpenError::Mls)?
                {
                    mls.insert(record.id, g);
                }
            }
            records.insert(record.id, record);
        }
        Ok(Groups { mls, records })
    }

    /// The MLS state of an active group.
    pub(super) fn get(&self, group: &GroupId) -> Option<&MlsGroup> {
        self.mls.get(group)
    }

    /// The MLS state of an active group, to change it.
    pub(super) fn get_mut(&mut self, group: &GroupId) -> Option<&mut MlsGroup> {
        self.mls.get_mut(group)
    }

    /// The MLS state and the record of a group, both to change.
    pub(super) fn get_with_record(
        &mut self,
        group: &GroupId,
    ) -> Option<(&mut MlsGroup, Option<&mut GroupRecord>)> {
        let mls = self.mls.get_mut(group)?;
        Some((mls, self.records.get_mut(group)))
    }

    /// Whether this device holds the MLS state of the group.
    pub(super) fn holds(&self, group: &GroupId) -> bool {
        self.mls.contains_key(group)
    }

    /// The current epoch of an active group.
    pub(super) fn epoch(&self, group: &GroupId) -> Option<u64> {
        self.mls.get(group).map(|g| g.epoch().as_u64())
    }

    /// The ids of the groups with a record.
    pub(super) fn ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.records.keys().copied()
    }

    /// This device's membership of a group, if it has a record.
    pub(super) fn membership(&self, group: &GroupId) -> Option<Membership> {
        self.records.get(group).map(|r| r.membership)
    }

    /// The name of a group (empty when unknown).
    pub(super) fn name(&self, group: &GroupId) -> String {
        self.records
            .get(group)
            .map(|r| r.name.clone())
            .unwrap_or_default()
    }

    /// Whether this device is an active member of a group named `name`.
    pub(super) fn name_in_use(&self, name: &str) -> bool {
        self.records
            .values()
            .any(|r| r.name == name && r.membership == Membership::Active)
    }

    /// Adds a group just created or joined.
    pub(super) fn insert(&mut self, record: GroupRecord, mls: MlsGroup) {
        self.mls.insert(record.id, mls);
        self.records.insert(record.id, record);
    }

    /// Records a group this device holds no MLS state of (a Welcome it refused).
    pub(super) fn insert_record(&mut self, record: GroupRecord) {
        self.records.insert(record.id, record);
    }

    /// Drops the loaded MLS state of a group (its stored state is untouched).
    pub(super) fn unload(&mut self, group: &GroupId) -> Option<MlsGroup> {
        self.mls.remove(group)
    }

    /// Reloads a group's MLS state from the store (after a rolled-back transaction).
    pub(super) fn reload(&mut self, storage: &impl Store, group: &GroupId) {
        if self.membership(group) != Some(Membership::Active) {
            self.mls.remove(group);
            return;
        }
        let mls_id = MlsGroupId::from_slice(&group.0);
        match MlsGroup::load(storage, &mls_id) {
            Ok(Some(g)) => {
                self.mls.insert(*group, g);
            }
            _ => {
                self.mls.remove(group);
            }
        }
    }

    /// Reloads a group's record and MLS state from the store (after a rolled-back join).
    pub(super) fn restore(&mut self, storage: &impl Store, group: &GroupId) {
        self.mls.remove(group);
        self.records.remove(group);
        if let Ok(Some(r)) = storage.group(group) {
            self.records.insert(*group, r);
        }
        self.reload(storage, group);
    }

    /// Records the new membership of a group and deletes its MLS state (left or removed).
    pub(super) fn forget(
        &mut self,
        store: &impl Store,
        group: &GroupId,
        membership: Membership,
    ) -> Result<(), StoreError> {
        if let Some(r) = self.records.get_mut(group) {
            r.membership = membership;
            store.put_group(r)?;
        }
        if let Some(mut mls) = self.mls.remove(group) {
            store.begin()?;
            match mls.delete(store) {
                Ok(()) => store.commit()?,
                Err(e) => {
                    let _ = store.rollback();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Drops the pending commits that `owned` (the groups with a commit of a running
    /// command) does not account for: built before a crash and never accepted.
    pub(super) fn clear_orphaned_commits(
        &mut self,
        storage: &impl Store,
        owned: &BTreeSet<GroupId>,
    ) -> Result<(), StoreError> {
        for (id, g) in self.mls.iter_mut() {
            if g.pending_commit().is_some() && !owned.contains(id) {
                g.clear_pending_commit(storage)?;
            }
        }
        Ok(())
    }

    /// The groups as listed by `Client::groups`.
    pub(super) fn infos(&self) -> Vec<GroupInfo> {
        self.records
            .values()
            .map(|r| {
                let (epoch, members) = match self.mls.get(&r.id) {
                    Some(g) => {
                        let mut users: Vec<UserName> = g
                            .members()
                            .filter_map(|m| parse_credential(&m.credential).ok())
                            .map(|m| m.user)
                            .collect();
                        users.sort();
                        users.dedup();
                        (g.epoch().as_u64(), users)
                    }
                    None => (0, Vec::new()),
                };
                GroupInfo {
                    id: r.id,
                    name: r.name.clone(),
                    epoch,
                    members,
                    active: r.membership == Membership::Active,
                    description: String::new(),
                    avatar: None,
                    admins: self
                        .mls
                        .get(&r.id)
                        .and_then(|g| super::mls::roles_of(g.extensions()))
                        .unwrap_or_default(),
                    disappearing_secs: None,
                    unread: 0,
                    muted_until_ms: None,
                }
            })
            .collect()
    }

    /// The member devices of an active group (none when not a member).
    pub(super) fn member_devices(&self, group: &GroupId) -> BTreeSet<DeviceId> {
        self.mls
            .get(group)
            .map(|g| {
                g.members()
                    .filter_map(|m| member_id(&m).ok().map(|id| id.device))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The member devices of a group with their MLS leaf indexes (for calls).
    pub(super) fn call_members(&self, group: &GroupId) -> Vec<crate::call::GroupMember> {
        self.member_keys(group)
            .into_iter()
            .map(|(member, _)| member)
            .collect()
    }

    /// The member devices of a group with their leaf signature keys.
    pub(super) fn member_keys(&self, group: &GroupId) -> Vec<(crate::call::GroupMember, Vec<u8>)> {
        self.mls
            .get(group)
            .map(|g| {
                g.members()
                    .filter_map(|m| {
                        let leaf = m.index.u32();
                        member_id(&m).ok().map(|id| {
                            let member = crate::call::GroupMember {
                                leaf,
                                user: id.user,
                                device: id.device,
                            };
                            (member, id.key)
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Exports a secret from the group's current epoch.
    pub(super) fn export_secret<S: Store>(
        &self,
        provider: &CoveProvider<S>,
        group: &GroupId,
        label: &str,
        context: &[u8],
        length: usize,
    ) -> Result<Vec<u8>, QueryError> {
        let mls = self
            .mls
            .get(group)
            .ok_or_else(|| QueryError::UnknownGroup(group.to_hex()))?;
        mls.export_secret(provider.crypto(), label, context, length)
            .map_err(QueryError::Export)
    }

    /// Resolves a group name or hex id.
    pub(super) fn resolve(&self, group: &str) -> Result<GroupId, CommandError> {
        if let Ok(id) = GroupId::from_hex(group)
            && self.records.contains_key(&id)
        {
            return Ok(id);
        }
        let found: Vec<GroupId> = self
            .records
            .values()
            .filter(|r| r.name == group)
            .map(|r| r.id)
            .collect();
        // Prefer active groups when a name was reused after leaving.
        let active: Vec<GroupId> = found
            .iter()
            .copied()
            .filter(|g| self.membership(g) == Some(Membership::Active))
            .collect();
        let pick = if active.is_empty() { found } else { active };
        match pick.as_slice() {
            [one] => Ok(*one),
            [] => Err(CommandError::UnknownGroup(group.to_string())),
            _ => Err(CommandError::AmbiguousGroup(group.to_string())),
        }
    }

    /// Resolves a chat group of which this device is an active member: a drive group
    /// (issue 14) is refused with [`crate::error::InvalidArgument::DriveGroup`].
    pub(super) fn chat(&self, group: &str) -> Result<GroupId, CommandError> {
        let id = self.active(group)?;
        if self.is_drive(&id) {
            return Err(CommandError::Invalid(
                crate::error::InvalidArgument::DriveGroup,
            ));
        }
        Ok(id)
    }

    /// Whether a group is a Cove Drive group (by its name, see [`crate::drive`]).
    pub(super) fn is_drive(&self, group: &GroupId) -> bool {
        self.records
            .get(group)
            .is_some_and(|r| crate::drive::is_drive_group(&r.name))
    }

    /// Resolves a group of which this device is an active member.
    pub(super) fn active(&self, group: &str) -> Result<GroupId, CommandError> {
        let id = self.resolve(group)?;
        if !self.mls.contains_key(&id) {
            return Err(CommandError::NotMember(group.to_string()));
        }
        Ok(id)
    }
}
