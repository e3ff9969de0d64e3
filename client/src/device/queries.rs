//! Local queries: groups, history, safety numbers, epochs.

use cove_core::GroupInfo;
use cove_wire::{GroupId, UserName};

use super::error::DeviceError;
use super::handle::Device;
use super::inbox::message_view;
use crate::views::{GroupView, MessageView};

impl Device {
    /// The groups this device is or was in.
    pub async fn groups(&self) -> Result<Vec<GroupView>, DeviceError> {
        let groups = self.session.call(|c| c.groups()).await?;
        Ok(groups
            .into_iter()
            .filter(|g| g.active)
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

    /// The epoch and epoch authenticator of a group, if this device is a member.
    pub async fn epoch_state(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>, DeviceError> {
        Ok(self
            .session
            .call(move |c| c.epoch(&group).zip(c.epoch_authenticator(&group)))
            .await?)
    }
}

fn group_view(g: GroupInfo) -> GroupView {
    GroupView {
        name: g.name,
        id: g.id.to_hex(),
        epoch: g.epoch,
        members: g.members.iter().map(|u| u.to_string()).collect(),
    }
}
