//! Device lists: publishing (verified with `cove-identity` before the store appends it) and
//! fetching a user's signed list.
//!
//! Rules of a publish by an authenticated device:
//! - the entries are of the device's own user's list (an entry of another user is refused);
//! - the first publish is a whole list from entry 0, verified with [`DeviceList::verify`],
//!   and it must list the publishing device's key (a device cannot publish a list without
//!   itself);
//! - a later publish carries the entries after the stored head; each is verified with
//!   [`DeviceList::append`] on the stored list, so it must extend the stored chain: an older
//!   list sent again (a rollback) or an entry that does not follow the stored head (a fork)
//!   is refused;
//! - the store appends only if its list is still the one verified against (its length), so
//!   of two concurrent publishes one wins and the other is refused.
//!
//! Every refusal is `InvalidRequest` with a message that names the rule.

use cove_identity::{DeviceList, ListError, entry_hash};
use cove_wire::identity::ListEntry;
use cove_wire::limits::MAX_DEVICE_LIST_ENTRIES;
use cove_wire::{BoundedVec, DeviceId, ErrorReply, Reply, UserName};

use crate::reply::{invalid, store_error_reply};
use crate::store::RelayStore;

/// Verifies and stores `entries` published by `device` (see the module documentation).
pub fn publish(
    store: &dyn RelayStore,
    device: DeviceId,
    entries: Vec<ListEntry>,
) -> Result<Reply, ErrorReply> {
    let stored_err = |e| store_error_reply(&e);
    if entries.is_empty() {
        return Err(invalid("device list refused: no entries to publish"));
    }
    if entries.len() > MAX_DEVICE_LIST_ENTRIES {
        return Err(invalid(&format!(
            "device list refused: more than {MAX_DEVICE_LIST_ENTRIES} entries"
        )));
    }
    let (user, key) = store
        .device(device)
        .map_err(stored_err)?
        .ok_or_else(|| invalid("device list refused: this device no longer exists"))?;
    publish_for(store, &user, Some(&key), entries)
}

/// Verifies and stores `entries` published on a connection logged in as `user` with the
/// password (no device yet): only appends to a stored list, under the same rules as a
/// device's later publish (every entry signed by the stored list's identity key).
pub fn publish_logged_in(
    store: &dyn RelayStore,
    user: &UserName,
    entries: Vec<ListEntry>,
) -> Result<Reply, ErrorReply> {
    if entries.is_empty() {
        return Err(invalid("device list refused: no entries to publish"));
    }
    if entries.len() > MAX_DEVICE_LIST_ENTRIES {
        return Err(invalid(&format!(
            "device list refused: more than {MAX_DEVICE_LIST_ENTRIES} entries"
        )));
    }
    publish_for(store, user, None, entries)
}

/// The publish rules for `user`'s list; `key` is the publishing device's (`None` on a
/// password-logged-in connection, which may not create a list).
fn publish_for(
    store: &dyn RelayStore,
    user: &UserName,
    key: Option<&cove_wire::DeviceKey>,
    entries: Vec<ListEntry>,
) -> Result<Reply, ErrorReply> {
    let stored_err = |e| store_error_reply(&e);
    let user = user.clone();
    let stored = store.device_list(&user).map_err(stored_err)?;
    let list = if stored.is_empty() {
        let Some(key) = key else {
            return Err(invalid(
                "device list refused: a connection without a device can only extend a list",
            ));
        };
        let list = DeviceList::verify(&user, &entries).map_err(|e| refused(&e, false))?;
        if !list.is_listed(key) {
            return Err(invalid(
                "device list refused: it does not list the publishing device",
            ));
        }
        list
    } else {
        // Cheap checks first (no signature): a rollback, gap or fork is refused before the
        // stored list is verified again.
        precheck_append(&stored, &entries).map_err(|e| refused(&e, true))?;
        let mut list = DeviceList::verify(&user, &stored).map_err(|e| {
            tracing::error!(error = %e, user = %user, "stored device list does not verify");
            store_error_reply(&crate::store::StoreError::Backend(
                "stored device list does not verify".into(),
            ))
        })?;
        for entry in &entries {
            list.append(entry).map_err(|e| refused(&e, true))?;
        }
        list
    };
    store
        .append_device_list(&user, stored.len() as u64, entries)
        .map_err(stored_err)?;
    Ok(Reply::DeviceListHead { head: list.head() })
}

/// Whether the first of `entries` sits right after the last of `stored` (index and `prev`
/// hash), without checking any signature.
fn precheck_append(stored: &[ListEntry], entries: &[ListEntry]) -> Result<(), ListError> {
    let (Some(last), Some(first)) = (stored.last(), entries.first()) else {
        return Ok(());
    };
    let expected = stored.len() as u64;
    if first.body.index != expected {
        return Err(ListError::WrongIndex {
            expected,
            got: first.body.index,
        });
    }
    if first.body.prev != Some(entry_hash(last)?) {
        return Err(ListError::WrongPrev { index: expected });
    }
    Ok(())
}

/// A user's stored list.
pub fn fetch(store: &dyn RelayStore, user: &UserName) -> Result<Reply, ErrorReply> {
    let entries = store.device_list(user).map_err(|e| store_error_reply(&e))?;
    Ok(Reply::DeviceList {
        entries: BoundedVec(entries),
    })
}

/// The refusal of a list that `cove-identity` rejected; `appending` when it was checked as
/// entries after the stored head.
fn refused(e: &ListError, appending: bool) -> ErrorReply {
    let rule = match e {
        ListError::WrongUser { .. } => "an entry of another user's list",
        ListError::BadSignature { .. } => "an entry not signed by the identity key",
        ListError::WrongIndex { expected, got } if appending && got < expected => {
            "a rollback: it repeats or replaces entries the stored list has"
        }
        ListError::WrongIndex { .. } if appending => {
            "a gap: it does not start right after the stored head"
        }
        ListError::WrongPrev { .. } if appending => "a fork: it does not follow the stored head",
        _ => "an invalid list",
    };
    invalid(&format!("device list refused, {rule}: {e}"))
}
