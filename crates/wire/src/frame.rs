//! The frames. `ClientFrame` travels device → relay, `ServerFrame` relay → device.
//! Variants are only ever appended within a protocol version (see `PROTOCOL.md`).

use serde::{Deserialize, Serialize};

use crate::identity::{ListEntry, ListHead};
use crate::{
    BoundedVec, DeviceId, DeviceKey, Epoch, GroupId, Payload, RequestId, Seq, Signature, UserName,
};

/// A frame from a device to the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// A request; the relay answers with exactly one [`ServerFrame::Response`] of the same id.
    Request {
        /// Chosen by the device, echoed in the response.
        id: RequestId,
        /// What is asked.
        body: Request,
    },
}

/// What a device can ask of the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Registers a new user with its first device and authenticates this connection as it.
    /// `signature` signs [`crate::sign::auth_challenge_message`] with `key`.
    Register {
        /// The user name to claim.
        user: UserName,
        /// The device's Ed25519 public key.
        key: DeviceKey,
        /// Signature over the challenge.
        signature: Signature,
    },
    /// Registers a further device of an existing user and authenticates this connection as it.
    RegisterDevice {
        /// The existing user.
        user: UserName,
        /// The new device's public key.
        key: DeviceKey,
        /// Signature by the new key over the challenge.
        signature: Signature,
        /// An existing device of `user` that authorises the new one.
        authorizer: DeviceId,
        /// Signature by `authorizer` over [`crate::sign::add_device_message`].
        authorization: Signature,
    },
    /// Authenticates this connection as an already registered device.
    Authenticate {
        /// The device's user.
        user: UserName,
        /// The device.
        device: DeviceId,
        /// Signature over the challenge with the device's registered key.
        signature: Signature,
    },
    /// Lists a user's devices and their keys (the directory).
    ListDevices {
        /// Whose devices.
        user: UserName,
    },
    /// Uploads KeyPackages (MLSMessage-encoded) for this device, and optionally replaces its
    /// last-resort KeyPackage.
    UploadKeyPackages {
        /// Normal, single-use KeyPackages.
        key_packages: BoundedVec<Payload>,
        /// A last-resort KeyPackage, handed out when the stock is empty.
        last_resort: Option<Payload>,
    },
    /// Claims one KeyPackage for every device of `user`.
    ClaimKeyPackages {
        /// Whose KeyPackages.
        user: UserName,
    },
    /// Asks how many normal KeyPackages this device has left.
    KeyPackageStock,
    /// Creates a group whose first member is this device. A relay that validates handshakes
    /// (the default) starts the group's public MLS state from `group_info` and `tree` and
    /// refuses the request with `InvalidCommit` when they do not verify, are not at epoch 0,
    /// are of another group, or do not hold exactly this device's leaf.
    CreateGroup {
        /// The new group's id (the MLS group id).
        group: GroupId,
        /// The creator's GroupInfo at epoch 0 (MLSMessage encoding), signed by the creator.
        group_info: Payload,
        /// The group's ratchet tree at epoch 0 (TLS encoding of the MLS `RatchetTree`).
        tree: Payload,
    },
    /// Appends an MLS message to a group's log.
    Post {
        /// The group.
        group: GroupId,
        /// The epoch the message was made in (in clear in MLS too).
        epoch: Epoch,
        /// Application, proposal or commit (with its membership change and Welcome).
        kind: PostKind,
        /// The MLS message (MLSMessage encoding), opaque to the relay.
        payload: Payload,
    },
    /// Reads a group's log after `after` (at most `limit` entries, capped by the relay).
    Fetch {
        /// The group.
        group: GroupId,
        /// Entries with a greater sequence number are returned.
        after: Seq,
        /// Most entries wanted.
        limit: u32,
    },
    /// Acknowledges every entry of a stream up to and including `seq`.
    Ack {
        /// Which log.
        stream: Stream,
        /// The last entry processed.
        seq: Seq,
    },
    /// Lists the groups this device is a member of, with their current epoch.
    ListGroups,
    /// Keeps the connection alive; answered with [`Reply::Pong`].
    Ping,
    /// Asks for short-lived TURN credentials for calls (authenticated devices only);
    /// answered with [`Reply::TurnCredentials`], or `InvalidRequest` if the relay runs no
    /// TURN server.
    TurnCredentials,
    /// Appends signed entries to the device list of this device's user (see
    /// [`crate::identity`]). The first publish carries the whole list from entry 0 (its
    /// `Create` entry), which must list this device's key; every later one carries only the
    /// entries after the stored head. The relay verifies the chain and stores it; answered
    /// with [`Reply::DeviceListHead`]. At most `limits::MAX_DEVICE_LIST_ENTRIES` entries.
    PublishDeviceList {
        /// The entries to append, in order.
        entries: BoundedVec<ListEntry>,
    },
    /// Reads a user's whole device list; answered with [`Reply::DeviceList`].
    FetchDeviceList {
        /// Whose list.
        user: UserName,
    },
    /// Opens a link rendezvous slot for linking a new machine by a code (authenticated
    /// devices only); answered with [`Reply::LinkOpened`]. One open slot per connection;
    /// the slot lives until this connection closes it (disconnects) or it expires.
    OpenLink,
    /// Joins the link slot `nameplate` (the first part of the code the other device shows);
    /// allowed before authentication (the new machine has no account yet). Answered with
    /// [`Reply::LinkJoined`]; the slot's host is pushed [`ServerFrame::LinkPeerJoined`]. A
    /// slot takes one joiner, ever.
    JoinLink {
        /// The slot number.
        nameplate: u32,
    },
    /// Sends opaque bytes to the other device of this connection's link slot (pushed to it
    /// as [`ServerFrame::LinkMessage`]); allowed before authentication. At most
    /// [`crate::limits::MAX_LINK_MESSAGE_BYTES`] bytes.
    LinkSend {
        /// The bytes (a SPAKE2 message, a confirmation or a sealed channel message).
        bytes: Payload,
    },
    /// Lists the devices of this device's own user with what only the user may learn: when
    /// each last authenticated, and whether the user's signed list revokes it. Answered
    /// with [`Reply::OwnDevices`]. There is no way to ask this of another user: last-seen
    /// times never leave the relay for anyone but the devices' own user.
    ListOwnDevices,
    /// Asks for a group's latest public MLS state (members only; appended): answered with
    /// [`Reply::GroupState`]. A member that cannot process a logged commit rejoins from it
    /// by an external commit. `NotMember`; `InvalidRequest` if the relay keeps no state for
    /// the group; `TooLarge` if it does not fit a frame.
    FetchGroupState {
        /// The group.
        group: GroupId,
    },
    /// Leaves a group at the relay, without MLS: for a device that was added to the group but
    /// holds no MLS state for it (it refused or lost the Welcome), so it cannot send the
    /// leave request members would commit. The device stops being a member at once (nothing
    /// more is delivered; it can no longer read or post); it stays a leaf of the group's MLS
    /// tree until a member's commit removes it. Answered [`Reply::Left`]; `NotMember` if it
    /// is not a member.
    LeaveGroup {
        /// The group.
        group: GroupId,
    },
    /// Starts registering a password for this connection's own user (authenticated
    /// connections only, for a user with no account yet): `request` is OPAQUE's
    /// registration request. Answered with [`Reply::AccountRegisterResponse`]. At most
    /// [`crate::limits::MAX_ACCOUNT_MESSAGE_BYTES`] bytes.
    AccountRegisterStart {
        /// OPAQUE's `RegistrationRequest`.
        request: Payload,
    },
    /// Finishes the registration started on this connection: the relay stores the record
    /// made from `upload`, the KSF version and the two wrapped bundles, atomically.
    /// Answered with [`Reply::AccountRegistered`].
    AccountRegisterFinish {
        /// OPAQUE's `RegistrationUpload`.
        upload: Payload,
        /// The account bundle wrapped under the export key (`bundle::WRAPPED_LEN` bytes).
        password_bundle: Payload,
        /// The account bundle wrapped under the recovery key (`bundle::WRAPPED_LEN` bytes).
        recovery_bundle: Payload,
        /// The Ed25519 public key of the recovery key's auth key.
        recovery_key: [u8; 32],
    },
    /// Starts a password login as `user` (allowed before authentication): `request` is
    /// OPAQUE's credential request. Answered with [`Reply::AccountLoginResponse`], a fake
    /// but indistinguishable one for a user without an account. Rate limited per user name
    /// and per client address.
    AccountLoginStart {
        /// Who logs in.
        user: UserName,
        /// OPAQUE's `CredentialRequest`.
        request: Payload,
    },
    /// Finishes the login started on this connection. Answered with
    /// [`Reply::AccountLoggedIn`], or `LoginFailed` (wrong password, unknown user: the same).
    AccountLoginFinish {
        /// OPAQUE's `CredentialFinalization`.
        finalization: Payload,
    },
    /// Fetches `user`'s bundle wrapped under the recovery key (allowed before
    /// authentication): `signature` signs [`crate::sign::recovery_fetch_message`] over this
    /// connection's challenge and channel binding with the recovery auth key. Uses the challenge. Answered with
    /// [`Reply::RecoveryBundle`], or `LoginFailed`.
    FetchRecoveryBundle {
        /// Whose bundle.
        user: UserName,
        /// Signature by the recovery auth key.
        signature: Signature,
    },
    /// Starts replacing the password of the user this connection proved itself to be on
    /// this connection: by a successful `AccountLoginFinish` (a password change: the current
    /// password) or a successful `FetchRecoveryBundle` (a reset: the recovery key). `request`
    /// is OPAQUE's registration request for the new password. Answered with
    /// [`Reply::AccountRegisterResponse`]; `Unauthenticated` without such a proof.
    AccountPasswordStart {
        /// OPAQUE's `RegistrationRequest`.
        request: Payload,
    },
    /// Finishes the replacement started on this connection: the relay replaces the record,
    /// the KSF version and the password-wrapped bundle in one transaction (the recovery
    /// bundle stays). After a recovery fetch (a reset) `reset_signature` must be the
    /// recovery auth key's signature over [`crate::sign::password_reset_message`]; after a
    /// login it must be `None`. Uses up the proof. Answered with
    /// [`Reply::AccountPasswordChanged`].
    AccountPasswordFinish {
        /// OPAQUE's `RegistrationUpload` for the new password.
        upload: Payload,
        /// The account bundle wrapped under the new export key (`bundle::WRAPPED_LEN` bytes).
        password_bundle: Payload,
        /// For a reset: the recovery auth key's signature binding the upload and bundle to
        /// this connection.
        reset_signature: Option<Signature>,
    },
    /// Deletes the account of the user this connection logged in as with the password
    /// (`AccountLoginFinish` on this connection): the record, both bundles, the device
    /// list, every device of the user (KeyPackages, inboxes, group memberships, sessions)
    /// and the blobs they uploaded; the name is free again. Answered with
    /// [`Reply::AccountDeleted`]; `Unauthenticated` without the login.
    AccountDelete,
    /// Lists the groups in which a current member device belongs to this device's own
    /// user (this device included): a user's new device joins them by external commits.
    /// Answered with [`Reply::UserGroups`].
    UserGroups,
    /// Appends a segment of the encrypted history backup to `user`'s backup index
    /// (`user` must be the authenticated device's own user, else `NotOwner`). The blob must
    /// be a complete blob of that user; the relay keeps it while it is indexed. Answered
    /// [`Reply::BackupSegmentAppended`]; `BackupFull` past the per-user caps
    /// ([`crate::limits::MAX_BACKUP_SEGMENTS`], [`crate::limits::MAX_BACKUP_BYTES`]).
    AppendBackupSegment {
        /// Whose index (the requester's own user).
        user: UserName,
        /// The segment: its blob, size and the opaque entry.
        segment: NewBackupSegment,
    },
    /// Lists `user`'s backup index after position `after` (0: from the start), at most
    /// [`crate::limits::MAX_BACKUP_LIST`] entries a reply. Own user only (`NotOwner`).
    /// Answered [`Reply::BackupSegments`].
    ListBackupSegments {
        /// Whose index (the requester's own user).
        user: UserName,
        /// The last position already read.
        after: u64,
    },
    /// [`Request::Ack`] without the `Acked` reply: the relay answers only when it refuses
    /// the ack (with the error `Ack` would get, under this request's id). Cheaper for both
    /// sides when acks are frequent.
    QuietAck {
        /// Which log.
        stream: Stream,
        /// The last entry processed.
        seq: Seq,
    },
}

/// The kind of a group post, as MLS exposes it in clear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostKind {
    /// An MLS application message.
    Application,
    /// An MLS proposal.
    Proposal,
    /// An MLS commit ending `epoch`. Accepted only if `epoch` is the group's current epoch;
    /// then the group moves to `epoch + 1`, the membership change applies and the Welcome is
    /// put in the inboxes of the `added` devices, all in one transaction.
    Commit {
        /// Devices this commit adds (they receive the Welcome).
        added: BoundedVec<DeviceId>,
        /// Devices this commit removes (they may no longer read or post).
        removed: BoundedVec<DeviceId>,
        /// The Welcome for the added devices.
        welcome: Option<Payload>,
        /// The GroupInfo of the epoch this commit starts (MLSMessage encoding), signed by the
        /// committer: the relay checks it against the commit and keeps the latest one.
        group_info: Payload,
    },
}

/// A log a device reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stream {
    /// A group's log.
    Group(GroupId),
    /// The device's own inbox.
    Inbox,
}

/// A frame from the relay to a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// First frame of every connection: a fresh random nonce to sign.
    Challenge {
        /// The relay's protocol version.
        version: u16,
        /// Fresh, random, single use.
        nonce: [u8; 32],
    },
    /// The one answer to a request.
    Response {
        /// The request's id.
        id: RequestId,
        /// The outcome.
        result: Result<Reply, ErrorReply>,
    },
    /// An entry pushed to the device (backlog after authentication, then live). It is
    /// resent on every connection until acknowledged with [`Request::Ack`].
    Deliver(Delivery),
    /// Sent once after authentication, when the backlog has been pushed.
    BacklogDone,
    /// The relay is closing this connection; `code` says why.
    Closing {
        /// Why.
        code: ErrorCode,
    },
    /// To a link slot's host: a machine joined the slot.
    LinkPeerJoined,
    /// Bytes the other device of this connection's link slot sent (`LinkSend`).
    LinkMessage {
        /// The bytes, as sent.
        bytes: Payload,
    },
    /// This connection's link slot is closed; nothing more passes through it.
    LinkClosed {
        /// Why.
        reason: LinkCloseReason,
    },
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Authenticated (after `Register`, `RegisterDevice` or `Authenticate`).
    Authenticated {
        /// The authenticated device.
        device: DeviceId,
    },
    /// A user's devices.
    Devices {
        /// Whose.
        user: UserName,
        /// The devices and their keys, ordered by id.
        devices: BoundedVec<DeviceInfo>,
    },
    /// KeyPackages stored; the device's stock of normal KeyPackages.
    KeyPackageStock {
        /// Normal KeyPackages left.
        remaining: u32,
        /// Whether a last-resort KeyPackage is on file.
        has_last_resort: bool,
    },
    /// One KeyPackage per device of the claimed user (devices without any are left out).
    KeyPackages {
        /// Whose.
        user: UserName,
        /// The claimed KeyPackages.
        key_packages: BoundedVec<ClaimedKeyPackage>,
    },
    /// The group was created (at epoch 0).
    GroupCreated,
    /// The post is durable at `seq`.
    Posted {
        /// Its position in the group log.
        seq: Seq,
    },
    /// Log entries (for `Fetch`), in order.
    Entries {
        /// The entries.
        entries: BoundedVec<GroupEntry>,
    },
    /// The cursor moved.
    Acked,
    /// The groups this device is a member of.
    Groups {
        /// Group and its current epoch.
        groups: BoundedVec<GroupSummary>,
    },
    /// Answer to `Ping`.
    Pong,
    /// TURN REST credentials for the relay's TURN server (answer to `TurnCredentials`).
    TurnCredentials {
        /// TURN URLs, e.g. `turn:relay.example:3478?transport=udp`.
        urls: BoundedVec<String>,
        /// `"<expiry unix seconds>:<user>"`.
        username: String,
        /// `base64(HMAC-SHA1(secret, username))`.
        password: String,
        /// When the credentials expire, ms since the Unix epoch.
        expires_at_ms: u64,
    },
    /// The device list was stored (answer to `PublishDeviceList`): its newest entry.
    DeviceListHead {
        /// The head of the stored list.
        head: ListHead,
    },
    /// A user's device list as stored (answer to `FetchDeviceList`): every entry from entry
    /// 0, empty if the user has published none. The relay verified it when it was published;
    /// a client verifies it again and checks it against the head it pinned.
    DeviceList {
        /// The signed entries, from entry 0.
        entries: BoundedVec<ListEntry>,
    },
    /// A link slot is open (answer to `OpenLink`).
    LinkOpened {
        /// Its number, the first part of the link code.
        nameplate: u32,
    },
    /// This connection joined the link slot (answer to `JoinLink`).
    LinkJoined,
    /// The bytes were passed on to the other device (answer to `LinkSend`).
    LinkSent,
    /// The requesting device's own user's devices (answer to `ListOwnDevices`), revoked
    /// ones included, ordered by id. At most [`crate::limits::MAX_VEC_ITEMS`] devices.
    OwnDevices {
        /// The devices.
        devices: BoundedVec<OwnDevice>,
    },
    /// A group's latest public MLS state (answer to `FetchGroupState`; appended).
    GroupState {
        /// The group.
        group: GroupId,
        /// The latest GroupInfo (MLSMessage encoding), signed by the last committer.
        group_info: Payload,
        /// The ratchet tree of the same epoch (TLS encoding).
        tree: Payload,
    },
    /// The device left the group (answer to `LeaveGroup`).
    Left,
    /// OPAQUE's registration response (answer to `AccountRegisterStart`).
    AccountRegisterResponse {
        /// OPAQUE's `RegistrationResponse`.
        response: Payload,
    },
    /// The account is stored (answer to `AccountRegisterFinish`).
    AccountRegistered,
    /// OPAQUE's credential response (answer to `AccountLoginStart`).
    AccountLoginResponse {
        /// OPAQUE's `CredentialResponse`.
        response: Payload,
        /// The version of the key-stretching parameters the record was made with.
        ksf_version: u8,
    },
    /// The login succeeded (answer to `AccountLoginFinish`): the bundle wrapped under the
    /// export key.
    AccountLoggedIn {
        /// The wrapped bundle.
        password_bundle: Payload,
    },
    /// The bundle wrapped under the recovery key (answer to `FetchRecoveryBundle`).
    RecoveryBundle {
        /// The wrapped bundle.
        recovery_bundle: Payload,
    },
    /// The new password is stored (answer to `AccountPasswordFinish`).
    AccountPasswordChanged,
    /// The user and everything of it is gone from the relay (answer to `AccountDelete`).
    AccountDeleted,
    /// The groups with a current member device of this device's user, by id (answer to
    /// `UserGroups`).
    UserGroups {
        /// The groups, ordered by id.
        groups: BoundedVec<GroupId>,
    },
    /// The segment is indexed (answer to `AppendBackupSegment`).
    BackupSegmentAppended {
        /// Its position in the user's index (from 1, in append order, never reused).
        position: u64,
    },
    /// Entries of the user's backup index (answer to `ListBackupSegments`), in position
    /// order.
    BackupSegments {
        /// The entries after the requested position.
        segments: BoundedVec<BackupSegment>,
        /// Whether more entries follow the last one here.
        more: bool,
    },
}

/// A history-backup segment to index (in [`Request::AppendBackupSegment`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewBackupSegment {
    /// The blob holding the sealed segment.
    pub blob: crate::BlobId,
    /// The blob's length in bytes (checked against the stored blob).
    pub size: u64,
    /// The client's opaque description of the segment (at most
    /// [`crate::limits::MAX_BACKUP_ENTRY_BYTES`]); the relay stores and returns it as is.
    pub entry: Payload,
}

/// An entry of a user's backup index (in [`Reply::BackupSegments`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSegment {
    /// Its position in the index.
    pub position: u64,
    /// The blob holding the sealed segment.
    pub blob: crate::BlobId,
    /// The blob's length in bytes.
    pub size: u64,
    /// The opaque entry, as appended.
    pub entry: Payload,
}

/// Why a link slot closed (in [`ServerFrame::LinkClosed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkCloseReason {
    /// The other device disconnected.
    PeerLeft,
    /// The slot outlived its lifetime (5 minutes by default).
    Expired,
}

/// A device in the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device.
    pub device: DeviceId,
    /// Its Ed25519 public key.
    pub key: DeviceKey,
}

/// A device of the requester's own user, as the relay knows it (in [`Reply::OwnDevices`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnDevice {
    /// The device (its relay-assigned id).
    pub device: DeviceId,
    /// Its Ed25519 public key.
    pub key: DeviceKey,
    /// When it last authenticated or registered, ms since the Unix epoch by the relay's
    /// clock; `None` if the relay has no record (a device registered before the relay
    /// recorded logins, and not seen since).
    pub last_seen_ms: Option<u64>,
    /// Whether the user's stored signed device list revokes its key.
    pub revoked: bool,
}

/// A KeyPackage handed out by a claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    /// Whose KeyPackage.
    pub device: DeviceId,
    /// The KeyPackage (MLSMessage encoding).
    pub key_package: Payload,
    /// True when the stock was empty and this is the device's last-resort KeyPackage.
    pub last_resort: bool,
}

/// A group and its current epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group.
    pub group: GroupId,
    /// Its current epoch.
    pub epoch: Epoch,
}

/// An entry of a group log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// The group.
    pub group: GroupId,
    /// Position in the log.
    pub seq: Seq,
    /// The epoch the message was posted in.
    pub epoch: Epoch,
    /// Which device posted it (authenticated by the relay).
    pub sender: DeviceId,
    /// What kind of MLS message; for commits the membership change (the Welcome is not
    /// repeated here, it goes to the added devices' inboxes).
    pub kind: EntryKind,
    /// Relay time of acceptance, milliseconds since the Unix epoch (informational).
    pub received_at_ms: u64,
    /// The MLS message.
    pub payload: Payload,
}

/// The kind of a stored group entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// An application message.
    Application,
    /// A proposal.
    Proposal,
    /// A commit with its membership change.
    Commit {
        /// Devices added.
        added: BoundedVec<DeviceId>,
        /// Devices removed.
        removed: BoundedVec<DeviceId>,
    },
}

/// An entry of a device's inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Position in the inbox.
    pub seq: Seq,
    /// What it is.
    pub kind: InboxKind,
    /// Relay time of acceptance, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// The bytes (a Welcome, an MLSMessage).
    pub payload: Payload,
}

/// What an inbox entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InboxKind {
    /// A Welcome into `group`, sent by `sender` with the commit at `commit_seq`. The device's
    /// cursor in that group starts at `commit_seq`: it reads what follows.
    Welcome {
        /// The group joined.
        group: GroupId,
        /// The log position of the commit that added this device.
        commit_seq: Seq,
        /// The committing device.
        sender: DeviceId,
    },
}

/// A pushed entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// From a group log.
    Group(GroupEntry),
    /// From the device's inbox.
    Inbox(InboxEntry),
}

/// A failed request: a machine-readable code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorCode,
    /// A short explanation for people (bounded, never contains payloads or keys).
    pub message: String,
    /// For [`ErrorCode::RateLimited`]: when to retry, in milliseconds.
    pub retry_after_ms: Option<u32>,
    /// For [`ErrorCode::StaleEpoch`]: the group's current epoch.
    pub current_epoch: Option<Epoch>,
}

impl ErrorReply {
    /// An error with a code and message and no extra fields.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > crate::limits::MAX_ERROR_MESSAGE {
            let mut cut = crate::limits::MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ErrorReply {
            code,
            message,
            retry_after_ms: None,
            current_epoch: None,
        }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        if let Some(ms) = self.retry_after_ms {
            write!(f, " (retry after {ms} ms)")?;
        }
        if let Some(e) = self.current_epoch {
            write!(f, " (current epoch {e})")?;
        }
        Ok(())
    }
}

/// Typed error codes. Grouped by who is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    // --- the peer sent something wrong ---
    /// The frame could not be decoded.
    Malformed,
    /// The frame exceeded a size limit.
    TooLarge,
    /// The request needs an authenticated connection.
    Unauthenticated,
    /// A signature did not verify, or the challenge was already used.
    AuthenticationFailed,
    /// The connection is already authenticated.
    AlreadyAuthenticated,
    /// A request that is not valid as sent (e.g. empty batch, bad membership change).
    InvalidRequest,
    // --- state conflicts ---
    /// The user name is taken.
    UserTaken,
    /// No such user.
    UnknownUser,
    /// No such device (or not one of the user's devices).
    UnknownDevice,
    /// No such group.
    UnknownGroup,
    /// The group id is taken.
    GroupExists,
    /// This device is not a member of the group.
    NotMember,
    /// A commit for an epoch that is not the current one; see `current_epoch`.
    StaleEpoch,
    /// A user already has the most devices allowed.
    TooManyDevices,
    /// The device's KeyPackage stock is full.
    StockFull,
    // --- retry later ---
    /// Too many requests; see `retry_after_ms`.
    RateLimited,
    /// The relay is shutting down (at its connection cap it queues new connections in the
    /// accept backlog instead of refusing them).
    Unavailable,
    // --- connection management (in `Closing`) ---
    /// Another connection authenticated as the same device; this one is closed.
    Displaced,
    /// The device did not read fast enough; its entries stay stored.
    SlowReader,
    /// No traffic within the idle timeout.
    IdleTimeout,
    // --- relay bug ---
    /// Something failed inside the relay; details are in its log.
    Internal,
    // --- linking by code (appended) ---
    /// No device is waiting with this link code (never opened, closed, or long expired).
    LinkNotFound,
    /// Another machine already joined this link slot.
    LinkTaken,
    /// The link code expired.
    LinkExpired,
    // --- identities (appended: codes are encoded by position) ---
    /// `RegisterDevice` of a key that the user's signed device list does not name as an
    /// unrevoked device: the user's identity must sign (and a device publish) its `Add`
    /// entry first.
    NotInDeviceList,
    // --- handshake validation (appended) ---
    /// A handshake the relay's public MLS state refuses: not a PublicMessage, a bad
    /// signature, a non-member committer, a GroupInfo that does not match the commit, or
    /// `added`/`removed` lists that disagree with the commit's proposals. Nothing was stored.
    InvalidCommit,
    // --- accounts (appended) ---
    /// A password login failed: wrong password, or no such account (the same code for both).
    LoginFailed, // --- history backup (appended) ---
    /// The request names another user's resource (e.g. another user's backup index).
    NotOwner,
    /// The user's backup index is at its cap of segments or bytes; nothing was indexed.
    BackupFull,
}
