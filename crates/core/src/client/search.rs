//! Search over the local, decrypted history (issue 13; SQLite FTS5 in the SQLite store).
//!
//! The index holds the current text of every Text and Reply message (see
//! [`index_message`]): received ones are indexed as they are stored (`inbound`), this
//! device's own as they are recorded (`outbox`), imported history as it is imported (device
//! link, backup), and messages stored before the index existed once, at [`Client::open`]
//! ([`backfill`]). Edits re-index, deletes and expiry unindex (the `chat` and `settings`
//! parts); a hit whose message is gone anyway is skipped.

use cove_store::{Kv, Store, StoreError, StoredMessage};
use cove_wire::GroupId;

use super::Client;
use super::history;
use crate::content::{Content, Envelope};
use crate::types::{ChatMessage, CommandError, QueryError};

/// The config key set once every stored message has been indexed (so [`backfill`] runs once
/// per store). The leading NUL keeps it apart from the shell's config keys.
pub(crate) const INDEXED_KEY: &str = "\0search_indexed";

/// The searchable text of a content: that of a text message or a reply.
pub(crate) fn searchable_text(content: &Content) -> Option<&str> {
    match content {
        Content::Text { text } | Content::Reply { text, .. } => Some(text),
        _ => None,
    }
}

/// Indexes stored message `m` if its content has searchable text (part of the caller's
/// transaction, if any). An undecodable content is not indexed (it is not shown either).
pub(crate) fn index_message(store: &impl Kv, m: &StoredMessage) -> Result<(), StoreError> {
    let Ok(env) = Envelope::decode(&m.content) else {
        return Ok(());
    };
    match searchable_text(&env.content) {
        Some(text) => store.text_index(&m.group, m.seq, text),
        None => Ok(()),
    }
}

/// Indexes every message of every group, once per store (guarded by [`INDEXED_KEY`]): the
/// history stored before the index existed. One transaction, so an interrupted backfill
/// starts over at the next open.
pub(crate) fn backfill<S: Store>(store: &S) -> Result<(), StoreError> {
    if store.config(INDEXED_KEY)?.is_some() {
        return Ok(());
    }
    store.transaction(|s: &S| {
        for group in s.groups()? {
            for m in s.messages(&group.id)? {
                index_message(s, &m)?;
            }
        }
        s.set_config(INDEXED_KEY, "1")
    })
}

impl<S: Store> Client<S> {
    /// The messages whose current text matches `query` (words, as FTS5 matches them),
    /// newest first, at most `limit`, in every group or in `group` only. Deleted and
    /// disappeared messages are never found.
    ///
    /// Every word of `query` must be the start of a word of the message (case and, in the
    /// SQLite store, diacritics ignored); punctuation and query syntax are separators, not
    /// operators. In one group, newest means highest log position first; across groups,
    /// latest sent first. A query over [`cove_store::MAX_SEARCH_QUERY_BYTES`] or
    /// [`cove_store::MAX_SEARCH_WORDS`] is refused ([`cove_store::StoreError::InvalidSearch`]).
    pub fn search(
        &self,
        query: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, QueryError> {
        if let Some(group) = group {
            let id = self.groups.resolve(group).map_err(|e| match e {
                CommandError::AmbiguousGroup(g) => QueryError::AmbiguousGroup(g),
                _ => QueryError::UnknownGroup(group.to_string()),
            })?;
            return self.search_group(query, id, limit);
        }
        let mut found = Vec::new();
        for id in self.groups.ids() {
            found.extend(self.search_group(query, id, limit)?);
        }
        found.sort_by_key(|m| std::cmp::Reverse((m.sent_at_ms, m.seq, m.group)));
        found.truncate(limit);
        Ok(found)
    }

    /// The newest `limit` messages of `group` that match, as shown to the user. Index hits
    /// whose message is gone, deleted or not shown are skipped; if that leaves fewer than
    /// `limit`, asks the index for more.
    fn search_group(
        &self,
        query: &str,
        group: GroupId,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, QueryError> {
        let store = self.provider.store();
        let mut want = limit;
        loop {
            let hits = store.text_search(query, Some(&group), want)?;
            let mut found = Vec::new();
            for (g, seq) in &hits {
                if found.len() == limit {
                    break;
                }
                let Some(m) = store.message(g, *seq)? else {
                    continue; // a stale index entry
                };
                found.extend(
                    history::chat_message(store, self.groups.name(g), &m)?.filter(|m| !m.deleted),
                );
            }
            if found.len() >= limit || hits.len() < want {
                found.truncate(limit);
                return Ok(found);
            }
            want = want.saturating_mul(2);
        }
    }
}
