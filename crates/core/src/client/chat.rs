//! Replies, reactions, edits and deletes (issue 13): the commands. What receivers make of
//! them (authorisation, the rendered history) is in `chat_log`; see `PROTOCOL.md`, "Messages
//! inside MLS".

use cove_store::{Store, StoredMessage};
use cove_wire::GroupId;

use super::{Client, chat_log};
use crate::content::{Content, MAX_QUOTE_CHARS, MAX_TEXT_BYTES, valid_emoji};
use crate::error::InvalidArgument;
use crate::types::{CommandError, MessageId, OpId, QueryError};

/// Fewest hex digits of a message id a command accepts.
const MIN_MESSAGE_PREFIX: usize = 4;

impl<S: Store> Client<S> {
    /// The message of `group` whose id (hex) starts with `prefix` (at least 4 hex digits):
    /// how commands name the message they act on. Only shown messages (texts, files,
    /// replies, deleted and unsupported messages) have ids to name.
    pub fn find_message(&self, group: &str, prefix: &str) -> Result<MessageId, QueryError> {
        let id = self.groups.resolve(group).map_err(|e| match e {
            CommandError::AmbiguousGroup(g) => QueryError::AmbiguousGroup(g),
            _ => QueryError::UnknownGroup(group.to_string()),
        })?;
        let wanted = prefix.to_ascii_lowercase();
        if wanted.len() < MIN_MESSAGE_PREFIX
            || wanted.len() > 32
            || !wanted.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(QueryError::UnknownMessage(prefix.to_string()));
        }
        let mut found = chat_log::shown_ids(self.provider.store(), &id)?
            .into_iter()
            .filter(|m| hex::encode(m).starts_with(&wanted));
        match (found.next(), found.next()) {
            (Some(m), None) => Ok(MessageId(m)),
            (None, _) => Err(QueryError::UnknownMessage(prefix.to_string())),
            (Some(_), Some(_)) => Err(QueryError::AmbiguousMessage(prefix.to_string())),
        }
    }

    /// Replies to message `to` of `group` with `text`; the quote is the message's current
    /// text, trimmed to [`MAX_QUOTE_CHARS`] characters.
    pub fn send_reply(
        &mut self,
        now_ms: u64,
        group: &str,
        to: MessageId,
        text: &str,
    ) -> Result<OpId, CommandError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(CommandError::TooLarge(text.len(), MAX_TEXT_BYTES));
        }
        let id = self.groups.chat(group)?;
        self.check_identities(&id)?;
        let target = self.target(&id, to)?;
        let quote = chat_log::rendered(self.provider.store(), &target, false)?
            .map(|r| r.text.chars().take(MAX_QUOTE_CHARS).collect())
            .unwrap_or_default();
        let content = Content::Reply {
            to: to.0,
            quote,
            text: text.to_string(),
        };
        self.send_content(now_ms, id, content)
    }

    /// Adds (or with `remove`, takes back) this user's `emoji` reaction on message `to`.
    pub fn react(
        &mut self,
        now_ms: u64,
        group: &str,
        to: MessageId,
        emoji: &str,
        remove: bool,
    ) -> Result<OpId, CommandError> {
        if !valid_emoji(emoji) {
            return Err(CommandError::Invalid(InvalidArgument::Emoji));
        }
        let id = self.groups.chat(group)?;
        self.check_identities(&id)?;
        self.target(&id, to)?;
        let content = Content::Reaction {
            to: to.0,
            emoji: emoji.to_string(),
            remove,
        };
        self.send_content(now_ms, id, content)
    }

    /// Replaces the text of this user's own message `to` (a text or a reply, not deleted):
    /// [`CommandError::NotAuthor`] for another user's message.
    pub fn edit(
        &mut self,
        now_ms: u64,
        group: &str,
        to: MessageId,
        text: &str,
    ) -> Result<OpId, CommandError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(CommandError::TooLarge(text.len(), MAX_TEXT_BYTES));
        }
        let id = self.groups.chat(group)?;
        self.check_identities(&id)?;
        let target = self.target(&id, to)?;
        if &target.from != self.me.user() {
            return Err(CommandError::NotAuthor);
        }
        let editable =
            chat_log::rendered(self.provider.store(), &target, false)?.is_some_and(|r| r.editable);
        if !editable {
            return Err(CommandError::UnknownMessage(to.to_string()));
        }
        let content = Content::Edit {
            to: to.0,
            text: text.to_string(),
        };
        self.send_content(now_ms, id, content)
    }

    /// Deletes message `to` for everyone: this user's own, or any when an admin of the group
    /// ([`CommandError::NotAdmin`] otherwise). Every member erases it (and its edits) from
    /// its database, this device too once the relay accepted the delete.
    pub fn delete_message(
        &mut self,
        now_ms: u64,
        group: &str,
        to: MessageId,
    ) -> Result<OpId, CommandError> {
        let id = self.groups.chat(group)?;
        let target = self.target(&id, to)?;
        let deleted =
            chat_log::rendered(self.provider.store(), &target, false)?.is_some_and(|r| r.deleted);
        if deleted {
            return Err(CommandError::UnknownMessage(to.to_string()));
        }
        let admin = self
            .groups
            .get(&id)
            .is_some_and(|mls| super::admins::is_admin(mls, self.me.user()));
        if &target.from != self.me.user() && !admin {
            return Err(CommandError::NotAdmin(group.to_string()));
        }
        self.send_content(now_ms, id, Content::Delete { to: to.0 })
    }

    /// Shown message `to` of `group` ([`CommandError::UnknownMessage`] if not held).
    fn target(&self, group: &GroupId, to: MessageId) -> Result<StoredMessage, CommandError> {
        chat_log::held(self.provider.store(), group, &to.0)?
            .ok_or_else(|| CommandError::UnknownMessage(to.to_string()))
    }
}
