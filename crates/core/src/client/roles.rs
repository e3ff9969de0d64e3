//! Group roles (issue 13), the pure part: who is an admin of a group by the roles in its
//! group context (`cove_wire::roles::ROLES_EXTENSION`), the policy every member checks each
//! commit against, and the event of a roles change. A leaf below `changes` and `inbound`;
//! the commands (`promote`, `demote`) are in `admins`.

use std::collections::BTreeSet;

use cove_wire::{DeviceId, GroupId, UserName};
use openmls::group::MlsGroup;
use openmls::prelude::{Extensions, GroupContext};

use super::mls::{MemberId, ROLES_EXTENSION, roles_of};
use crate::error::EntryError;
use crate::types::{Event, GroupChange};

/// Whether `user` is an admin of the group whose MLS state is `mls`: named in the group's
/// roles (group-context extension), or any member when the group records no roles (made
/// before admins existed). What every receiver checks before applying an admin-only
/// content (rename, profile, timer, deleting another's message).
pub(super) fn is_admin(mls: &MlsGroup, user: &UserName) -> bool {
    admin_in(mls.extensions(), user)
}

/// Whether `user` is an admin by the roles in `extensions` (a group context's).
fn admin_in(extensions: &Extensions<GroupContext>, user: &UserName) -> bool {
    match roles_of(extensions) {
        None => true,
        Some(admins) => admins.contains(user),
    }
}

/// Checks a commit by a member (`committer`, its user) against the policy of the roles of
/// `mls`'s current epoch (the one the commit starts from): an admin may do anything a
/// commit does, but new roles must be well-formed and name an admin; anyone else may add
/// and remove only devices of its own user, remove devices that asked to leave
/// (`asked_to_leave`), and not change the roles. `added` and `removed` are the devices the
/// commit adds and removes; `after` the group context extensions of the epoch it starts.
pub(super) fn check_commit(
    mls: &MlsGroup,
    committer: &UserName,
    added: &[MemberId],
    removed: &[MemberId],
    asked_to_leave: &BTreeSet<DeviceId>,
    after: &Extensions<GroupContext>,
) -> Result<(), EntryError> {
    let before = mls.extensions();
    let roles_changed = before.unknown(ROLES_EXTENSION) != after.unknown(ROLES_EXTENSION);
    let refuse = |what: &'static str| EntryError::NotAdmin {
        user: committer.clone(),
        what,
    };
    if admin_in(before, committer) {
        if roles_changed {
            let data = after
                .unknown(ROLES_EXTENSION)
                .ok_or(EntryError::BadRoles(cove_wire::roles::RolesError::Empty))?;
            cove_wire::roles::decode_roles(&data.0).map_err(EntryError::BadRoles)?;
        }
        return Ok(());
    }
    if roles_changed {
        return Err(refuse("change the admins"));
    }
    if added.iter().any(|m| &m.user != committer) {
        return Err(refuse("add another user's devices"));
    }
    if removed
        .iter()
        .any(|m| &m.user != committer && !asked_to_leave.contains(&m.device))
    {
        return Err(refuse("remove another user's devices"));
    }
    Ok(())
}

/// The event of a roles change between the extensions `before` and those of `mls` now
/// (after a merge), made by `by`: `None` when the roles did not change.
pub(super) fn roles_event(
    before: Option<Vec<UserName>>,
    mls: &MlsGroup,
    group: GroupId,
    by: &UserName,
) -> Option<Event> {
    let now = roles_of(mls.extensions());
    (now != before).then(|| Event::GroupChanged {
        group,
        by: by.clone(),
        change: GroupChange::Admins(now.unwrap_or_default()),
    })
}
