//! What the two devices say over the confirmed link [`super::Channel`], in this order:
//!
//! ```text
//! host                                            joiner (new machine)
//! Offer { version, user }              ─────▶
//!                                      ◀─────     Hello { version, device key }
//! (authorises the key, the relay has the list entry)
//! Grant { authorizer, authorization }  ─────▶
//!                                                 (registers, uploads KeyPackages)
//!                                      ◀─────     Ready { device }
//! (adds the device to every group)
//! History { chunk } ...                ─────▶     (stores the rows)
//! Done { groups }                      ─────▶
//!                                      ◀─────     Finished
//! ```
//!
//! Either side may send `Failed { reason }` instead and stop. Every message is postcard,
//! at most [`super::MAX_LINK_MESSAGE`] bytes, decoded with the wire crate's bounded decoder;
//! [`LINK_VERSION`] is checked in `Offer` and `Hello`.

use cove_wire::{BoundedVec, DeviceId, DeviceKey, GroupId, Payload, Seq, Signature, UserName};
use serde::{Deserialize, Serialize};

use super::{LinkError, MAX_LINK_MESSAGE};

/// The version of the messages below.
pub const LINK_VERSION: u16 = 1;
/// Longest reason in [`LinkMessage::Failed`].
pub const MAX_FAILED_REASON: usize = 256;
/// Most history chunks one link hands over (the relay forwards 64 messages per slot).
pub const MAX_HISTORY_CHUNKS: usize = 48;

/// One message over the link channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMessage {
    /// Host → joiner, first: whose device the joiner becomes.
    Offer {
        /// [`LINK_VERSION`].
        version: u16,
        /// The user.
        user: UserName,
    },
    /// Joiner → host: the new device's public key, to authorise.
    Hello {
        /// [`LINK_VERSION`].
        version: u16,
        /// The new device's Ed25519 public key.
        device_key: DeviceKey,
    },
    /// Host → joiner: the authorisation to register with (`RegisterDevice`); the key is in
    /// the user's signed device list at the relay already.
    Grant {
        /// The authorising device.
        authorizer: DeviceId,
        /// Its signature over the new key.
        authorization: Signature,
    },
    /// Joiner → host: registered, KeyPackages uploaded; add me to the groups.
    Ready {
        /// The new device's id at the relay.
        device: DeviceId,
    },
    /// Host → joiner: a part of the message history.
    History(HistoryChunk),
    /// Host → joiner: everything is sent; the groups the new device was added to.
    Done {
        /// The groups.
        groups: BoundedVec<GroupId>,
    },
    /// Joiner → host: the history is stored; linking is complete.
    Finished,
    /// Either side: linking failed and stops here.
    Failed {
        /// Why, for the user (at most [`MAX_FAILED_REASON`] bytes).
        reason: String,
    },
}

/// A part of the message history, as the host stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryChunk {
    /// The messages.
    pub messages: BoundedVec<HistoryMessage>,
}

/// One message of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMessage {
    /// The group.
    pub group: GroupId,
    /// Its position in the group log.
    pub seq: Seq,
    /// The sending user.
    pub from: UserName,
    /// The sending device.
    pub from_device: DeviceId,
    /// The sender's message id.
    pub message_id: [u8; 16],
    /// The sender's clock at sending.
    pub sent_at_ms: u64,
    /// The encoded content (`Envelope`), as stored.
    pub content: Payload,
}

impl From<cove_store::StoredMessage> for HistoryMessage {
    fn from(m: cove_store::StoredMessage) -> Self {
        HistoryMessage {
            group: m.group,
            seq: m.seq,
            from: m.from,
            from_device: m.from_device,
            message_id: m.message_id,
            sent_at_ms: m.sent_at_ms,
            content: Payload(m.content),
        }
    }
}

impl From<HistoryMessage> for cove_store::StoredMessage {
    fn from(m: HistoryMessage) -> Self {
        cove_store::StoredMessage {
            group: m.group,
            seq: m.seq,
            from: m.from,
            from_device: m.from_device,
            message_id: m.message_id,
            sent_at_ms: m.sent_at_ms,
            content: m.content.into_vec(),
        }
    }
}

impl LinkMessage {
    /// The message's bytes, to seal.
    pub fn encode(&self) -> Result<Vec<u8>, LinkError> {
        let bytes = cove_wire::encode(self).map_err(|_| LinkError::TooLarge)?;
        if bytes.len() > MAX_LINK_MESSAGE {
            return Err(LinkError::TooLarge);
        }
        Ok(bytes)
    }

    /// Decodes an opened message; checks the version and bounds.
    pub fn decode(bytes: &[u8]) -> Result<Self, LinkError> {
        if bytes.len() > MAX_LINK_MESSAGE {
            return Err(LinkError::TooLarge);
        }
        let message: LinkMessage = cove_wire::decode(bytes).map_err(|_| LinkError::Malformed)?;
        match &message {
            LinkMessage::Offer { version, .. } | LinkMessage::Hello { version, .. }
                if *version != LINK_VERSION =>
            {
                Err(LinkError::Version(*version))
            }
            LinkMessage::Failed { reason } if reason.len() > MAX_FAILED_REASON => {
                Err(LinkError::Malformed)
            }
            _ => Ok(message),
        }
    }

    /// A `Failed` message with `reason` cut to [`MAX_FAILED_REASON`] bytes.
    pub fn failed(reason: &str) -> Self {
        let mut cut = reason.len().min(MAX_FAILED_REASON);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        LinkMessage::Failed {
            reason: reason[..cut].to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let offer = LinkMessage::Offer {
            version: LINK_VERSION,
            user: UserName::new("alice").unwrap(),
        };
        assert_eq!(
            LinkMessage::decode(&offer.encode().unwrap()).unwrap(),
            offer
        );
        let newer = LinkMessage::Hello {
            version: LINK_VERSION + 1,
            device_key: DeviceKey([1; 32]),
        };
        assert_eq!(
            LinkMessage::decode(&newer.encode().unwrap()).unwrap_err(),
            LinkError::Version(LINK_VERSION + 1)
        );
        assert_eq!(
            LinkMessage::decode(&[0xff, 0xff, 0xff]).unwrap_err(),
            LinkError::Malformed
        );
        let mut bytes = LinkMessage::Finished.encode().unwrap();
        bytes.push(0);
        assert_eq!(
            LinkMessage::decode(&bytes).unwrap_err(),
            LinkError::Malformed
        );
        let long = LinkMessage::Failed {
            reason: "x".repeat(MAX_FAILED_REASON + 1),
        };
        assert_eq!(
            LinkMessage::decode(&long.encode().unwrap()).unwrap_err(),
            LinkError::Malformed
        );
        let cut = LinkMessage::failed(&"é".repeat(MAX_FAILED_REASON));
        assert_eq!(LinkMessage::decode(&cut.encode().unwrap()).unwrap(), cut);
        assert_eq!(
            LinkMessage::decode(&vec![0; MAX_LINK_MESSAGE + 1]).unwrap_err(),
            LinkError::TooLarge
        );
    }
}
