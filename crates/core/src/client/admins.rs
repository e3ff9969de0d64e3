//! Group admins (issue 13): roles in a group-context extension; only admins add, remove,
//! rename, delete others' messages, promote and demote.

use cove_store::Store;
use cove_wire::{GroupId, UserName};

use super::Client;
use crate::types::{CommandError, OpId};

impl<S: Store> Client<S> {
    /// The admins of `group` (users). Empty for a group made before admins existed (then
    /// every member may do what admins do).
    pub fn group_admins(&self, group: &GroupId) -> Vec<UserName> {
        let _ = group;
        Vec::new()
    }

    /// Makes `user` (a member) an admin of `group` (admins only): a commit.
    pub fn promote(
        &mut self,
        now_ms: u64,
        group: &str,
        user: &UserName,
    ) -> Result<OpId, CommandError> {
        let _ = (now_ms, user);
        Err(CommandError::NotAdmin(group.to_string()))
    }

    /// Takes admin away from `user` in `group` (admins only): a commit.
    pub fn demote(
        &mut self,
        now_ms: u64,
        group: &str,
        user: &UserName,
    ) -> Result<OpId, CommandError> {
        let _ = (now_ms, user);
        Err(CommandError::NotAdmin(group.to_string()))
    }
}

/// Whether `user` is an admin of the group whose MLS state is `mls`: named in the group's
/// roles (group-context extension), or any member when the group records no roles (made
/// before admins existed). What every receiver checks before applying an admin-only
/// content (rename, profile, timer, deleting another's message).
pub(super) fn is_admin(mls: &openmls::group::MlsGroup, user: &UserName) -> bool {
    let _ = (mls, user);
    true
}
