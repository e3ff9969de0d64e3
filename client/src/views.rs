//! What the shell shows: plain, owned views of messages and groups for printing and JSON.

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
    /// The text.
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
