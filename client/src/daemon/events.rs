//! The event pump: every session event becomes a notification for the subscribed clients
//! (and call signalling goes to the calls).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use cove_core::{ChatMessage, Event, IdentityEvent};
use cove_wire::{GroupId, UserName};

use super::server::Daemon;
use crate::device::message_view;
use crate::session::SessionEvent;

/// Reads the session's events until it stops.
pub(super) async fn pump(daemon: Arc<Daemon>, mut events: mpsc::UnboundedReceiver<SessionEvent>) {
    while let Some(event) = events.recv().await {
        on_event(&daemon, event).await;
    }
}

async fn on_event(daemon: &Arc<Daemon>, event: SessionEvent) {
    // The replies to the backup's requests go to it; every other event goes on.
    let event = match event {
        SessionEvent::Core(Event::Reply { id, result }) => match daemon.backups.route(id, result) {
            None => return,
            Some(result) => SessionEvent::Core(Event::Reply { id, result }),
        },
        event => event,
    };
    daemon.calls.on_event(daemon, &event).await;
    match event {
        SessionEvent::Connected => {}
        SessionEvent::Disconnected(_) => {
            if daemon.connected.swap(false, Ordering::Relaxed) {
                daemon.notify("connection", json!({ "connected": false }));
            }
        }
        SessionEvent::Core(event) => on_core(daemon, event).await,
    }
}

async fn on_core(daemon: &Arc<Daemon>, event: Event) {
    match event {
        Event::Authenticated { .. } if !daemon.connected.swap(true, Ordering::Relaxed) => {
            daemon.notify("connection", json!({ "connected": true }));
        }
        Event::Message(m) => {
            daemon.backups.stored();
            let index = attachment_index(daemon, &m).await;
            daemon.notify("message", message_json(&m, index, false));
        }
        Event::Joined { group, name, by } => {
            let me = daemon.session.call(|c| c.user().clone()).await.ok();
            daemon.notify(
                "membership",
                json!({
                    "group": group.to_hex(), "group_name": name, "kind": "joined",
                    "users": me.map(|u| vec![u.to_string()]).unwrap_or_default(),
                    "by": by.as_str(),
                }),
            );
        }
        Event::MembersChanged {
            group,
            by,
            added,
            removed,
        } => {
            let name = group_name(daemon, group).await;
            for (kind, users) in [("added", added), ("removed", removed)] {
                if !users.is_empty() {
                    daemon.notify(
                        "membership",
                        json!({
                            "group": group.to_hex(), "group_name": name, "kind": kind,
                            "users": names(&users), "by": by.as_str(),
                        }),
                    );
                }
            }
        }
        Event::RemovedFromGroup { group } => {
            let name = group_name(daemon, group).await;
            let me = daemon.session.call(|c| c.user().clone()).await.ok();
            daemon.notify(
                "membership",
                json!({
                    "group": group.to_hex(), "group_name": name, "kind": "removed",
                    "users": me.map(|u| vec![u.to_string()]).unwrap_or_default(),
                }),
            );
        }
        Event::Warning(w) => daemon.notify("warning", json!({ "text": w.to_string() })),
        Event::Identity(event) => {
            let user = match &event {
                IdentityEvent::DeviceAdded { user, .. }
                | IdentityEvent::DeviceRevoked { user, .. }
                | IdentityEvent::IdentityChanged { user, .. }
                | IdentityEvent::LeafRefused { user, .. } => user.to_string(),
            };
            let group = match &event {
                IdentityEvent::LeafRefused { group, .. } => Some(*group),
                _ => None,
            };
            let name = match group {
                Some(g) => group_name(daemon, g).await,
                None => String::new(),
            };
            let view = crate::device::identity_view(&event, || name);
            let kind = match &event {
                IdentityEvent::IdentityChanged { .. } => "changed",
                IdentityEvent::DeviceAdded { .. } => "device_added",
                IdentityEvent::DeviceRevoked { .. } => "device_revoked",
                IdentityEvent::LeafRefused { .. } => "leaf_refused",
            };
            let mut params = json!({ "user": user, "kind": kind, "text": view.line() });
            if let Some(g) = group {
                params["group"] = g.to_hex().into();
            }
            daemon.notify("identity", params);
        }
        Event::KeyChanged { user, .. } => daemon.notify(
            "identity",
            json!({
                "user": user.as_str(), "kind": "key_changed",
                "text": format!("a device key of {user} changed; compare `cove safety-number {user}` with them"),
            }),
        ),
        event @ (Event::Reacted { .. }
        | Event::Edited { .. }
        | Event::Deleted { .. }
        | Event::ReadUpTo { .. }
        | Event::Typing { .. }
        | Event::GroupChanged { .. }
        | Event::Expired { .. }) => {
            let group = match &event {
                Event::Reacted { group, .. }
                | Event::Edited { group, .. }
                | Event::Deleted { group, .. }
                | Event::ReadUpTo { group, .. }
                | Event::Typing { group, .. }
                | Event::GroupChanged { group, .. }
                | Event::Expired { group, .. } => *group,
                _ => return,
            };
            let name = group_name(daemon, group).await;
            if let Some(view) = crate::views::UpdateView::of(&event, || name) {
                daemon.notify("update", update_json(&view));
            }
        }
        Event::Rejoined { group, unreadable } => {
            let name = group_name(daemon, group).await;
            daemon.notify(
                "warning",
                json!({
                    "group": group.to_hex(),
                    "text": format!("rejoined {name} ({unreadable} messages could not be read)"),
                }),
            );
        }
        _ => {}
    }
}

/// An `update` notification's params (see `API.md`): the view's fields, with the group's
/// id as `group` and its name as `group_name` (as in `message`), the kind as `kind`, and
/// the view's line as `text`.
pub(super) fn update_json(view: &crate::views::UpdateView) -> Value {
    let mut v = serde_json::to_value(view).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        let name = o.remove("group").unwrap_or_default();
        let id = o.remove("group_id").unwrap_or_default();
        let kind = o.remove("event").unwrap_or_default();
        o.insert("group".into(), id);
        o.insert("group_name".into(), name);
        o.insert("kind".into(), kind);
        o.insert("text".into(), view.line().into());
    }
    v
}

fn names(users: &[UserName]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}

/// The group's name, or its id (hex) when it has none.
pub(super) async fn group_name(daemon: &Daemon, group: GroupId) -> String {
    let groups = daemon
        .session
        .call(|c| c.groups())
        .await
        .unwrap_or_default();
    groups
        .into_iter()
        .find(|g| g.id == group)
        .map(|g| g.name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| group.to_hex())
}

/// The 1-based position of `m`'s attachment among the group's attachments (what
/// `download` takes as `file`), if it has one.
async fn attachment_index(daemon: &Daemon, m: &ChatMessage) -> Option<usize> {
    m.attachment.as_ref()?;
    let (group, id) = (m.group.to_hex(), m.id);
    let history = daemon
        .session
        .call(move |c| c.history(&group))
        .await
        .ok()?
        .ok()?;
    history
        .iter()
        .filter(|h| h.attachment.is_some())
        .position(|h| h.id == id)
        .map(|i| i + 1)
}

/// A message as the API shows it (see `API.md`).
pub(super) fn message_json(m: &ChatMessage, file_index: Option<usize>, pending: bool) -> Value {
    let view = message_view(m);
    let mut v = json!({
        "id": view.id,
        "group": view.group_id,
        "group_name": view.group,
        "sender": view.from,
        "device": view.device,
        "sent_at_ms": view.sent_at,
        "seq": view.seq,
        "kind": if m.attachment.is_some() { "file" } else { "text" },
        "text": view.text,
        "pending": pending,
        "reply_to": view.reply_to,
        "reactions": view.reactions,
        "edited": view.edited,
        "deleted": view.deleted,
        "unsupported": view.unsupported,
    });
    if let Some(a) = &view.attachment {
        v["file"] = json!({
            "name": a.name, "size": a.size, "index": file_index, "id": a.id, "type": a.media_type,
        });
    }
    v
}
