//! The backlog task: steps the core's [`Backlog`] on the blocking pool and queues what it
//! reads, then `BacklogDone`, then makes the device live.

use std::sync::Arc;

use cove_wire::{DeviceId, ErrorCode, ServerFrame};
use tracing::error;

use crate::hub::{CloseReason, Outbox};
use crate::logic::{Backlog, BacklogStep};
use crate::reply::encode_frame;
use crate::shared::{Shared, blocking};

/// Pushes the device's backlog (see [`Backlog`]), waiting for room in its queue, then
/// `BacklogDone` (the first time: `announce`; not when the hub re-reads a live device's
/// backlog in cluster mode), then makes the device live in the hub.
pub(super) async fn push_backlog(
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    device: DeviceId,
    announce: bool,
) {
    let mut backlog = Backlog::with_read_bytes(device, shared.limits.max_read_bytes);
    loop {
        let stepped = blocking(&shared, move |s| {
            let step = backlog.step(s);
            Ok((backlog, step))
        })
        .await;
        let step = match stepped {
            Ok((next, step)) => {
                backlog = next;
                step
            }
            Err(e) => {
                error!(%device, error = %e, "reading the backlog failed");
                outbox.close(CloseReason::Code(ErrorCode::Internal));
                return;
            }
        };
        match step {
            Ok(BacklogStep::Deliver(deliveries)) => {
                for delivery in deliveries {
                    let Some(frame) = encode_frame(&ServerFrame::Deliver(delivery)) else {
                        continue;
                    };
                    if !outbox.send(frame).await {
                        return;
                    }
                    shared.hub.count_deliveries(1);
                }
            }
            Ok(BacklogStep::Done(sent)) => {
                if !announce {
                    shared.hub.go_live(device, outbox.conn_id, &sent);
                } else if let Some(frame) = encode_frame(&ServerFrame::BacklogDone)
                    && outbox.send(frame).await
                {
                    shared.hub.go_live(device, outbox.conn_id, &sent);
                }
                return;
            }
            Err(e) => {
                error!(%device, error = %e, "reading the backlog failed");
                outbox.close(CloseReason::Code(ErrorCode::Internal));
                return;
            }
        }
    }
}
