//! Cove Drive groups (issue 14) as the client sees them: the tree operations of a drive
//! group's log, read from the stored messages (received ones and this device's own once the
//! relay stored them). Replaying them is [`crate::drive::Tree`]'s job.

use cove_store::Store;
use cove_wire::{GroupId, Seq, UserName};

use super::Client;
use crate::content::{Content, Envelope};
use crate::drive::DriveOp;
use crate::types::QueryError;

impl<S: Store> Client<S> {
    /// The drive operations of `group` stored after log position `after` (0: all), in log
    /// order, with their log positions and authors (the sender's user, authenticated by its
    /// MLS leaf). Other contents of the log are skipped. Empty for a group this device has no
    /// messages of.
    pub fn drive_ops(
        &self,
        group: &GroupId,
        after: u64,
    ) -> Result<Vec<(u64, UserName, DriveOp)>, QueryError> {
        let stored = self.provider.store().messages_after(group, Seq(after))?;
        Ok(stored
            .into_iter()
            .filter_map(|m| match Envelope::decode(&m.content).ok()?.content {
                Content::Drive(op) => Some((m.seq.0, m.from, *op)),
                _ => None,
            })
            .collect())
    }

    /// Whether `group` is a Cove Drive group (a personal drive or a shared folder).
    pub fn is_drive_group(&self, group: &GroupId) -> bool {
        self.groups.is_drive(group)
    }
}
