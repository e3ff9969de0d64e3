//! What an appended post answers, and to whom its entry and Welcome go.

use cove_wire::{DeviceId, EntryKind, ErrorReply, GroupEntry, Reply, Seq};

use crate::reply::store_error_reply;
use crate::store::{Appended, NewPost, RelayStore, StoreError, Welcome};

/// The outcome of one post after the store: the poster's reply and, if the post was stored,
/// its fan-out.
#[derive(Debug)]
pub struct PostOutcome {
    /// The poster's reply: `Posted { seq }` once durable (also for a repeated post, with the
    /// original seq), or the refusal.
    pub reply: Result<Reply, ErrorReply>,
    /// What goes to other devices; `None` when nothing was stored.
    pub fanout: Option<Fanout>,
}

/// The deliveries of a stored post.
#[derive(Debug)]
pub struct Fanout {
    /// The stored entry, delivered as `Deliver(Group(..))` to `recipients`.
    pub entry: GroupEntry,
    /// Who gets the entry: the members after the post, minus the devices a commit added
    /// (their Welcome carries the commit), plus the devices it removed (they learn of their
    /// removal).
    pub recipients: Vec<DeviceId>,
    /// The commit's Welcome, delivered as `Deliver(Inbox(..))` to each of `welcomes`.
    pub welcome: Option<Welcome>,
    /// The devices the Welcome goes to, each with its seq in that device's inbox.
    pub welcomes: Vec<(DeviceId, Seq)>,
}

/// Decides a post's reply and deliveries from what the store did with it.
pub fn posted(result: Result<Appended, StoreError>) -> PostOutcome {
    let appended = match result {
        Ok(appended) => appended,
        // A resend of a stored post: the poster gets the original seq, nobody gets a copy.
        Err(StoreError::Duplicate { seq }) => {
            return PostOutcome {
                reply: Ok(Reply::Posted { seq }),
                fanout: None,
            };
        }
        Err(e) => {
            return PostOutcome {
                reply: Err(store_error_reply(&e)),
                fanout: None,
            };
        }
    };
    let seq = appended.entry.seq;
    // Devices a commit adds start reading after it (their Welcome carries it), so the
    // commit goes to the other members and to the removed devices.
    let mut recipients = appended.members;
    if let EntryKind::Commit { added, .. } = &appended.entry.kind
        && !added.is_empty()
    {
        recipients.retain(|d| !added.contains(d));
    }
    recipients.extend_from_slice(&appended.removed);
    PostOutcome {
        reply: Ok(Reply::Posted { seq }),
        fanout: Some(Fanout {
            entry: appended.entry,
            recipients,
            welcome: appended.welcome,
            welcomes: appended.welcomes,
        }),
    }
}

/// Appends one post on its own (one [`RelayStore::append_batch`] of one post) and decides
/// its outcome; the relay's pipeline batches instead, then calls [`posted`] per post.
pub fn append(store: &dyn RelayStore, post: NewPost) -> PostOutcome {
    let result = store
        .append_batch(vec![post])
        .pop()
        .unwrap_or_else(|| Err(super::wrong_count()));
    posted(result)
}
