//! The backlog task: the stored entries a device has not acknowledged, then `BacklogDone`.

use std::collections::HashMap;
use std::sync::Arc;

use cove_wire::limits::MAX_FETCH_ENTRIES;
use cove_wire::{
    Delivery, DeviceId, EntryKind, ErrorCode, GroupEntry, GroupId, Seq, ServerFrame, Stream,
};
use tracing::error;

use crate::hub::{CloseReason, Outbox};
use crate::reply::encode_frame;
use crate::shared::{Shared, blocking};
use crate::store::StoreError;

/// Entries read from the store per backlog step.
const BACKLOG_STEP: u32 = MAX_FETCH_ENTRIES;

/// Pushes, from the device's cursors: the groups it was removed from without having acked
/// the removal (up to and including the removal commit, also when it was added again
/// since: a device always receives the commit that removed it, before the Welcome that adds
/// it again), the inbox, and every group it is in; then `BacklogDone`; then makes the device
/// live.
pub(super) async fn push_backlog(shared: Arc<Shared>, outbox: Arc<Outbox>, device: DeviceId) {
    let mut sent: HashMap<Stream, Seq> = HashMap::new();
    let result = async {
        let members: Vec<GroupId> = blocking(&shared, move |s| s.groups_of(device))
            .await?
            .into_iter()
            .map(|summary| summary.group)
            .collect();
        let departures = blocking(&shared, move |s| s.departures(device)).await?;
        for (group, removed_at) in departures {
            let stream = Stream::Group(group);
            let cursor = match blocking(&shared, move |s| s.departure_cursor(device, group)).await?
            {
                Some(cursor) => cursor,
                // The removal was acked meanwhile.
                None => continue,
            };
            let Some(after) =
                push_group(&shared, &outbox, device, group, cursor, Some(removed_at)).await?
            else {
                return Ok(false);
            };
            // A member again: its live stream starts from its member cursor, below.
            if !members.contains(&group) {
                sent.insert(stream, after);
            }
        }
        let cursor = blocking(&shared, move |s| s.cursor(device, Stream::Inbox)).await?;
        let mut after = cursor;
        loop {
            let entries =
                blocking(&shared, move |s| s.read_inbox(device, after, BACKLOG_STEP)).await?;
            let Some(last) = entries.last() else { break };
            after = last.seq;
            for entry in entries {
                let Some(frame) = encode_frame(&ServerFrame::Deliver(Delivery::Inbox(entry)))
                else {
                    continue;
                };
                if !outbox.send(frame).await {
                    return Ok(false);
                }
            }
        }
        sent.insert(Stream::Inbox, after);
        for group in members {
            let stream = Stream::Group(group);
            if sent.contains_key(&stream) {
                continue;
            }
            let cursor = match blocking(&shared, move |s| s.cursor(device, stream)).await {
                Ok(cursor) => cursor,
                // Removed (and told, live) or left meanwhile.
                Err(StoreError::NotMember) => continue,
                Err(e) => return Err(e),
            };
            let Some(after) = push_group(&shared, &outbox, device, group, cursor, None).await?
            else {
                return Ok(false);
            };
            sent.insert(stream, after);
        }
        Ok::<bool, StoreError>(true)
    }
    .await;
    match result {
        Ok(true) => {
            if let Some(frame) = encode_frame(&ServerFrame::BacklogDone)
                && outbox.send(frame).await
            {
                shared.hub.go_live(device, outbox.conn_id, &sent);
            }
        }
        Ok(false) => {}
        Err(e) => {
            error!(%device, error = %e, "reading the backlog failed");
            outbox.close(CloseReason::Code(ErrorCode::Internal));
        }
    }
}

/// Pushes `group`'s entries after `after` (up to and including `removed_at` if given, and
/// never past a commit that removes the device). Returns the last seq pushed (`after` if
/// none), or `None` when the connection went away.
pub(super) async fn push_group(
    shared: &Arc<Shared>,
    outbox: &Arc<Outbox>,
    device: DeviceId,
    group: GroupId,
    mut after: Seq,
    removed_at: Option<Seq>,
) -> Result<Option<Seq>, StoreError> {
    loop {
        let entries = blocking(shared, move |s| s.read_group(group, after, BACKLOG_STEP)).await?;
        if entries.is_empty() {
            return Ok(Some(after));
        }
        for entry in entries {
            if removed_at.is_some_and(|r| entry.seq > r) {
                return Ok(Some(after));
            }
            after = entry.seq;
            let removes_me = removes(&entry, device);
            let Some(frame) = encode_frame(&ServerFrame::Deliver(Delivery::Group(entry))) else {
                continue;
            };
            if !outbox.send(frame).await {
                return Ok(None);
            }
            if removes_me {
                return Ok(Some(after));
            }
        }
    }
}

pub(super) fn removes(entry: &GroupEntry, device: DeviceId) -> bool {
    matches!(&entry.kind, EntryKind::Commit { removed, .. } if removed.contains(&device))
}
