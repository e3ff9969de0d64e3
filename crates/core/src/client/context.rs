//! What the parts of the client lend each other for one step: the provider (store, crypto,
//! randomness), this device, the groups, and whether the connection is ready.

use cove_store::Store;

use super::device::Me;
use super::groups::Groups;
use crate::provider::CoveProvider;

/// The shared parts a step of the outbox, a membership change or an inbound message needs.
pub(super) struct Cx<'a, S: Store> {
    /// Store, crypto, randomness.
    pub(super) provider: &'a CoveProvider<S>,
    /// This device.
    pub(super) me: &'a Me,
    /// The groups.
    pub(super) groups: &'a mut Groups,
    /// Whether the connection is authenticated (requests other than acks go out anyway
    /// and are answered or dropped with the connection; posts wait for a ready one).
    pub(super) ready: bool,
}

impl<S: Store> Cx<'_, S> {
    /// A shorter-lived copy, to lend it again.
    pub(super) fn reborrow(&mut self) -> Cx<'_, S> {
        Cx {
            provider: self.provider,
            me: self.me,
            groups: self.groups,
            ready: self.ready,
        }
    }
}
