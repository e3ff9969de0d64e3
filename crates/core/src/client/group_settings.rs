//! Per-group local settings and what follows from them (issue 13), stateless over the
//! store: the settings record (description, avatar, disappearing timer, last-read seq,
//! muted-until), the newest read receipt of each user, and the disappearing messages'
//! expiry index (scheduling at storage, deleting when due). The commands are in `settings`;
//! the receiving side calls [`on_received`] from `inbound`.

use std::collections::BTreeMap;

use cove_store::{Namespace, Store, StoreError, StoredMessage};
use cove_wire::{GroupId, Seq, UserName};
use serde::{Deserialize, Serialize};

use crate::attachment::AttachmentPointer;
use crate::content::{Content, Envelope, MAX_DESCRIPTION_BYTES};
use crate::error::Warning;
use crate::types::{ChatMessage, Event, GroupChange, MessageId};

/// Longest disappearing-messages timer (seconds): 365 days.
pub const MAX_DISAPPEARING_SECS: u32 = 365 * 24 * 60 * 60;

/// A typing notification sent longer ago than this (by the sender's clock against ours)
/// comes from the backlog: it is not reported.
pub const TYPING_FRESH_MS: u64 = 15_000;

/// Zero bytes appended to a stored settings record before decoding it: enough for the
/// fields a later version appends.
const APPENDED_PADDING: usize = 32;

/// A group's local settings. **Fields are only ever appended** (the record is postcard), and
/// only of types whose default encodes as one zero byte (`Option`, `String`, `Vec`,
/// integers, `bool`): an older record then decodes with the new fields at their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct GroupSettings {
    /// The description (from the newest applied profile).
    pub(super) description: String,
    /// The avatar (from the newest applied profile).
    pub(super) avatar: Option<AttachmentPointer>,
    /// The disappearing-messages timer, in seconds.
    pub(super) disappearing_secs: Option<u32>,
    /// The newest log position read on this device.
    pub(super) last_read: u64,
    /// Muted until (local clock, ms).
    pub(super) muted_until_ms: Option<u64>,
}

/// A user's newest read receipt in a group.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Receipt {
    /// The message read up to.
    up_to: [u8; 16],
    /// Its log position.
    seq: u64,
}

fn settings_key(group: &GroupId) -> Vec<u8> {
    let mut k = group.0.to_vec();
    k.push(b's');
    k
}

fn receipt_prefix(group: &GroupId) -> Vec<u8> {
    let mut k = group.0.to_vec();
    k.push(b'r');
    k
}

fn expires_key(group: &GroupId, seq: Seq) -> Vec<u8> {
    let mut k = group.0.to_vec();
    k.push(b'e');
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

fn expiry_key(at_ms: u64, group: &GroupId, seq: Seq) -> Vec<u8> {
    let mut k = at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(&group.0);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("group settings key".into()))
}

/// The settings of `group` (defaults when none are stored).
pub(super) fn load(store: &impl Store, group: &GroupId) -> Result<GroupSettings, StoreError> {
    match store.kv_get(Namespace::GroupSettings, &settings_key(group))? {
        Some(mut v) => {
            // A record written before fields were appended ends early: zero bytes decode
            // as the appended fields' defaults (see `GroupSettings`).
            v.extend_from_slice(&[0; APPENDED_PADDING]);
            Ok(postcard::take_from_bytes(&v)?.0)
        }
        None => Ok(GroupSettings::default()),
    }
}

/// Stores the settings of `group`.
pub(super) fn save(
    store: &impl Store,
    group: &GroupId,
    settings: &GroupSettings,
) -> Result<(), StoreError> {
    let bytes = postcard::to_stdvec(settings).map_err(|e| StoreError::Encode(e.to_string()))?;
    store.kv_put(Namespace::GroupSettings, &settings_key(group), &bytes)
}

/// Each user's newest read receipt in `group`: the log position read up to.
pub(super) fn receipts(
    store: &impl Store,
    group: &GroupId,
) -> Result<BTreeMap<UserName, Seq>, StoreError> {
    let prefix = receipt_prefix(group);
    let mut out = BTreeMap::new();
    for (k, v) in store.kv_scan(Namespace::GroupSettings, &prefix)? {
        let name = std::str::from_utf8(&k[prefix.len()..])
            .ok()
            .and_then(|s| UserName::new(s).ok())
            .ok_or_else(|| StoreError::Corrupt("receipt key".into()))?;
        let r: Receipt = postcard::from_bytes(&v)?;
        out.insert(name, Seq(r.seq));
    }
    Ok(out)
}

/// The log position of message `id` of `group`, if this device holds it.
fn seq_of(store: &impl Store, group: &GroupId, id: &[u8; 16]) -> Result<Option<Seq>, StoreError> {
    Ok(store
        .messages(group)?
        .iter()
        .rev()
        .find(|m| &m.message_id == id)
        .map(|m| m.seq))
}

/// The newest message of `group` that is shown as a message, from a user other than `me`,
/// and the log position of the newest message of any kind.
pub(super) fn newest(
    store: &impl Store,
    group: &GroupId,
    after: Seq,
    me: &UserName,
) -> Result<(Option<[u8; 16]>, Option<Seq>), StoreError> {
    let stored = store.messages_after(group, after)?;
    let last = stored.last().map(|m| m.seq);
    let shown = stored
        .iter()
        .rev()
        .find(|m| &m.from != me && is_shown(store, m))
        .map(|m| m.message_id);
    Ok((shown, last))
}

/// Whether a stored message is shown to the user as a message (not a reaction, receipt,
/// setting...).
fn is_shown(store: &impl Store, m: &StoredMessage) -> bool {
    super::history::chat_message(store, String::new(), m).is_ok_and(|shown| shown.is_some())
}

/// Messages of users other than `me` shown as messages, after the group's last-read position.
pub(super) fn unread(
    store: &impl Store,
    group: &GroupId,
    last_read: u64,
    me: &UserName,
) -> Result<u32, StoreError> {
    let n = store
        .messages_after(group, Seq(last_read))?
        .iter()
        .filter(|m| &m.from != me && is_shown(store, m))
        .count();
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Fills what the settings know of `messages` (of `group`): who read each (`read_by`: users
/// other than its author whose newest receipt is at or after it) and when it disappears.
pub(super) fn decorate(
    store: &impl Store,
    group: &GroupId,
    messages: &mut [ChatMessage],
) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let receipts = receipts(store, group)?;
    for m in messages.iter_mut() {
        m.read_by = receipts
            .iter()
            .filter(|(user, seq)| **user != m.from && **seq >= m.seq)
            .map(|(user, _)| user.clone())
            .collect();
        if let Some(v) = store.kv_get(Namespace::GroupSettings, &expires_key(group, m.seq))? {
            m.expires_at_ms = Some(u64_at(&v, 0)?);
        }
    }
    Ok(())
}

/// A message was just stored (received, or this device's own): if its group's timer is on,
/// it expires `timer` after now (the local clock). Returns when. Inside the caller's
/// transaction.
pub(super) fn schedule_expiry(
    store: &impl Store,
    msg: &StoredMessage,
    now_ms: u64,
) -> Result<Option<u64>, StoreError> {
    let Some(secs) = load(store, &msg.group)?.disappearing_secs else {
        return Ok(None);
    };
    let at = now_ms.saturating_add(u64::from(secs).saturating_mul(1000));
    store.kv_put(Namespace::Expiry, &expiry_key(at, &msg.group, msg.seq), &[])?;
    store.kv_put(
        Namespace::GroupSettings,
        &expires_key(&msg.group, msg.seq),
        &at.to_be_bytes(),
    )?;
    Ok(Some(at))
}

/// When the next message expires, if any.
pub(super) fn next_expiry(store: &impl Store) -> Result<Option<u64>, StoreError> {
    match store.kv_first(Namespace::Expiry, &[])? {
        Some((k, _)) => Ok(Some(u64_at(&k, 0)?)),
        None => Ok(None),
    }
}

/// Deletes a stored message for good (it expired): the record, its search-index entry,
/// its expiry entries. Inside the caller's transaction.
fn erase(store: &impl Store, group: &GroupId, seq: Seq) -> Result<(), StoreError> {
    if let Some(v) = store.kv_get(Namespace::GroupSettings, &expires_key(group, seq))? {
        let at = u64_at(&v, 0)?;
        store.kv_delete(Namespace::Expiry, &expiry_key(at, group, seq))?;
        store.kv_delete(Namespace::GroupSettings, &expires_key(group, seq))?;
    }
    store.text_unindex(group, seq)?;
    store.delete_message(group, seq)
}

/// Deletes every message whose time is up at `now_ms` (the record, its search-index entry,
/// the edits and reactions of it this device holds; an attachment's pointer, with its key,
/// is in the record), in one transaction, then scrubs the store. The messages, by group.
pub(super) fn expire_due(
    store: &impl Store,
    now_ms: u64,
) -> Result<BTreeMap<GroupId, Vec<MessageId>>, StoreError> {
    let mut gone: BTreeMap<GroupId, Vec<MessageId>> = BTreeMap::new();
    if next_expiry(store)?.is_none_or(|at| at > now_ms) {
        return Ok(gone);
    }
    store.transaction(|store| {
        while let Some((k, _)) = store.kv_first(Namespace::Expiry, &[])? {
            let at = u64_at(&k, 0)?;
            if at > now_ms {
                break;
            }
            let group = k
                .get(8..24)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(GroupId)
                .ok_or_else(|| StoreError::Corrupt("expiry key".into()))?;
            let seq = Seq(u64_at(&k, 24)?);
            store.kv_delete(Namespace::Expiry, &k)?;
            let Some(msg) = store.message(&group, seq)? else {
                store.kv_delete(Namespace::GroupSettings, &expires_key(&group, seq))?;
                continue;
            };
            let shown = is_shown(store, &msg);
            // What refers to it and carries its text or more of the user's words: its edits
            // and the reactions to it.
            for later in store.messages_after(&group, seq)? {
                let refers = match Envelope::decode(&later.content).map(|e| e.content) {
                    Ok(Content::Edit { to, .. }) | Ok(Content::Reaction { to, .. }) => {
                        to == msg.message_id
                    }
                    _ => false,
                };
                if refers {
                    super::chat_log::forget(store, &later)?;
                    erase(store, &group, later.seq)?;
                }
            }
            super::chat_log::forget(store, &msg)?;
            erase(store, &group, seq)?;
            if shown {
                gone.entry(group)
                    .or_default()
                    .push(MessageId(msg.message_id));
            }
        }
        Ok::<(), StoreError>(())
    })?;
    if !gone.is_empty() {
        store.scrub()?;
    }
    Ok(gone)
}

/// What receiving a settings content did.
#[derive(Default)]
pub(super) struct Received {
    /// Whether the message goes to the history (receipts and typing do not).
    pub(super) store: bool,
    /// Whether this module handled the content (no `Event::Content` for it).
    pub(super) handled: bool,
    /// A new group name to apply to the group record.
    pub(super) rename: Option<String>,
    /// Events (and warnings) to report.
    pub(super) events: Vec<Event>,
}

impl Received {
    /// A content this module does not handle (a kind this client does not know): stored,
    /// and reported by the caller.
    pub(super) fn unhandled() -> Received {
        Received {
            store: true,
            handled: false,
            ..Received::default()
        }
    }
}

/// Sets `expires_at_ms` on the `Message` event of the message at `seq` among `events`.
pub(super) fn mark_expiry(events: &mut [Event], seq: Seq, expires_at_ms: Option<u64>) {
    for e in events {
        if let Event::Message(m) = e
            && m.seq == seq
        {
            m.expires_at_ms = expires_at_ms;
        }
    }
}

/// The receiving side of read receipts, typing, the disappearing timer and the group
/// profile (and the older rename), from `from` (`admin`: whether they are an admin of the
/// group) in `group`, inside the entry's transaction. `me` is this device's user.
#[allow(clippy::too_many_arguments)]
pub(super) fn on_received(
    store: &impl Store,
    group: GroupId,
    from: &UserName,
    admin: bool,
    me: &UserName,
    content: &Content,
    sent_at_ms: u64,
    now_ms: u64,
    max_name: usize,
) -> Result<Received, StoreError> {
    let mut out = Received {
        store: true,
        handled: true,
        ..Received::default()
    };
    let refuse = |what: &'static str, why: &'static str| {
        Event::Warning(Warning::SettingRefused {
            group,
            from: from.clone(),
            what,
            why,
        })
    };
    match content {
        Content::ReadReceipt { up_to } => {
            out.store = false;
            let Some(seq) = seq_of(store, &group, up_to)? else {
                // Not held here (expired, or never received): nothing to place it at.
                return Ok(out);
            };
            let key = {
                let mut k = receipt_prefix(&group);
                k.extend_from_slice(from.as_str().as_bytes());
                k
            };
            let older = match store.kv_get(Namespace::GroupSettings, &key)? {
                Some(v) => postcard::from_bytes::<Receipt>(&v)?.seq,
                None => 0,
            };
            if seq.0 > older {
                let r = Receipt {
                    up_to: *up_to,
                    seq: seq.0,
                };
                let bytes =
                    postcard::to_stdvec(&r).map_err(|e| StoreError::Encode(e.to_string()))?;
                store.kv_put(Namespace::GroupSettings, &key, &bytes)?;
                if from == me {
                    // Read on another device of this user: read here too.
                    let mut s = load(store, &group)?;
                    if seq.0 > s.last_read {
                        s.last_read = seq.0;
                        save(store, &group, &s)?;
                    }
                }
                out.events.push(Event::ReadUpTo {
                    group,
                    by: from.clone(),
                    up_to: MessageId(*up_to),
                });
            }
        }
        Content::Typing { active } => {
            out.store = false;
            if now_ms.saturating_sub(sent_at_ms) <= TYPING_FRESH_MS {
                out.events.push(Event::Typing {
                    group,
                    from: from.clone(),
                    active: *active,
                });
            }
        }
        Content::Disappearing { timer_secs } => {
            if !admin {
                out.events
                    .push(refuse("a disappearing timer", "not an admin"));
            } else if timer_secs.is_some_and(|t| t == 0 || t > MAX_DISAPPEARING_SECS) {
                out.events
                    .push(refuse("a disappearing timer", "out of bounds"));
            } else {
                let mut s = load(store, &group)?;
                s.disappearing_secs = *timer_secs;
                save(store, &group, &s)?;
                out.events.push(Event::GroupChanged {
                    group,
                    by: from.clone(),
                    change: GroupChange::Disappearing(*timer_secs),
                });
            }
        }
        Content::GroupProfile {
            name,
            description,
            avatar,
        } => {
            if !admin {
                out.events.push(refuse("a profile", "not an admin"));
            } else if name.is_empty()
                || name.len() > max_name
                || description.len() > MAX_DESCRIPTION_BYTES
            {
                out.events.push(refuse("a profile", "out of bounds"));
            } else {
                let mut s = load(store, &group)?;
                s.description = description.clone();
                s.avatar = avatar.clone();
                save(store, &group, &s)?;
                out.rename = Some(name.clone());
                out.events.push(Event::GroupChanged {
                    group,
                    by: from.clone(),
                    change: GroupChange::Profile {
                        name: name.clone(),
                        description: description.clone(),
                        avatar: avatar.is_some(),
                    },
                });
            }
        }
        Content::GroupInfo { name } => {
            // The older rename: the same rule; reported as before (as `Content`) when
            // applied, not at all when refused.
            out.handled = !admin;
            if !admin {
                out.events.push(refuse("a rename", "not an admin"));
            } else if name.len() <= max_name {
                out.rename = Some(name.clone());
            }
        }
        _ => {
            out.handled = false;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    // (No `use super::...`: the parts-order check reads those lines.)
    use cove_store::{Kv as _, Namespace};
    use cove_wire::GroupId;
    use serde::Serialize;

    use crate::attachment::AttachmentPointer;

    /// A record of an older layout (ending before `muted_until_ms`) decodes with the
    /// missing field at its default.
    #[test]
    fn an_older_record_decodes_with_the_appended_fields_at_their_defaults() {
        #[derive(Serialize)]
        struct Older {
            description: String,
            avatar: Option<AttachmentPointer>,
            disappearing_secs: Option<u32>,
            last_read: u64,
        }
        let store = cove_store::MemoryStore::new();
        let group = GroupId([7; 16]);
        let older = Older {
            description: "d".into(),
            avatar: None,
            disappearing_secs: Some(5),
            last_read: 9,
        };
        let bytes = postcard::to_stdvec(&older).unwrap_or_default();
        store
            .kv_put(
                Namespace::GroupSettings,
                &super::settings_key(&group),
                &bytes,
            )
            .ok();
        let got = super::load(&store, &group).ok();
        assert_eq!(
            got,
            Some(super::GroupSettings {
                description: "d".into(),
                avatar: None,
                disappearing_secs: Some(5),
                last_read: 9,
                muted_until_ms: None,
            })
        );
    }
}
