//! Read receipts, typing, disappearing messages, the group profile and muting (issue 13):
//! the commands, the receipt batching timer and the expiry timer. The stored state and the
//! receiving side are in `group_settings`.

use std::collections::{BTreeMap, HashMap};

use cove_store::Store;
use cove_wire::{GroupId, Payload, PostKind, Request};

use super::effects::Pending;
use super::{Client, Conn, group_settings};
use crate::attachment::AttachmentPointer;
use crate::content::{Content, ENVELOPE_VERSION, Envelope, MAX_DESCRIPTION_BYTES};
use crate::error::InvalidArgument;
use crate::types::{CommandError, Event, GroupChange, GroupInfo, HandleError, OpId};

pub use super::group_settings::{MAX_DISAPPEARING_SECS, TYPING_FRESH_MS};

/// A group's read receipts go out at most this often (ms): only the newest of a burst.
pub const RECEIPT_INTERVAL_MS: u64 = 5_000;

/// Read receipts waiting for their group's interval to pass.
#[derive(Default)]
pub(super) struct Receipts {
    /// The newest receipt to send, per group.
    queued: BTreeMap<GroupId, [u8; 16]>,
    /// When each group's last receipt went out (local clock).
    last_sent: HashMap<GroupId, u64>,
}

impl Receipts {
    /// When the next queued receipt may go out.
    fn next_due(&self) -> Option<u64> {
        self.queued
            .keys()
            .map(|g| {
                self.last_sent
                    .get(g)
                    .map_or(0, |t| t.saturating_add(RECEIPT_INTERVAL_MS))
            })
            .min()
    }
}

impl<S: Store> Client<S> {
    /// Marks `group` read on this device up to its newest message: unread goes to zero, and a
    /// read receipt goes to the group (batched: at most one every few seconds per group).
    pub fn mark_read(&mut self, now_ms: u64, group: &str) -> Result<(), CommandError> {
        let id = self.groups.resolve(group)?;
        let store = self.provider.store();
        let mut settings = group_settings::load(store, &id)?;
        let (shown, last) = group_settings::newest(
            store,
            &id,
            cove_wire::Seq(settings.last_read),
            self.me.user(),
        )?;
        if let Some(last) = last {
            settings.last_read = last.0;
            group_settings::save(store, &id, &settings)?;
        }
        if let Some(up_to) = shown
            && self.groups.holds(&id)
        {
            self.receipts.queued.insert(id, up_to);
            self.flush_receipts(now_ms)?;
        }
        Ok(())
    }

    /// Sends the queued receipts whose group's interval has passed.
    fn flush_receipts(&mut self, now_ms: u64) -> Result<(), CommandError> {
        let due: Vec<GroupId> = self
            .receipts
            .queued
            .keys()
            .filter(|g| {
                self.receipts
                    .last_sent
                    .get(g)
                    .is_none_or(|t| now_ms >= t.saturating_add(RECEIPT_INTERVAL_MS))
            })
            .copied()
            .collect();
        // Each due receipt leaves the queue, sent or not (a newer mark_read queues again):
        // a receipt that cannot be sealed does not keep the timer due.
        let mut result = Ok(());
        for group in due {
            let Some(up_to) = self.receipts.queued.remove(&group) else {
                continue;
            };
            if !self.groups.holds(&group) {
                continue;
            }
            self.receipts.last_sent.insert(group, now_ms);
            if let Err(e) = self.send_content(now_ms, group, Content::ReadReceipt { up_to }) {
                result = Err(e);
            }
        }
        result
    }

    /// Tells the group this user is typing (or stopped). Ephemeral: not stored, not
    /// retried; `None` when it was not sent (not connected).
    pub fn set_typing(
        &mut self,
        now_ms: u64,
        group: &str,
        active: bool,
    ) -> Result<Option<OpId>, CommandError> {
        let id = self.groups.chat(group)?;
        if self.conn != Conn::Ready || self.leaves.holds_group(&id) {
            return Ok(None);
        }
        let mut message_id = [0u8; 16];
        self.provider.rng().fill(&mut message_id)?;
        let bytes = Envelope {
            version: ENVELOPE_VERSION,
            id: message_id,
            sent_at_ms: now_ms,
            content: Content::Typing { active },
        }
        .encode()?;
        let store = self.provider.store();
        let mls = self
            .groups
            .get_mut(&id)
            .ok_or_else(|| CommandError::NotMember(group.to_string()))?;
        // The MLS state moves on (a message key is used up): in a transaction of its own,
        // but nothing of the message is kept.
        store.begin()?;
        let sealed = mls
            .create_message(&self.provider, &self.me.signer, &bytes)
            .map_err(CommandError::Seal)
            .and_then(|m| m.to_bytes().map_err(CommandError::Encode));
        let epoch = cove_wire::Epoch(mls.epoch().as_u64());
        let payload = match sealed {
            Ok(p) => {
                store.commit()?;
                p
            }
            Err(e) => {
                let _ = store.rollback();
                self.groups.reload(store, &id);
                return Err(e);
            }
        };
        let op = self.new_op();
        self.send(
            Request::Post {
                group: id,
                epoch,
                kind: PostKind::Application,
                payload: Payload(payload),
            },
            Pending::Ephemeral { op },
        );
        Ok(Some(op))
    }

    /// Sets the group's disappearing-messages timer (`None`: off; 1 second ..= 365 days;
    /// admins only). Applies on this device at once, on the others when they receive it.
    pub fn set_disappearing(
        &mut self,
        now_ms: u64,
        group: &str,
        timer_secs: Option<u32>,
    ) -> Result<OpId, CommandError> {
        if timer_secs.is_some_and(|t| t == 0 || t > MAX_DISAPPEARING_SECS) {
            return Err(CommandError::Invalid(InvalidArgument::Timer));
        }
        self.groups.chat(group)?;
        let id = self.require_admin(group)?;
        let op = self.send_content(now_ms, id, Content::Disappearing { timer_secs })?;
        let store = self.provider.store();
        let mut settings = group_settings::load(store, &id)?;
        settings.disappearing_secs = timer_secs;
        group_settings::save(store, &id, &settings)?;
        self.outputs
            .push_back(crate::types::Output::Event(Event::GroupChanged {
                group: id,
                by: self.me.user().clone(),
                change: GroupChange::Disappearing(timer_secs),
            }));
        Ok(op)
    }

    /// Sets the group's name, description and avatar (admins only). Applies on this device
    /// at once, on the others when they receive it.
    pub fn set_group_profile(
        &mut self,
        now_ms: u64,
        group: &str,
        name: &str,
        description: &str,
        avatar: Option<AttachmentPointer>,
    ) -> Result<OpId, CommandError> {
        if name.is_empty() || name.len() > super::MAX_GROUP_NAME {
            return Err(CommandError::Invalid(InvalidArgument::GroupNameLength {
                max: super::MAX_GROUP_NAME,
            }));
        }
        if description.len() > MAX_DESCRIPTION_BYTES {
            return Err(CommandError::Invalid(InvalidArgument::DescriptionLength {
                max: MAX_DESCRIPTION_BYTES,
            }));
        }
        self.groups.chat(group)?;
        let id = self.require_admin(group)?;
        let content = Content::GroupProfile {
            name: name.to_string(),
            description: description.to_string(),
            avatar: avatar.clone(),
        };
        let op = self.send_content(now_ms, id, content)?;
        let store = self.provider.store();
        let mut settings = group_settings::load(store, &id)?;
        settings.description = description.to_string();
        settings.avatar = avatar.clone();
        group_settings::save(store, &id, &settings)?;
        if let Some((_, Some(record))) = self.groups.get_with_record(&id) {
            record.name = name.to_string();
            store.put_group(record)?;
        }
        self.outputs
            .push_back(crate::types::Output::Event(Event::GroupChanged {
                group: id,
                by: self.me.user().clone(),
                change: GroupChange::Profile {
                    name: name.to_string(),
                    description: description.to_string(),
                    avatar: avatar.is_some(),
                },
            }));
        Ok(op)
    }

    /// Mutes `group` on this device until `until_ms` (local clock; `u64::MAX` = for ever),
    /// or unmutes it (`None`). Local only: nobody else learns it.
    pub fn mute(&mut self, group: &str, until_ms: Option<u64>) -> Result<(), CommandError> {
        let id = self.groups.resolve(group)?;
        let store = self.provider.store();
        let mut settings = group_settings::load(store, &id)?;
        settings.muted_until_ms = until_ms;
        group_settings::save(store, &id, &settings)?;
        Ok(())
    }

    /// Fills the settings' fields of the group list (description, timer, unread, mute).
    pub(super) fn with_settings(&self, infos: &mut [GroupInfo]) -> Result<(), CommandError> {
        let store = self.provider.store();
        for info in infos.iter_mut() {
            let s = group_settings::load(store, &info.id)?;
            info.unread = group_settings::unread(store, &info.id, s.last_read, self.me.user())?;
            info.description = s.description;
            info.avatar = s.avatar;
            info.disappearing_secs = s.disappearing_secs;
            info.muted_until_ms = s.muted_until_ms;
        }
        Ok(())
    }

    /// The settings' timers: the next receipt due, the next message to expire.
    pub(super) fn settings_timeout(&self) -> Option<u64> {
        // A store that cannot be read now: no expiry is scheduled until the next input
        // (never a deadline that stays due, which a shell would spin on).
        let expiry = group_settings::next_expiry(self.provider.store()).unwrap_or(None);
        match (self.receipts.next_due(), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The settings' timers at `now_ms`: due receipts go out, expired messages are deleted
    /// (and reported as [`Event::Expired`]).
    pub(super) fn settings_on_timeout(&mut self, now_ms: u64) -> Result<(), HandleError> {
        let gone = group_settings::expire_due(self.provider.store(), now_ms)?;
        for (group, ids) in gone {
            self.outputs
                .push_back(crate::types::Output::Event(Event::Expired { group, ids }));
        }
        match self.flush_receipts(now_ms) {
            Ok(()) => Ok(()),
            Err(CommandError::Store(e)) => Err(e.into()),
            // The group's state refused it (e.g. a commit pending): the next mark_read
            // sends a newer one.
            Err(_) => Ok(()),
        }
    }
}
