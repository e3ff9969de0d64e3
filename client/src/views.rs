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
    /// The message this one replies to (absent for a message that is no reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<QuoteView>,
    /// The reactions on it, each emoji with who reacted (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionView>,
    /// Edited by its author (`text` is the newest text; absent when not).
    #[serde(skip_serializing_if = "is_false")]
    pub edited: bool,
    /// Deleted for everyone (`text` is empty; absent when not).
    #[serde(skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// A content type this client does not know, from a newer client (absent when not).
    #[serde(skip_serializing_if = "is_false")]
    pub unsupported: bool,
}

/// What a reply quotes (see [`MessageView::reply_to`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuoteView {
    /// The message replied to (hex).
    pub id: String,
    /// Its author, when this device holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The quote.
    pub text: String,
}

/// One emoji on a message and who reacted with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReactionView {
    /// The emoji.
    pub emoji: String,
    /// The users who reacted with it.
    pub users: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl MessageView {
    /// The human form: `friends <alice> hello`, always one line: every field is
    /// [`escape`]d (a newline in the text shows as `\n`, a terminal escape as `\u{1b}`).
    ///
    /// Issue 13's markers: a reply starts with what it quotes (`[↪ alice: quote] `), a
    /// deleted message reads `(deleted)`, an unknown content type `[unsupported message]`, an
    /// edited one ends with ` (edited)`, and reactions follow (`  👍 2 ❤️ 1`).
    pub fn line(&self) -> String {
        format!(
            "{} <{}> {}",
            escape(&self.group),
            escape(&self.from),
            self.body()
        )
    }

    /// The message's part of [`MessageView::line`] (everything after `<from> `), escaped.
    pub fn body(&self) -> String {
        let mut out = String::new();
        if let Some(q) = &self.reply_to {
            let quote: String = q.text.chars().take(40).collect();
            let ellipsis = if q.text.chars().count() > 40 {
                "…"
            } else {
                ""
            };
            match &q.from {
                Some(from) => out.push_str(&format!(
                    "[↪ {}: {}{ellipsis}] ",
                    escape(from),
                    escape(&quote)
                )),
                None => out.push_str(&format!("[↪ {}{ellipsis}] ", escape(&quote))),
            }
        }
        if self.deleted {
            out.push_str("(deleted)");
        } else if self.unsupported {
            out.push_str("[unsupported message]");
        } else {
            out.push_str(&escape(&self.text));
            if self.edited {
                out.push_str(" (edited)");
            }
        }
        if !self.reactions.is_empty() {
            out.push(' ');
            for r in &self.reactions {
                out.push_str(&format!(" {} {}", escape(&r.emoji), r.users.len()));
            }
        }
        out
    }

    /// The short id shown with the message (its first 8 hex digits), which commands that
    /// name a message (`cove reply`, `react`, `edit`, `delete`) accept.
    pub fn short_id(&self) -> &str {
        short_id(&self.id)
    }
}

/// The first 8 hex digits of a message id: how messages are shown and named.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Parses a duration as people write it: `30s`, `5m`, `1h`, `7d`, `2w` (a number and a
/// unit; a bare number is seconds). `None` when it is not one, or is zero, or its seconds
/// do not fit a `u32`.
pub fn parse_duration(text: &str) -> Option<u32> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    let secs = number.checked_mul(unit)?;
    u32::try_from(secs).ok().filter(|s| *s > 0)
}

/// A duration in seconds as [`parse_duration`] reads it: `90s`, `5m`, `1h`, `7d`.
pub fn format_duration(secs: u32) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Whether `emoji` may be sent as a reaction: 1 to
/// [`MAX_EMOJI_BYTES`](cove_core::content::MAX_EMOJI_BYTES) bytes, no control characters,
/// whitespace, letters or digits (a word such as `thumbsup` is refused, not sent as text).
pub fn valid_emoji(emoji: &str) -> bool {
    cove_core::content::valid_emoji(emoji)
        && !emoji
            .chars()
            .any(|c| c.is_ascii_alphanumeric() || needs_escape(c))
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

/// A change to the group's messages or settings that is not a new message (issue 13): a
/// reaction, an edit, a delete, a read receipt, typing, a settings change, messages that
/// disappeared. `--json` prints it as one object whose `event` field names the kind
/// (`reaction`, `edit`, `delete`, `read`, `typing`, `group_changed`, `expired`), with the
/// fields below; the names are stable. Message ids are full hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum UpdateView {
    /// `by` reacted with `emoji` to message `to` (or took it back: `removed`).
    Reaction {
        /// The group's name.
        group: String,
        /// The group's id (hex).
        group_id: String,
        /// Who reacted.
        by: String,
        /// The message reacted to (hex).
        to: String,
        /// The emoji.
        emoji: String,
        /// True when the reaction was taken back.
        removed: bool,
    },
    /// `by` edited their message `to`; `text` is its new text.
    Edit {
        /// The group's name.
        group: String,
        /// The group's id (hex).
        group_id: String,
        /// The author.
        by: String,
        /// The message edited (hex).
        to: String,
        /// Its new text.
        text: String,
    },
    /// `by` deleted message `to` for everyone.
    Delete {
        /// The group's name.
        group: String,
        /// The group's id (hex).
        group_id: String,
        /// Who deleted it.
        by: String,
        /// The message deleted (hex).
        to: String,
    },
    /// `by` read the group up to message `up_to`.
    Read {
        /// The group's name.
        group: String,
        /// The group's id (hex).
        group_id: String,
        /// The reader.
        by: String,
        /// The newest message read (hex).
        up_to: String,
    },
    /// `from` started (`active`) or stopped typing.
    Typing {
        /// The group's name.
        group: String,
        /// The group's id (hex).
        group_id: String,
        /// Who.
        from: String,
        /// Typing now.
        active: bool,
    },
    /// `by` changed the group's settings: `change` is `profile` (with `name`,
    /// `description`), `disappearing` (with `timer_secs`, null when off) or `admins` (with
    /// `admins`, the new set).
    GroupChanged {
        /// The group's name (after the change).
        group: String,
        /// The group's id (hex).
        group_id: String,
        /// Who changed it.
        by: String,
        /// What changed: `profile`, `disappearing` or `admins`.
        change: String,
        /// The new name (`profile`).
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The new description (`profile`).
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// The new timer in seconds, null when off (`disappearing`).
        #[serde(skip_serializing_if = "Option::is_none")]
        timer_secs: Option<Option<u32>>,
        /// The new admins (`admins`).
        #[serde(skip_serializing_if = "Option::is_none")]
        admins: Option<Vec<String>>,
    },
    /// Messages of the group disappeared from this device (their timer expired).
    Expired {
        /// The group's name.
        group: String,
        /// The group's id (hex).
        group_id: String,
        /// The messages (hex).
        ids: Vec<String>,
    },
}

impl UpdateView {
    /// The view of a core event, if it is one of these; `group_name` names its group.
    pub fn of(event: &cove_core::Event, group_name: impl FnOnce() -> String) -> Option<Self> {
        use cove_core::{Event, GroupChange};
        let v = match event {
            Event::Reacted {
                group,
                by,
                to,
                emoji,
                removed,
            } => UpdateView::Reaction {
                group: group_name(),
                group_id: group.to_hex(),
                by: by.to_string(),
                to: to.to_hex(),
                emoji: emoji.clone(),
                removed: *removed,
            },
            Event::Edited {
                group,
                by,
                to,
                text,
            } => UpdateView::Edit {
                group: group_name(),
                group_id: group.to_hex(),
                by: by.to_string(),
                to: to.to_hex(),
                text: text.clone(),
            },
            Event::Deleted { group, by, to } => UpdateView::Delete {
                group: group_name(),
                group_id: group.to_hex(),
                by: by.to_string(),
                to: to.to_hex(),
            },
            Event::ReadUpTo { group, by, up_to } => UpdateView::Read {
                group: group_name(),
                group_id: group.to_hex(),
                by: by.to_string(),
                up_to: up_to.to_hex(),
            },
            Event::Typing {
                group,
                from,
                active,
            } => UpdateView::Typing {
                group: group_name(),
                group_id: group.to_hex(),
                from: from.to_string(),
                active: *active,
            },
            Event::GroupChanged { group, by, change } => {
                let (kind, name, description, timer_secs, admins) = match change {
                    GroupChange::Profile {
                        name, description, ..
                    } => (
                        "profile",
                        Some(name.clone()),
                        Some(description.clone()),
                        None,
                        None,
                    ),
                    GroupChange::Disappearing(t) => ("disappearing", None, None, Some(*t), None),
                    GroupChange::Admins(a) => (
                        "admins",
                        None,
                        None,
                        None,
                        Some(a.iter().map(|u| u.to_string()).collect()),
                    ),
                };
                UpdateView::GroupChanged {
                    group: group_name(),
                    group_id: group.to_hex(),
                    by: by.to_string(),
                    change: kind.to_owned(),
                    name,
                    description,
                    timer_secs,
                    admins,
                }
            }
            Event::Expired { group, ids } => UpdateView::Expired {
                group: group_name(),
                group_id: group.to_hex(),
                ids: ids.iter().map(|i| i.to_hex()).collect(),
            },
            _ => return None,
        };
        Some(v)
    }

    /// The human form, one line with everything another user wrote [`escape`]d, e.g.
    /// `friends: alice reacted 👍 to 1a2b3c4d`.
    pub fn line(&self) -> String {
        match self {
            UpdateView::Reaction {
                group,
                by,
                to,
                emoji,
                removed,
                ..
            } => {
                let what = if *removed { "took back" } else { "reacted" };
                let on = if *removed { "on" } else { "to" };
                format!(
                    "{}: {} {what} {} {on} {}",
                    escape(group),
                    escape(by),
                    escape(emoji),
                    short_id(to)
                )
            }
            UpdateView::Edit {
                group,
                by,
                to,
                text,
                ..
            } => format!(
                "{}: {} edited {}: {}",
                escape(group),
                escape(by),
                short_id(to),
                escape(text)
            ),
            UpdateView::Delete { group, by, to, .. } => {
                format!("{}: {} deleted {}", escape(group), escape(by), short_id(to))
            }
            UpdateView::Read {
                group, by, up_to, ..
            } => format!(
                "{}: {} read up to {}",
                escape(group),
                escape(by),
                short_id(up_to)
            ),
            UpdateView::Typing {
                group,
                from,
                active,
                ..
            } => {
                let what = if *active {
                    "is typing…"
                } else {
                    "stopped typing"
                };
                format!("{}: {} {what}", escape(group), escape(from))
            }
            UpdateView::GroupChanged {
                group,
                by,
                change,
                name,
                description,
                timer_secs,
                admins,
                ..
            } => {
                let what = match change.as_str() {
                    "profile" => format!(
                        "set the name to {} and the description to {:?}",
                        escape(name.as_deref().unwrap_or("")),
                        escape(description.as_deref().unwrap_or(""))
                    ),
                    "disappearing" => match timer_secs.flatten() {
                        Some(t) => format!("set disappearing messages to {}", format_duration(t)),
                        None => "turned disappearing messages off".to_owned(),
                    },
                    _ => format!(
                        "changed the admins to {}",
                        admins
                            .iter()
                            .flatten()
                            .map(|a| escape(a))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                format!("{}: {} {what}", escape(group), escape(by))
            }
            UpdateView::Expired { group, ids, .. } => format!(
                "{}: {} message{} disappeared",
                escape(group),
                ids.len(),
                if ids.len() == 1 { "" } else { "s" }
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
    /// Messages of others not read yet on this device.
    pub unread: u32,
    /// Muted on this device until (ms since the Unix epoch; `u64::MAX`: for ever).
    pub muted_until_ms: Option<u64>,
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
    /// The group's description (empty if none).
    pub description: String,
    /// Its avatar picture, as `name (size)` (null if none).
    pub avatar: Option<String>,
    /// Its admins (empty for a group made before admins existed: every member may).
    pub admins: Vec<String>,
    /// The disappearing-messages timer in seconds (null: off).
    pub disappearing_secs: Option<u32>,
    /// Messages of others not read yet on this device.
    pub unread: u32,
    /// Muted on this device until (ms since the Unix epoch; `u64::MAX`: for ever).
    pub muted_until_ms: Option<u64>,
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
    /// The human form: a header line, the authenticator, the settings (description,
    /// admins, timer, muted, unread), then one line per member device
    /// (`  alice  device 1  key 0123456789abcdef`), names [`escape`]d. `time` shows a
    /// moment (ms since the Unix epoch) in local time.
    pub fn lines(&self, time: impl Fn(u64) -> String) -> Vec<String> {
        let mut out = vec![
            format!(
                "group {} ({})  epoch {}",
                escape(&self.name),
                self.id,
                self.epoch
            ),
            format!("epoch authenticator {}", self.epoch_authenticator),
        ];
        if !self.description.is_empty() {
            out.push(format!("description: {}", escape(&self.description)));
        }
        if let Some(avatar) = &self.avatar {
            out.push(format!("avatar: {}", escape(avatar)));
        }
        let admins: Vec<String> = self.admins.iter().map(|a| escape(a)).collect();
        out.push(if admins.is_empty() {
            "admins: every member (a group made before admins)".to_owned()
        } else {
            format!("admins: {}", admins.join(", "))
        });
        out.push(match self.disappearing_secs {
            Some(t) => format!("disappearing messages: {}", format_duration(t)),
            None => "disappearing messages: off".to_owned(),
        });
        out.push(match self.muted_until_ms {
            Some(u64::MAX) => "muted: for ever".to_owned(),
            Some(until) => format!("muted: until {}", time(until)),
            None => "muted: no".to_owned(),
        });
        out.push(format!("unread: {}", self.unread));
        out.push(format!("members ({} devices):", self.members.len()));
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
            reply_to: None,
            reactions: Vec::new(),
            edited: false,
            deleted: false,
            unsupported: false,
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

    /// A reply's quote, `(edited)`, `(deleted)`, `[unsupported message]` and reaction
    /// counts in a message's line, with what others wrote escaped.
    #[test]
    fn a_message_line_shows_replies_edits_deletes_and_reactions() {
        let base = MessageView {
            group: "friends".into(),
            group_id: "00".repeat(16),
            from: "bob".into(),
            device: 1,
            text: "yes\u{1b}".into(),
            id: "3c9a0b1d".repeat(4),
            sent_at: 0,
            seq: 2,
            attachment: None,
            reply_to: Some(super::QuoteView {
                id: "11".repeat(16),
                from: Some("alice".into()),
                text: "dinner\nat 8?".into(),
            }),
            reactions: vec![
                super::ReactionView {
                    emoji: "👍".into(),
                    users: vec!["alice".into(), "carol".into()],
                },
                super::ReactionView {
                    emoji: "❤️".into(),
                    users: vec!["alice".into()],
                },
            ],
            edited: true,
            deleted: false,
            unsupported: false,
        };
        assert_eq!(
            base.line(),
            "friends <bob> [↪ alice: dinner\\nat 8?] yes\\u{1b} (edited)  👍 2 ❤️ 1"
        );
        assert_eq!(base.short_id(), "3c9a0b1d");
        let deleted = MessageView {
            text: String::new(),
            reply_to: None,
            reactions: Vec::new(),
            deleted: true,
            ..base.clone()
        };
        assert_eq!(deleted.line(), "friends <bob> (deleted)");
        let unknown = MessageView {
            reply_to: None,
            reactions: Vec::new(),
            edited: false,
            unsupported: true,
            ..base.clone()
        };
        assert_eq!(unknown.line(), "friends <bob> [unsupported message]");
        let json = serde_json::to_value(&deleted).unwrap_or_default();
        assert_eq!(json["deleted"], true);
        assert!(json.get("reply_to").is_none() && json.get("unsupported").is_none());
    }

    #[test]
    fn durations_and_emoji_are_checked() {
        use super::{format_duration, parse_duration, valid_emoji};
        assert_eq!(parse_duration("30s"), Some(30));
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("1h"), Some(3600));
        assert_eq!(parse_duration("7d"), Some(604_800));
        assert_eq!(parse_duration("2w"), Some(1_209_600));
        assert_eq!(parse_duration("90"), Some(90));
        for bad in [
            "",
            "0s",
            "h",
            "1x",
            "-1h",
            "1.5h",
            "soon",
            "1 h",
            "99999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(format_duration(3600), "1h");
        assert_eq!(format_duration(90), "90s");
        assert_eq!(format_duration(604_800), "7d");
        assert_eq!(format_duration(86_400 * 3), "3d");
        for good in ["👍", "❤️", "🎉", "👩‍👩‍👧"] {
            assert!(valid_emoji(good), "{good:?}");
        }
        for bad in [
            "",
            "ok",
            "thumbsup",
            "👍 ",
            "\u{1b}",
            "\u{202e}👍",
            &"👍".repeat(9),
        ] {
            assert!(!valid_emoji(bad), "{bad:?}");
        }
    }

    /// The JSON of the update events: the `event` field names the kind, the names are the
    /// documented ones.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn update_events_have_stable_json_and_lines() {
        use super::UpdateView;
        let reaction = UpdateView::Reaction {
            group: "friends".into(),
            group_id: "00".repeat(16),
            by: "bob".into(),
            to: "3c9a0b1d".repeat(4),
            emoji: "👍".into(),
            removed: false,
        };
        assert_eq!(
            serde_json::to_value(&reaction).unwrap(),
            serde_json::json!({"event": "reaction", "group": "friends",
                "group_id": "00".repeat(16), "by": "bob", "to": "3c9a0b1d".repeat(4),
                "emoji": "👍", "removed": false})
        );
        assert_eq!(reaction.line(), "friends: bob reacted 👍 to 3c9a0b1d");
        let typing = UpdateView::Typing {
            group: "friends".into(),
            group_id: "00".repeat(16),
            from: "bob".into(),
            active: true,
        };
        assert_eq!(typing.line(), "friends: bob is typing…");
        let timer = UpdateView::GroupChanged {
            group: "friends".into(),
            group_id: "00".repeat(16),
            by: "alice".into(),
            change: "disappearing".into(),
            name: None,
            description: None,
            timer_secs: Some(None),
            admins: None,
        };
        assert_eq!(
            serde_json::to_value(&timer).unwrap(),
            serde_json::json!({"event": "group_changed", "group": "friends",
                "group_id": "00".repeat(16), "by": "alice", "change": "disappearing",
                "timer_secs": null})
        );
        assert_eq!(
            timer.line(),
            "friends: alice turned disappearing messages off"
        );
        let expired = UpdateView::Expired {
            group: "friends".into(),
            group_id: "00".repeat(16),
            ids: vec!["aa".repeat(16), "bb".repeat(16)],
        };
        assert_eq!(expired.line(), "friends: 2 messages disappeared");
        let edit = UpdateView::Edit {
            group: "friends".into(),
            group_id: "00".repeat(16),
            by: "alice".into(),
            to: "3c9a0b1d".repeat(4),
            text: "at 9\nfriends <bob> fake".into(),
        };
        assert_eq!(
            edit.line(),
            "friends: alice edited 3c9a0b1d: at 9\\nfriends <bob> fake"
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
