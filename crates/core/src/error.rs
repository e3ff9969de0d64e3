//! Typed errors of [`crate::Client`] below the API's own enums ([`crate::OpError`],
//! [`crate::HandleError`], ...): what a peer (another member, or the relay) sent that could
//! not be applied (reported as warnings: the entry or Welcome is skipped), why the MLS step
//! of a command failed, what a command no longer applies to. Each variant says who is to
//! blame: the peer (the message is bad), the caller, or this device (storage, internal
//! state). They wrap the errors of openmls and the store as they are; nothing is turned into
//! text before the shell displays it.
//!
//! A leaf module: it imports only [`crate::content`] and other crates.

use std::fmt;
use std::sync::Arc;

use cove_store::StoreError;
use cove_wire::DeviceId;

use openmls::framing::errors::{MlsMessageError, ProtocolMessageError};
use openmls::prelude::{
    AddMembersError, BasicCredentialError, ExportSecretError, InvalidExtensionError,
    KeyPackageNewError, KeyPackageVerifyError, MergeCommitError, MergePendingCommitError,
    NewGroupError, ProcessMessageError, RemoveMembersError, SelfUpdateError,
    WelcomeError as MlsWelcomeError, tls_codec,
};

use crate::content::ContentError;

/// Why an MLS credential is not a Cove device credential (`cove:<user>:<device id>`). The
/// peer that presented it is at fault.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Not an MLS BasicCredential.
    #[error("{0}")]
    NotBasic(#[from] BasicCredentialError),
    /// The identity is not UTF-8.
    #[error("credential is not UTF-8")]
    NotUtf8,
    /// The identity does not start with `cove:`.
    #[error("not a Cove credential")]
    NotCove,
    /// No `:` between the user and the device id.
    #[error("malformed credential")]
    Malformed,
    /// The user part is not a valid user name.
    #[error("{0}")]
    UserName(#[from] cove_wire::IdError),
    /// The device part is not a decimal device id.
    #[error("malformed device id in credential")]
    DeviceId,
}

/// Why a claimed KeyPackage is refused when adding a device to a group. The relay or the
/// user that uploaded it is at fault; the command fails with
/// [`crate::OpError::InvalidKeyMaterial`].
#[derive(Debug, thiserror::Error)]
pub enum KeyPackageError {
    /// Not a TLS-encoded MLS message.
    #[error("undecodable KeyPackage: {0}")]
    Undecodable(tls_codec::Error),
    /// An MLS message, but not a KeyPackage.
    #[error("not a KeyPackage")]
    NotKeyPackage,
    /// Its signature or contents do not verify.
    #[error("invalid KeyPackage: {0}")]
    Invalid(KeyPackageVerifyError),
    /// Not Cove's ciphersuite.
    #[error("KeyPackage has the wrong ciphersuite")]
    WrongCiphersuite,
    /// Its credential is not a Cove credential.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// Its credential names another user or device than the one claimed for.
    #[error("KeyPackage credential names another device")]
    OtherDevice,
    /// The device is not in the user's directory entry.
    #[error("KeyPackage for a device not in the directory")]
    NotInDirectory,
    /// Its signature key is not the directory's key for the device.
    #[error("KeyPackage signature key differs from the directory key")]
    KeyMismatch,
    /// Its leaf's device certificate does not hold against the user's pinned identity and
    /// verified device list (missing, forged, another identity, revoked, not listed).
    #[error("KeyPackage's device certificate refused: {0}")]
    Certificate(crate::identity::LeafRefusal),
    /// This device: the store failed while checking it.
    #[error("{0}")]
    Store(StoreError),
}

/// Why a Welcome was skipped.
#[derive(Debug, thiserror::Error)]
pub enum WelcomeError {
    /// The sender: not a TLS-encoded MLS message.
    #[error("undecodable Welcome: {0}")]
    Undecodable(tls_codec::Error),
    /// The sender: an MLS message, but not a Welcome.
    #[error("not a Welcome")]
    NotWelcome,
    /// The sender (or none of our KeyPackages matches): openmls refused it.
    #[error("Welcome rejected: {0}")]
    Rejected(MlsWelcomeError<StoreError>),
    /// The sender or the relay: the group id differs from the one the relay announced.
    #[error("Welcome is for another group than announced")]
    OtherGroup,
    /// A replay: we hold the group at this epoch or a later one.
    #[error("already a member (the Welcome is for epoch {offered}, we are at {ours})")]
    AlreadyMember {
        /// The epoch the Welcome is for.
        offered: u64,
        /// The epoch we hold.
        ours: u64,
    },
    /// This device: the stale state of the group could not be deleted.
    #[error("could not drop the stale group state: {0}")]
    DropStale(StoreError),
    /// Joining the group (building its state) failed.
    #[error("join failed: {0}")]
    Join(MlsWelcomeError<StoreError>),
    /// The sender: a member's credential is not a Cove credential.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The relay: the device it names as the sender is not in the group.
    #[error("the Welcome's sender is not a member")]
    SenderNotMember,
    /// The sender: the Cove Welcome envelope does not parse, or the group name sealed in it
    /// does not open (altered, or sealed under another key or for another group).
    #[error("Welcome envelope: {0}")]
    Envelope(#[from] WelcomeEnvelopeError),
    /// This device: the key of the sealed group name could not be exported from the group.
    #[error("group-name key: {0}")]
    NameKey(ExportSecretError),
    /// This device: storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Why a Cove Welcome envelope ([`crate::welcome_envelope`]) could not be read or its group
/// name not opened (the sender is at fault), or not sealed (this device).
#[derive(Debug, thiserror::Error)]
pub enum WelcomeEnvelopeError {
    /// Shorter than its header, or its Welcome length runs past the end.
    #[error("truncated")]
    Truncated,
    /// It does not start with the envelope's magic bytes.
    #[error("not a Cove Welcome envelope")]
    NotAnEnvelope,
    /// An envelope version this device does not read.
    #[error("unknown version {0:?}")]
    Version(Option<u8>),
    /// The sealed name is shorter than a nonce and a tag, or longer than the longest name
    /// sealed (trailing bytes included).
    #[error("sealed name of {0} bytes")]
    SealedNameLength(usize),
    /// The sealed name does not open: altered, or sealed under another key or for another
    /// group.
    #[error("the sealed group name does not open")]
    NameNotOpened,
    /// The opened name is not UTF-8.
    #[error("the group name is not UTF-8")]
    NameNotUtf8,
    /// The name is longer than [`crate::MAX_GROUP_NAME`] bytes.
    #[error("group name of {0} bytes")]
    NameTooLong(usize),
    /// This device: the Welcome is too large for the envelope's length field.
    #[error("Welcome too large")]
    WelcomeTooLarge,
    /// The key is not a 32-byte AES-256-GCM key.
    #[error("bad group-name key")]
    Key,
}

/// Why an entry of a group log was skipped.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// This device: it holds no state for the group.
    #[error("not a member")]
    NotMember,
    /// The sender: not a TLS-encoded MLS message.
    #[error("undecodable MLS message: {0}")]
    Undecodable(tls_codec::Error),
    /// The sender: not a group (public or private) message.
    #[error("not a group message: {0}")]
    NotGroupMessage(ProtocolMessageError),
    /// openmls could not process it (wrong epoch, bad signature, cannot decrypt, ...).
    #[error("{0}")]
    Process(ProcessMessageError<StoreError>),
    /// This device: merging our own accepted commit failed.
    #[error("{0}")]
    MergePending(MergePendingCommitError<StoreError>),
    /// This device: merging another member's commit failed.
    #[error("{0}")]
    Merge(MergeCommitError<StoreError>),
    /// The sender's leaf is empty in our tree, or its credential is not a Cove one.
    #[error("unknown sender")]
    UnknownSender,
    /// Not sent by a member (an external or preconfigured sender).
    #[error("not sent by a member")]
    NotFromMember,
    /// The relay attributes the entry to another device than its MLS sender.
    #[error("relay says device {relay} sent it, MLS says device {mls}")]
    SenderMismatch {
        /// The device according to the relay.
        relay: DeviceId,
        /// The device according to MLS.
        mls: DeviceId,
    },
    /// The sender: the application content is not a valid envelope.
    #[error("{0}")]
    Content(#[from] ContentError),
    /// The sender: a message id seen before in this group.
    #[error("duplicate message id")]
    Duplicate,
    /// The sender: a credential in the commit is not a Cove credential.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The sender: its commit changed its own user or device.
    #[error("a commit changed the committer's identity")]
    IdentityChanged,
    /// The sender's leaf was refused (its device certificate does not hold): its messages
    /// are shown as nobody's.
    #[error("sent from a refused leaf claiming to be {user}'s device {device}: {reason}")]
    RefusedSender {
        /// The user the leaf claims to be.
        user: cove_wire::UserName,
        /// The device id it claims.
        device: DeviceId,
        /// Its signature key.
        key: cove_wire::DeviceKey,
        /// Why it was refused.
        reason: crate::identity::LeafRefusal,
    },
    /// The sender: an external commit (a member rejoining) that removes a leaf other than
    /// the joiner's own old one.
    #[error("an external commit removes a leaf other than the joiner's own")]
    ExternalRemovesOthers,
    /// The sender: a commit only an admin may make (adding or removing another user's
    /// devices, changing the roles) by a member whose user is not an admin (issue 13).
    #[error("{user} is not an admin of the group and may not {what}")]
    NotAdmin {
        /// The committer's user.
        user: cove_wire::UserName,
        /// What the commit does that needs an admin.
        what: &'static str,
    },
    /// The sender: a commit whose new roles are malformed or name no admin.
    #[error("the commit's new roles are not acceptable: {0}")]
    BadRoles(cove_wire::roles::RolesError),
    /// The sender: a standalone proposal (Cove commits proposals at once).
    #[error("proposals are not used by Cove")]
    Proposal,
    /// This device: storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Why this device could not build a commit for a membership change or a key update. Passed
/// to the command as [`crate::OpError::Mls`].
#[derive(Debug, thiserror::Error)]
pub enum CommitBuildError {
    /// openmls could not build a key update.
    #[error("{0}")]
    SelfUpdate(SelfUpdateError<StoreError>),
    /// openmls could not build an add.
    #[error("{0}")]
    Add(AddMembersError<StoreError>),
    /// openmls could not build a removal.
    #[error("{0}")]
    Remove(RemoveMembersError<StoreError>),
    /// The commit or Welcome could not be encoded.
    #[error("{0}")]
    Encode(#[from] MlsMessageError),
    /// openmls made no GroupInfo for the commit (the relay needs one with every commit).
    #[error("the commit has no GroupInfo")]
    NoGroupInfo,
    /// The key of the group name could not be exported from the pending commit.
    #[error("group-name key: {0}")]
    NameKey(ExportSecretError),
    /// The group name could not be sealed into the Welcome envelope.
    #[error("sealing the group name: {0}")]
    SealName(WelcomeEnvelopeError),
    /// openmls left no pending commit after building an add (an internal bug).
    #[error("no pending commit after the add")]
    NoPendingCommit,
    /// No randomness for the sealed name's nonce.
    #[error("no randomness")]
    Rng,
    /// openmls could not build a change of the group roles (admins).
    #[error("{0}")]
    Roles(openmls::prelude::CreateGroupContextExtProposalError<StoreError>),
    /// The new roles could not be made into group-context extensions.
    #[error(transparent)]
    RolesExtension(#[from] RolesExtensionError),
}

/// Why the roles (admins) could not be made into group-context extensions.
#[derive(Debug, thiserror::Error)]
pub enum RolesExtensionError {
    /// The roles are not acceptable (none, or too many).
    #[error(transparent)]
    Value(#[from] cove_wire::roles::RolesError),
    /// openmls refused the extensions.
    #[error("{0}")]
    Extension(#[from] InvalidExtensionError),
}

/// Why the MLS step of a command failed on this device ([`crate::OpError::Mls`]).
#[derive(Debug, thiserror::Error)]
pub enum MlsStepError {
    /// openmls refused the group's configuration (the creator's leaf extensions).
    #[error("{0}")]
    GroupConfig(#[from] InvalidExtensionError),
    /// openmls could not create the group.
    #[error("{0}")]
    CreateGroup(#[from] NewGroupError<StoreError>),
    /// The commit could not be built.
    #[error(transparent)]
    Commit(#[from] CommitBuildError),
    /// Our accepted commit could not be merged.
    #[error("{0}")]
    Merge(#[from] MergePendingCommitError<StoreError>),
    /// This device's certificate could not be put in its leaf.
    #[error(transparent)]
    Certificate(#[from] LeafExtensionError),
    /// openmls refused the certificate extension for the creator's leaf.
    #[error("{0}")]
    LeafNode(#[from] openmls::treesync::errors::LeafNodeValidationError),
    /// The new group's GroupInfo could not be made (for the relay's public state).
    #[error("{0}")]
    ExportGroupInfo(#[from] openmls::prelude::ExportGroupInfoError),
    /// The new group's GroupInfo could not be encoded.
    #[error("{0}")]
    EncodeGroupInfo(#[from] MlsMessageError),
    /// The new group's ratchet tree could not be encoded.
    #[error("{0}")]
    EncodeTree(#[from] openmls::prelude::tls_codec::Error),
    /// The group's MLS state could not be stored or deleted.
    #[error("{0}")]
    Storage(#[from] StoreError),
    /// The group's first roles (its creator as admin) are not acceptable.
    #[error(transparent)]
    Roles(#[from] RolesExtensionError),
}

/// Why a command no longer applies ([`crate::OpError::NotApplicable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotApplicable {
    /// The caller: this device is not registered yet.
    #[error("not registered")]
    NotRegistered,
    /// This device is not (any more) a member of the group.
    #[error("not a member of the group")]
    NotMember,
    /// This device was removed from the group meanwhile.
    #[error("removed from the group")]
    RemovedFromGroup,
    /// This device left the group meanwhile.
    #[error("left the group")]
    LeftGroup,
    /// The caller: none of the users to remove is a member.
    #[error("none of these users is a member")]
    NoneAreMembers,
    /// This device has no device certificate yet (its user's signed device list has not
    /// been fetched and verified, or does not list it), so it cannot make its MLS leaf.
    #[error("this device has no device certificate yet")]
    NoCertificate,
    /// This device's user is not (any more) an admin of the group (issue 13).
    #[error("not an admin of the group")]
    NotAdmin,
    /// The change would leave the group without an admin.
    #[error("the group would have no admin left")]
    LastAdmin,
}

/// A bad argument to a command ([`crate::CommandError::Invalid`]). The caller is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidArgument {
    /// A group name is empty or longer than `max` bytes.
    #[error("group names are 1-{max} bytes")]
    GroupNameLength {
        /// The longest name allowed ([`crate::MAX_GROUP_NAME`]).
        max: usize,
    },
    /// A command that adds or removes users was given none.
    #[error("no users given")]
    NoUsers,
    /// A reaction must be 1-32 bytes (`MAX_EMOJI_BYTES`) without control characters or
    /// whitespace (issue 13).
    #[error("a reaction is one emoji: 1-32 bytes, no spaces or control characters")]
    Emoji,
    /// A disappearing-messages timer outside 1 second ..= 365 days (issue 13).
    #[error("disappearing-messages timers are 1 second to 365 days")]
    Timer,
    /// A group description longer than `max` bytes (issue 13).
    #[error("group descriptions are at most {max} bytes")]
    DescriptionLength {
        /// The longest description allowed ([`crate::content::MAX_DESCRIPTION_BYTES`]).
        max: usize,
    },
    /// A chat group name starting with `drive/`: reserved for Cove Drive groups (issue 14).
    #[error("group names starting with \"drive/\" are reserved for Cove Drive")]
    ReservedName,
    /// A drive group name that does not start with `drive/` (issue 14).
    #[error("Cove Drive group names start with \"drive/\"")]
    NotADriveName,
    /// A chat command (send, reply, react, rename, timer, typing) on a Cove Drive group:
    /// its log carries tree operations only (issue 14).
    #[error("this is a Cove Drive group, not a chat: use `cove drive`")]
    DriveGroup,
}

/// How the relay violated the protocol ([`crate::HandleError::Protocol`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// A `Challenge` when none was due.
    #[error("unexpected challenge")]
    UnexpectedChallenge,
    /// The relay authenticated another device than this one.
    #[error("relay authenticated another device")]
    OtherDevice,
    /// A `Posted` reply before this device was registered.
    #[error("a Posted reply before registration")]
    PostedBeforeRegistration,
}

/// An error carried by an [`crate::Event`]: events are cloned and compared, and the errors of
/// openmls and the store are neither `Clone` nor `PartialEq`, so they are shared. Clones are
/// equal; two errors made separately are not, even with equal contents. Dereferences to the
/// error.
pub struct Shared<E>(Arc<E>);

impl<E> Shared<E> {
    /// Wraps `error`.
    pub fn new(error: E) -> Self {
        Shared(Arc::new(error))
    }
}

impl<E> Clone for Shared<E> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<E> PartialEq for Shared<E> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<E> Eq for Shared<E> {}

impl<E> std::ops::Deref for Shared<E> {
    type Target = E;

    fn deref(&self) -> &E {
        &self.0
    }
}

impl<E: fmt::Debug> fmt::Debug for Shared<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: fmt::Display> fmt::Display for Shared<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error> std::error::Error for Shared<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Why this device could not generate KeyPackages (reported as a warning; retried at the
/// next stock check).
#[derive(Debug, thiserror::Error)]
pub enum KeyPackageBuildError {
    /// openmls could not build one.
    #[error("{0}")]
    New(KeyPackageNewError),
    /// It could not be encoded.
    #[error("{0}")]
    Encode(MlsMessageError),
    /// This device's certificate could not be put in its leaf.
    #[error(transparent)]
    Certificate(#[from] LeafExtensionError),
}

/// Why this device's certificate could not be made into a leaf-node extension.
#[derive(Debug, thiserror::Error)]
pub enum LeafExtensionError {
    /// The certificate could not be encoded.
    #[error("the device certificate could not be encoded: {0}")]
    Encode(#[from] cove_wire::EncodeError),
    /// openmls refused the extension.
    #[error("{0}")]
    Extension(#[from] InvalidExtensionError),
}

/// Why this user's other devices are left out of a membership change (reported as a
/// warning; the change goes on without them).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OwnDevicesSkipped {
    /// The relay refused the directory lookup or the KeyPackage claim.
    #[error("{0}")]
    Refused(cove_wire::ErrorReply),
    /// The key of one of our own devices changed (accept it first).
    #[error("a key of {0} changed")]
    KeyChanged(cove_wire::UserName),
    /// None of our other devices has a KeyPackage left.
    #[error("no KeyPackage for them")]
    NoKeyPackage,
    /// Our own device list as the relay serves it was refused.
    #[error("{0}")]
    List(crate::OpError),
}

/// Something skipped or wrong that did not stop the client ([`crate::Event::Warning`]).
/// Never contains plaintext. Its `Display` is the sentence a shell may show.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    /// Creating a group succeeded, but adding this user's other devices to it failed.
    #[error("our other devices were not added to the group: {0}")]
    OwnDevicesNotAdded(crate::OpError),
    /// A membership change goes on without this user's other devices.
    #[error("our other devices are not added: {0}")]
    OwnDevicesSkipped(OwnDevicesSkipped),
    /// A queued message waits: it cannot be encrypted at the group's current epoch yet.
    #[error("a queued message could not be encrypted at the current epoch yet: {0}")]
    QueuedNotEncrypted(Shared<crate::CommandError>),
    /// The relay asked to retry a post later.
    #[error("a message will be resent in {delay_ms} ms: {error}")]
    Resending {
        /// When it is resent.
        delay_ms: u64,
        /// The relay's refusal.
        error: cove_wire::ErrorReply,
    },
    /// The relay refused a queued message for good.
    #[error("a queued message was refused by the relay: {0}")]
    QueuedRefused(cove_wire::ErrorReply),
    /// A message was deleted for everyone and erased from the history, but scrubbing the
    /// database files afterwards (`Kv::scrub`) failed: freed space or the write-ahead log
    /// may still hold its text until the next scrub (issue 13).
    #[error("the database could not be scrubbed after a delete: {0}")]
    ScrubFailed(Shared<cove_store::StoreError>),
    /// The relay answered a post with something else than `Posted`.
    #[error("unexpected reply to a post: {0:?}")]
    UnexpectedPostReply(cove_wire::Reply),
    /// The relay refused this device's KeyPackages.
    #[error("KeyPackage upload failed: {0}")]
    KeyPackageUpload(cove_wire::ErrorReply),
    /// This device could not generate KeyPackages (retried at the next stock check).
    #[error("could not generate KeyPackages: {0}")]
    KeyPackageGeneration(Shared<KeyPackageBuildError>),
    /// The relay answered a request this device did not make.
    #[error("response to unknown request {0}")]
    UnknownResponse(cove_wire::RequestId),
    /// The relay's directory names a device that the user's signed device list does not
    /// list: it is not added (a device the relay made up, or one added since the list).
    #[error("device {device} of {user} is not in {user}'s signed device list: not added")]
    UnlistedDevice {
        /// Whose.
        user: cove_wire::UserName,
        /// The device.
        device: DeviceId,
    },
    /// The relay served a device list for `user` that this device refuses (forged, rolled
    /// back, forked, or a verified identity that changed).
    #[error("{error}")]
    DeviceListRefused {
        /// Whose list.
        user: cove_wire::UserName,
        /// Why.
        error: Shared<crate::identity::IdentityError>,
    },
    /// The relay refused this user's device list (retried at the next connection).
    #[error("the relay refused our device list: {0}")]
    DeviceListNotPublished(cove_wire::ErrorReply),
    /// This (linked) device's user's signed device list still does not list it after a few
    /// fetches: it has no certificate, so it makes no KeyPackages and cannot be added to
    /// groups (asked again at the next connection).
    #[error(
        "this device is not in its user's signed device list yet: it cannot join groups until \
         it is (checked again at the next connection)"
    )]
    NoDeviceCertificate,
    /// The relay refused an ack.
    #[error("ack refused: {0}")]
    AckRefused(cove_wire::ErrorReply),
    /// The relay refused a request.
    #[error("request failed: {0}")]
    RequestFailed(cove_wire::ErrorReply),
    /// The relay answered a request with a reply of another kind.
    #[error("unexpected reply {reply:?} to {request}")]
    UnexpectedReply {
        /// The reply.
        reply: cove_wire::Reply,
        /// What the request was for.
        request: &'static str,
    },
    /// A Welcome was skipped.
    #[error("skipped a Welcome into group {group}: {reason}")]
    WelcomeSkipped {
        /// The group.
        group: cove_wire::GroupId,
        /// Why.
        reason: Shared<WelcomeError>,
    },
    /// A Welcome into a group this device still held at an older epoch replaced that state.
    #[error(
        "re-added to group {group} at epoch {offered} while this device still held epoch {ours} \
         (the removal was missed): the old state is replaced; messages sent while this device \
         was not a member cannot be read"
    )]
    ReAddedAfterMissedRemoval {
        /// The group.
        group: cove_wire::GroupId,
        /// The Welcome's epoch.
        offered: u64,
        /// The epoch this device held.
        ours: u64,
    },
    /// A user has a further device (pinned on first sight) that their verified signed
    /// device list does not name. A listed one is announced by
    /// [`crate::IdentityEvent::DeviceAdded`] instead, without a warning.
    #[error(
        "{user} has a new device {device} that their signed device list does not name (key \
         pinned on first sight; compare safety numbers to be sure it is theirs)"
    )]
    NewDevice {
        /// Whose.
        user: cove_wire::UserName,
        /// The device.
        device: DeviceId,
    },
    /// A group member's device is missing from the relay's directory.
    #[error("device {device} of {user} is a group member but not in the relay's directory")]
    MemberNotInDirectory {
        /// Whose.
        user: cove_wire::UserName,
        /// The device.
        device: DeviceId,
    },
    /// An entry was dropped because too many of its group are parked already.
    #[error("dropped entry {seq} of group {group}: too many parked")]
    ParkedOverflow {
        /// The group.
        group: cove_wire::GroupId,
        /// The entry.
        seq: cove_wire::Seq,
    },
    /// An entry was dropped because the parked entries of all groups together reached
    /// their cap in bytes ([`crate::MAX_PARKED_BYTES`]).
    #[error("dropped entry {seq} of group {group}: too many parked bytes")]
    ParkedBytesOverflow {
        /// The group.
        group: cove_wire::GroupId,
        /// The entry.
        seq: cove_wire::Seq,
    },
    /// The parked entries of a group this device never joined (no Welcome came) were
    /// dropped and acknowledged after waiting [`crate::UNJOINED_PARK_MS`].
    #[error("dropped {count} entries of group {group}: this device never joined it")]
    UnjoinedDropped {
        /// The group.
        group: cove_wire::GroupId,
        /// How many entries were dropped.
        count: usize,
    },
    /// Entries of a group are kept unprocessed (and unacknowledged) for now.
    #[error("{count} entries of group {group} could not be processed and are kept: {why}")]
    EntriesKept {
        /// The group.
        group: cove_wire::GroupId,
        /// How many.
        count: usize,
        /// Why they wait.
        why: KeptBecause,
    },
    /// A group setting (rename, profile, disappearing timer) from a member who is not an
    /// admin of the group, or out of bounds: not applied (issue 13).
    #[error("group {group}: {what} from {from} not applied ({why})")]
    SettingRefused {
        /// The group.
        group: cove_wire::GroupId,
        /// The sender.
        from: cove_wire::UserName,
        /// What it was ("a rename", "a profile", "a disappearing timer").
        what: &'static str,
        /// Why: "not an admin" or "out of bounds".
        why: &'static str,
    },
    /// An entry of a group log was skipped.
    #[error("skipped entry {seq} of group {group} from device {sender}: {reason}")]
    EntrySkipped {
        /// The group.
        group: cove_wire::GroupId,
        /// The entry.
        seq: cove_wire::Seq,
        /// Its sender.
        sender: DeviceId,
        /// Why.
        reason: Shared<EntryError>,
    },
    /// This device rejoined a group by an external commit (it could not process a commit
    /// of its log): the entries of the epochs it skipped cannot be read and were dropped.
    #[error(
        "rejoined group {group}: {count} entries of the epochs this device could not follow \
         cannot be read and were dropped"
    )]
    RejoinDropped {
        /// The group.
        group: cove_wire::GroupId,
        /// How many entries were dropped.
        count: usize,
    },
    /// A rejoin of a group by an external commit failed (retried when a later commit of
    /// the group cannot be processed, or at the next connection).
    #[error("could not rejoin group {group}: {reason}")]
    RejoinFailed {
        /// The group.
        group: cove_wire::GroupId,
        /// Why.
        reason: Shared<RejoinError>,
    },
}

/// Why a rejoin by an external commit failed ([`Warning::RejoinFailed`]).
#[derive(Debug, thiserror::Error)]
pub enum RejoinError {
    /// The relay refused to serve the group's public state, or the rejoin commit.
    #[error("the relay refused: {0}")]
    Refused(cove_wire::ErrorReply),
    /// The relay answered with something else than expected.
    #[error("unexpected reply {0:?}")]
    UnexpectedReply(cove_wire::Reply),
    /// The relay's GroupInfo or ratchet tree does not decode.
    #[error("the group's public state does not decode: {0}")]
    Undecodable(String),
    /// This device has no certificate (or is not registered) to put in its new leaf.
    #[error("this device has no device certificate yet")]
    NoCertificate,
    /// openmls could not build the external commit.
    #[error("building the external commit failed: {0}")]
    Build(String),
    /// Other members committed every time this device tried.
    #[error("other members committed first {0} times in a row")]
    TooManyRaces(u32),
    /// This device: storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Why entries of a group wait unprocessed ([`Warning::EntriesKept`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeptBecause {
    /// They belong to a later epoch than this device's.
    #[error(
        "they belong to a later epoch than this device's ({0}); they are applied when the \
         commit they need arrives"
    )]
    LaterEpoch(u64),
    /// This device is not (yet) a member of the group.
    #[error("this device is not a member of it (yet); they are applied when its Welcome arrives")]
    NotMember,
}

/// Why this first device could not create its user's identity key and device list.
#[derive(Debug, thiserror::Error)]
pub enum OwnIdentityError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness for the identity key.
    #[error("no randomness for the identity key")]
    Rng,
    /// The list could not be made or extended (the list's rules, e.g. the device cap).
    #[error(transparent)]
    List(#[from] cove_identity::ListError),
    /// A device name outside the rules.
    #[error(transparent)]
    Name(#[from] cove_wire::identity::DeviceNameError),
    /// This device does not hold the user's identity key (only the user's first device and
    /// devices logged in with the password do): it cannot sign device-list entries, so it
    /// can neither link (authorise) nor revoke devices.
    #[error(
        "this device does not hold the user's identity key: only the user's first device \
         or a device logged in with the password (which hold the identity key) can link new \
         devices or revoke devices"
    )]
    NotIdentityHolder,
    /// A device cannot revoke itself.
    #[error("a device cannot revoke itself")]
    RevokeSelf,
    /// The user's device list (from the relay) is signed by another identity key than the
    /// one the account bundle holds.
    #[error("the user's device list is signed by another identity key than the account's")]
    OtherIdentity,
}

#[cfg(test)]
mod tests {
    use super::{NotApplicable, Shared};

    /// Clones of a shared error are equal (an event and its clone compare equal); two errors
    /// made separately are not, even with the same contents.
    #[test]
    fn shared_errors_are_equal_to_their_clones_only() {
        let a = Shared::new(NotApplicable::LeftGroup);
        let b = Shared::new(NotApplicable::LeftGroup);
        assert_eq!(a, a.clone());
        assert_ne!(a, b);
        assert_eq!(*a, *b);
        assert_eq!(a.to_string(), "left the group");
    }
}
