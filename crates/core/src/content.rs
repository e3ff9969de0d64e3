//! What travels inside MLS application messages: a versioned, postcard-encoded envelope.
//! See `PROTOCOL.md`, "Messages inside MLS".

use serde::{Deserialize, Serialize};

use crate::attachment::AttachmentPointer;

/// Envelope version written by this crate.
pub const ENVELOPE_VERSION: u8 = 1;

/// Largest text a user may send in one message (bytes of UTF-8). The whole encoded
/// envelope must also fit [`cove_wire::limits::MAX_APPLICATION_PLAINTEXT`].
pub const MAX_TEXT_BYTES: usize = 60 * 1024;

/// The plaintext of every MLS application message Cove sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`ENVELOPE_VERSION`]; a receiver skips envelopes of a version it does not know.
    pub version: u8,
    /// Random, unique per message; receivers drop a second message with the same id.
    pub id: [u8; 16],
    /// Sender's clock at sending, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// What it is.
    pub content: Content,
}

/// The kinds of application content. **Variants are only ever appended** (postcard
/// encodes the variant index): a receiver that does not know a variant skips the message
/// with a warning, it never misreads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A text message.
    Text {
        /// The text (UTF-8, at most [`MAX_TEXT_BYTES`]).
        text: String,
    },
    /// Renames the group (the creator's name travels in the group context; see
    /// `PROTOCOL.md`).
    GroupInfo {
        /// The group's new name.
        name: String,
    },
    /// The sender's device asks to be removed from the group (it has left and deleted its
    /// group state). A remaining member commits the removal.
    LeaveRequest,
    /// A file: where its ciphertext is on the relay and how to decrypt and verify it (see
    /// `PROTOCOL.md`, "Attachments and share links").
    Attachment(AttachmentPointer),
    /// Call signalling (offer, answer, ICE candidate, hang-up, busy, decline) for one call;
    /// see [`crate::call`] and `PROTOCOL.md`, "Calls".
    Call(crate::call_signal::CallMessage),
    /// A reply to an earlier message of the group (issue 13): the id of the message replied
    /// to, a short quote of it (at most [`MAX_QUOTE_CHARS`] characters, as the sender saw it)
    /// and the reply's text.
    Reply {
        /// The message replied to.
        to: [u8; 16],
        /// A short quote of it (shown when the receiver does not hold it).
        quote: String,
        /// The reply (UTF-8, at most [`MAX_TEXT_BYTES`]).
        text: String,
    },
    /// Adds or removes the sender's emoji reaction on a message.
    Reaction {
        /// The message reacted to.
        to: [u8; 16],
        /// The emoji (at most [`MAX_EMOJI_BYTES`] bytes of UTF-8, no control characters).
        emoji: String,
        /// True to take the sender's reaction back.
        remove: bool,
    },
    /// New text for one of the sender's own messages (a text or a reply); receivers keep the
    /// earlier texts as the edit history. Only the author's edits are applied.
    Edit {
        /// The message edited.
        to: [u8; 16],
        /// Its new text (at most [`MAX_TEXT_BYTES`]).
        text: String,
    },
    /// Deletes a message for everyone: the sender's own, or any message when the sender is
    /// an admin of the group. Receivers erase its text (and its edits) from their databases.
    Delete {
        /// The message deleted.
        to: [u8; 16],
    },
    /// The sender's user has read the group up to (and including) this message. Sent at
    /// most once every few seconds per group (batched).
    ReadReceipt {
        /// The newest message read.
        up_to: [u8; 16],
    },
    /// The sender is typing (or stopped). Ephemeral: never stored, never retried.
    Typing {
        /// Typing now.
        active: bool,
    },
    /// The group's disappearing-messages timer: messages sent after it expire that long after
    /// they were received, on every device. `None` turns it off.
    Disappearing {
        /// The timer in seconds.
        timer_secs: Option<u32>,
    },
    /// The group's profile (replaces [`Content::GroupInfo`] for new clients): name,
    /// description and avatar (an attachment). Only admins' changes are applied.
    GroupProfile {
        /// The group's name (at most 256 bytes).
        name: String,
        /// A description (at most [`MAX_DESCRIPTION_BYTES`]).
        description: String,
        /// The avatar picture, as an attachment.
        avatar: Option<AttachmentPointer>,
    },
}

/// Longest quote carried by a [`Content::Reply`] (characters).
pub const MAX_QUOTE_CHARS: usize = 120;

/// Longest reaction emoji (bytes of UTF-8).
pub const MAX_EMOJI_BYTES: usize = 32;

/// Longest group description (bytes of UTF-8).
pub const MAX_DESCRIPTION_BYTES: usize = 2048;

/// Why an envelope could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContentError {
    /// Larger than the application plaintext limit.
    #[error("application plaintext of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not a valid envelope (or a content kind this client does not know): the sender is at
    /// fault.
    #[error("undecodable application content: {0}")]
    Malformed(postcard::Error),
    /// A valid envelope followed by more bytes: the sender is at fault.
    #[error("undecodable application content: trailing bytes")]
    TrailingBytes,
    /// This envelope could not be encoded (a bug in this client).
    #[error("application content could not be encoded: {0}")]
    Encode(postcard::Error),
    /// An envelope version this client does not know.
    #[error("unknown envelope version {0}")]
    UnknownVersion(u8),
}

impl Envelope {
    /// Encodes the envelope.
    pub fn encode(&self) -> Result<Vec<u8>, ContentError> {
        let bytes = postcard::to_stdvec(self).map_err(ContentError::Encode)?;
        if bytes.len() > cove_wire::limits::MAX_APPLICATION_PLAINTEXT {
            return Err(ContentError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes an envelope: bounded size, known version, no trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        if bytes.len() > cove_wire::limits::MAX_APPLICATION_PLAINTEXT {
            return Err(ContentError::TooLarge(bytes.len()));
        }
        let (env, rest): (Envelope, _) =
            postcard::take_from_bytes(bytes).map_err(ContentError::Malformed)?;
        if env.version != ENVELOPE_VERSION {
            return Err(ContentError::UnknownVersion(env.version));
        }
        if !rest.is_empty() {
            return Err(ContentError::TrailingBytes);
        }
        Ok(env)
    }
}

impl Content {
    /// The parts of a content that is a chat message: its text (empty for a file: how a file
    /// is described is the shell's business) and, for a file, its pointer. `None` for content
    /// that is not a chat message (group renames, leave requests, call signalling).
    pub(crate) fn into_chat_parts(self) -> Option<(String, Option<AttachmentPointer>)> {
        match self {
            Content::Text { text } => Some((text, None)),
            Content::Attachment(p) => Some((String::new(), Some(p))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_garbage() {
        let e = Envelope {
            version: ENVELOPE_VERSION,
            id: [3; 16],
            sent_at_ms: 42,
            content: Content::Text { text: "hi".into() },
        };
        let bytes = e.encode().unwrap_or_default();
        assert_eq!(Envelope::decode(&bytes), Ok(e));
        assert!(matches!(
            Envelope::decode(&[1, 2, 3]),
            Err(ContentError::Malformed(_))
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Envelope::decode(&long), Err(ContentError::TrailingBytes));
        assert!(matches!(
            Envelope::decode(&vec![0; cove_wire::limits::MAX_APPLICATION_PLAINTEXT + 1]),
            Err(ContentError::TooLarge(_))
        ));
    }
}
