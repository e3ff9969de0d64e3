//! What the client's parts ask for: requests to send (with what their answer is for),
//! events for the user and acknowledgements. The parts never send anything themselves: they
//! push [`Effect`]s, in order, and the dispatcher ([`super::Client`]) applies them (gives each
//! request its id, remembers what it is for, drops acks while the connection is not ready).
//! A leaf: it imports no other part of the client.

use std::collections::VecDeque;

use cove_wire::{GroupId, Request, Seq, Stream, UserName};

use crate::error::Warning;
use crate::types::{Event, OpError, OpId};

/// What a request in flight was for (the dispatcher routes its answer by it).
#[derive(Debug)]
pub(super) enum Pending {
    /// Registration or challenge-response authentication.
    Auth { registered: bool },
    /// The KeyPackage stock check.
    Stock,
    /// A KeyPackage upload (answered with the new stock).
    Upload,
    /// A group creation command's `CreateGroup`.
    CreateGroup { op: OpId },
    /// A membership change's directory look-up or KeyPackage claim for `user`.
    Lookup {
        op: OpId,
        lookup: Lookup,
        user: UserName,
    },
    /// A check of keys first seen in MLS against the directory.
    Verify { user: UserName },
    /// An outbox item's post.
    PostApplication { local_id: u64 },
    /// A membership change's commit.
    PostCommit { op: OpId },
    /// A fetch of missed log entries.
    Fetch,
    /// An answered acknowledgement; its answer settles the quiet acks sent before it
    /// (those with an ordinal below `confirms`, see `acks`).
    Ack { confirms: u64 },
    /// A quiet acknowledgement (`QuietAck`), recognised by its id when the relay refuses it.
    QuietAck,
    /// A request of the shell (`Client::send_request`); its answer is an event.
    External,
    /// Publishing the own device list, bringing the relay's copy to `len` entries.
    PublishList { len: u64 },
    /// Fetching `user`'s device list to pin (or check) it, outside any command.
    ObserveList { user: UserName },
    /// Leaving a group at the relay without MLS state (a Welcome not taken, or a group
    /// never joined).
    LeaveGroup,
    /// A rejoin's fetch of the group's public state.
    FetchGroupState { group: GroupId },
    /// A rejoin's external commit.
    PostRejoin { group: GroupId },
    /// The user-groups join's `UserGroups` (see `Client::join_user_groups`).
    UserGroups { op: OpId },
    /// An ephemeral post (typing, issue 13): not in the outbox, never retried.
    Ephemeral { op: OpId },
}

impl Pending {
    /// What the request was for, in a few words (for [`crate::error::Warning`]).
    pub(super) fn name(&self) -> &'static str {
        match self {
            Pending::Auth { .. } => "authentication",
            Pending::Stock => "the KeyPackage stock check",
            Pending::Upload => "a KeyPackage upload",
            Pending::CreateGroup { .. } => "a group creation",
            Pending::Lookup { .. } => "a directory look-up or KeyPackage claim",
            Pending::Verify { .. } => "a key check against the directory",
            Pending::PostApplication { .. } => "a message post",
            Pending::PostCommit { .. } => "a commit post",
            Pending::Fetch => "a fetch",
            Pending::Ack { .. } => "an ack",
            Pending::QuietAck => "a quiet ack",
            Pending::External => "a request of the shell",
            Pending::PublishList { .. } => "publishing the device list",
            Pending::ObserveList { .. } => "fetching a device list",
            Pending::LeaveGroup => "leaving a group at the relay",
            Pending::Ephemeral { .. } => "an ephemeral post",
            Pending::FetchGroupState { .. } => "fetching a group's public state",
            Pending::PostRejoin { .. } => "a rejoin's external commit",
            Pending::UserGroups { .. } => "listing the user's groups",
        }
    }
}

/// What a membership change asks the relay about a user to add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// The user's signed device list (`FetchDeviceList`), before the directory.
    List,
    /// The user's devices and keys (`ListDevices`).
    Directory,
    /// One KeyPackage per device (`ClaimKeyPackages`).
    Claim,
}

impl Lookup {
    /// What the request of change `op` about `user` is for.
    pub(super) fn pending(self, op: OpId, user: &UserName) -> Pending {
        Pending::Lookup {
            op,
            lookup: self,
            user: user.clone(),
        }
    }

    /// The request, as named in [`crate::OpError::UnexpectedReply`].
    pub(super) fn request(self) -> &'static str {
        match self {
            Lookup::List => "device list",
            Lookup::Directory => "directory",
            Lookup::Claim => "claim",
        }
    }
}

/// One thing to do, in the order it was asked for.
#[derive(Debug)]
pub(super) enum Effect {
    /// Send a request.
    Request(Request, Pending),
    /// Tell the user.
    Event(Event),
    /// Acknowledge a stream position (only on a ready connection).
    Ack(Stream, Seq),
}

/// The effects asked for since the dispatcher last applied them.
#[derive(Debug, Default)]
pub(super) struct Effects(VecDeque<Effect>);

impl Effects {
    /// Sends `body`; its answer is routed by `pending`.
    pub(super) fn request(&mut self, body: Request, pending: Pending) {
        self.0.push_back(Effect::Request(body, pending));
    }

    /// Tells the user.
    pub(super) fn event(&mut self, event: Event) {
        self.0.push_back(Effect::Event(event));
    }

    /// Tells the user of something skipped or refused.
    pub(super) fn warn(&mut self, warning: Warning) {
        self.event(Event::Warning(warning));
    }

    /// A command finished.
    pub(super) fn op_done(&mut self, op: OpId, result: Result<(), OpError>) {
        self.event(Event::OpDone { op, result });
    }

    /// Leaves `group` at the relay: this device was added to it but holds no MLS state for
    /// it (it did not take the Welcome, or none came), so it cannot ask the members to
    /// remove it; the relay stops sending it the group's traffic.
    pub(super) fn leave_group(&mut self, group: GroupId) {
        self.request(Request::LeaveGroup { group }, Pending::LeaveGroup);
    }

    /// Acknowledges `seq` of `stream`.
    pub(super) fn ack(&mut self, stream: Stream, seq: Seq) {
        self.0.push_back(Effect::Ack(stream, seq));
    }

    /// The next effect to apply.
    pub(super) fn next(&mut self) -> Option<Effect> {
        self.0.pop_front()
    }
}
