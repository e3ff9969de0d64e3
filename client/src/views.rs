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
    /// The human form: `friends <alice> hello`.
    pub fn line(&self) -> String {
        format!("{} <{}> {}", self.group, self.from, self.text)
    }
}

/// What the user is told about another user's identity or devices, or a refused member
/// (the core's `Event::Identity`). `--json` prints it as one object whose `identity` field
/// names the kind (`device_added`, `device_revoked`, `identity_changed`, `leaf_refused`),
/// with the fields below; the names are stable.
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
}

impl IdentityView {
    /// The human form, e.g. `alice added a device (safety number unchanged)`.
    pub fn line(&self) -> String {
        match self {
            IdentityView::DeviceAdded { user, .. } => {
                format!("{user} added a device (safety number unchanged)")
            }
            IdentityView::DeviceRevoked { user, device_key } => format!(
                "{user} revoked a device ({}): it is removed from every group",
                device_key.get(..16).unwrap_or(device_key)
            ),
            IdentityView::IdentityChanged {
                user,
                verified: true,
            } => format!(
                "{user}'s identity key changed since you verified it: sending to groups with \
                 {user} is blocked until you compare safety numbers again (`cove verify {user}`)"
            ),
            IdentityView::IdentityChanged {
                user,
                verified: false,
            } => format!(
                "{user}'s identity key changed: their safety number changed; compare it with \
                 them (`cove verify {user}`)"
            ),
            IdentityView::LeafRefused {
                group,
                user,
                device,
                reason,
                ..
            } => format!(
                "refused a member of {group} claiming to be {user} (device {device}): {reason}; \
                 its messages are not shown"
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
    use super::{IdentityView, human_size};

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
