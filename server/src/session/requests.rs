//! One request: rate limits, the core's routing, the store call (on the blocking pool) or
//! the pipeline or ack-lane hand-off, the answer. Every decision is the core's
//! ([`crate::logic`]); this module adds only where and when things run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cove_wire::{ErrorCode, ErrorReply, Reply, Request, RequestId};
use tracing::info;

use crate::hub::CloseReason;
use crate::logic::{self, Auth, Route};
use crate::pipeline::{AckJob, PostJob};
use crate::reply::{encode_frame, response, store_error_reply};
use crate::shared::blocking;
use crate::store::NewPost;

use super::backlog::push_backlog;
use super::state::Session;

impl Session {
    /// Handles one request; answers it unless it is a post or a lane ack (answered when
    /// durable / applied).
    pub(super) async fn request(&mut self, id: RequestId, body: Request, frame_len: usize) {
        // Posts gathered so far reach the pipeline before any other request is handled.
        if !matches!(body, Request::Post { .. }) {
            self.submit_posts();
        }
        let limited = match self.conn.device() {
            Some(device) => self.shared.hub.take_request(device),
            None => self.preauth.take(Instant::now()),
        };
        if let Err(retry_after_ms) = limited {
            let mut e = ErrorReply::new(ErrorCode::RateLimited, "too many requests");
            e.retry_after_ms = Some(retry_after_ms);
            self.answer(id, Err(e));
            return;
        }
        let route = self
            .conn
            .route_logged_in(self.account.logged_in(), body, now_ms());
        let result = match route {
            Route::Answer(result) => result,
            Route::Authenticate(auth) => {
                let registers = matches!(
                    auth,
                    Auth::Register { .. }
                        | Auth::RegisterDevice { .. }
                        | Auth::RegisterListed { .. }
                );
                let limited = registers
                    .then(|| self.shared.registrations.take(self.peer, Instant::now()))
                    .and_then(Result::err);
                match limited {
                    Some(retry_after_ms) => {
                        info!(
                            conn = self.outbox.conn_id,
                            "registration refused: too many from this address"
                        );
                        let mut e = ErrorReply::new(
                            ErrorCode::RateLimited,
                            "too many registrations from this address",
                        );
                        e.retry_after_ms = Some(retry_after_ms);
                        Err(e)
                    }
                    None => self.authenticate(auth).await,
                }
            }
            Route::Post(post) => {
                let room = self
                    .shared
                    .limits
                    .message_bytes()
                    .saturating_sub(logic::ENTRY_OVERHEAD_BYTES);
                if frame_len > room {
                    Err(ErrorReply::new(ErrorCode::TooLarge, "post too large"))
                } else {
                    match self.post(id, post).await {
                        Ok(()) => return,
                        Err(e) => Err(e),
                    }
                }
            }
            Route::Ack {
                device,
                stream,
                seq,
                quiet,
            } => {
                self.shared
                    .metrics
                    .acks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Inline when the store can apply it without I/O and no earlier ack of this
                // connection is still in the lane (replies keep request order). The `Acked`
                // reply joins the outbox like any frame, so it shares the writer's batch.
                if self.acks_in_lane.load(Ordering::Acquire) == 0
                    && let Some(result) = self.shared.store.try_ack_buffered(device, stream, seq)
                {
                    let reply = logic::acked(result);
                    if !(quiet && reply.is_ok()) {
                        self.answer(id, reply);
                    }
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
                    quiet,
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
            Route::Account(device, body) => self.account(device, body).await,
            Route::Link(body) => {
                let links = &self.shared.links;
                match body {
                    Request::OpenLink => links
                        .open(&self.outbox)
                        .map(|nameplate| Reply::LinkOpened { nameplate }),
                    Request::JoinLink { nameplate } => links
                        .join(&self.outbox, nameplate)
                        .map(|()| Reply::LinkJoined),
                    Request::LinkSend { bytes } => links
                        .send(self.outbox.conn_id, bytes)
                        .map(|()| Reply::LinkSent),
                    _ => logic::no_link(),
                }
            }
            Route::TurnCredentials(device) => match &self.shared.turn {
                // The user names the per-user allocation cap's bucket.
                Some(turn) => match blocking(&self.shared, move |s| s.device(device)).await {
                    Ok(Some((user, _))) => turn.credentials(&user, device),
                    Ok(None) => Err(ErrorReply::new(ErrorCode::UnknownDevice, "unknown device")),
                    Err(e) => Err(store_error_reply(&e)),
                },
                None => logic::no_turn(),
            },
            Route::Request(device, Request::AppendBackupSegment { user, segment }) => {
                // The blob's facts come from the blob store; the decision is the core's.
                let blobs = Arc::clone(self.shared.blob.blobs());
                blocking(&self.shared, move |s| {
                    let blob = blobs
                        .meta(&segment.blob)
                        .map_err(|e| crate::store::StoreError::Backend(e.to_string()))?
                        .map(|m| logic::backup::BlobFacts {
                            complete: m.complete(),
                            owner: m.owner,
                            length: m.length,
                        });
                    Ok(logic::backup::append(
                        s,
                        device,
                        &user,
                        segment,
                        blob,
                        crate::store::BackupCaps::default(),
                    ))
                })
                .await
                .unwrap_or_else(|e| Err(store_error_reply(&e)))
            }
            Route::Request(device, body) => {
                // Costly requests share the claim bucket: a KeyPackage claim hands out a
                // KeyPackage, a device-list publish verifies up to a whole list's signatures.
                let costly = match &body {
                    Request::ClaimKeyPackages { .. } => Some("too many claims"),
                    Request::PublishDeviceList { .. } => Some("too many device-list publishes"),
                    _ => None,
                };
                let read_bytes = self.shared.limits.max_read_bytes;
                let hub = &self.shared.hub;
                // A claim also takes a token of its target user's bucket, shared by every
                // claimer, once the claimer's own bucket allowed it.
                let limited = costly.and_then(|what| match hub.take_claim(device) {
                    Err(retry) => Some((what, retry)),
                    Ok(()) => match &body {
                        Request::ClaimKeyPackages { user } => hub
                            .take_target_claim(user)
                            .err()
                            .map(|retry| ("too many claims of this user's KeyPackages", retry)),
                        _ => None,
                    },
                });
                match limited {
                    Some((what, retry_after_ms)) => {
                        let mut e = ErrorReply::new(ErrorCode::RateLimited, what);
                        e.retry_after_ms = Some(retry_after_ms);
                        Err(e)
                    }
                    _ => {
                        let handshakes = std::sync::Arc::clone(&self.shared.handshakes);
                        blocking(&self.shared, move |s| {
                            Ok(logic::request(s, &handshakes, device, body, read_bytes))
                        })
                        .await
                        .unwrap_or_else(|e| Err(store_error_reply(&e)))
                    }
                }
            }
        };
        self.answer(id, result);
    }

    /// Runs the core's authentication on the blocking pool (it reads and writes the store);
    /// on success the device is registered in the hub as syncing and its backlog starts
    /// once the reply is queued; after a failed signature the connection closes.
    async fn authenticate(&mut self, auth: Auth) -> Result<Reply, ErrorReply> {
        let mut conn = self.conn;
        let now = now_ms();
        let done = blocking(&self.shared, move |s| {
            let answer = conn.authenticate(s, auth, now);
            Ok((conn, answer))
        })
        .await;
        let (conn, answer) = done.map_err(|e| store_error_reply(&e))?;
        self.conn = conn;
        if let Some(code) = answer.close {
            info!(
                conn = self.outbox.conn_id,
                "closing after a failed authentication"
            );
            self.close_after_answer = Some(code);
        }
        if let Some(device) = answer.authenticated {
            self.shared.hub.register(device, Arc::clone(&self.outbox));
            // The backlog task starts once the reply is queued (see `answer`).
            self.start_backlog = true;
        }
        answer.reply
    }

    /// A password-account request: the login rate limits, then the core's
    /// [`logic::account`] on the blocking pool with this connection's account state.
    async fn account(
        &mut self,
        device: Option<cove_wire::DeviceId>,
        body: Request,
    ) -> Result<Reply, ErrorReply> {
        if let Request::AccountLoginStart { user, .. } = &body
            && let Err((what, retry_after_ms)) =
                self.shared.logins.take(user, self.peer, Instant::now())
        {
            info!(conn = self.outbox.conn_id, "login refused: {what}");
            let mut e = ErrorReply::new(ErrorCode::RateLimited, what);
            e.retry_after_ms = Some(retry_after_ms);
            return Err(e);
        }
        // A recovery-bundle fetch uses up the challenge, like an authentication.
        let challenge = match &body {
            Request::FetchRecoveryBundle { .. } => self.conn.take_challenge(),
            _ => None,
        };
        let mut account = std::mem::take(&mut self.account);
        let secrets = Arc::clone(&self.shared.opaque);
        let done = blocking(&self.shared, move |s| {
            let answer = logic::account(&mut account, s, &secrets, device, challenge, body);
            Ok((account, answer))
        })
        .await;
        let (account, answer) = done.map_err(|e| store_error_reply(&e))?;
        self.account = account;
        if let Some((user, devices)) = self.account.take_deleted() {
            self.deleted(user, devices).await;
        }
        answer
    }

    /// After an account deletion: closes the deleted devices' connections (this one after
    /// its answer, if it is one of them) and deletes the user's blobs before answering.
    async fn deleted(&mut self, user: cove_wire::UserName, devices: Vec<cove_wire::DeviceId>) {
        for device in &devices {
            if self.conn.device() == Some(*device) {
                self.close_after_answer = Some(ErrorCode::UnknownDevice);
            } else {
                self.shared
                    .hub
                    .close_device(*device, ErrorCode::UnknownDevice);
            }
        }
        let shared = Arc::clone(&self.shared);
        let done = tokio::task::spawn_blocking(move || shared.blob.delete_owner(&user)).await;
        match done {
            Ok(Ok(n)) => info!(blobs = n, "deleted the user's blobs"),
            Ok(Err(e)) => tracing::error!(error = %e, "could not delete a deleted user's blobs"),
            Err(e) => tracing::error!(error = %e, "blob deletion task failed"),
        }
    }

    /// Reserves the post's share of the pipeline's budget and adds it to the posts gathered
    /// for the pipeline (submitted by [`Session::submit_posts`]).
    pub(super) async fn post(&mut self, id: RequestId, post: NewPost) -> Result<(), ErrorReply> {
        let len = post.payload.len();
        let permit = match self.shared.pipeline.try_reserve(len) {
            Some(permit) => permit,
            None => {
                // The budget is held by posts waiting for the store, maybe gathered here:
                // hand those over before waiting for room.
                self.submit_posts();
                self.shared
                    .pipeline
                    .reserve(len)
                    .await
                    .ok_or_else(unavailable)?
            }
        };
        self.posts.push(PostJob {
            post,
            request: id,
            reply_to: Arc::clone(&self.outbox),
            permit,
        });
        if self.posts.len() >= self.shared.pipeline.batch_max() {
            self.submit_posts();
        }
        Ok(())
    }

    /// Hands the gathered posts to the pipeline as one job; if it has stopped, each is
    /// answered `Unavailable`.
    pub(super) fn submit_posts(&mut self) {
        if self.posts.is_empty() {
            return;
        }
        let posts = std::mem::take(&mut self.posts);
        if let Err(refused) = self.shared.pipeline.submit(posts) {
            for job in refused {
                self.answer(job.request, Err(unavailable()));
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
        if let (true, Some(device)) = (std::mem::take(&mut self.start_backlog), self.conn.device())
        {
            let shared = Arc::clone(&self.shared);
            let outbox = Arc::clone(&self.outbox);
            self.backlog = Some(tokio::spawn(push_backlog(shared, outbox, device, true)));
        }
    }
}

fn unavailable() -> ErrorReply {
    ErrorReply::new(ErrorCode::Unavailable, "relay is shutting down")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
