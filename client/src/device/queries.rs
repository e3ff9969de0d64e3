//! Local queries: groups, history, safety numbers and identities (and verifying one), epochs.

use cove_core::GroupInfo;
use cove_core::identity::IdentityState;
use cove_wire::identity::IdentityKey;
use cove_wire::{GroupId, UserName};

use super::error::DeviceError;
use super::handle::Device;
use super::inbox::message_view;
use crate::views::{GroupInfoView, GroupView, MemberView, MessageView};

impl Device {
    /// The chat groups this device is a member of (Cove Drive groups are left out: see
    /// `Device::drive_groups`).
    pub async fn groups(&self) -> Result<Vec<GroupView>, DeviceError> {
        let groups = self.session.call(|c| c.groups()).await?;
        Ok(groups
            .into_iter()
            .filter(|g| g.active && !cove_core::drive::is_drive_group(&g.name))
            .map(group_view)
            .collect())
    }

    /// The core's full group list (including groups this device left or was removed from).
    pub async fn group_infos(&self) -> Result<Vec<GroupInfo>, DeviceError> {
        Ok(self.session.call(|c| c.groups()).await?)
    }

    /// A group's stored messages, in log order.
    pub async fn history(&self, group: &str) -> Result<Vec<MessageView>, DeviceError> {
        let group = group.to_owned();
        let messages = self.session.call(move |c| c.history(&group)).await??;
        Ok(messages.iter().map(message_view).collect())
    }

    /// The safety number with `user`.
    pub async fn safety_number(&self, user: &UserName) -> Result<String, DeviceError> {
        let user = user.clone();
        Ok(self.session.call(move |c| c.safety_number(&user)).await??)
    }

    /// `user`'s identity as this device knows it (the key to compare, verified or changed,
    /// the safety number), after fetching `user`'s signed device list when online, so a
    /// change at the relay shows (and is announced) now. `None` if no identity is known
    /// for `user` (no signed list).
    pub async fn identity(
        &mut self,
        user: &UserName,
    ) -> Result<Option<IdentityState>, DeviceError> {
        if self.online {
            self.settle().await?;
            let who = user.clone();
            if self.session.call(move |c| c.refresh_identity(&who)).await? {
                // Returns after the session sent the request, so `settle` waits for it.
                self.session.call(|_| ()).await?;
                self.settle().await?;
            }
        }
        let user = user.clone();
        Ok(self
            .session
            .call(move |c| c.identity_state(&user))
            .await??)
    }

    /// Every other user's identity this device pinned, ordered by user name.
    pub async fn identities(&self) -> Result<Vec<IdentityState>, DeviceError> {
        Ok(self.session.call(|c| c.identity_states()).await??)
    }

    /// Marks `user`'s identity key `shown` verified (the user compared the safety number over
    /// it; see [`Device::identity`]); after a change, pins it and unblocks sending.
    pub async fn verify_user(
        &self,
        user: &UserName,
        shown: IdentityKey,
    ) -> Result<(), DeviceError> {
        let user = user.clone();
        self.session
            .call(move |c| c.verify_user(crate::session::now_ms(), &user, &shown))
            .await??;
        Ok(())
    }

    /// The epoch and epoch authenticator of a group, if this device is a member.
    pub async fn epoch_state(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>, DeviceError> {
        Ok(self
            .session
            .call(move |c| c.epoch(&group).zip(c.epoch_authenticator(&group)))
            .await?)
    }
}

impl Device {
    /// A group's epoch, epoch authenticator and member devices, for `cove group info`.
    /// `None` if this device is not a member of the group.
    pub async fn group_info(&self, group: &str) -> Result<Option<GroupInfoView>, DeviceError> {
        let group = group.to_owned();
        let view = self
            .session
            .call(move |c| {
                let id = c.resolve(&group)?;
                let Some(info) = c.groups().into_iter().find(|g| g.id == id && g.active) else {
                    return Ok(None);
                };
                let Some((epoch, auth)) = c.epoch(&id).zip(c.epoch_authenticator(&id)) else {
                    return Ok(None);
                };
                let mut members: Vec<MemberView> = c
                    .group_member_keys(&id)
                    .into_iter()
                    .map(|(m, key)| MemberView {
                        user: m.user.to_string(),
                        device: m.device.0,
                        key: hex::encode(key),
                    })
                    .collect();
                members.sort_by(|a, b| (&a.user, a.device).cmp(&(&b.user, b.device)));
                Ok::<_, cove_core::CommandError>(Some(GroupInfoView {
                    name: info.name,
                    id: id.to_hex(),
                    epoch,
                    epoch_authenticator: hex::encode(auth),
                    members,
                    description: info.description,
                    avatar: info.avatar.as_ref().map(crate::views::file_line),
                    admins: info.admins.iter().map(|u| u.to_string()).collect(),
                    disappearing_secs: info.disappearing_secs,
                    unread: info.unread,
                    muted_until_ms: info.muted_until_ms,
                }))
            })
            .await??;
        Ok(view)
    }
}

fn group_view(g: GroupInfo) -> GroupView {
    GroupView {
        name: g.name,
        id: g.id.to_hex(),
        epoch: g.epoch,
        members: g.members.iter().map(|u| u.to_string()).collect(),
        unread: g.unread,
        muted_until_ms: g.muted_until_ms,
    }
}
