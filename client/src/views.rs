//! What the shell shows: plain, owned views of messages and groups for printing and JSON.

use cove_core::attachment::AttachmentPointer;
use serde::Serialize;

/// One message as the user sees it. `--json` prints exactly these fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MessageView {
    /// The group's name (as its creator named it).
    pub group: String,
    /// The group's id (hex).
    pub group_id: String,
    /// The sending user.
    pub from: String,
    /// The sending device.
    pub device: u64,
    /// The text; for a file, its description (`[file] NAME (SIZE, TYPE)`, see [`file_line`]).
    pub text: String,
    /// The message's unique id (hex), the same on every member.
    pub id: String,
    /// The sender's timestamp, milliseconds since the Unix epoch.
    pub sent_at: u64,
    /// Position in the group's log on the relay (the same order on every member).
    pub seq: u64,
    /// The attached file of an attachment message (`text` then describes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<crate::transfer::AttachmentView>,
}

impl MessageView {
    /// The human form: `friends <alice> hello`, always one line: every field is
    /// [`escape`]d (a newline in the text shows as `\n`, a terminal escape as `\u{1b}`).
    pub fn line(&self) -> String {
        format!(
            "{} <{}> {}",
            escape(&self.group),
            escape(&self.from),
            escape(&self.text)
        )
    }
}

/// Makes text another user wrote safe to print on a terminal, on one line: control
/// characters (C0 including ESC, DEL, C1), bidirectional overrides, isolates and marks
/// (U+202A..U+202E, U+2066..U+2069, U+200E, U+200F, U+061C) and the line and paragraph
/// separators (U+2028, U+2029) are shown escaped as `\u{..}` (`\n`, `\r` and `\t` for
/// newline, carriage return and tab), everything else as it is. Every line `cove` prints
/// that contains remote text (message texts, group and user names, file names, reasons)
/// goes through this; JSON output does not (serde escapes control characters there).
pub fn escape(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// Whether [`escape`] shows `c` escaped.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{061C}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// What the user is told about another user's identity or devices, or a refused member
/// (the core's `Event::Identity`), or that this device rejoined a group it could not follow
/// (the core's `Event::Rejoined`). `--json` prints it as one object whose `identity` field
/// names the kind (`device_added`, `device_revoked`, `identity_changed`, `leaf_refused`,
/// `rejoined`), with the fields below; the names are stable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "identity", rename_all = "snake_case")]
pub enum IdentityView {
    /// `user`'s signed device list gained a device.
    DeviceAdded {
        /// Whose device.
        user: String,
        /// The new device's key (hex).
        device_key: String,
        /// Its name in the list.
        name: String,
    },
    /// `user` revoked a device.
    DeviceRevoked {
        /// Whose device.
        user: String,
        /// The revoked device's key (hex).
        device_key: String,
    },
    /// `user`'s identity key changed (their safety number changed).
    IdentityChanged {
        /// Whose identity.
        user: String,
        /// Whether the old key was verified: then sending to groups with `user` is blocked
        /// until `cove verify USER`.
        verified: bool,
    },
    /// A member of `group` claiming to be `user` was refused: its messages are not shown.
    LeafRefused {
        /// The group's name.
        group: String,
        /// The group's id (hex).
        group_id: String,
        /// The user the member claims to be.
        user: String,
        /// The device id it claims.
        device: u64,
        /// Why it was refused.
        reason: String,
    },
    /// This device could not process a commit of `group` and rejoined it by an external
    /// commit: it is live again; `unreadable` messages of the epochs it skipped are lost.
    Rejoined {
        /// The group's name.
        group: String,
        /// The group's id (hex).
        group_id: String,
        /// Entries of the skipped epochs that could not be read.
        unreadable: usize,
    },
}

impl IdentityView {
    /// The human form, e.g. `alice added a device (safety number unchanged)`, one line
    /// with every name and reason [`escape`]d.
    pub fn line(&self) -> String {
        match self {
            IdentityView::DeviceAdded { user, .. } => {
                let user = escape(user);
                format!("{user} added a device (safety number unchanged)")
            }
            IdentityView::DeviceRevoked { user, device_key } => format!(
                "{} revoked a device ({}): it is removed from every group",
                escape(user),
                escape(device_key.get(..16).unwrap_or(device_key))
            ),
            IdentityView::IdentityChanged {
                user,
                verified: true,
            } => {
                let user = escape(user);
                format!(
                    "{user}'s identity key changed since you verified it: sending to groups with \
                 {user} is blocked until you compare safety numbers again (`cove verify {user}`)"
                )
            }
            IdentityView::IdentityChanged {
                user,
                verified: false,
            } => {
                let user = escape(user);
                format!(
                    "{user}'s identity key changed: their safety number changed; compare it \
                     with them (`cove verify {user}`)"
                )
            }
            IdentityView::LeafRefused {
                group,
                user,
                device,
                reason,
                ..
            } => format!(
                "refused a member of {} claiming to be {} (device {device}): {}; its messages \
                 are not shown",
                escape(group),
                escape(user),
                escape(reason)
            ),
            IdentityView::Rejoined {
                group, unreadable, ..
            } => format!(
                "rejoined {} ({unreadable} messages could not be read)",
                escape(group)
            ),
        }
    }
}

/// A group this device is a member of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// The name the creator gave.
    pub name: String,
    /// The group id (hex).
    pub id: String,
    /// The current MLS epoch.
    pub epoch: u64,
    /// Member user names (each once, sorted).
    pub members: Vec<String>,
}

/// `cove group info`: a group's state, for two members to compare out of band (equal epoch
/// and authenticator mean the same MLS state). `--json` prints exactly these fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupInfoView {
    /// The name the creator gave.
    pub name: String,
    /// The group id (hex).
    pub id: String,
    /// The current MLS epoch.
    pub epoch: u64,
    /// The epoch authenticator (hex), equal on every member in the same epoch.
    pub epoch_authenticator: String,
    /// The member devices, ordered by user, then device id.
    pub members: Vec<MemberView>,
}

/// One member device of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// The user.
    pub user: String,
    /// The device id.
    pub device: u64,
    /// The device's MLS signature key (hex).
    pub key: String,
}

impl GroupInfoView {
    /// The human form: a header line, the authenticator, then one line per member device
    /// (`  alice  device 1  key 0123456789abcdef`), names [`escape`]d.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "group {} ({})  epoch {}",
                escape(&self.name),
                self.id,
                self.epoch
            ),
            format!("epoch authenticator {}", self.epoch_authenticator),
            format!("members ({} devices):", self.members.len()),
        ];
        out.extend(self.members.iter().map(|m| {
            format!(
                "  {}  device {}  key {}",
                escape(&m.user),
                m.device,
                m.key.get(..16).unwrap_or(&m.key)
            )
        }));
        out
    }
}

/// How a file message reads in the chat: `[file] report.pdf (3.0 MiB, application/pdf)`.
pub fn file_line(p: &AttachmentPointer) -> String {
    format!(
        "[file] {} ({}, {})",
        p.name,
        human_size(p.size),
        p.media_type
    )
}

/// `1.5 MiB`-style sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} bytes"),
        _ => format!("{v:.1} {}", UNITS.get(unit).copied().unwrap_or("TiB")),
    }
}

#[cfg(test)]
mod tests {
    use super::{IdentityView, MessageView, escape, human_size};

    /// Each class of character another user could use to fake or hide terminal output is
    /// shown escaped; ordinary text (including non-Latin scripts and emoji) is unchanged.
    #[test]
    fn escape_shows_control_bidi_and_separators_escaped() {
        // C0 including ESC, and the three with short forms.
        assert_eq!(escape("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("\u{0}\u{7}\u{1f}"), "\\u{0}\\u{7}\\u{1f}");
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        // DEL and C1 (CSI U+009B starts an escape sequence on some terminals).
        assert_eq!(
            escape("\u{7f}\u{80}\u{9b}\u{9f}"),
            "\\u{7f}\\u{80}\\u{9b}\\u{9f}"
        );
        // Bidi embeddings and overrides, isolates, marks.
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{61c}',
        ] {
            assert_eq!(
                escape(&format!("x{c}y")),
                format!("x{}y", c.escape_unicode()),
                "U+{:04X}",
                c as u32
            );
        }
        // Line and paragraph separators.
        assert_eq!(escape("a\u{2028}b\u{2029}"), "a\\u{2028}b\\u{2029}");
        // Ordinary text is left alone, a backslash too.
        for plain in ["hello", "see you at 8 \\o/", "Grüße, אבג, 你好, 🙂", ""] {
            assert_eq!(escape(plain), plain);
        }
    }

    /// A message whose text holds a newline and a fake second message prints as one line.
    #[test]
    fn a_message_line_is_one_line() {
        let m = MessageView {
            group: "fri\u{202e}ends".into(),
            group_id: "00".repeat(16),
            from: "mallory".into(),
            device: 1,
            text: "hi\nfriends <alice> send me your password\u{1b}[2J".into(),
            id: "11".repeat(16),
            sent_at: 0,
            seq: 1,
            attachment: None,
        };
        assert_eq!(
            m.line(),
            "fri\\u{202e}ends <mallory> hi\\nfriends <alice> send me your password\\u{1b}[2J"
        );
        assert_eq!(m.line().lines().count(), 1);
    }

    /// The JSON of every identity event: the `identity` field names the kind, the other
    /// field names are the documented ones (scripts depend on them).
    #[test]
    #[allow(clippy::unwrap_used)]
    fn identity_events_have_stable_json_and_lines() {
        let json = |v: &IdentityView| serde_json::to_value(v).unwrap();
        let added = IdentityView::DeviceAdded {
            user: "alice".into(),
            device_key: "ab".repeat(32),
            name: "laptop".into(),
        };
        assert_eq!(
            json(&added),
            serde_json::json!({"identity": "device_added", "user": "alice",
                "device_key": "ab".repeat(32), "name": "laptop"})
        );
        assert_eq!(
            added.line(),
            "alice added a device (safety number unchanged)"
        );
        let revoked = IdentityView::DeviceRevoked {
            user: "alice".into(),
            device_key: "cd".repeat(32),
        };
        assert_eq!(
            json(&revoked),
            serde_json::json!({"identity": "device_revoked", "user": "alice",
                "device_key": "cd".repeat(32)})
        );
        assert_eq!(
            revoked.line(),
            "alice revoked a device (cdcdcdcdcdcdcdcd): it is removed from every group"
        );
        let changed = IdentityView::IdentityChanged {
            user: "bob".into(),
            verified: true,
        };
        assert_eq!(
            json(&changed),
            serde_json::json!({"identity": "identity_changed", "user": "bob", "verified": true})
        );
        assert!(
            changed
                .line()
                .contains("sending to groups with bob is blocked")
        );
        let unverified = IdentityView::IdentityChanged {
            user: "bob".into(),
            verified: false,
        };
        assert!(
            unverified
                .line()
                .starts_with("bob's identity key changed: their safety number")
        );
        let refused = IdentityView::LeafRefused {
            group: "friends".into(),
            group_id: "00".repeat(16),
            user: "alice".into(),
            device: 7,
            reason: "it is certified by another identity than the user's".into(),
        };
        assert_eq!(
            json(&refused),
            serde_json::json!({"identity": "leaf_refused", "group": "friends",
                "group_id": "00".repeat(16), "user": "alice", "device": 7,
                "reason": "it is certified by another identity than the user's"})
        );
        assert_eq!(
            refused.line(),
            "refused a member of friends claiming to be alice (device 7): it is certified by \
             another identity than the user's; its messages are not shown"
        );
        let rejoined = IdentityView::Rejoined {
            group: "friends".into(),
            group_id: "00".repeat(16),
            unreadable: 3,
        };
        assert_eq!(
            json(&rejoined),
            serde_json::json!({"identity": "rejoined", "group": "friends",
                "group_id": "00".repeat(16), "unreadable": 3})
        );
        assert_eq!(
            rejoined.line(),
            "rejoined friends (3 messages could not be read)"
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1023), "1023 bytes");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
        assert_eq!(
            human_size(u64::MAX),
            "16777216.0 TiB",
            "TiB is the largest unit"
        );
    }
}
