//! The public types of the client API: outputs, events, messages, errors.

use cove_store::StoreError;
use cove_wire::{ClientFrame, DeviceId, DeviceKey, GroupId, Seq, UserName};

use crate::error::{
    InvalidArgument, KeyPackageError, MlsStepError, NotApplicable, ProtocolViolation, Shared,
};

/// Identifies a command (`create_group`, `add_users`, `send_text`, ...). Its completion
/// arrives as [`Event::OpDone`] with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// A random 16-byte message id chosen by the sender; duplicates are dropped by it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What the core wants the shell to do next (drain with `Client::poll_output`).
#[derive(Debug)]
pub enum Output {
    /// Send this frame to the relay (in order, on the current connection).
    Send(ClientFrame),
    /// Tell the user.
    Event(Event),
}

/// Something the user (or the application) should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The connection is authenticated as this device (after registration the first time).
    Authenticated {
        /// This device.
        device: DeviceId,
        /// True if the relay just registered this device.
        registered: bool,
    },
    /// The relay pushed the whole backlog; what follows is live.
    BacklogDone,
    /// A message in a group (also this device's own, once the relay accepted it).
    Message(Box<ChatMessage>),
    /// This device was added to a group.
    Joined {
        /// The group.
        group: GroupId,
        /// Its name (set by the creator).
        name: String,
        /// Who added us.
        by: UserName,
    },
    /// The members of a group changed (by a commit from `by`).
    MembersChanged {
        /// The group.
        group: GroupId,
        /// Who committed the change.
        by: UserName,
        /// Users with devices added.
        added: Vec<UserName>,
        /// Users with devices removed.
        removed: Vec<UserName>,
    },
    /// This device was removed from a group: it can read nothing new there.
    RemovedFromGroup {
        /// The group.
        group: GroupId,
    },
    /// This device could not process a commit of a group's log and rejoined the group by
    /// an external commit from the relay's public state: it is live again at a new epoch;
    /// the `unreadable` entries of the epochs it skipped were dropped.
    Rejoined {
        /// The group.
        group: GroupId,
        /// Entries of the skipped epochs that could not be read.
        unreadable: usize,
    },
    /// A device key of `user` differs from the key pinned on first sight. The new key is
    /// not trusted until the user accepts it (`Client::accept_key_change`).
    KeyChanged {
        /// Whose key.
        user: UserName,
        /// The device.
        device: DeviceId,
        /// The pinned key.
        pinned: DeviceKey,
        /// The key now presented.
        presented: DeviceKey,
    },
    /// A command finished.
    OpDone {
        /// The command.
        op: OpId,
        /// How.
        result: Result<(), OpError>,
    },
    /// Application content that is not shown as a [`Event::Message`] (group info, leave
    /// requests, call signalling, ...), for the code that handles it. Emitted in log order,
    /// once per message id, for messages of other members.
    Content(ReceivedContent),
    /// Something was skipped or went wrong without stopping the client (a message that
    /// could not be decrypted or decoded, an unexpected reply, ...). Never contains plaintext.
    Warning(crate::error::Warning),
    /// A user's identity or devices changed, or a group member was refused (issue 9).
    Identity(IdentityEvent),
    /// The relay's answer to a request made with `Client::send_request` (e.g. TURN
    /// credentials for calls).
    Reply {
        /// The request.
        id: cove_wire::RequestId,
        /// The answer.
        result: Result<cove_wire::Reply, cove_wire::ErrorReply>,
    },
    /// A member reacted to a message, or took a reaction back (issue 13). Also for this
    /// device's own, once the relay accepted it.
    Reacted {
        /// The group.
        group: GroupId,
        /// Who reacted.
        by: UserName,
        /// The message reacted to.
        to: MessageId,
        /// The emoji.
        emoji: String,
        /// True when the reaction was taken back.
        removed: bool,
    },
    /// A message was edited by its author.
    Edited {
        /// The group.
        group: GroupId,
        /// The author.
        by: UserName,
        /// The message edited.
        to: MessageId,
        /// Its new text.
        text: String,
    },
    /// A message was deleted for everyone (by its author or an admin).
    Deleted {
        /// The group.
        group: GroupId,
        /// Who deleted it.
        by: UserName,
        /// The message deleted.
        to: MessageId,
    },
    /// A member's read receipt: they read the group up to this message.
    ReadUpTo {
        /// The group.
        group: GroupId,
        /// The reader.
        by: UserName,
        /// The newest message they read.
        up_to: MessageId,
    },
    /// A member started or stopped typing (ephemeral).
    Typing {
        /// The group.
        group: GroupId,
        /// Who.
        from: UserName,
        /// Typing now.
        active: bool,
    },
    /// A group's settings changed (profile, disappearing timer, admins).
    GroupChanged {
        /// The group.
        group: GroupId,
        /// Who changed them.
        by: UserName,
        /// What changed.
        change: GroupChange,
    },
    /// Messages disappeared from this device (their timer expired).
    Expired {
        /// The group.
        group: GroupId,
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// A push of the relay's link rendezvous on this connection (after an `OpenLink` the
    /// shell sent with `Client::send_request`, for linking a new machine by a code).
    Link(LinkPush),
}

/// A link rendezvous push (see [`Event::Link`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkPush {
    /// A machine joined the slot.
    PeerJoined,
    /// Bytes from the other machine.
    Message(Vec<u8>),
    /// The slot closed.
    Closed(cove_wire::LinkCloseReason),
}

/// What a user is told about identities and devices (see [`Event::Identity`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityEvent {
    /// `user`'s signed device list gained a device (their safety number is unchanged).
    DeviceAdded {
        /// Whose device.
        user: UserName,
        /// The new device's key.
        device: DeviceKey,
        /// Its name in the list.
        name: String,
    },
    /// `user` revoked a device in their signed list: it is removed from every group and
    /// never added again.
    DeviceRevoked {
        /// Whose device.
        user: UserName,
        /// The revoked device's key.
        device: DeviceKey,
    },
    /// `user`'s identity key changed: their safety number changed. `verified` says whether
    /// the old one had been verified (then sending to groups with them is blocked until the
    /// user verifies again).
    IdentityChanged {
        /// Whose identity.
        user: UserName,
        /// Whether the previous identity was verified.
        verified: bool,
    },
    /// A member's leaf in `group` does not carry a valid certificate of its user's pinned
    /// identity (forged, another identity, revoked, not listed): its messages are not shown
    /// as anyone's, and this device removes it when it may. When the refused leaf sent a
    /// Welcome to this device, the Welcome is not taken: `group` is not joined (no
    /// [`Event::Joined`] names the user the leaf claims to be).
    LeafRefused {
        /// The group.
        group: GroupId,
        /// The user the leaf claims to be.
        user: UserName,
        /// The device id it claims.
        device: DeviceId,
        /// Why it was refused.
        reason: crate::identity::LeafRefusal,
    },
}

/// A chat message as the user sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// The group.
    pub group: GroupId,
    /// The group's name.
    pub group_name: String,
    /// Sender user (from its MLS credential, checked against pinned keys).
    pub from: UserName,
    /// Sender device.
    pub from_device: DeviceId,
    /// The sender's message id.
    pub id: MessageId,
    /// The sender's clock when sending (ms since the Unix epoch; as claimed by the sender).
    pub sent_at_ms: u64,
    /// The text (empty for an attachment message: the shell describes the file from
    /// `attachment`; the core formats nothing for display).
    pub text: String,
    /// The attached file, for an attachment message.
    pub attachment: Option<crate::attachment::AttachmentPointer>,
    /// Position in the group log: every member sees the same order.
    pub seq: Seq,
    /// The message this one replies to (issue 13).
    pub reply_to: Option<Quote>,
    /// Reactions on it: each emoji with the users who reacted with it (in first-reaction
    /// order).
    pub reactions: Vec<Reaction>,
    /// Its earlier texts, oldest first (empty if never edited); `text` is the newest.
    pub edits: Vec<String>,
    /// Deleted for everyone: `text` and `edits` are empty and `attachment` is `None`.
    pub deleted: bool,
    /// A content type this client does not know (from a newer client): shown as
    /// "unsupported message", never dropped. Holds the content's type number.
    pub unsupported: Option<u32>,
    /// The users (other than the sender) whose read receipts cover it.
    pub read_by: Vec<UserName>,
    /// When it disappears from this device (local clock, ms since the Unix epoch), if the
    /// group's disappearing-messages timer was on when it arrived.
    pub expires_at_ms: Option<u64>,
}

/// What a reply quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// The message replied to.
    pub id: MessageId,
    /// Its author, when this device holds it.
    pub from: Option<UserName>,
    /// The quote the reply carries (or the message's current text when this device holds it).
    pub text: String,
}

/// One emoji on a message and who reacted with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// The users who reacted with it.
    pub users: Vec<UserName>,
}

/// A change of a group's settings (see [`Event::GroupChanged`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupChange {
    /// The group's name, description or avatar changed.
    Profile {
        /// The new name.
        name: String,
        /// The new description.
        description: String,
        /// Whether it has an avatar.
        avatar: bool,
    },
    /// The disappearing-messages timer changed (`None`: off).
    Disappearing(Option<u32>),
    /// The group's admins changed (the new set).
    Admins(Vec<UserName>),
}

/// Non-text application content received in a group (see [`Event::Content`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedContent {
    /// The group.
    pub group: GroupId,
    /// Sender user.
    pub from: UserName,
    /// Sender device.
    pub from_device: DeviceId,
    /// The sender's MLS leaf index in the epoch the message was sent in.
    pub sender_leaf: u32,
    /// The sender's message id.
    pub id: MessageId,
    /// The sender's clock when sending.
    pub sent_at_ms: u64,
    /// Position in the group log.
    pub seq: Seq,
    /// The content.
    pub content: crate::content::Content,
}

/// A group as listed by `Client::groups`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// The MLS epoch.
    pub epoch: u64,
    /// The member users (sorted, deduplicated).
    pub members: Vec<UserName>,
    /// Whether this device is still a member.
    pub active: bool,
    /// Its description (issue 13; empty if none).
    pub description: String,
    /// Its avatar picture (an attachment, like a file sent to the group), if one was set.
    pub avatar: Option<crate::attachment::AttachmentPointer>,
    /// Its admins (users). A group made before admins existed has none recorded: then
    /// every member may do what admins do.
    pub admins: Vec<UserName>,
    /// The disappearing-messages timer, in seconds.
    pub disappearing_secs: Option<u32>,
    /// Messages of others not read yet on this device.
    pub unread: u32,
    /// Muted until (local clock, ms since the Unix epoch; `u64::MAX` = for ever).
    pub muted_until_ms: Option<u64>,
}

/// Why a command failed (reported in [`Event::OpDone`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The relay refused the request, with its reply (whose code says whether a retry can
    /// help, e.g. `RateLimited`, or not, e.g. `NotMember`).
    #[error("the relay refused: {0}")]
    Relay(cove_wire::ErrorReply),
    /// The relay served a device list for `user` that this device refuses (forged, rolled
    /// back, forked, or a verified identity that changed).
    #[error("{0}")]
    DeviceList(crate::error::Shared<crate::identity::IdentityError>),
    /// The relay refused a lookup (directory or KeyPackage claim) for one of the users.
    #[error("the relay refused: {user}: {reply}")]
    UserRefused {
        /// The user looked up.
        user: UserName,
        /// The relay's reply.
        reply: cove_wire::ErrorReply,
    },
    /// The relay answered with a reply of the wrong kind (a protocol violation by the relay).
    #[error("the relay refused: unexpected {to} reply")]
    UnexpectedReply {
        /// The request answered ("directory", "claim", ...).
        to: &'static str,
    },
    /// A user has no devices or no KeyPackages.
    #[error("user {0} has no device to add")]
    NoDevices(UserName),
    /// A user's device key differs from the pinned one; see [`Event::KeyChanged`].
    #[error("the key of {0} changed; compare safety numbers and accept the change first")]
    KeyChanged(UserName),
    /// A KeyPackage or directory entry did not check out (the relay or the user misbehaved).
    #[error("invalid key material for {user}: {reason}")]
    InvalidKeyMaterial {
        /// Whose.
        user: UserName,
        /// What was wrong.
        reason: Shared<KeyPackageError>,
    },
    /// The operation's MLS step failed.
    #[error("MLS operation failed: {0}")]
    Mls(Shared<MlsStepError>),
    /// Local storage failed.
    #[error("storage failed: {0}")]
    Storage(Shared<StoreError>),
    /// The group changed so that the command no longer applies.
    #[error("{0}")]
    NotApplicable(NotApplicable),
    /// Retried too often because of concurrent commits.
    #[error("gave up after {0} commit races")]
    TooManyRetries(u32),
    /// Joining the user's groups by external commits left some out (each reported with a
    /// `RejoinFailed` warning).
    #[error("could not join {groups} of the user's groups")]
    NotJoined {
        /// How many.
        groups: usize,
    },
}

/// Why a command could not even be queued (caller error or local failure).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No group with that name or id.
    #[error("no group named {0:?}")]
    UnknownGroup(String),
    /// More than one group has that name; use the hex id.
    #[error("several groups are named {0:?}; use the group id")]
    AmbiguousGroup(String),
    /// This device is already in a group of that name (or is creating one): names are how
    /// commands find groups, so a second one would make the name ambiguous.
    #[error("a group named {0:?} already exists; choose another name")]
    DuplicateGroupName(String),
    /// This device is no longer a member of the group.
    #[error("not a member of group {0}")]
    NotMember(String),
    /// The identity key of these members changed after the user verified it: nothing is
    /// sent to the group until the user verifies their new identity (`Client::verify_user`).
    #[error(
        "not sent: the identity key of {} changed since you verified it; compare safety \
         numbers and verify again",
        .0.iter().map(UserName::as_str).collect::<Vec<_>>().join(", ")
    )]
    IdentityNotVerified(Vec<UserName>),
    /// The text or content is too large.
    #[error("message too large: {0} bytes (limit {1})")]
    TooLarge(usize, usize),
    /// A bad argument (e.g. empty user list, a name too long).
    #[error("invalid argument: {0}")]
    Invalid(InvalidArgument),
    /// The device has no identity / is not registered yet.
    #[error("the device is not registered yet; connect to the relay first")]
    NotRegistered,
    /// The message named does not exist in the group (or is not one this command applies
    /// to) (issue 13).
    #[error("no such message: {0}")]
    UnknownMessage(String),
    /// Only a message's author may do this (edit it).
    #[error("only the author of a message can edit it")]
    NotAuthor,
    /// Only an admin of the group may do this (add, remove, rename, delete others' messages,
    /// promote, demote).
    #[error("only an admin of group {0:?} can do that")]
    NotAdmin(String),
    /// The user named is not a member of the group (issue 13: promote).
    #[error("{0} is not a member of the group")]
    NotGroupMember(UserName),
    /// The change would leave the group without an admin (demoting its only admin).
    #[error("that would leave group {0:?} without an admin; promote someone first")]
    LastAdmin(String),
    /// Local storage failed.
    #[error(transparent)]
    Store(#[from] cove_store::StoreError),
    /// The random number generator failed (its lock was poisoned).
    #[error("MLS error: {0}")]
    Rng(#[from] crate::provider::RandError),
    /// The user's device list could not be extended.
    #[error("the device list could not be extended: {0}")]
    OwnIdentity(#[from] crate::error::OwnIdentityError),
    /// Encrypting the message for the group failed.
    #[error("MLS error: {0}")]
    Seal(#[from] openmls::prelude::CreateMessageError),
    /// Encoding the encrypted message failed.
    #[error("MLS error: {0}")]
    Encode(#[from] openmls::framing::errors::MlsMessageError),
    /// The content cannot be sent (its envelope is too large).
    #[error("invalid argument: {0}")]
    Content(#[from] crate::content::ContentError),
}

/// Why opening or initialising a client failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `open` on a store without identity (run `init` first).
    #[error("no identity in the store; initialise the device first")]
    NoIdentity,
    /// `init` on a store that already has an identity.
    #[error("the store already has an identity for user {0}")]
    AlreadyInitialised(UserName),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] cove_store::StoreError),
    /// Loading MLS state failed.
    #[error("MLS state could not be loaded: {0}")]
    Mls(cove_store::StoreError),
    /// The random number generator failed (its lock was poisoned).
    #[error("MLS state could not be loaded: {0}")]
    Rng(#[from] crate::provider::RandError),
}

/// Why an inbound frame could not be handled. The client stays usable: the shell may log
/// this and continue (the offending entry was skipped and reported as a Warning if
/// possible), or reconnect.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The relay sent something that violates the protocol.
    #[error("protocol violation by the relay: {0}")]
    Protocol(ProtocolViolation),
    /// The relay refused to authenticate this device (e.g. it is revoked or unknown): a
    /// retry cannot succeed. The client is disconnected.
    #[error("authentication refused: {0}")]
    AuthRefused(cove_wire::ErrorReply),
    /// The relay closed the connection (`Closing`); reconnect later unless it says otherwise.
    #[error("the relay is closing the connection: {0:?}")]
    Closing(cove_wire::ErrorCode),
    /// Local storage failed; the frame was not processed. Drop the connection and reconnect
    /// (the relay then redelivers everything not acknowledged).
    #[error(transparent)]
    Store(#[from] cove_store::StoreError),
    /// An entry to keep for later (a future epoch) could not be encoded (a bug); the frame
    /// was not processed.
    #[error("could not encode an entry to keep: {0}")]
    Encode(postcard::Error),
    /// This first device could not create its user's identity; the registration was not
    /// sent (it is retried at the next connection).
    #[error("could not create the user's identity: {0}")]
    OwnIdentity(#[from] crate::error::OwnIdentityError),
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No group with that name or id.
    #[error("no group named {0:?}")]
    UnknownGroup(String),
    /// More than one group has that name.
    #[error("several groups are named {0:?}; use the group id")]
    AmbiguousGroup(String),
    /// No pinned keys for that user yet (share a group first).
    #[error("no keys known for user {0}")]
    UnknownUser(UserName),
    /// No message of the group has an id starting with this (issue 13).
    #[error("no message with id {0:?} in this group")]
    UnknownMessage(String),
    /// Several messages of the group have ids starting with this: give more of the id.
    #[error("several messages have ids starting with {0:?}; give more of the id")]
    AmbiguousMessage(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] cove_store::StoreError),
    /// The secret could not be exported (e.g. a length over the limit).
    #[error("MLS error: {0}")]
    Export(#[from] openmls::prelude::ExportSecretError),
}
