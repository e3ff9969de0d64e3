//! What an appended post answers, and to whom its entry and Welcome go.

use cove_wire::{DeviceId, EntryKind, ErrorReply, GroupEntry, PostKind, Reply, Seq};

use super::handshake::{Handshakes, PostError};
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

/// Decides a post's reply and deliveries from what the store (or handshake validation)
/// did with it.
pub fn posted(result: Result<Appended, PostError>) -> PostOutcome {
    let appended = match result {
        Ok(appended) => appended,
        // A resend of a stored post: the poster gets the original seq, nobody gets a copy.
        Err(PostError::Store(StoreError::Duplicate { seq })) => {
            return PostOutcome {
                reply: Ok(Reply::Posted { seq }),
                fanout: None,
            };
        }
        Err(PostError::Store(e)) => {
            return PostOutcome {
                reply: Err(store_error_reply(&e)),
                fanout: None,
            };
        }
        Err(PostError::Handshake(e)) => {
            return PostOutcome {
                reply: Err(e.reply()),
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

/// Appends one post on its own and decides its outcome; the relay's pipeline batches
/// instead ([`append_posts`]), then calls [`posted`] per post.
pub fn append(store: &dyn RelayStore, handshakes: &Handshakes, post: NewPost) -> PostOutcome {
    let result = append_posts(store, handshakes, vec![post])
        .pop()
        .unwrap_or_else(|| Err(super::wrong_count().into()));
    posted(result)
}

/// Appends posts in order, with handshake validation: runs of posts that need none
/// (application messages, or all when validation is off) go to the store as one
/// [`RelayStore::append_batch`]; each handshake is validated against the group's public
/// state after everything before it is stored, then appended on its own with its next
/// public state, which becomes the group's only once the store took it. One result per
/// post, in input order.
pub fn append_posts(
    store: &dyn RelayStore,
    handshakes: &Handshakes,
    posts: Vec<NewPost>,
) -> Vec<Result<Appended, PostError>> {
    let mut results = Vec::with_capacity(posts.len());
    let mut run: Vec<NewPost> = Vec::new();
    for post in posts {
        let checked = handshakes.enabled() && !matches!(post.kind, PostKind::Application);
        if !checked {
            run.push(post);
            continue;
        }
        append_run(store, std::mem::take(&mut run), &mut results);
        match handshakes.check_post(store, &post) {
            Err(e) => results.push(Err(e)),
            Ok(None) => append_run(store, vec![post], &mut results),
            Ok(Some(prepared)) => {
                let post = NewPost {
                    public_state: Some(prepared.state().clone()),
                    ..post
                };
                let result = one(store, post);
                if result.is_ok() {
                    handshakes.stored(prepared);
                }
                results.push(result);
            }
        }
    }
    append_run(store, run, &mut results);
    results
}

/// Appends a run of posts as one batch, one result per post.
fn append_run(
    store: &dyn RelayStore,
    run: Vec<NewPost>,
    results: &mut Vec<Result<Appended, PostError>>,
) {
    if run.is_empty() {
        return;
    }
    let count = run.len();
    let stored = store.append_batch(run);
    if stored.len() == count {
        results.extend(stored.into_iter().map(|r| r.map_err(PostError::from)));
    } else {
        results.extend((0..count).map(|_| Err(super::wrong_count().into())));
    }
}

/// Appends one post.
fn one(store: &dyn RelayStore, post: NewPost) -> Result<Appended, PostError> {
    let mut stored = store.append_batch(vec![post]);
    match (stored.pop(), stored.is_empty()) {
        (Some(result), true) => result.map_err(PostError::from),
        _ => Err(super::wrong_count().into()),
    }
}
