//! What the message stream of a device yields, and the views of core messages.

use cove_core::{ChatMessage, IdentityEvent};

use crate::views::{IdentityView, MessageView, QuoteView, ReactionView, UpdateView};

/// Store config key prefix for the last printed log position per group (see
/// [`Device::next_message`](super::Device::next_message)).
pub(crate) const PRINTED_KEY: &str = "cli.printed.";

/// What [`Device::next_incoming`](super::Device::next_incoming) returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A message from another device.
    Message(MessageView),
    /// Something for the user to know, as one line of text.
    Notice(String),
    /// Another user's identity or devices changed, or a group member was refused (the
    /// core's [`Event::Identity`](cove_core::Event::Identity)).
    Identity(IdentityView),
    /// Something went wrong that the user must hear about (an entry skipped, a device not
    /// in the directory, ...): the core's [`Event::Warning`](cove_core::Event::Warning), as one line of text.
    Warning(String),
    /// A reaction, edit, delete, read receipt, typing, a group's settings changed, messages
    /// disappeared (issue 13).
    Update(UpdateView),
}

/// The view of a core message.
pub fn message_view(m: &ChatMessage) -> MessageView {
    MessageView {
        group: m.group_name.clone(),
        group_id: m.group.to_hex(),
        from: m.from.to_string(),
        device: m.from_device.0,
        text: match &m.attachment {
            Some(p) if !m.deleted => crate::views::file_line(p),
            _ => m.text.clone(),
        },
        id: m.id.to_hex(),
        sent_at: m.sent_at_ms,
        seq: m.seq.0,
        attachment: m
            .attachment
            .as_ref()
            .map(crate::transfer::AttachmentView::from),
        reply_to: m.reply_to.as_ref().map(|q| QuoteView {
            id: q.id.to_hex(),
            from: q.from.as_ref().map(|u| u.to_string()),
            text: q.text.clone(),
        }),
        reactions: m
            .reactions
            .iter()
            .map(|r| ReactionView {
                emoji: r.emoji.clone(),
                users: r.users.iter().map(|u| u.to_string()).collect(),
            })
            .collect(),
        edited: !m.edits.is_empty(),
        deleted: m.deleted,
        unsupported: m.unsupported.is_some(),
    }
}

/// The view of an identity event; `group_name` names the group of a refused member.
pub fn identity_view(event: &IdentityEvent, group_name: impl FnOnce() -> String) -> IdentityView {
    match event {
        IdentityEvent::DeviceAdded { user, device, name } => IdentityView::DeviceAdded {
            user: user.to_string(),
            device_key: device.to_hex(),
            name: name.clone(),
        },
        IdentityEvent::DeviceRevoked { user, device } => IdentityView::DeviceRevoked {
            user: user.to_string(),
            device_key: device.to_hex(),
        },
        IdentityEvent::IdentityChanged { user, verified } => IdentityView::IdentityChanged {
            user: user.to_string(),
            verified: *verified,
        },
        IdentityEvent::LeafRefused {
            group,
            user,
            device,
            reason,
        } => IdentityView::LeafRefused {
            group: group_name(),
            group_id: group.to_hex(),
            user: user.to_string(),
            device: device.0,
            reason: reason.to_string(),
        },
    }
}
