//! What the user sees of stored messages: [`ChatMessage`]s (texts, files, replies, deleted
//! and unsupported messages, with their reactions and edits applied: see `chat_log`) built
//! from the history, for the history queries.

use cove_store::{Store, StoreError, StoredMessage};
use cove_wire::GroupId;

use super::chat_log;
use super::groups::Groups;
use crate::types::ChatMessage;

/// The chat messages among `stored` (messages of `group`), in order.
pub(super) fn chat_messages(
    store: &impl Store,
    groups: &Groups,
    group: GroupId,
    stored: Vec<StoredMessage>,
) -> Result<Vec<ChatMessage>, StoreError> {
    let name = groups.name(&group);
    let mut out = Vec::new();
    for m in &stored {
        if let Some(shown) = chat_message(store, name.clone(), m)? {
            out.push(shown);
        }
    }
    Ok(out)
}

/// Stored message `m` as the user sees it (`None`: not a shown message), e.g. a search hit.
pub(super) fn chat_message(
    store: &impl Store,
    group_name: String,
    m: &StoredMessage,
) -> Result<Option<ChatMessage>, StoreError> {
    chat_log::render(store, group_name, m)
}
