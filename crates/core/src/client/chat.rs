//! Replies, reactions, edits and deletes (issue 13): the commands. What receivers make of
//! them (authorisation, the rendered history) is in `history`/`inbound`.

use cove_store::Store;

use super::Client;
use crate::content::Content;
use crate::types::{CommandError, MessageId, OpId, QueryError};

impl<S: Store> Client<S> {
    /// The message of `group` whose id (hex) starts with `prefix` (at least 4 hex digits):
    /// how commands name the message they act on.
    pub fn find_message(&self, group: &str, prefix: &str) -> Result<MessageId, QueryError> {
        let _ = (group, prefix);
        Err(QueryError::UnknownMessage(prefix.to_string()))
    }

    /// Replies to message `to` of `group` with `text` (the quote is taken from the message).
    pub fn send_reply(
        &mut self,
        now_ms: u64,
        group: &str,
        to: MessageId,
        text: &str,
    ) -> Result<OpId, CommandError> {
        let id = self.groups.active(group)?;
        self.check_identities(&id)?;
        let content = Content::Reply {
            to: to.0,
            quote: String::new(),
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
        let id = self.groups.active(group)?;
        self.check_identities(&id)?;
        let content = Content::Reaction {
            to: to.0,
            emoji: emoji.to_string(),
            remove,
        };
        self.send_content(now_ms, id, content)
    }

    /// Replaces the text of this user's own message `to`.
    pub fn edit(
        &mut self,
        now_ms: u64,
        group: &str,
        to: MessageId,
        text: &str,
    ) -> Result<OpId, CommandError> {
        let id = self.groups.active(group)?;
        self.check_identities(&id)?;
        let content = Content::Edit {
            to: to.0,
            text: text.to_string(),
        };
        self.send_content(now_ms, id, content)
    }

    /// Deletes message `to` for everyone (this user's own, or any when an admin).
    pub fn delete_message(
        &mut self,
        now_ms: u64,
        group: &str,
        to: MessageId,
    ) -> Result<OpId, CommandError> {
        let id = self.groups.active(group)?;
        self.send_content(now_ms, id, Content::Delete { to: to.0 })
    }
}
