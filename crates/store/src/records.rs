//! The typed records the store keeps (postcard-encoded on disk; fields are only appended).

use std::fmt;

use cove_wire::identity::{IdentityKey, ListEntry, ListHead};
use cove_wire::{DeviceId, DeviceKey, Epoch, GroupId, Seq, UserName};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The device identity: who this device is and its Ed25519 device key (also its MLS
/// signature key).
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The user this device belongs to.
    pub user: UserName,
    /// The device id the relay assigned at registration (`None` until registered).
    pub device: Option<DeviceId>,
    /// The Ed25519 secret key seed. Never logged (see the redacting `Debug`).
    pub secret_key: Zeroizing<[u8; 32]>,
    /// The Ed25519 public key.
    pub public_key: DeviceKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("device", &self.device)
            .field("secret_key", &"<redacted>")
            .field("public_key", &self.public_key)
            .finish()
    }
}

/// The user's identity secret (Ed25519), on a device that holds it: it signs the user's
/// device list.
#[derive(Clone, Serialize, Deserialize)]
pub struct UserIdentity {
    /// Whose identity.
    pub user: UserName,
    /// The identity public key.
    pub identity: IdentityKey,
    /// The secret key seed. Never logged (see the redacting `Debug`).
    pub secret_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for UserIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserIdentity")
            .field("user", &self.user)
            .field("identity", &self.identity)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// The account secrets a device keeps once its user has a password account (issue 11): the
/// key the history backup is encrypted with. Written by `cove init` with a password (the
/// bundle it registers) and by `cove login` (the bundle it unwrapped).
#[derive(Clone, Serialize, Deserialize)]
pub struct AccountSecrets {
    /// Whose account.
    pub user: UserName,
    /// The history backup key (from the account bundle). Never logged.
    pub backup_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for AccountSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountSecrets")
            .field("user", &self.user)
            .field("backup_key", &"<redacted>")
            .finish()
    }
}

/// A user's identity key as pinned on first sight (or as last accepted), and the newest
/// device-list head verified for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedIdentity {
    /// Whose identity.
    pub user: UserName,
    /// The pinned identity key.
    pub identity: IdentityKey,
    /// The newest verified head of the user's device list (`None` before a list was seen).
    pub head: Option<ListHead>,
    /// Whether the user compared safety numbers and confirmed this identity.
    pub verified: bool,
    /// When it was pinned (client time, ms since the Unix epoch).
    pub pinned_at_ms: u64,
}

/// Another user's identity key that changed since it was pinned, until the user verifies
/// the new one (compares safety numbers): it marks the user as changed, and, when the
/// previous identity was verified, blocks sending to groups with them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityChange {
    /// Whose identity.
    pub user: UserName,
    /// The identity key pinned before the change.
    pub previous: IdentityKey,
    /// The identity key the user's device list names now.
    pub presented: IdentityKey,
    /// That list (signed by `presented`), pinned when the user verifies it.
    pub entries: Vec<ListEntry>,
    /// Whether `previous` was verified: then `presented` is not pinned yet and sending to
    /// groups with the user is blocked until the user verifies it.
    pub blocking: bool,
    /// When the change was seen (client time, ms since the Unix epoch).
    pub seen_at_ms: u64,
}

/// A device key pinned on first sight (trust on first use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedDevice {
    /// Whose device.
    pub user: UserName,
    /// The device.
    pub device: DeviceId,
    /// Its Ed25519 key as first seen (or as last accepted by the user).
    pub key: DeviceKey,
    /// When it was pinned (client time, ms since the Unix epoch).
    pub pinned_at_ms: u64,
}

/// What this device's membership in a group is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Membership {
    /// A current member.
    Active,
    /// This device left.
    Left,
    /// Another member removed this device.
    Removed,
}

/// A group this device is or was in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group (= MLS group id).
    pub id: GroupId,
    /// Its name, as the creator set it (shared inside the group); empty until known.
    pub name: String,
    /// Current membership.
    pub membership: Membership,
    /// When this device created or joined it (client time, ms).
    pub joined_at_ms: u64,
}

/// One message of the plaintext history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The group.
    pub group: GroupId,
    /// Position in the group log (the order everyone sees).
    pub seq: Seq,
    /// Sender user.
    pub from: UserName,
    /// Sender device.
    pub from_device: DeviceId,
    /// The sender's random message id.
    pub message_id: [u8; 16],
    /// The sender's clock at sending, ms since the Unix epoch (as claimed by the sender).
    pub sent_at_ms: u64,
    /// The encoded application content (cove-core's `Content`), kept whole so that
    /// kinds added later survive in history.
    pub content: Vec<u8>,
}

/// An outgoing application message, persisted before it is first sent and removed when the
/// relay acknowledged it (then it is in the history).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Local, unique id.
    pub local_id: u64,
    /// The group.
    pub group: GroupId,
    /// The epoch the MLS message was made in.
    pub epoch: Epoch,
    /// The message id inside the content.
    pub message_id: [u8; 16],
    /// The sender timestamp inside the content.
    pub sent_at_ms: u64,
    /// The encoded content (for the history once posted).
    pub content: Vec<u8>,
    /// The MLS message to post.
    pub payload: Vec<u8>,
}
