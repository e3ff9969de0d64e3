//! Group admin commands (issue 13): promote and demote.

use cove_wire::UserName;

use super::error::DeviceError;
use super::handle::Device;
use crate::session;

impl Device {
    /// Makes `user` an admin of `group` (admins only).
    pub async fn promote(&self, group: &str, user: &UserName) -> Result<(), DeviceError> {
        self.reachable().await?;
        self.caught_up_for_sending().await;
        let (group, user) = (group.to_owned(), user.clone());
        self.session
            .op(self.timeout, move |c| {
                c.promote(session::now_ms(), &group, &user)
            })
            .await??;
        Ok(())
    }

    /// Takes admin away from `user` in `group` (admins only; never the last admin).
    pub async fn demote(&self, group: &str, user: &UserName) -> Result<(), DeviceError> {
        self.reachable().await?;
        self.caught_up_for_sending().await;
        let (group, user) = (group.to_owned(), user.clone());
        self.session
            .op(self.timeout, move |c| {
                c.demote(session::now_ms(), &group, &user)
            })
            .await??;
        Ok(())
    }
}
