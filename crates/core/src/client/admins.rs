//! Group admins (issue 13): roles in a group-context extension; only admins add, remove,
//! rename, delete others' messages, promote and demote.
//!
//! The roles are the group context's [`cove_wire::roles::ROLES_EXTENSION`]: the admins' user
//! names. A group made by this version names its creator's user; a group without the
//! extension (made before roles existed) lets every member do what admins do. Promoting and
//! demoting are commits changing the extension (`changes::Goal::{Promote, Demote}`), built
//! from the current epoch's roles, so a commit rebuilt after a lost race starts from the
//! winner's. Every receiver checks each commit against the roles of the epoch it starts from
//! (`roles::check_commit`), and the relay does the same (`server/src/logic/handshake.rs`).

use cove_store::Store;
use cove_wire::{GroupId, UserName};

use super::Client;
use super::changes::Goal;
use super::mls::{member_id, roles_of};
pub(super) use super::roles::is_admin;
use crate::types::{CommandError, OpId};

impl<S: Store> Client<S> {
    /// The admins of `group` (users). Empty for a group made before admins existed (then
    /// every member may do what admins do).
    pub fn group_admins(&self, group: &GroupId) -> Vec<UserName> {
        self.groups
            .get(group)
            .and_then(|mls| roles_of(mls.extensions()))
            .unwrap_or_default()
    }

    /// Makes `user` (a member) an admin of `group` (admins only): a commit. Completes at
    /// once (no commit) when the user already is one. Refused with
    /// [`CommandError::NotAdmin`] when this device's user is not an admin, and
    /// [`CommandError::NotGroupMember`] when `user` is not a member.
    pub fn promote(
        &mut self,
        _now_ms: u64,
        group: &str,
        user: &UserName,
    ) -> Result<OpId, CommandError> {
        let id = self.require_admin(group)?;
        let member = self.groups.get(&id).is_some_and(|mls| {
            mls.members()
                .any(|m| member_id(&m).is_ok_and(|m| &m.user == user))
        });
        if !member {
            return Err(CommandError::NotGroupMember(user.clone()));
        }
        Ok(self.start_change(id, Goal::Promote(user.clone())))
    }

    /// Takes admin away from `user` in `group` (admins only): a commit. Completes at once
    /// when the user is no admin. Refused with [`CommandError::NotAdmin`] when this
    /// device's user is not an admin, and [`CommandError::LastAdmin`] when `user` is the
    /// group's only admin.
    pub fn demote(
        &mut self,
        _now_ms: u64,
        group: &str,
        user: &UserName,
    ) -> Result<OpId, CommandError> {
        let id = self.require_admin(group)?;
        if self.group_admins(&id).as_slice() == std::slice::from_ref(user) {
            return Err(CommandError::LastAdmin(group.to_string()));
        }
        Ok(self.start_change(id, Goal::Demote(user.clone())))
    }

    /// The group `group` names, of which this device is an active member and its user an
    /// admin ([`CommandError::NotAdmin`] otherwise): what every admin-only command checks.
    pub(super) fn require_admin(&self, group: &str) -> Result<GroupId, CommandError> {
        let id = self.groups.active(group)?;
        match self.groups.get(&id) {
            Some(mls) if is_admin(mls, self.me.user()) => Ok(id),
            _ => Err(CommandError::NotAdmin(group.to_string())),
        }
    }

    /// Whether this device's user may add or remove the devices of `users` in `group`:
    /// an admin may, anyone may for their own user only.
    pub(super) fn may_change_users(&self, group: &GroupId, users: &[UserName]) -> bool {
        let me = self.me.user();
        users.iter().all(|u| u == me) || self.groups.get(group).is_some_and(|mls| is_admin(mls, me))
    }

    /// Whether this device, leaving `group`, first takes its user out of the admins
    /// (`Goal::HandOver`): its user is an admin, it is its user's only device in the group,
    /// and another user is a member (who becomes the admin if no other is left).
    pub(super) fn hands_over(&self, group: &GroupId) -> bool {
        let Some(mls) = self.groups.get(group) else {
            return false;
        };
        let me = self.me.user();
        if !roles_of(mls.extensions()).is_some_and(|admins| admins.contains(me)) {
            return false;
        }
        let users: Vec<UserName> = mls
            .members()
            .filter_map(|m| member_id(&m).ok().map(|id| id.user))
            .collect();
        users.iter().filter(|u| *u == me).count() == 1 && users.iter().any(|u| u != me)
    }
}
