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
    /// A Cove Drive tree operation (issue 14; only in drive groups, see [`crate::drive`]).
    Drive(Box<crate::drive::DriveOp>),
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
    /// A known content kind whose fields break its bounds (a text too long, a quote too
    /// long, an emoji that is not 1-[`MAX_EMOJI_BYTES`] bytes without control characters or
    /// whitespace, a message that refers to itself): the sender is at fault.
    #[error("invalid application content: {0}")]
    Invalid(&'static str),
}

/// How many content kinds this client knows: [`Content`]'s variant indexes are
/// `0..KNOWN_CONTENT_KINDS`. A valid envelope with a higher index is from a newer client.
pub const KNOWN_CONTENT_KINDS: u32 = 14;

/// An envelope as [`Envelope::decode_lenient`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A content kind this client knows.
    Known(Envelope),
    /// A well-formed envelope header (version, id, time) whose content kind is beyond the
    /// ones this client knows (a newer client's): shown as "unsupported message".
    Unsupported {
        /// The message id.
        id: [u8; 16],
        /// The sender's clock at sending, ms since the Unix epoch.
        sent_at_ms: u64,
        /// The content's variant index (at least [`KNOWN_CONTENT_KINDS`]).
        kind: u32,
    },
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

    /// Decodes an envelope like [`Envelope::decode`], but tells an envelope of a newer
    /// client (a valid header, then a content variant index this client does not know) from
    /// garbage: the former is [`Decoded::Unsupported`], the latter an error.
    pub fn decode_lenient(bytes: &[u8]) -> Result<Decoded, ContentError> {
        match Self::decode(bytes) {
            Ok(env) => Ok(Decoded::Known(env)),
            Err(e @ (ContentError::Malformed(_) | ContentError::TrailingBytes)) => {
                unknown_kind(bytes).ok_or(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// The header of an envelope whose content variant is beyond the known ones (postcard: the
/// version byte, the 16 id bytes, the time as a varint, the variant index as a varint).
fn unknown_kind(bytes: &[u8]) -> Option<Decoded> {
    let (&version, rest) = bytes.split_first()?;
    if version != ENVELOPE_VERSION {
        return None;
    }
    let id: [u8; 16] = rest.get(..16)?.try_into().ok()?;
    let rest = rest.get(16..)?;
    let (sent_at_ms, rest) = postcard::take_from_bytes::<u64>(rest).ok()?;
    let (kind, _) = postcard::take_from_bytes::<u32>(rest).ok()?;
    (kind >= KNOWN_CONTENT_KINDS).then_some(Decoded::Unsupported {
        id,
        sent_at_ms,
        kind,
    })
}

/// Whether `emoji` is a valid reaction: 1 to [`MAX_EMOJI_BYTES`] bytes of UTF-8, no control
/// characters, no whitespace.
pub fn valid_emoji(emoji: &str) -> bool {
    (1..=MAX_EMOJI_BYTES).contains(&emoji.len())
        && !emoji.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Whether `quote` fits a reply ([`MAX_QUOTE_CHARS`] characters at most).
fn valid_quote(quote: &str) -> bool {
    quote.chars().nth(MAX_QUOTE_CHARS).is_none()
}

impl Content {
    /// Checks the bounds a receiver enforces (texts of texts, replies and edits, quotes,
    /// emoji, a group profile's name and description): an invalid one is dropped with a
    /// warning.
    pub fn validate(&self) -> Result<(), ContentError> {
        let text_ok = |t: &str| t.len() <= MAX_TEXT_BYTES;
        match self {
            Content::Text { text } | Content::Edit { text, .. } if !text_ok(text) => {
                Err(ContentError::Invalid("text too long"))
            }
            Content::Reply { quote, text, .. } => {
                if !text_ok(text) {
                    Err(ContentError::Invalid("text too long"))
                } else if !valid_quote(quote) {
                    Err(ContentError::Invalid("quote too long"))
                } else {
                    Ok(())
                }
            }
            Content::Reaction { emoji, .. } if !valid_emoji(emoji) => {
                Err(ContentError::Invalid("not a valid reaction emoji"))
            }
            Content::GroupProfile { name, .. } if name.len() > crate::MAX_GROUP_NAME => {
                Err(ContentError::Invalid("group name too long"))
            }
            Content::GroupProfile { description, .. }
                if description.len() > MAX_DESCRIPTION_BYTES =>
            {
                Err(ContentError::Invalid("group description too long"))
            }
            Content::Drive(op) => op
                .validate()
                .map_err(|_| ContentError::Invalid("invalid drive operation")),
            _ => Ok(()),
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

    /// A newer client's envelope (valid header, variant index beyond the known ones, any
    /// body) is `Unsupported` with its id, time and kind; a known variant with a broken
    /// body, a short header or another version stays an error.
    #[test]
    fn lenient_decoding_tells_newer_kinds_from_garbage() {
        let mut newer = vec![ENVELOPE_VERSION];
        newer.extend_from_slice(&[7; 16]);
        newer.extend(postcard::to_stdvec(&300_000u64).unwrap_or_default());
        newer.extend(postcard::to_stdvec(&(KNOWN_CONTENT_KINDS + 4)).unwrap_or_default());
        newer.extend_from_slice(b"whatever a newer client puts here");
        assert_eq!(
            Envelope::decode_lenient(&newer),
            Ok(Decoded::Unsupported {
                id: [7; 16],
                sent_at_ms: 300_000,
                kind: KNOWN_CONTENT_KINDS + 4,
            })
        );
        // The last known kind with a broken body is garbage.
        let mut broken = newer[..17].to_vec();
        broken.extend(postcard::to_stdvec(&300_000u64).unwrap_or_default());
        broken.extend(postcard::to_stdvec(&(KNOWN_CONTENT_KINDS - 1)).unwrap_or_default());
        broken.push(0xff);
        assert!(matches!(
            Envelope::decode_lenient(&broken),
            Err(ContentError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::decode_lenient(&newer[..10]),
            Err(ContentError::Malformed(_))
        ));
        let mut other_version = newer.clone();
        other_version[0] = ENVELOPE_VERSION + 1;
        assert!(matches!(
            Envelope::decode_lenient(&other_version),
            Err(ContentError::Malformed(_))
        ));
        // Every kind this client knows has an index below KNOWN_CONTENT_KINDS.
        let last = Envelope {
            version: ENVELOPE_VERSION,
            id: [1; 16],
            sent_at_ms: 5,
            content: Content::Drive(Box::new(crate::drive::DriveOp::SnapshotRequest)),
        };
        let bytes = last.encode().unwrap_or_default();
        assert_eq!(bytes.get(18), Some(&((KNOWN_CONTENT_KINDS - 1) as u8)));
        assert_eq!(Envelope::decode_lenient(&bytes), Ok(Decoded::Known(last)));
    }

    #[test]
    fn chat_kinds_are_validated() {
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        let reply = |quote: String, text: String| Content::Reply {
            to: [0; 16],
            quote,
            text,
        };
        assert_eq!(
            reply("q".repeat(MAX_QUOTE_CHARS), "t".into()).validate(),
            Ok(())
        );
        assert_eq!(
            reply("é".repeat(MAX_QUOTE_CHARS + 1), "t".into()).validate(),
            Err(ContentError::Invalid("quote too long"))
        );
        assert_eq!(
            reply(String::new(), long.clone()).validate(),
            Err(ContentError::Invalid("text too long"))
        );
        let edit = Content::Edit {
            to: [0; 16],
            text: long,
        };
        assert_eq!(edit.validate(), Err(ContentError::Invalid("text too long")));
        let profile = |name: usize, description: usize| Content::GroupProfile {
            name: "n".repeat(name),
            description: "d".repeat(description),
            avatar: None,
        };
        assert_eq!(
            profile(crate::MAX_GROUP_NAME, MAX_DESCRIPTION_BYTES).validate(),
            Ok(())
        );
        assert_eq!(
            profile(crate::MAX_GROUP_NAME + 1, 0).validate(),
            Err(ContentError::Invalid("group name too long"))
        );
        assert_eq!(
            profile(1, MAX_DESCRIPTION_BYTES + 1).validate(),
            Err(ContentError::Invalid("group description too long"))
        );
        for bad in ["", "a b", "\u{7}", "\n", &"👍".repeat(9)] {
            assert!(!valid_emoji(bad), "{bad:?}");
        }
        for good in ["👍", "🏳️‍🌈", "+1"] {
            assert!(valid_emoji(good), "{good:?}");
        }
    }
}
