//! Issue 13's commands on a device: replies, reactions, edits, deletes (messages named by
//! an id prefix), the group's profile, admins, muting, disappearing messages, read marks
//! and search.

use cove_core::attachment::AttachmentPointer;
use cove_core::{Client, CommandError, OpId};
use cove_store::SqliteStore;
use cove_wire::UserName;

use super::error::DeviceError;
use super::handle::Device;
use super::inbox::message_view;
use super::messages::Sent;
use crate::session::{self, SessionError};
use crate::views::MessageView;

impl Device {
    /// The full id (hex) of the message of `group` whose id starts with `prefix`.
    pub async fn find_message(&self, group: &str, prefix: &str) -> Result<String, DeviceError> {
        let (group, prefix) = (group.to_owned(), prefix.to_ascii_lowercase());
        let id = self
            .session
            .call(move |c| c.find_message(&group, &prefix))
            .await??;
        Ok(id.to_hex())
    }

    /// Replies to the message of `group` named by `prefix` (its id or the start of it).
    pub async fn reply(&self, group: &str, prefix: &str, text: &str) -> Result<Sent, DeviceError> {
        let (group, prefix, text) = owned3(group, &prefix.to_ascii_lowercase(), text);
        self.content_op(move |c| {
            let to = c.find_message(&group, &prefix)?;
            Ok(c.send_reply(session::now_ms(), &group, to, &text)?)
        })
        .await
    }

    /// Adds (or with `remove`, takes back) this user's `emoji` reaction on a message.
    pub async fn react(
        &self,
        group: &str,
        prefix: &str,
        emoji: &str,
        remove: bool,
    ) -> Result<Sent, DeviceError> {
        if !crate::views::valid_emoji(emoji) {
            return Err(DeviceError::InvalidArgument(format!(
                "{:?} is not an emoji (one emoji, e.g. 👍, at most {} bytes)",
                crate::escape(emoji),
                cove_core::content::MAX_EMOJI_BYTES
            )));
        }
        let (group, prefix, emoji) = owned3(group, &prefix.to_ascii_lowercase(), emoji);
        self.content_op(move |c| {
            let to = c.find_message(&group, &prefix)?;
            Ok(c.react(session::now_ms(), &group, to, &emoji, remove)?)
        })
        .await
    }

    /// Replaces the text of one of this user's own messages.
    pub async fn edit(&self, group: &str, prefix: &str, text: &str) -> Result<Sent, DeviceError> {
        let (group, prefix, text) = owned3(group, &prefix.to_ascii_lowercase(), text);
        self.content_op(move |c| {
            let to = c.find_message(&group, &prefix)?;
            Ok(c.edit(session::now_ms(), &group, to, &text)?)
        })
        .await
    }

    /// Deletes a message for everyone (this user's own, or any when an admin).
    pub async fn delete_message(&self, group: &str, prefix: &str) -> Result<Sent, DeviceError> {
        let (group, prefix, _) = owned3(group, &prefix.to_ascii_lowercase(), "");
        self.content_op(move |c| {
            let to = c.find_message(&group, &prefix)?;
            Ok(c.delete_message(session::now_ms(), &group, to)?)
        })
        .await
    }

    /// Renames the group (admins only), keeping its description and avatar.
    pub async fn rename_group(&self, group: &str, name: &str) -> Result<Sent, DeviceError> {
        let name = name.to_owned();
        self.profile_op(group, move |p| p.name = name).await
    }

    /// Sets the group's description (admins only), keeping its name and avatar.
    pub async fn describe_group(&self, group: &str, text: &str) -> Result<Sent, DeviceError> {
        let text = text.to_owned();
        self.profile_op(group, move |p| p.description = text).await
    }

    /// Sets the group's avatar (an uploaded picture: [`crate::transfer::BlobClient::upload_file`])
    /// or with `None` removes it (admins only), keeping its name and description.
    pub async fn set_group_avatar(
        &self,
        group: &str,
        avatar: Option<AttachmentPointer>,
    ) -> Result<Sent, DeviceError> {
        self.profile_op(group, move |p| p.avatar = avatar).await
    }

    /// Sends the group's profile as it is now, changed by `change`.
    async fn profile_op(
        &self,
        group: &str,
        change: impl FnOnce(&mut Profile) + Send + 'static,
    ) -> Result<Sent, DeviceError> {
        let group = group.to_owned();
        self.content_op(move |c| {
            let id = c.resolve(&group)?;
            let mut profile = c
                .groups()
                .into_iter()
                .find(|g| g.id == id)
                .map(|g| Profile {
                    name: g.name,
                    description: g.description,
                    avatar: g.avatar,
                })
                .ok_or_else(|| CommandError::UnknownGroup(group.clone()))?;
            change(&mut profile);
            Ok(c.set_group_profile(
                session::now_ms(),
                &group,
                &profile.name,
                &profile.description,
                profile.avatar,
            )?)
        })
        .await
    }

    /// Makes `user` an admin of `group`, or with `remove` takes it away (admins only).
    pub async fn set_admin(
        &self,
        group: &str,
        user: &UserName,
        remove: bool,
    ) -> Result<(), DeviceError> {
        if remove {
            self.demote(group, user).await
        } else {
            self.promote(group, user).await
        }
    }

    /// Sets the group's disappearing-messages timer (`None`: off).
    pub async fn set_disappearing(
        &self,
        group: &str,
        timer_secs: Option<u32>,
    ) -> Result<Sent, DeviceError> {
        let group = group.to_owned();
        self.content_op(move |c| Ok(c.set_disappearing(session::now_ms(), &group, timer_secs)?))
            .await
    }

    /// Mutes the group on this device until `until_ms` (`u64::MAX`: for ever), or unmutes
    /// it (`None`). Local only.
    pub async fn mute(&self, group: &str, until_ms: Option<u64>) -> Result<(), DeviceError> {
        let group = group.to_owned();
        self.session
            .call(move |c| c.mute(&group, until_ms))
            .await??;
        Ok(())
    }

    /// Marks the group read on this device (unread goes to zero; a read receipt goes out).
    pub async fn mark_read(&self, group: &str) -> Result<(), DeviceError> {
        let group = group.to_owned();
        self.session
            .call(move |c| c.mark_read(session::now_ms(), &group))
            .await??;
        Ok(())
    }

    /// The messages whose text matches `query`, newest first, at most `limit`, in every
    /// group or in `group` only.
    pub async fn search(
        &self,
        query: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageView>, DeviceError> {
        let (query, group) = (query.to_owned(), group.map(str::to_owned));
        let found = self
            .session
            .call(move |c| c.search(&query, group.as_deref(), limit))
            .await??;
        Ok(found.iter().map(message_view).collect())
    }

    /// Runs a command that sends one message to a group: [`Sent::Delivered`] once the
    /// relay stored it, [`Sent::Queued`] when it did not answer in time (it stays in the
    /// outbox and goes out once later).
    async fn content_op(
        &self,
        f: impl FnOnce(&mut Client<SqliteStore>) -> Result<OpId, DeviceError> + Send + 'static,
    ) -> Result<Sent, DeviceError> {
        self.reachable().await?;
        self.caught_up_for_sending().await;
        match self.session.op(self.timeout, f).await? {
            Ok(()) => Ok(Sent::Delivered),
            Err(SessionError::Timeout { .. }) => Ok(Sent::Queued),
            Err(e) => Err(e.into()),
        }
    }
}

/// A group's profile, as [`Device::profile_op`] changes it.
struct Profile {
    name: String,
    description: String,
    avatar: Option<AttachmentPointer>,
}

fn owned3(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.to_owned(), b.to_owned(), c.to_owned())
}
