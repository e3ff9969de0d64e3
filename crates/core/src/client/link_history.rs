//! The message history a device hands to a newly linked device of its user
//! ([`crate::link`]): exported from the store in chunks that fit one link message, imported
//! as history rows keyed by group and log position (shown by the history queries like any
//! message).

use cove_store::{Store, StoredMessage};
use cove_wire::BoundedVec;

use super::groups::Groups;
use crate::link::{HistoryChunk, HistoryMessage, MAX_HISTORY_CHUNKS, MAX_LINK_MESSAGE};

/// Room kept in a chunk for its framing.
const CHUNK_MARGIN: usize = 4 * 1024;
/// Estimated encoded size of a message beyond its content.
const MESSAGE_OVERHEAD: usize = 128;
/// Most messages in a chunk (the decoder's bound on a vector).
const MAX_CHUNK_MESSAGES: usize = 4096;

fn size(m: &StoredMessage) -> usize {
    m.content.len() + m.from.as_str().len() + MESSAGE_OVERHEAD
}

/// The history of every group this device is an active member of, in chunks (group by
/// group, in log order). At most [`MAX_HISTORY_CHUNKS`] chunks: beyond that, the oldest
/// messages (by their senders' clocks) are left out.
pub(super) fn export<S: Store>(
    store: &S,
    groups: &Groups,
) -> Result<Vec<HistoryChunk>, cove_store::StoreError> {
    let chunk_bytes = MAX_LINK_MESSAGE - CHUNK_MARGIN;
    let budget = MAX_HISTORY_CHUNKS * chunk_bytes;
    let mut all: Vec<StoredMessage> = Vec::new();
    for info in groups.infos().into_iter().filter(|g| g.active) {
        all.extend(
            store
                .messages(&info.id)?
                .into_iter()
                .filter(|m| size(m) <= chunk_bytes),
        );
    }
    let total: usize = all.iter().map(size).sum();
    if total > budget {
        // Keep the newest that fit.
        all.sort_by_key(|m| std::cmp::Reverse(m.sent_at_ms));
        let mut used = 0usize;
        all.retain(|m| {
            used += size(m);
            used <= budget
        });
        all.sort_by_key(|m| (m.group.0, m.seq));
    }
    let mut chunks = Vec::new();
    let mut current: Vec<HistoryMessage> = Vec::new();
    let mut used = 0usize;
    for m in all {
        let len = size(&m);
        if !current.is_empty() && (used + len > chunk_bytes || current.len() >= MAX_CHUNK_MESSAGES)
        {
            chunks.push(HistoryChunk {
                messages: BoundedVec(std::mem::take(&mut current)),
            });
            used = 0;
        }
        used += len;
        current.push(HistoryMessage::from(m));
    }
    if !current.is_empty() {
        chunks.push(HistoryChunk {
            messages: BoundedVec(current),
        });
    }
    chunks.truncate(MAX_HISTORY_CHUNKS);
    Ok(chunks)
}

/// Stores the messages of `chunk` this device has not seen; returns how many.
pub(super) fn import<S: Store>(
    store: &S,
    chunk: HistoryChunk,
) -> Result<usize, cove_store::StoreError> {
    store.transaction(|s: &S| {
        let mut stored = 0;
        for m in chunk.messages.0 {
            if s.is_seen(&m.group, &m.message_id)? {
                continue;
            }
            let (group, id) = (m.group, m.message_id);
            let m = StoredMessage::from(m);
            s.put_message(&m)?;
            s.mark_seen(&group, &id)?;
            // Into the chat log (its events are not reported: this is history).
            super::chat_log::record(s, &m, "", false)?;
            stored += 1;
        }
        Ok(stored)
    })
}
