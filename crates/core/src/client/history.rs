//! What the user sees of stored messages: [`ChatMessage`]s (texts and attachments) built from
//! the history, for the history queries and the [`Event::Message`] events. Stateless.

use cove_store::StoredMessage;
use cove_wire::GroupId;

use super::groups::Groups;
use crate::content::{Content, Envelope};
use crate::types::{ChatMessage, Event, MessageId};

/// The chat messages among `stored` (messages of `group`), in order.
pub(super) fn chat_messages(
    groups: &Groups,
    group: GroupId,
    stored: Vec<StoredMessage>,
) -> Vec<ChatMessage> {
    let name = groups.name(&group);
    stored
        .into_iter()
        .filter_map(|m| {
            let content = Envelope::decode(&m.content).ok()?.content;
            chat_message(&m, name.clone(), content)
        })
        .collect()
}

/// The Message event for stored message `m`, if its content is shown to the user.
pub(super) fn stored_chat_event(groups: &Groups, m: &StoredMessage) -> Option<Event> {
    let env = Envelope::decode(&m.content).ok()?;
    chat_event(groups, m, env.content)
}

/// The Message event for stored message `m` with its (already decoded) content, if that
/// content is shown to the user.
pub(super) fn chat_event(groups: &Groups, m: &StoredMessage, content: Content) -> Option<Event> {
    chat_message(m, groups.name(&m.group), content).map(|m| Event::Message(Box::new(m)))
}

pub(super) fn chat_message(
    m: &StoredMessage,
    group_name: String,
    content: Content,
) -> Option<ChatMessage> {
    let (text, attachment) = content.into_chat_parts()?;
    Some(ChatMessage {
        group: m.group,
        group_name,
        from: m.from.clone(),
        from_device: m.from_device,
        id: MessageId(m.message_id),
        sent_at_ms: m.sent_at_ms,
        text,
        attachment,
        seq: m.seq,
        reply_to: None,
        reactions: Vec::new(),
        edits: Vec::new(),
        deleted: false,
        unsupported: None,
        read_by: Vec::new(),
        expires_at_ms: None,
    })
}
