//! One request: rate limits, dispatch, the store call or pipeline hand-off, the answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cove_wire::limits::{
    MAX_FETCH_ENTRIES, MAX_FRAME_BYTES, MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGES_PER_UPLOAD,
    MAX_VEC_ITEMS,
};
use cove_wire::{
    BoundedVec, DeviceId, EntryKind, ErrorCode, ErrorReply, GroupEntry, Reply, Request, RequestId,
};
use tracing::error;

use crate::hub::CloseReason;
use crate::pipeline::{AckJob, PostJob};
use crate::reply::{encode_frame, invalid, response, store_error_reply};
use crate::shared::blocking;
use crate::store::NewPost;

use super::backlog::push_backlog;
use super::state::Session;

/// Room left in a frame for everything but the payload of a stored entry.
const ENTRY_OVERHEAD_BYTES: usize = 1024;

impl Session {
    /// Handles one request; answers it unless it is a post (answered when durable).
    pub(super) async fn request(&mut self, id: RequestId, body: Request, frame_len: usize) {
        let limited = match self.device {
            Some(device) => self.shared.hub.take_request(device),
            None => self.preauth.take(Instant::now()),
        };
        if let Err(retry_after_ms) = limited {
            let mut e = ErrorReply::new(ErrorCode::RateLimited, "too many requests");
            e.retry_after_ms = Some(retry_after_ms);
            self.answer(id, Err(e));
            return;
        }
        let result = match (body, self.device) {
            (Request::Ping, _) => Ok(Reply::Pong),
            (
                Request::Register {
                    user,
                    key,
                    signature,
                },
                None,
            ) => self.register(user, key, signature).await,
            (
                Request::RegisterDevice {
                    user,
                    key,
                    signature,
                    authorizer,
                    authorization,
                },
                None,
            ) => {
                self.register_device(user, key, signature, authorizer, authorization)
                    .await
            }
            (
                Request::Authenticate {
                    user,
                    device,
                    signature,
                },
                None,
            ) => self.authenticate(user, device, signature).await,
            (
                Request::Register { .. }
                | Request::RegisterDevice { .. }
                | Request::Authenticate { .. },
                Some(_),
            ) => Err(ErrorReply::new(
                ErrorCode::AlreadyAuthenticated,
                "already authenticated",
            )),
            (_, None) => Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                "authenticate first",
            )),
            (
                Request::Post {
                    group,
                    epoch,
                    kind,
                    payload,
                },
                Some(device),
            ) => {
                let room = self
                    .shared
                    .limits
                    .message_bytes()
                    .saturating_sub(ENTRY_OVERHEAD_BYTES);
                if frame_len > room {
                    Err(ErrorReply::new(ErrorCode::TooLarge, "post too large"))
                } else {
                    let post = NewPost {
                        group,
                        sender: device,
                        epoch,
                        kind,
                        payload: payload.into_vec(),
                        now_ms: now_ms(),
                    };
                    match self.post(id, post).await {
                        Ok(()) => return,
                        Err(e) => Err(e),
                    }
                }
            }
            (Request::Ack { stream, seq }, Some(device)) => {
                // Inline when the store can apply it without I/O and no earlier ack of this
                // connection is still in the lane (replies keep request order). The `Acked`
                // reply joins the outbox like any frame, so it shares the writer's batch.
                if self.acks_in_lane.load(Ordering::Acquire) == 0
                    && let Some(result) = self.shared.store.try_ack_buffered(device, stream, seq)
                {
                    let result = result
                        .map(|()| Reply::Acked)
                        .map_err(|e| store_error_reply(&e));
                    self.answer(id, result);
                    return;
                }
                let reply_to = Arc::clone(&self.outbox);
                self.acks_in_lane.fetch_add(1, Ordering::AcqRel);
                let job = AckJob {
                    device,
                    stream,
                    seq,
                    request: id,
                    reply_to,
                    in_lane: Arc::clone(&self.acks_in_lane),
                };
                if self.shared.acks.submit(job).await {
                    return;
                }
                // The job (and its count) was dropped with the stopped lane.
                self.acks_in_lane.fetch_sub(1, Ordering::AcqRel);
                Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    "relay is shutting down",
                ))
            }
            (body, Some(device)) => self.authenticated_request(device, body).await,
        };
        self.answer(id, result);
    }

    pub(super) async fn post(&self, id: RequestId, post: NewPost) -> Result<(), ErrorReply> {
        let unavailable = || ErrorReply::new(ErrorCode::Unavailable, "relay is shutting down");
        let permit = self
            .shared
            .pipeline
            .reserve(post.payload.len())
            .await
            .ok_or_else(unavailable)?;
        let job = PostJob {
            post,
            request: id,
            reply_to: Arc::clone(&self.outbox),
            permit,
        };
        if self.shared.pipeline.submit(job) {
            Ok(())
        } else {
            Err(unavailable())
        }
    }

    pub(super) async fn authenticated_request(
        &self,
        device: DeviceId,
        body: Request,
    ) -> Result<Reply, ErrorReply> {
        let shared = &self.shared;
        match body {
            Request::ListDevices { user } => {
                let devices = blocking(shared, move |s| s.devices(&user).map(|d| (user, d))).await;
                let (user, devices) = devices.map_err(|e| store_error_reply(&e))?;
                Ok(Reply::Devices {
                    user,
                    devices: BoundedVec(devices),
                })
            }
            Request::UploadKeyPackages {
                key_packages,
                last_resort,
            } => {
                let too_large = |p: &cove_wire::Payload| p.len() > MAX_KEY_PACKAGE_BYTES;
                if key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
                    return Err(invalid("too many key packages in one upload"));
                }
                if key_packages
                    .iter()
                    .chain(last_resort.as_ref())
                    .any(too_large)
                {
                    return Err(ErrorReply::new(
                        ErrorCode::TooLarge,
                        "key package too large",
                    ));
                }
                let kps: Vec<Vec<u8>> = key_packages.into_iter().map(|p| p.into_vec()).collect();
                let last_resort = last_resort.map(|p| p.into_vec());
                let stock = blocking(shared, move |s| {
                    s.upload_key_packages(device, kps, last_resort)
                })
                .await
                .map_err(|e| store_error_reply(&e))?;
                Ok(Reply::KeyPackageStock {
                    remaining: stock.remaining,
                    has_last_resort: stock.has_last_resort,
                })
            }
            Request::ClaimKeyPackages { user } => {
                if let Err(retry_after_ms) = shared.hub.take_claim(device) {
                    let mut e = ErrorReply::new(ErrorCode::RateLimited, "too many claims");
                    e.retry_after_ms = Some(retry_after_ms);
                    return Err(e);
                }
                let claimed = blocking(shared, move |s| {
                    s.claim_key_packages(&user).map(|kps| (user, kps))
                })
                .await;
                let (user, key_packages) = claimed.map_err(|e| store_error_reply(&e))?;
                Ok(Reply::KeyPackages {
                    user,
                    key_packages: BoundedVec(key_packages),
                })
            }
            Request::KeyPackageStock => {
                let stock = blocking(shared, move |s| s.key_package_stock(device))
                    .await
                    .map_err(|e| store_error_reply(&e))?;
                Ok(Reply::KeyPackageStock {
                    remaining: stock.remaining,
                    has_last_resort: stock.has_last_resort,
                })
            }
            Request::CreateGroup { group } => {
                blocking(shared, move |s| s.create_group(group, device))
                    .await
                    .map_err(|e| store_error_reply(&e))?;
                Ok(Reply::GroupCreated)
            }
            Request::Fetch {
                group,
                after,
                limit,
            } => {
                // A member reads from the commit that added it on, never earlier entries.
                let entries = blocking(shared, move |s| {
                    s.fetch(group, device, after, limit.min(MAX_FETCH_ENTRIES))
                })
                .await
                .map_err(|e| store_error_reply(&e))?;
                Ok(Reply::Entries {
                    entries: BoundedVec(fit_in_frame(entries)),
                })
            }
            Request::Ack { .. } => {
                error!("request routed to the wrong handler");
                Err(ErrorReply::new(ErrorCode::Internal, "internal error"))
            }
            Request::ListGroups => {
                let mut groups = blocking(shared, move |s| s.groups_of(device))
                    .await
                    .map_err(|e| store_error_reply(&e))?;
                groups.truncate(MAX_VEC_ITEMS);
                Ok(Reply::Groups {
                    groups: BoundedVec(groups),
                })
            }
            Request::Ping => Ok(Reply::Pong),
            Request::TurnCredentials => match &shared.turn {
                Some(turn) => turn.credentials(device),
                None => Err(ErrorReply::new(
                    ErrorCode::InvalidRequest,
                    "this relay runs no TURN server",
                )),
            },
            Request::Post { .. }
            | Request::Register { .. }
            | Request::RegisterDevice { .. }
            | Request::Authenticate { .. } => {
                error!("request routed to the wrong handler");
                Err(ErrorReply::new(ErrorCode::Internal, "internal error"))
            }
        }
    }

    pub(super) fn answer(&mut self, id: RequestId, result: Result<Reply, ErrorReply>) {
        match encode_frame(&response(id, result)) {
            Some(frame) => {
                self.outbox.push(frame);
            }
            None => self.outbox.close(CloseReason::Code(ErrorCode::Internal)),
        }
        if let Some(code) = self.close_after_answer.take() {
            self.outbox.close(CloseReason::Code(code));
        }
        if let (true, Some(device)) = (std::mem::take(&mut self.start_backlog), self.device) {
            let shared = Arc::clone(&self.shared);
            let outbox = Arc::clone(&self.outbox);
            self.backlog = Some(tokio::spawn(push_backlog(shared, outbox, device)));
        }
    }
}

/// Keeps the leading entries that fit in one frame (always at least one).
fn fit_in_frame(mut entries: Vec<GroupEntry>) -> Vec<GroupEntry> {
    let budget = MAX_FRAME_BYTES.saturating_sub(4 * ENTRY_OVERHEAD_BYTES);
    let mut used = 0usize;
    let mut keep = 0usize;
    for entry in &entries {
        let ids = match &entry.kind {
            EntryKind::Commit { added, removed } => 10 * (added.len() + removed.len()),
            _ => 0,
        };
        used = used.saturating_add(entry.payload.len() + ids + 64);
        if used > budget && keep > 0 {
            break;
        }
        keep += 1;
    }
    entries.truncate(keep);
    entries
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
