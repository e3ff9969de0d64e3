//! The chat log (issue 13): what replies, reactions, edits and deletes do to the messages
//! they name. Kept in the store (`Namespace::Chat`) next to the history, so that one message
//! renders without reading its whole group:
//!
//! ```text
//! group ‖ 'i' ‖ message id        → seq            every shown message (text, file, reply,
//!                                                  deleted, unsupported)
//! group ‖ 'r' ‖ message id ‖ seq  → [kind, flags]  every reply, reaction, edit and delete
//!                                                  of that message, in log order
//! ```
//!
//! **The relay's order is the truth**: a reference whose target is not held yet is kept and
//! applied when the target arrives, and a message renders from its references in log order,
//! so every member renders the same. Authorisation is the receiver's: only the author's
//! edits apply, a delete applies when its sender is the author or was an admin when the
//! delete was received (recorded as a flag then). A delete that applies **erases**: the
//! target's stored content becomes a tombstone, the texts of its edits and the quotes of the
//! replies to it are emptied, and its text leaves the search index.

use cove_store::{Namespace, Store, StoreError, StoredMessage};
use cove_wire::{GroupId, Seq, UserName};

use crate::attachment::AttachmentPointer;
use crate::content::{Content, Decoded, ENVELOPE_VERSION, Envelope};
use crate::types::{ChatMessage, Event, MessageId, Quote, Reaction};

const REPLY: u8 = 1;
const REACTION: u8 = 2;
const EDIT: u8 = 3;
const DELETE: u8 = 4;

/// Flag of a delete whose sender was an admin of the group when it was received.
const BY_ADMIN: u8 = 1;

/// A stored message as the chat log sees it.
enum Body {
    /// A text, or a file (text empty).
    Chat {
        text: String,
        attachment: Option<AttachmentPointer>,
    },
    Reply {
        to: [u8; 16],
        quote: String,
        text: String,
    },
    /// Deleted for everyone (the tombstone left by [`erase`]).
    Deleted,
    /// A content kind of a newer client.
    Unsupported(u32),
    Reaction {
        to: [u8; 16],
        emoji: String,
        remove: bool,
    },
    Edit {
        to: [u8; 16],
        text: String,
    },
    Delete {
        to: [u8; 16],
    },
    /// Not part of the chat (renames, leave requests, calls, settings, ...).
    Other,
}

impl Body {
    fn shown(&self) -> bool {
        matches!(
            self,
            Body::Chat { .. } | Body::Reply { .. } | Body::Deleted | Body::Unsupported(_)
        )
    }
}

/// What `m` is (`None`: undecodable).
fn body(m: &StoredMessage) -> Option<Body> {
    let env = match Envelope::decode_lenient(&m.content).ok()? {
        Decoded::Known(env) => env,
        Decoded::Unsupported { kind, .. } => return Some(Body::Unsupported(kind)),
    };
    Some(match env.content {
        Content::Text { text } => Body::Chat {
            text,
            attachment: None,
        },
        Content::Attachment(p) => Body::Chat {
            text: String::new(),
            attachment: Some(p),
        },
        Content::Reply { to, quote, text } => Body::Reply { to, quote, text },
        Content::Reaction { to, emoji, remove } => Body::Reaction { to, emoji, remove },
        Content::Edit { to, text } => Body::Edit { to, text },
        Content::Delete { to } if to == m.message_id => Body::Deleted,
        Content::Delete { to } => Body::Delete { to },
        _ => Body::Other,
    })
}

/// Whether `content` is part of the chat log (shown, or naming a shown message); the rest
/// is reported as [`Event::Content`].
pub(super) fn is_chat(content: &Content) -> bool {
    matches!(
        content,
        Content::Text { .. }
            | Content::Attachment(_)
            | Content::Reply { .. }
            | Content::Reaction { .. }
            | Content::Edit { .. }
            | Content::Delete { .. }
    )
}

/// The message `content` names, if it names one.
pub(super) fn target_of(content: &Content) -> Option<[u8; 16]> {
    match content {
        Content::Reply { to, .. }
        | Content::Reaction { to, .. }
        | Content::Edit { to, .. }
        | Content::Delete { to } => Some(*to),
        _ => None,
    }
}

fn id_key(group: &GroupId, id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.extend_from_slice(&group.0);
    k.push(b'i');
    k.extend_from_slice(id);
    k
}

fn ref_prefix(group: &GroupId, id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.extend_from_slice(&group.0);
    k.push(b'r');
    k.extend_from_slice(id);
    k
}

fn put_ref(
    store: &impl Store,
    group: &GroupId,
    to: &[u8; 16],
    seq: Seq,
    kind: u8,
    flags: u8,
) -> Result<(), StoreError> {
    let mut k = ref_prefix(group, to);
    k.extend_from_slice(&seq.0.to_be_bytes());
    store.kv_put(Namespace::Chat, &k, &[kind, flags])
}

/// The references to message `id` of `group`: (seq, kind, flags), in log order.
fn refs(
    store: &impl Store,
    group: &GroupId,
    id: &[u8; 16],
) -> Result<Vec<(Seq, u8, u8)>, StoreError> {
    let prefix = ref_prefix(group, id);
    Ok(store
        .kv_scan(Namespace::Chat, &prefix)?
        .into_iter()
        .filter_map(|(k, v)| {
            let seq = u64::from_be_bytes(k.get(prefix.len()..)?.try_into().ok()?);
            Some((Seq(seq), *v.first()?, v.get(1).copied().unwrap_or(0)))
        })
        .collect())
}

/// Forgets message `m` (about to be deleted from the history: it disappeared): its id entry,
/// the references to it, and the reference it makes to another message. Inside the caller's
/// transaction.
pub(super) fn forget(store: &impl Store, m: &StoredMessage) -> Result<(), StoreError> {
    store.kv_delete(Namespace::Chat, &id_key(&m.group, &m.message_id))?;
    for (k, _) in store.kv_scan(Namespace::Chat, &ref_prefix(&m.group, &m.message_id))? {
        store.kv_delete(Namespace::Chat, &k)?;
    }
    if let Ok(Decoded::Known(env)) = Envelope::decode_lenient(&m.content)
        && let Some(to) = target_of(&env.content)
    {
        let mut k = ref_prefix(&m.group, &to);
        k.extend_from_slice(&m.seq.0.to_be_bytes());
        store.kv_delete(Namespace::Chat, &k)?;
    }
    Ok(())
}

/// The shown message `id` of `group`, if this device holds it.
pub(super) fn held(
    store: &impl Store,
    group: &GroupId,
    id: &[u8; 16],
) -> Result<Option<StoredMessage>, StoreError> {
    let Some(v) = store.kv_get(Namespace::Chat, &id_key(group, id))? else {
        return Ok(None);
    };
    let Ok(seq) = <[u8; 8]>::try_from(v.as_slice()) else {
        return Ok(None);
    };
    store.message(group, Seq(u64::from_be_bytes(seq)))
}

/// The ids of the shown messages of `group`, in id order.
pub(super) fn shown_ids(store: &impl Store, group: &GroupId) -> Result<Vec<[u8; 16]>, StoreError> {
    let mut prefix = group.0.to_vec();
    prefix.push(b'i');
    Ok(store
        .kv_scan(Namespace::Chat, &prefix)?
        .into_iter()
        .filter_map(|(k, _)| k.get(prefix.len()..)?.try_into().ok())
        .collect())
}

/// A shown message with everything that refers to it applied.
#[derive(Default)]
pub(super) struct Rendered {
    /// Its current text.
    pub(super) text: String,
    attachment: Option<AttachmentPointer>,
    /// What it replies to: the id and the quote it carries.
    reply: Option<([u8; 16], String)>,
    /// Its earlier texts, oldest first.
    edits: Vec<String>,
    /// Deleted for everyone.
    pub(super) deleted: bool,
    unsupported: Option<u32>,
    reactions: Vec<Reaction>,
    /// A text or a reply: its author may edit it.
    pub(super) editable: bool,
}

impl Rendered {
    fn react(&mut self, user: &UserName, emoji: String, remove: bool) {
        let at = self.reactions.iter().position(|r| r.emoji == emoji);
        match (at, remove) {
            (Some(i), false) => {
                if !self.reactions[i].users.contains(user) {
                    self.reactions[i].users.push(user.clone());
                }
            }
            (None, false) => self.reactions.push(Reaction {
                emoji,
                users: vec![user.clone()],
            }),
            (Some(i), true) => {
                self.reactions[i].users.retain(|u| u != user);
                if self.reactions[i].users.is_empty() {
                    self.reactions.remove(i);
                }
            }
            (None, true) => {}
        }
    }
}

/// Shown message `m` with what refers to it applied in log order (reactions only with
/// `reactions`); `None` if `m` is not a shown message.
pub(super) fn rendered(
    store: &impl Store,
    m: &StoredMessage,
    reactions: bool,
) -> Result<Option<Rendered>, StoreError> {
    let mut r = match body(m) {
        Some(Body::Chat { text, attachment }) => Rendered {
            editable: attachment.is_none(),
            text,
            attachment,
            ..Rendered::default()
        },
        Some(Body::Reply { to, quote, text }) => Rendered {
            text,
            reply: Some((to, quote)),
            editable: true,
            ..Rendered::default()
        },
        Some(Body::Deleted) => Rendered {
            deleted: true,
            ..Rendered::default()
        },
        Some(Body::Unsupported(kind)) => Rendered {
            unsupported: Some(kind),
            ..Rendered::default()
        },
        _ => return Ok(None),
    };
    for (seq, kind, flags) in refs(store, &m.group, &m.message_id)? {
        if kind == REPLY || (kind == REACTION && !reactions) {
            continue;
        }
        let Some(by) = store.message(&m.group, seq)? else {
            continue;
        };
        match body(&by) {
            Some(Body::Reaction { to, emoji, remove }) if to == m.message_id => {
                r.react(&by.from, emoji, remove);
            }
            Some(Body::Edit { to, text })
                if to == m.message_id && by.from == m.from && r.editable && !r.deleted =>
            {
                let old = std::mem::replace(&mut r.text, text);
                r.edits.push(old);
            }
            Some(Body::Delete { to })
                if to == m.message_id && (by.from == m.from || flags & BY_ADMIN != 0) =>
            {
                r.deleted = true;
            }
            _ => {}
        }
    }
    if r.deleted {
        r.text.clear();
        r.edits.clear();
        r.attachment = None;
        r.reply = None;
        r.editable = false;
    }
    Ok(Some(r))
}

/// Stored message `m` as the user sees it (`None`: not a shown message).
pub(super) fn render(
    store: &impl Store,
    group_name: String,
    m: &StoredMessage,
) -> Result<Option<ChatMessage>, StoreError> {
    let Some(r) = rendered(store, m, true)? else {
        return Ok(None);
    };
    let reply_to = match r.reply {
        None => None,
        Some((to, quote)) => Some(match held(store, &m.group, &to)? {
            Some(target) => Quote {
                id: MessageId(to),
                text: rendered(store, &target, false)?
                    .map(|t| t.text)
                    .unwrap_or_default(),
                from: Some(target.from),
            },
            None => Quote {
                id: MessageId(to),
                from: None,
                text: quote,
            },
        }),
    };
    Ok(Some(ChatMessage {
        group: m.group,
        group_name,
        from: m.from.clone(),
        from_device: m.from_device,
        id: MessageId(m.message_id),
        sent_at_ms: m.sent_at_ms,
        text: r.text,
        attachment: r.attachment,
        seq: m.seq,
        reply_to,
        reactions: r.reactions,
        edits: r.edits,
        deleted: r.deleted,
        unsupported: r.unsupported,
        read_by: Vec::new(),
        expires_at_ms: None,
    }))
}

/// What recording a message asks of the caller.
#[derive(Default)]
pub(crate) struct Recorded {
    /// The events to report once the transaction committed.
    pub(crate) events: Vec<Event>,
    /// Something was erased: scrub the store once the transaction committed.
    pub(crate) scrub: bool,
}

/// Records message `m` (just stored, inside the caller's transaction) in the chat log:
/// indexes it and what it names, applies it to its target if held (a reaction, an edit of
/// the author's, a delete by the author or by an admin: `by_admin` is whether its sender is
/// an admin of the group now), and applies to it what came before it (a delete erases it
/// at once). Returns the events: a shown message's [`Event::Message`], and
/// [`Event::Reacted`], [`Event::Edited`] or [`Event::Deleted`] when one applied to a held
/// message.
pub(crate) fn record(
    store: &impl Store,
    m: &StoredMessage,
    group_name: &str,
    by_admin: bool,
) -> Result<Recorded, StoreError> {
    let mut out = Recorded::default();
    let Some(b) = body(m) else {
        return Ok(out);
    };
    let group = m.group;
    if b.shown() {
        store.kv_put(
            Namespace::Chat,
            &id_key(&group, &m.message_id),
            &m.seq.0.to_be_bytes(),
        )?;
        if let Body::Reply { to, .. } = &b {
            put_ref(store, &group, to, m.seq, REPLY, 0)?;
            let target = held(store, &group, to)?;
            if target.is_some_and(|t| matches!(body(&t), Some(Body::Deleted))) {
                strip(store, m)?;
            }
        }
        // A delete that came before it (the relay's order is the truth).
        let mut deleted = false;
        for (seq, kind, flags) in refs(store, &group, &m.message_id)? {
            if kind == DELETE
                && (flags & BY_ADMIN != 0
                    || store
                        .message(&group, seq)?
                        .is_some_and(|d| d.from == m.from))
            {
                deleted = true;
            }
        }
        if deleted && !matches!(b, Body::Deleted) {
            erase(store, m)?;
            out.scrub = true;
        } else {
            index_text(store, m)?;
        }
        let now = store.message(&group, m.seq)?;
        if let Some(shown) = now
            .as_ref()
            .map(|now| render(store, group_name.to_string(), now))
            .transpose()?
            .flatten()
        {
            out.events.push(Event::Message(Box::new(shown)));
        }
        return Ok(out);
    }
    match b {
        Body::Reaction { to, emoji, remove } => {
            put_ref(store, &group, &to, m.seq, REACTION, 0)?;
            if held(store, &group, &to)?.is_some() {
                out.events.push(Event::Reacted {
                    group,
                    by: m.from.clone(),
                    to: MessageId(to),
                    emoji,
                    removed: remove,
                });
            }
        }
        Body::Edit { to, text } => {
            put_ref(store, &group, &to, m.seq, EDIT, 0)?;
            if let Some(target) = held(store, &group, &to)? {
                let now = rendered(store, &target, false)?;
                if now.as_ref().is_some_and(|t| t.deleted) {
                    // Ignored, and its text does not stay.
                    strip(store, m)?;
                } else if now.is_some_and(|t| t.editable) && target.from == m.from {
                    index_text(store, &target)?;
                    out.events.push(Event::Edited {
                        group,
                        by: m.from.clone(),
                        to: MessageId(to),
                        text,
                    });
                }
            }
        }
        Body::Delete { to } => {
            let flags = if by_admin { BY_ADMIN } else { 0 };
            put_ref(store, &group, &to, m.seq, DELETE, flags)?;
            if let Some(target) = held(store, &group, &to)?
                && !matches!(body(&target), Some(Body::Deleted))
                && (target.from == m.from || by_admin)
            {
                erase(store, &target)?;
                out.scrub = true;
                out.events.push(Event::Deleted {
                    group,
                    by: m.from.clone(),
                    to: MessageId(to),
                });
            }
        }
        _ => {}
    }
    Ok(out)
}

/// Indexes the current text of shown message `m` for search (or unindexes it when it has
/// none).
fn index_text(store: &impl Store, m: &StoredMessage) -> Result<(), StoreError> {
    match rendered(store, m, false)? {
        Some(r) if !r.deleted && !r.text.is_empty() => store.text_index(&m.group, m.seq, &r.text),
        _ => store.text_unindex(&m.group, m.seq),
    }
}

/// Replaces the stored content of `m` (a shown message deleted for everyone) by a tombstone,
/// empties the texts of its edits and the quotes replies carry of it, and unindexes it.
fn erase(store: &impl Store, m: &StoredMessage) -> Result<(), StoreError> {
    let tombstone = Envelope {
        version: ENVELOPE_VERSION,
        id: m.message_id,
        sent_at_ms: m.sent_at_ms,
        content: Content::Delete { to: m.message_id },
    };
    let content = tombstone
        .encode()
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    store.put_message(&StoredMessage {
        content,
        ..m.clone()
    })?;
    store.text_unindex(&m.group, m.seq)?;
    for (seq, kind, _) in refs(store, &m.group, &m.message_id)? {
        if (kind == EDIT || kind == REPLY)
            && let Some(r) = store.message(&m.group, seq)?
        {
            strip(store, &r)?;
        }
    }
    Ok(())
}

/// Empties the text of edit `m`, or the quote of reply `m` (their target was deleted).
fn strip(store: &impl Store, m: &StoredMessage) -> Result<(), StoreError> {
    let Ok(mut env) = Envelope::decode(&m.content) else {
        return Ok(());
    };
    match &mut env.content {
        Content::Edit { text, .. } => text.clear(),
        Content::Reply { quote, .. } => quote.clear(),
        _ => return Ok(()),
    }
    let content = env
        .encode()
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    store.put_message(&StoredMessage {
        content,
        ..m.clone()
    })
}
