//! Messages: sending text, `sync`, `next_message`, shown positions and warnings.

use cove_core::{ChatMessage, Event, IdentityEvent};
use cove_store::{Store, StoreError};
use cove_wire::{GroupId, Seq, UserName};

use super::error::DeviceError;
use super::handle::Device;
use super::inbox::{Incoming, PRINTED_KEY, identity_view, message_view};
use crate::session::{self, LinkState, SessionError, SessionEvent};
use crate::views::{IdentityView, MessageView, UpdateView};

/// What became of a message handed to [`Device::send_text`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The relay stored it (it answered `Posted`).
    Delivered,
    /// The relay did not answer in time, so whether it stored the message is unknown. The
    /// message stays in this device's persisted outbox and goes out at the next connection
    /// (of any command), exactly once: if the relay did store it, its echo in the backlog
    /// completes it, and the relay answers a repeated post with the original entry.
    Queued,
}

impl Device {
    /// Before encrypting a message: waits (up to the timeout) until the relay pushed the
    /// backlog, so the message is made at the group's current epoch. A message made at an
    /// older epoch is still accepted by the relay, but a device added by a commit since
    /// (e.g. a just linked device) cannot read it. If the backlog does not arrive in time,
    /// the message is sent anyway.
    pub(crate) async fn caught_up_for_sending(&self) {
        if self.online {
            let _ = self.session.caught_up(self.timeout).await;
        }
    }

    /// Sends a text: [`Sent::Delivered`] once the relay has stored it, [`Sent::Queued`] if
    /// it did not answer within the timeout (the message is persisted and sent once later;
    /// sending it again would post it twice). An error means it was not sent and will not
    /// be: refused locally (nothing queued) or by the relay.
    pub async fn send_text(&self, group: &str, text: &str) -> Result<Sent, DeviceError> {
        self.reachable().await?;
        self.caught_up_for_sending().await;
        let (group, text) = (group.to_owned(), text.to_owned());
        let done = self
            .session
            .op(self.timeout, move |c| {
                c.send_text(session::now_ms(), &group, &text)
            })
            .await?;
        match done {
            Ok(()) => Ok(Sent::Delivered),
            // The core persisted it in the outbox before posting it.
            Err(SessionError::Timeout { .. }) => Ok(Sent::Queued),
            Err(e) => Err(e.into()),
        }
    }

    /// Receives everything pending and returns the messages not shown before (other
    /// devices' messages, in log order per group). Call [`Device::mark_shown`] for them once
    /// they are shown, so a crash in between shows them again rather than never.
    pub async fn sync(&mut self) -> Result<Vec<MessageView>, DeviceError> {
        Ok(self
            .sync_incoming()
            .await?
            .into_iter()
            .filter_map(|i| match i {
                Incoming::Message(m) => Some(m),
                Incoming::Notice(_)
                | Incoming::Warning(_)
                | Incoming::Identity(_)
                | Incoming::Update(_) => None,
            })
            .collect())
    }

    /// Like [`Device::sync`], and also returns every warning and identity event the core
    /// raised meanwhile (as [`Incoming::Warning`] and [`Incoming::Identity`], before the
    /// messages) and the reactions, edits, deletes, receipts, settings changes and expiries
    /// (as [`Incoming::Update`], after them; typing is left out); other notices are left out.
    pub async fn sync_incoming(&mut self) -> Result<Vec<Incoming>, DeviceError> {
        self.settle().await?;
        // Everything the core said while catching up is in the channel by now (the session
        // is idle only after it drained the core's outputs). Messages are collected from the
        // store below; warnings exist only as events.
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        let mut warnings = Vec::new();
        let mut updates = Vec::new();
        for event in events {
            match event {
                SessionEvent::Core(Event::Warning(warning)) => {
                    warnings.push(Incoming::Warning(warning.to_string()));
                }
                SessionEvent::Core(Event::Identity(event)) => {
                    warnings.push(Incoming::Identity(self.identity_view(&event).await));
                }
                // Typing and read receipts are live only (`listen`): a sync shows what was
                // said and done, not who was typing or reading (a message's readers are in
                // `history --json`, its `read_by`).
                SessionEvent::Core(Event::Typing { .. } | Event::ReadUpTo { .. }) => {}
                SessionEvent::Core(event) => {
                    if let Some(view) = self.update_view(&event).await {
                        updates.push(Incoming::Update(view));
                    }
                }
                _ => {}
            }
        }
        self.collect_unprinted().await?;
        let mut messages = Vec::new();
        for i in self.unprinted.drain(..) {
            match i {
                Incoming::Message(_) => messages.push(i),
                Incoming::Warning(_) | Incoming::Identity(_) => warnings.push(i),
                Incoming::Update(_) => updates.push(i),
                Incoming::Notice(_) => {}
            }
        }
        warnings.extend(messages);
        warnings.extend(updates);
        Ok(warnings)
    }

    /// The next message not shown before, waiting for one to arrive. Messages received by
    /// earlier commands (e.g. during `send`) come first. The previous one returned is
    /// marked shown when this is called again (or at [`Device::close`]).
    pub async fn next_message(&mut self) -> Result<MessageView, DeviceError> {
        loop {
            if let Incoming::Message(m) = self.next_incoming().await? {
                return Ok(m);
            }
        }
    }

    /// Like [`Device::next_message`], and also returns notices for the user as they happen
    /// (joined or removed from a group, membership changes, a changed device key, the
    /// connection lost and back), identity events and the core's warnings.
    pub async fn next_incoming(&mut self) -> Result<Incoming, DeviceError> {
        if let Some(m) = self.returned.take() {
            self.mark_shown(&m).await?;
        }
        if self.queued.is_empty() {
            self.refresh_device_id().await;
            // Anything stored but not shown yet (first call).
            self.collect_unprinted().await?;
        }
        loop {
            if let Some(next) = self.unprinted.pop_front() {
                if let Incoming::Message(m) = &next {
                    self.returned = Some(m.clone());
                }
                return Ok(next);
            }
            let Some(event) = self.events.recv().await else {
                return Err(SessionError::Stopped(None).into());
            };
            let notice = match event {
                SessionEvent::Core(Event::Message(m)) => {
                    let queued = self.queued.entry(m.group).or_insert(0);
                    if m.seq.0 > *queued {
                        *queued = m.seq.0;
                        if Some(m.from_device) != self.device {
                            self.unprinted
                                .push_back(Incoming::Message(message_view(&m)));
                        }
                    }
                    None
                }
                SessionEvent::Core(Event::Authenticated { device, .. }) => {
                    self.device = Some(device);
                    None
                }
                SessionEvent::Core(Event::Joined { name, by, .. }) => {
                    Some(format!("joined {name} (added by {by})"))
                }
                SessionEvent::Core(Event::MembersChanged {
                    group,
                    by,
                    added,
                    removed,
                }) => {
                    let name = self.group_name(group).await;
                    let list = |v: &[UserName]| {
                        v.iter()
                            .map(UserName::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    match (added.is_empty(), removed.is_empty()) {
                        (false, true) => Some(format!("{by} added {} to {name}", list(&added))),
                        (true, false) => {
                            Some(format!("{by} removed {} from {name}", list(&removed)))
                        }
                        (false, false) => Some(format!(
                            "{by} added {} and removed {} in {name}",
                            list(&added),
                            list(&removed)
                        )),
                        (true, true) => None,
                    }
                }
                SessionEvent::Core(Event::RemovedFromGroup { group }) => Some(format!(
                    "you were removed from {}",
                    self.group_name(group).await
                )),
                SessionEvent::Core(Event::Warning(warning)) => {
                    self.unprinted
                        .push_back(Incoming::Warning(warning.to_string()));
                    None
                }
                SessionEvent::Core(Event::Identity(event)) => {
                    let view = self.identity_view(&event).await;
                    self.unprinted.push_back(Incoming::Identity(view));
                    None
                }
                SessionEvent::Core(Event::Rejoined { group, unreadable }) => {
                    let view = IdentityView::Rejoined {
                        group: self.group_name(group).await,
                        group_id: group.to_hex(),
                        unreadable,
                    };
                    self.unprinted.push_back(Incoming::Identity(view));
                    None
                }
                SessionEvent::Core(
                    event @ (Event::Reacted { .. }
                    | Event::Edited { .. }
                    | Event::Deleted { .. }
                    | Event::ReadUpTo { .. }
                    | Event::Typing { .. }
                    | Event::GroupChanged { .. }
                    | Event::Expired { .. }),
                ) => {
                    if let Some(view) = self.update_view(&event).await {
                        self.unprinted.push_back(Incoming::Update(view));
                    }
                    None
                }
                SessionEvent::Core(Event::KeyChanged { user, .. }) => Some(format!(
                    "WARNING: a device key of {user} changed; compare `cove safety-number {user}` with them"
                )),
                SessionEvent::Connected => {
                    let back = !self.was_connected && self.device.is_some();
                    self.was_connected = true;
                    back.then(|| "connected to the relay".to_owned())
                }
                SessionEvent::Disconnected(reason) => {
                    tracing::debug!(%reason, "disconnected");
                    let lost = std::mem::replace(&mut self.was_connected, false);
                    lost.then(|| "connection to the relay lost; reconnecting".to_owned())
                }
                SessionEvent::Core(_) => None,
            };
            if let Some(notice) = notice {
                self.unprinted.push_back(Incoming::Notice(notice));
            }
            if let LinkState::Stopped(reason) = self.session.link()
                && self.unprinted.is_empty()
            {
                return Err(SessionError::Stopped(reason).into());
            }
        }
    }

    /// The view of an identity event (with the group's name for a refused member).
    async fn identity_view(&self, event: &IdentityEvent) -> IdentityView {
        let name = match event {
            IdentityEvent::LeafRefused { group, .. } => self.group_name(*group).await,
            _ => String::new(),
        };
        identity_view(event, || name)
    }

    /// The view of a reaction, edit, delete, receipt, typing, settings change or expiry
    /// (`None` for other events).
    async fn update_view(&self, event: &Event) -> Option<UpdateView> {
        let group = match event {
            Event::Reacted { group, .. }
            | Event::Edited { group, .. }
            | Event::Deleted { group, .. }
            | Event::ReadUpTo { group, .. }
            | Event::Typing { group, .. }
            | Event::GroupChanged { group, .. }
            | Event::Expired { group, .. } => *group,
            _ => return None,
        };
        let name = self.group_name(group).await;
        UpdateView::of(event, || name)
    }

    /// The group's name, or its id (hex) when it has none here (a group whose Welcome was
    /// refused is kept without the name its impostor gave it).
    async fn group_name(&self, group: GroupId) -> String {
        let groups = self.session.call(|c| c.groups()).await.unwrap_or_default();
        groups
            .into_iter()
            .find(|g| g.id == group)
            .map(|g| g.name)
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| group.to_hex())
    }

    /// Records that `message` (and everything before it in its group) was shown.
    pub async fn mark_shown(&self, message: &MessageView) -> Result<(), DeviceError> {
        let key = format!("{PRINTED_KEY}{}", message.group_id);
        let seq = message.seq;
        self.session
            .call(move |c| -> Result<(), StoreError> {
                let shown: u64 = c
                    .store()
                    .config(&key)?
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if seq > shown {
                    c.store().set_config(&key, &seq.to_string())?;
                }
                Ok(())
            })
            .await??;
        Ok(())
    }

    /// The next event from the session (core events and connection changes), unfiltered.
    /// Do not mix with [`Device::next_message`], which consumes the same stream.
    pub async fn next_event(&mut self) -> Option<SessionEvent> {
        self.events.recv().await
    }

    /// Queues every stored message not shown yet (by the persistent marks).
    async fn collect_unprinted(&mut self) -> Result<(), DeviceError> {
        let me = self.device;
        let found = self
            .session
            .call(
                move |c| -> Result<Vec<(GroupId, u64, Vec<ChatMessage>)>, DeviceError> {
                    let mut out = Vec::new();
                    for g in c.groups() {
                        let key = format!("{PRINTED_KEY}{}", g.id.to_hex());
                        let shown: u64 = c
                            .store()
                            .config(&key)?
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut last = shown;
                        let mut new = Vec::new();
                        // Only what follows the shown position is read: the cost of a
                        // sync follows what is new, not the length of the history.
                        for m in c.history_after(&g.id, Seq(shown))? {
                            last = last.max(m.seq.0);
                            if Some(m.from_device) != me {
                                new.push(m);
                            }
                        }
                        out.push((g.id, last, new));
                    }
                    Ok(out)
                },
            )
            .await??;
        for (group, last, new) in found {
            let queued = self.queued.entry(group).or_insert(0);
            for m in new {
                if m.seq.0 > *queued {
                    self.unprinted
                        .push_back(Incoming::Message(message_view(&m)));
                }
            }
            *queued = (*queued).max(last);
        }
        Ok(())
    }
}
