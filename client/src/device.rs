//! A device: the home's configuration and database, and the session task that pumps the core.
//! (Placeholder until cove-core's API lands.)

use std::path::Path;

use cove_wire::UserName;

use crate::config::{ConfigError, Home};
use crate::views::{GroupView, MessageView};

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The home or configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Not available yet.
    #[error("not implemented yet")]
    NotImplemented,
}

/// One device of a user, with its session to the relay.
pub struct Device {
    user: UserName,
    server: String,
}

impl Device {
    /// Initialises `home` and registers a new user with its first device.
    pub async fn init(
        home: &Home,
        server: &str,
        user: UserName,
        ca: Option<&Path>,
    ) -> Result<Device, DeviceError> {
        home.initialise(server, user, ca)?;
        Err(DeviceError::NotImplemented)
    }
    /// Opens an initialised home and connects.
    pub async fn open(home: &Home) -> Result<Device, DeviceError> {
        let c = home.load()?;
        let _ = (c.user, c.server);
        Err(DeviceError::NotImplemented)
    }
    /// Opens an initialised home without connecting.
    pub async fn open_offline(home: &Home) -> Result<Device, DeviceError> {
        Self::open(home).await
    }
    /// The user.
    pub fn user(&self) -> &UserName {
        &self.user
    }
    /// The relay URL.
    pub fn server(&self) -> &str {
        &self.server
    }
    /// The relay-assigned device id.
    pub fn device_id(&self) -> u64 {
        0
    }
    /// Creates a group.
    pub async fn create_group(&self, _name: &str) -> Result<GroupView, DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// Adds users to a group.
    pub async fn add_users(&self, _group: &str, _users: &[UserName]) -> Result<(), DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// Removes users from a group.
    pub async fn remove_users(
        &self,
        _group: &str,
        _users: &[UserName],
    ) -> Result<(), DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// Leaves a group.
    pub async fn leave(&self, _group: &str) -> Result<(), DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// Sends a text.
    pub async fn send_text(&self, _group: &str, _text: &str) -> Result<MessageView, DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// Receives everything pending.
    pub async fn sync(&mut self) -> Result<Vec<MessageView>, DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// The next message received.
    pub async fn next_message(&mut self) -> Result<MessageView, DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// The groups.
    pub async fn groups(&self) -> Result<Vec<GroupView>, DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// A group's history.
    pub async fn history(&self, _group: &str) -> Result<Vec<MessageView>, DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// The safety number with `user`.
    pub async fn safety_number(&self, _user: &UserName) -> Result<String, DeviceError> {
        Err(DeviceError::NotImplemented)
    }
    /// Closes the session.
    pub async fn close(self) {}
}
