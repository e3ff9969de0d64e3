//! `cove-store`: a Cove client's durable state behind one trait, [`Store`].
//!
//! It owns everything a device keeps between runs: its identity (user, device id, Ed25519
//! device key), small config values, the pinned device keys of other users (trust on first
//! use), the groups it is in with their names, the plaintext history, the outbox (outgoing
//! posts persisted *before* they are sent), the per-stream cursors, the ids of processed
//! messages (duplicate detection) and **all of openmls's group state**: every [`Store`] is
//! also an openmls [`StorageProvider`], so the client core can apply an inbound MLS message,
//! store its plaintext and advance the cursor in **one transaction**:
//!
//! ```text
//! store.begin()?;                       // BEGIN IMMEDIATE on SQLite, an undo journal in memory
//! group.process_message(&provider, m)?; // openmls writes its new state through the same store
//! store.put_message(&msg)?;             // the plaintext
//! store.set_cursor(stream, seq)?;       // the cursor
//! store.commit()?;                      // all or nothing (rollback() on any error)
//! ```
//!
//! Backends implement only the small [`Kv`] trait (ordered byte keys in a few namespaces plus
//! begin/commit/rollback) and the openmls storage trait with [`impl_mls_storage!`]; the typed
//! API of [`Store`] is written once on top of it. Two backends ship: [`SqliteStore`] (one file,
//! WAL) and [`MemoryStore`]. Both pass the same conformance suite (`tests/store/`).

#![deny(missing_docs)]

mod memory;
#[doc(hidden)]
pub mod mls;
mod records;
mod sqlite;

pub use memory::MemoryStore;
pub use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};
pub use records::*;
pub use sqlite::{DatabaseKey, Durability, SqliteStore};

use cove_wire::identity::ListEntry;
use cove_wire::{DeviceId, GroupId, Seq, Stream, UserName};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, SQLite error, corruption).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// A stored value could not be decoded (corruption or an incompatible format).
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// A value could not be encoded (a bug).
    #[error("could not encode a value: {0}")]
    Encode(String),
    /// `begin` while a transaction is open, or `commit`/`rollback` without one (a caller bug).
    #[error("transaction misuse: {0}")]
    Transaction(&'static str),
    /// The database key does not open the database file (or the file is not a database).
    #[error("the database key does not open this database (wrong key, or not a Cove database)")]
    WrongKey,
    /// A search query over the limits ([`MAX_SEARCH_QUERY_BYTES`], [`MAX_SEARCH_WORDS`]);
    /// refused rather than shortened, since a shortened query would match more.
    #[error("invalid search query: {0}")]
    InvalidSearch(String),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl From<postcard::Error> for StoreError {
    fn from(e: postcard::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// The namespaces of the key-value layer. Each is an ordered map from byte keys to byte
/// values. The numbers are stored on disk: never renumber, only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Namespace {
    /// openmls's own state (keys built by [`mls`]).
    Mls = 1,
    /// The device identity (one record).
    Identity = 2,
    /// Small string settings.
    Config = 3,
    /// Pinned device keys: user ‖ 0 ‖ device (big endian).
    Pinned = 4,
    /// Groups: group id.
    Group = 5,
    /// Plaintext history: group id ‖ seq (big endian).
    Message = 6,
    /// Outbox: local id (big endian).
    Outbox = 7,
    /// Cursors: stream key.
    Cursor = 8,
    /// Processed message ids: group id ‖ message id.
    Seen = 9,
    /// Inbound entries waiting for an epoch we have not reached yet: group ‖ seq.
    Pending = 10,
    /// The user's identity secret, on devices that hold it (one record).
    UserIdentity = 11,
    /// Pinned identity keys and device-list heads: user.
    IdentityPin = 12,
    /// The last verified device list of each user: user.
    DeviceList = 13,
    /// Changed identity keys of other users not verified yet: user.
    IdentityChange = 14,
    /// The account secrets (one record; issue 11).
    Account = 15,
    /// The encrypted history backup's local state (issue 11).
    Backup = 16,
    /// The daemon's local state (issue 12).
    Daemon = 17,
    /// The chat log's references (issue 13): group ‖ `i` ‖ message id → seq of each shown
    /// message; group ‖ `r` ‖ message id ‖ seq → kind and flags of each reply, reaction,
    /// edit and delete of that message.
    Chat = 18,
    /// Per-group local settings (issue 13): group ‖ `s` (description, avatar, disappearing
    /// timer, last-read seq, muted-until), group ‖ `r` ‖ user (each user's newest read
    /// receipt), group ‖ `e` ‖ seq (when a message expires).
    GroupSettings = 19,
    /// Disappearing messages' expiry index: expires-at (ms, big endian) ‖ group ‖ seq.
    Expiry = 20,
    /// The search index of [`MemoryStore`] (issue 13): group id ‖ seq (big endian) → the
    /// indexed text. [`SqliteStore`] keeps its index in FTS5 tables instead.
    TextIndex = 21,
}

/// The longest search query [`Kv::text_search`] accepts, in bytes.
pub const MAX_SEARCH_QUERY_BYTES: usize = 1024;
/// The most words a search query may have.
pub const MAX_SEARCH_WORDS: usize = 16;

/// The words of `text` as the search index sees them: maximal runs of alphanumeric
/// characters (letters, digits, in any script), lowercased. Everything else (spaces,
/// punctuation, quotes, `*`, `:`, parentheses) separates words, so no word can carry query
/// syntax.
pub fn search_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// The words of a search query, checked against the limits.
pub(crate) fn query_words(query: &str) -> Result<Vec<String>, StoreError> {
    if query.len() > MAX_SEARCH_QUERY_BYTES {
        return Err(StoreError::InvalidSearch(format!(
            "{} bytes (at most {MAX_SEARCH_QUERY_BYTES})",
            query.len()
        )));
    }
    let words: Vec<String> = search_words(query).collect();
    if words.len() > MAX_SEARCH_WORDS {
        return Err(StoreError::InvalidSearch(format!(
            "{} words (at most {MAX_SEARCH_WORDS})",
            words.len()
        )));
    }
    Ok(words)
}

/// A key and its value, as returned by [`Kv::kv_scan`].
pub type KvPair = (Vec<u8>, Vec<u8>);

/// The primitive operations a backend provides. Keys are ordered bytewise within a
/// namespace. Writes outside a transaction are durable on return; inside one they become
/// durable together at [`Kv::commit`] or vanish at [`Kv::rollback`].
pub trait Kv {
    /// Reads one value.
    fn kv_get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Inserts or replaces one value.
    fn kv_put(&self, ns: Namespace, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes one value (no error if absent).
    fn kv_delete(&self, ns: Namespace, key: &[u8]) -> Result<(), StoreError>;
    /// All entries whose key starts with `prefix` and is at least `from`, in key order.
    /// `from` lets a caller read only what follows a position it already has (a cursor)
    /// instead of the whole prefix.
    fn kv_scan_from(
        &self,
        ns: Namespace,
        prefix: &[u8],
        from: &[u8],
    ) -> Result<Vec<KvPair>, StoreError>;
    /// All entries whose key starts with `prefix`, in key order.
    fn kv_scan(&self, ns: Namespace, prefix: &[u8]) -> Result<Vec<KvPair>, StoreError> {
        self.kv_scan_from(ns, prefix, prefix)
    }
    /// The first entry (in key order) whose key starts with `prefix`, if any: what a
    /// backend answers without reading the rest (the earliest expiry, issue 13).
    fn kv_first(&self, ns: Namespace, prefix: &[u8]) -> Result<Option<KvPair>, StoreError> {
        Ok(self.kv_scan(ns, prefix)?.into_iter().next())
    }
    /// Starts a transaction. Transactions do not nest.
    fn begin(&self) -> Result<(), StoreError>;
    /// Makes every write since [`Kv::begin`] durable, atomically. On error the writes are
    /// rolled back; either way the transaction is closed.
    fn commit(&self) -> Result<(), StoreError>;
    /// Undoes every write since [`Kv::begin`].
    fn rollback(&self) -> Result<(), StoreError>;
    /// Whether a transaction is open.
    fn in_transaction(&self) -> bool;
    /// Indexes `text` as the searchable text of message `seq` of `group`, replacing any
    /// earlier text of it (issue 13: full-text search over the local history). Part of the
    /// open transaction, if any.
    fn text_index(&self, group: &GroupId, seq: Seq, text: &str) -> Result<(), StoreError> {
        let _ = (group, seq, text);
        Ok(())
    }
    /// Removes message `seq` of `group` from the search index (no error if absent).
    fn text_unindex(&self, group: &GroupId, seq: Seq) -> Result<(), StoreError> {
        let _ = (group, seq);
        Ok(())
    }
    /// The messages whose indexed text matches `query` (words; every word must match, as a
    /// prefix), newest first (highest seq first within a group), at most `limit`, in every
    /// group or in `group` only. The query is plain words, never the backend's query syntax
    /// (see [`search_words`]); a query without words matches nothing; a query over
    /// [`MAX_SEARCH_QUERY_BYTES`] or [`MAX_SEARCH_WORDS`] is [`StoreError::InvalidSearch`].
    /// Across groups the order is by seq, then group id (descending): seqs of different
    /// groups say nothing about time, so a caller wanting the newest messages of all groups
    /// merges per-group results by their send time (as `Client::search` does).
    fn text_search(
        &self,
        query: &str,
        group: Option<&GroupId>,
        limit: usize,
    ) -> Result<Vec<(GroupId, Seq)>, StoreError> {
        let _ = (query, group, limit);
        Ok(Vec::new())
    }
    /// Makes deleted data unrecoverable from the backend's files (after messages were
    /// deleted for everyone or disappeared): merges the search index, checkpoints and
    /// truncates the write-ahead log; freed pages are zeroed (`secure_delete`). Outside a
    /// transaction.
    fn scrub(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A Cove client store: the typed client state on top of [`Kv`], and openmls's storage.
///
/// Implemented automatically for every `Kv + StorageProvider` backend (see
/// [`impl_mls_storage!`]).
pub trait Store: Kv + StorageProvider<CURRENT_VERSION, Error = StoreError> + Send {
    /// Runs `f` in a transaction: commit if it returns `Ok`, roll back if it returns `Err`.
    fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, E>,
    ) -> Result<T, E>
    where
        Self: Sized,
    {
        self.begin()?;
        match f(self) {
            Ok(v) => {
                if let Err(e) = self.commit() {
                    let _ = self.rollback();
                    return Err(e.into());
                }
                Ok(v)
            }
            Err(e) => {
                self.rollback()?;
                Err(e)
            }
        }
    }

    /// The device identity, if initialised.
    fn identity(&self) -> Result<Option<Identity>, StoreError> {
        get_record(self, Namespace::Identity, b"identity")
    }
    /// Stores the device identity.
    fn set_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        put_record(self, Namespace::Identity, b"identity", identity)
    }

    /// The user's identity secret, if this device holds it.
    fn user_identity(&self) -> Result<Option<UserIdentity>, StoreError> {
        get_record(self, Namespace::UserIdentity, b"user-identity")
    }
    /// Stores the user's identity secret.
    fn set_user_identity(&self, identity: &UserIdentity) -> Result<(), StoreError> {
        put_record(self, Namespace::UserIdentity, b"user-identity", identity)
    }

    /// The account secrets, if this device's user has a password account.
    fn account_secrets(&self) -> Result<Option<AccountSecrets>, StoreError> {
        get_record(self, Namespace::Account, b"account")
    }
    /// Stores the account secrets.
    fn set_account_secrets(&self, secrets: &AccountSecrets) -> Result<(), StoreError> {
        put_record(self, Namespace::Account, b"account", secrets)
    }
    /// Forgets the account secrets (the account was deleted).
    fn remove_account_secrets(&self) -> Result<(), StoreError> {
        self.kv_delete(Namespace::Account, b"account")
    }

    /// The identity key pinned for `user`, with the device-list head seen last.
    fn identity_pin(&self, user: &UserName) -> Result<Option<PinnedIdentity>, StoreError> {
        get_record(self, Namespace::IdentityPin, user.as_str().as_bytes())
    }
    /// Pins (or moves the head of, or re-pins after the user accepted a change) `user`'s
    /// identity.
    fn set_identity_pin(&self, pin: &PinnedIdentity) -> Result<(), StoreError> {
        put_record(
            self,
            Namespace::IdentityPin,
            pin.user.as_str().as_bytes(),
            pin,
        )
    }

    /// Every pinned identity, ordered by user name.
    fn identity_pins(&self) -> Result<Vec<PinnedIdentity>, StoreError> {
        self.kv_scan(Namespace::IdentityPin, &[])?
            .into_iter()
            .map(|(_, v)| Ok(postcard::from_bytes(&v)?))
            .collect()
    }

    /// The changed identity of `user` that the user has not verified yet, if any.
    fn identity_change(&self, user: &UserName) -> Result<Option<IdentityChange>, StoreError> {
        get_record(self, Namespace::IdentityChange, user.as_str().as_bytes())
    }
    /// Records (or replaces) a changed identity of `change.user`.
    fn set_identity_change(&self, change: &IdentityChange) -> Result<(), StoreError> {
        put_record(
            self,
            Namespace::IdentityChange,
            change.user.as_str().as_bytes(),
            change,
        )
    }
    /// Forgets the changed identity of `user` (the user verified it).
    fn remove_identity_change(&self, user: &UserName) -> Result<(), StoreError> {
        self.kv_delete(Namespace::IdentityChange, user.as_str().as_bytes())
    }
    /// Every changed identity not verified yet, ordered by user name.
    fn identity_changes(&self) -> Result<Vec<IdentityChange>, StoreError> {
        self.kv_scan(Namespace::IdentityChange, &[])?
            .into_iter()
            .map(|(_, v)| Ok(postcard::from_bytes(&v)?))
            .collect()
    }

    /// The last verified device list of `user` (its signed entries, from entry 0).
    fn device_list(&self, user: &UserName) -> Result<Option<Vec<ListEntry>>, StoreError> {
        get_record(self, Namespace::DeviceList, user.as_str().as_bytes())
    }
    /// Stores `user`'s verified device list.
    fn set_device_list(&self, user: &UserName, entries: &[ListEntry]) -> Result<(), StoreError> {
        put_record(
            self,
            Namespace::DeviceList,
            user.as_str().as_bytes(),
            &entries,
        )
    }

    /// A config value.
    fn config(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self.kv_get(Namespace::Config, key.as_bytes())? {
            Some(v) => String::from_utf8(v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.to_string())),
            None => Ok(None),
        }
    }
    /// Sets a config value.
    fn set_config(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.kv_put(Namespace::Config, key.as_bytes(), value.as_bytes())
    }

    /// The pinned devices of `user`, ordered by device id.
    fn pinned_devices(&self, user: &UserName) -> Result<Vec<PinnedDevice>, StoreError> {
        let mut prefix = user.as_str().as_bytes().to_vec();
        prefix.push(0);
        self.kv_scan(Namespace::Pinned, &prefix)?
            .into_iter()
            .map(|(_, v)| Ok(postcard::from_bytes(&v)?))
            .collect()
    }
    /// Pins (or re-pins, after the user accepted a change) a device key.
    fn pin_device(&self, pin: &PinnedDevice) -> Result<(), StoreError> {
        put_record(
            self,
            Namespace::Pinned,
            &pin_key(&pin.user, pin.device),
            pin,
        )
    }

    /// A group record.
    fn group(&self, group: &GroupId) -> Result<Option<GroupRecord>, StoreError> {
        get_record(self, Namespace::Group, &group.0)
    }
    /// Inserts or replaces a group record.
    fn put_group(&self, record: &GroupRecord) -> Result<(), StoreError> {
        put_record(self, Namespace::Group, &record.id.0, record)
    }
    /// Every group record, ordered by group id.
    fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.kv_scan(Namespace::Group, &[])?
            .into_iter()
            .map(|(_, v)| Ok(postcard::from_bytes(&v)?))
            .collect()
    }

    /// Appends a message to the plaintext history (keyed by group and log seq).
    fn put_message(&self, message: &StoredMessage) -> Result<(), StoreError> {
        put_record(
            self,
            Namespace::Message,
            &group_seq_key(&message.group, message.seq),
            message,
        )
    }
    /// The message stored at log position `seq` of `group`, if any.
    fn message(&self, group: &GroupId, seq: Seq) -> Result<Option<StoredMessage>, StoreError> {
        get_record(self, Namespace::Message, &group_seq_key(group, seq))
    }
    /// Deletes the message stored at log position `seq` of `group` (no error if absent): a
    /// message that disappeared (issue 13).
    fn delete_message(&self, group: &GroupId, seq: Seq) -> Result<(), StoreError> {
        self.kv_delete(Namespace::Message, &group_seq_key(group, seq))
    }
    /// The history of a group in log order.
    fn messages(&self, group: &GroupId) -> Result<Vec<StoredMessage>, StoreError> {
        self.kv_scan(Namespace::Message, &group.0)?
            .into_iter()
            .map(|(_, v)| Ok(postcard::from_bytes(&v)?))
            .collect()
    }

    /// The history of a group after log position `after`, in log order. Reads only those
    /// rows, so its cost follows what is new, not the length of the history.
    fn messages_after(
        &self,
        group: &GroupId,
        after: Seq,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(first) = after.0.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.kv_scan_from(
            Namespace::Message,
            &group.0,
            &group_seq_key(group, Seq(first)),
        )?
        .into_iter()
        .map(|(_, v)| Ok(postcard::from_bytes(&v)?))
        .collect()
    }

    /// Whether a message id was already processed in `group`.
    fn is_seen(&self, group: &GroupId, message_id: &[u8; 16]) -> Result<bool, StoreError> {
        Ok(self
            .kv_get(Namespace::Seen, &seen_key(group, message_id))?
            .is_some())
    }
    /// Records a processed message id.
    fn mark_seen(&self, group: &GroupId, message_id: &[u8; 16]) -> Result<(), StoreError> {
        self.kv_put(Namespace::Seen, &seen_key(group, message_id), &[])
    }

    /// Adds an outbox item. Its `local_id` must be unique (use [`Store::next_local_id`]).
    fn put_outbox(&self, item: &OutboxItem) -> Result<(), StoreError> {
        put_record(self, Namespace::Outbox, &item.local_id.to_be_bytes(), item)
    }
    /// Removes an outbox item.
    fn delete_outbox(&self, local_id: u64) -> Result<(), StoreError> {
        self.kv_delete(Namespace::Outbox, &local_id.to_be_bytes())
    }
    /// One outbox item.
    fn outbox_item(&self, local_id: u64) -> Result<Option<OutboxItem>, StoreError> {
        get_record(self, Namespace::Outbox, &local_id.to_be_bytes())
    }
    /// The outbox, oldest first.
    fn outbox(&self) -> Result<Vec<OutboxItem>, StoreError> {
        self.kv_scan(Namespace::Outbox, &[])?
            .into_iter()
            .map(|(_, v)| Ok(postcard::from_bytes(&v)?))
            .collect()
    }
    /// A fresh, never reused local id (a persisted counter).
    fn next_local_id(&self) -> Result<u64, StoreError> {
        let current = match self.kv_get(Namespace::Config, b"\0next_local_id")? {
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("local id".into()))?,
            ),
            None => 1,
        };
        let next = current
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("local id".into()))?;
        self.kv_put(Namespace::Config, b"\0next_local_id", &next.to_be_bytes())?;
        Ok(current)
    }

    /// The last processed seq of a stream (0 if none).
    fn cursor(&self, stream: &Stream) -> Result<Seq, StoreError> {
        match self.kv_get(Namespace::Cursor, &stream_key(stream))? {
            Some(v) => Ok(Seq(u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("cursor".into()))?,
            ))),
            None => Ok(Seq(0)),
        }
    }
    /// Sets the last processed seq of a stream.
    fn set_cursor(&self, stream: &Stream, seq: Seq) -> Result<(), StoreError> {
        self.kv_put(Namespace::Cursor, &stream_key(stream), &seq.0.to_be_bytes())
    }

    /// Parks an entry that cannot be applied yet (future epoch), keyed by group and seq.
    fn put_pending(&self, group: &GroupId, seq: Seq, entry: &[u8]) -> Result<(), StoreError> {
        self.kv_put(Namespace::Pending, &group_seq_key(group, seq), entry)
    }
    /// Parked entries of a group in seq order.
    fn pending(&self, group: &GroupId) -> Result<Vec<(Seq, Vec<u8>)>, StoreError> {
        self.kv_scan(Namespace::Pending, &group.0)?
            .into_iter()
            .map(|(k, v)| {
                let seq: [u8; 8] = k
                    .get(16..24)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| StoreError::Corrupt("pending key".into()))?;
                Ok((Seq(u64::from_be_bytes(seq)), v))
            })
            .collect()
    }
    /// Removes a parked entry.
    fn delete_pending(&self, group: &GroupId, seq: Seq) -> Result<(), StoreError> {
        self.kv_delete(Namespace::Pending, &group_seq_key(group, seq))
    }
    /// The groups that have parked entries, in id order.
    fn pending_groups(&self) -> Result<Vec<GroupId>, StoreError> {
        let mut groups: Vec<GroupId> = Vec::new();
        for (k, _) in self.kv_scan(Namespace::Pending, &[])? {
            let id: [u8; 16] = k
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("pending key".into()))?;
            if groups.last() != Some(&GroupId(id)) {
                groups.push(GroupId(id));
            }
        }
        Ok(groups)
    }
    /// The total size in bytes of the parked entries of all groups.
    fn pending_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .kv_scan(Namespace::Pending, &[])?
            .iter()
            .map(|(_, v)| v.len() as u64)
            .sum())
    }
}

impl<T: Kv + StorageProvider<CURRENT_VERSION, Error = StoreError> + Send> Store for T {}

fn get_record<T: serde::de::DeserializeOwned>(
    kv: &(impl Kv + ?Sized),
    ns: Namespace,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match kv.kv_get(ns, key)? {
        Some(v) => Ok(Some(postcard::from_bytes(&v)?)),
        None => Ok(None),
    }
}

fn put_record<T: serde::Serialize>(
    kv: &(impl Kv + ?Sized),
    ns: Namespace,
    key: &[u8],
    value: &T,
) -> Result<(), StoreError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| StoreError::Encode(e.to_string()))?;
    kv.kv_put(ns, key, &bytes)
}

fn pin_key(user: &UserName, device: DeviceId) -> Vec<u8> {
    let mut k = user.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&device.0.to_be_bytes());
    k
}

fn group_seq_key(group: &GroupId, seq: Seq) -> Vec<u8> {
    let mut k = group.0.to_vec();
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

fn seen_key(group: &GroupId, id: &[u8; 16]) -> Vec<u8> {
    let mut k = group.0.to_vec();
    k.extend_from_slice(id);
    k
}

fn stream_key(stream: &Stream) -> Vec<u8> {
    match stream {
        Stream::Inbox => vec![0],
        Stream::Group(g) => {
            let mut k = vec![1];
            k.extend_from_slice(&g.0);
            k
        }
    }
}
