//! Group commands: create, add, remove, leave.

use cove_core::CommandError;
use cove_wire::UserName;

use super::error::DeviceError;
use super::handle::Device;
use crate::session;
use crate::views::GroupView;

impl Device {
    /// Creates a group.
    pub async fn create_group(&self, name: &str) -> Result<GroupView, DeviceError> {
        self.reachable().await?;
        let owned = name.to_owned();
        self.session
            .op(self.timeout, move |c| {
                c.create_group(session::now_ms(), &owned)
            })
            .await??;
        let groups = self.groups().await?;
        // The newest group of that name is ours; names can repeat, ids cannot.
        groups
            .into_iter()
            .rev()
            .find(|g| g.name == name)
            .ok_or_else(|| DeviceError::Command(CommandError::UnknownGroup(name.to_owned())))
    }

    /// Adds users (all their devices) to a group (name or hex id).
    pub async fn add_users(&self, group: &str, users: &[UserName]) -> Result<(), DeviceError> {
        self.reachable().await?;
        let (group, users) = (group.to_owned(), users.to_vec());
        self.session
            .op(self.timeout, move |c| {
                c.add_users(session::now_ms(), &group, &users)
            })
            .await??;
        Ok(())
    }

    /// Removes users (all their devices) from a group.
    pub async fn remove_users(&self, group: &str, users: &[UserName]) -> Result<(), DeviceError> {
        self.reachable().await?;
        let (group, users) = (group.to_owned(), users.to_vec());
        self.session
            .op(self.timeout, move |c| {
                c.remove_users(session::now_ms(), &group, &users)
            })
            .await??;
        Ok(())
    }

    /// Leaves a group.
    pub async fn leave(&self, group: &str) -> Result<(), DeviceError> {
        self.reachable().await?;
        let group = group.to_owned();
        self.session
            .op(self.timeout, move |c| c.leave(session::now_ms(), &group))
            .await??;
        Ok(())
    }
}
