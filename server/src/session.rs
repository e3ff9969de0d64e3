//! One WebSocket connection: challenge, authentication, requests, backlog and live delivery.
//!
//! Three tasks serve a connection:
//! - the **reader** (this module's [`run`]) decodes frames and answers requests in order;
//!   posts go to the [`crate::pipeline`] and are answered by the writer thread once durable;
//! - the **writer** drains the connection's bounded queue ([`Outbox`]), feeding every frame
//!   it finds and flushing once (coalesced writes), sends pings, and writes `Closing` frames;
//! - the **backlog** task, started on authentication, pushes the device's inbox and every
//!   group log from its cursors, then `BacklogDone`, then makes the device live in the hub.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cove_wire::limits::{
    MAX_FETCH_ENTRIES, MAX_FRAME_BYTES, MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGES_PER_UPLOAD,
    MAX_VEC_ITEMS,
};
use cove_wire::{
    BoundedVec, ClientFrame, DecodeError, Delivery, DeviceId, DeviceKey, EntryKind, ErrorCode,
    ErrorReply, GroupEntry, GroupId, PROTOCOL_VERSION, Reply, Request, RequestId, Seq, ServerFrame,
    Signature, Stream, UserName,
};
use ed25519_dalek::VerifyingKey;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, error, info};

use crate::hub::{CloseReason, Outbox, OutboxReceiver, TokenBucket};
use crate::pipeline::{AckJob, PostJob};
use crate::reply::{encode_frame, invalid, response, store_error_reply};
use crate::shared::{Shared, stopped};
use crate::store::{NewPost, RelayStore, StoreError};

/// Most frames the writer feeds before it flushes.
const COALESCE_FRAMES: usize = 512;
/// Entries read from the store per backlog step.
const BACKLOG_STEP: u32 = MAX_FETCH_ENTRIES;
/// Room left in a frame for everything but the payload of a stored entry.
const ENTRY_OVERHEAD_BYTES: usize = 1024;
/// Requests an unauthenticated connection may send per second (and as a burst).
const PREAUTH_RATE: f64 = 5.0;
const PREAUTH_BURST: f64 = 10.0;

/// Serves one upgraded WebSocket until it closes.
pub(crate) async fn run<S>(ws: WebSocketStream<S>, shared: Arc<Shared>, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_id = shared.hub.next_conn_id();
    let limits = &shared.limits;
    let (sink, mut stream) = ws.split();
    let (outbox, receiver) = Outbox::new(
        conn_id,
        limits.outgoing_queue_frames,
        limits.outgoing_queue_bytes,
    );
    let close_rx = receiver.close.clone();
    let writer = tokio::spawn(write_loop(
        sink,
        receiver,
        limits.ping_interval(),
        limits.close_grace(),
    ));
    debug!(conn = conn_id, %peer, "websocket open");

    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let challenge = ServerFrame::Challenge {
        version: PROTOCOL_VERSION,
        nonce,
    };
    if let Some(frame) = encode_frame(&challenge) {
        outbox.push(frame);
    }
    let mut session = Session {
        shared: Arc::clone(&shared),
        outbox: Arc::clone(&outbox),
        nonce: Some(nonce),
        device: None,
        preauth: TokenBucket::new(PREAUTH_RATE, PREAUTH_BURST, Instant::now()),
        backlog: None,
        start_backlog: false,
        close_after_answer: None,
        acks_in_lane: Arc::new(AtomicUsize::new(0)),
    };
    let mut closing = close_rx;
    let mut shutdown = shared.shutdown.clone();
    let idle = limits.idle_timeout();
    // One timer for the whole connection, registered once: first the deadline to
    // authenticate (the handshake timeout), then the idle check. It is pushed back only when
    // it fires and messages arrived meanwhile, so a silent connection is closed after one to
    // two idle periods and an active one costs no timer work per message.
    let timer = tokio::time::sleep(limits.handshake_timeout());
    tokio::pin!(timer);
    let mut heard = false;
    loop {
        // Cheap checks first; the select polls the close and shutdown signals (which takes
        // locks) only when no message is ready.
        if closing.has_changed().unwrap_or(true) {
            break;
        }
        if *shutdown.borrow() {
            outbox.close(CloseReason::Code(ErrorCode::Unavailable));
            break;
        }
        let next = tokio::select! {
            biased;
            next = stream.next() => Ok(next),
            () = &mut timer => Err(()),
            _ = closing.changed() => break,
            () = stopped(&mut shutdown) => {
                outbox.close(CloseReason::Code(ErrorCode::Unavailable));
                break;
            }
        };
        if next.is_err() && session.device.is_some() && std::mem::take(&mut heard) {
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
            continue;
        }
        heard = true;
        let message = match next {
            Err(_) if session.device.is_none() => {
                debug!(conn = conn_id, "no authentication in time");
                outbox.close(CloseReason::Code(ErrorCode::Unauthenticated));
                break;
            }
            Err(_) => {
                debug!(conn = conn_id, "idle timeout");
                outbox.close(CloseReason::Code(ErrorCode::IdleTimeout));
                break;
            }
            Ok(None) => {
                outbox.close(CloseReason::Quiet);
                break;
            }
            Ok(Some(Err(e))) => {
                let reason = match &e {
                    WsError::Capacity(_) => CloseReason::Code(ErrorCode::TooLarge),
                    WsError::Protocol(_) | WsError::Utf8(_) => {
                        CloseReason::Code(ErrorCode::Malformed)
                    }
                    _ => CloseReason::Quiet,
                };
                debug!(conn = conn_id, error = %e, "websocket read failed");
                outbox.close(reason);
                break;
            }
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Binary(bytes) => match cove_wire::decode::<ClientFrame>(&bytes) {
                Ok(ClientFrame::Request { id, body }) => {
                    let was_authenticated = session.device.is_some();
                    session.request(id, body, bytes.len()).await;
                    if !was_authenticated && session.device.is_some() {
                        // From now on the timer checks for idleness.
                        timer.as_mut().reset(tokio::time::Instant::now() + idle);
                        heard = false;
                    }
                }
                Err(e) => {
                    debug!(conn = conn_id, error = %e, len = bytes.len(), "undecodable frame");
                    let code = match e {
                        DecodeError::TooLarge(_) => ErrorCode::TooLarge,
                        _ => ErrorCode::Malformed,
                    };
                    outbox.close(CloseReason::Code(code));
                    break;
                }
            },
            Message::Text(_) => {
                debug!(conn = conn_id, "text message refused");
                outbox.close(CloseReason::Code(ErrorCode::Malformed));
                break;
            }
            Message::Close(_) => {
                outbox.close(CloseReason::Quiet);
                break;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    if let Some(backlog) = session.backlog.take() {
        backlog.abort();
    }
    if let Some(device) = session.device {
        shared.hub.unregister(device, conn_id);
    }
    drop(session);
    drop(outbox);
    if let Err(e) = writer.await {
        error!(conn = conn_id, error = %e, "connection writer failed");
    }
    debug!(conn = conn_id, "websocket closed");
}

struct Session {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    /// The challenge; `None` once used (authenticated or a signature failed).
    nonce: Option<[u8; 32]>,
    device: Option<DeviceId>,
    preauth: TokenBucket,
    backlog: Option<JoinHandle<()>>,
    /// Set on authentication: start the backlog once the reply is queued.
    start_backlog: bool,
    /// Close the connection with this code once the current reply is queued.
    close_after_answer: Option<ErrorCode>,
    /// This connection's acks waiting in or applied by the ack lane, not yet answered.
    acks_in_lane: Arc<AtomicUsize>,
}

impl Session {
    /// Handles one request; answers it unless it is a post (answered when durable).
    async fn request(&mut self, id: RequestId, body: Request, frame_len: usize) {
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

    async fn post(&self, id: RequestId, post: NewPost) -> Result<(), ErrorReply> {
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

    async fn authenticated_request(
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

    /// Takes the challenge for one signature check. `None` if it was already used.
    fn take_nonce(&mut self) -> Result<[u8; 32], ErrorReply> {
        self.nonce.ok_or_else(|| {
            ErrorReply::new(
                ErrorCode::AuthenticationFailed,
                "challenge already used; reconnect",
            )
        })
    }

    /// A signature over the challenge failed: the challenge is spent, the connection closes.
    fn auth_failed(&mut self, what: &str) -> ErrorReply {
        self.nonce = None;
        info!(conn = self.outbox.conn_id, what, "authentication failed");
        self.outbox
            .close(CloseReason::Code(ErrorCode::AuthenticationFailed));
        ErrorReply::new(ErrorCode::AuthenticationFailed, "signature did not verify")
    }

    async fn register(
        &mut self,
        user: UserName,
        key: DeviceKey,
        signature: Signature,
    ) -> Result<Reply, ErrorReply> {
        let nonce = self.take_nonce()?;
        let message = cove_wire::sign::auth_challenge_message(&nonce, &user, &key);
        if !verify(&key, &message, &signature) {
            return Err(self.auth_failed("register"));
        }
        let name = user.clone();
        let device = blocking(&self.shared, move |s| s.register_user(&name, &key))
            .await
            .map_err(|e| store_error_reply(&e))?;
        info!(%device, %user, "registered user");
        Ok(self.authenticated(device))
    }

    async fn register_device(
        &mut self,
        user: UserName,
        key: DeviceKey,
        signature: Signature,
        authorizer: DeviceId,
        authorization: Signature,
    ) -> Result<Reply, ErrorReply> {
        let nonce = self.take_nonce()?;
        let message = cove_wire::sign::auth_challenge_message(&nonce, &user, &key);
        if !verify(&key, &message, &signature) {
            return Err(self.auth_failed("register device"));
        }
        let found = blocking(&self.shared, move |s| s.device(authorizer))
            .await
            .map_err(|e| store_error_reply(&e))?;
        let authorizer_key = match found {
            Some((owner, authorizer_key)) if owner == user => authorizer_key,
            _ => {
                return Err(ErrorReply::new(
                    ErrorCode::UnknownDevice,
                    "the authorizer is not a device of this user",
                ));
            }
        };
        let grant = cove_wire::sign::add_device_message(&user, &key);
        if !verify(&authorizer_key, &grant, &authorization) {
            return Err(self.auth_failed("device authorization"));
        }
        let name = user.clone();
        let device = blocking(&self.shared, move |s| s.add_device(&name, &key))
            .await
            .map_err(|e| store_error_reply(&e))?;
        info!(%device, %user, %authorizer, "registered device");
        Ok(self.authenticated(device))
    }

    async fn authenticate(
        &mut self,
        user: UserName,
        device: DeviceId,
        signature: Signature,
    ) -> Result<Reply, ErrorReply> {
        let nonce = self.take_nonce()?;
        let found = blocking(&self.shared, move |s| s.device(device))
            .await
            .map_err(|e| store_error_reply(&e))?;
        let key = match found {
            Some((owner, key)) if owner == user => key,
            _ => {
                return Err(ErrorReply::new(
                    ErrorCode::UnknownDevice,
                    "no such device for this user",
                ));
            }
        };
        let message = cove_wire::sign::auth_challenge_message(&nonce, &user, &key);
        if !verify(&key, &message, &signature) {
            return Err(self.auth_failed("authenticate"));
        }
        debug!(%device, "authenticated");
        Ok(self.authenticated(device))
    }

    /// Marks the connection authenticated: the reply is queued first, then the backlog.
    fn authenticated(&mut self, device: DeviceId) -> Reply {
        self.nonce = None;
        self.device = Some(device);
        self.shared.hub.register(device, Arc::clone(&self.outbox));
        // The backlog task starts once the reply is queued (see `answer`).
        self.start_backlog = true;
        Reply::Authenticated { device }
    }

    fn answer(&mut self, id: RequestId, result: Result<Reply, ErrorReply>) {
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

/// Pushes, from the device's cursors: the groups it was removed from without having acked
/// the removal (up to and including the removal commit, also when it was added again
/// since: a device always receives the commit that removed it, before the Welcome that adds
/// it again), the inbox, and every group it is in; then `BacklogDone`; then makes the device
/// live.
async fn push_backlog(shared: Arc<Shared>, outbox: Arc<Outbox>, device: DeviceId) {
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
async fn push_group(
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

fn removes(entry: &GroupEntry, device: DeviceId) -> bool {
    matches!(&entry.kind, EntryKind::Commit { removed, .. } if removed.contains(&device))
}

/// Drains the outgoing queue into the socket, coalescing writes; pings; closes.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    receiver: OutboxReceiver,
    ping_interval: std::time::Duration,
    grace: std::time::Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let OutboxReceiver {
        frames: mut queue,
        bytes,
        mut close,
    } = receiver;
    // The hot path is one wake-up per batch of queued frames: a channel receive, the writes
    // and one flush. The idle wait is only the queue and a timer registered once (a close
    // request wakes it through the queue, see `Outbox::close`); the close flag and the ping
    // deadline are checked with an uncontended read lock and an atomic load.
    let ping = tokio::time::sleep(ping_interval);
    tokio::pin!(ping);
    let reason = loop {
        let requested = *close.borrow();
        if let Some(reason) = requested {
            break reason;
        }
        if ping.is_elapsed() {
            ping.as_mut()
                .reset(tokio::time::Instant::now() + ping_interval);
            if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                break CloseReason::Quiet;
            }
        }
        tokio::select! {
            biased;
            frame = queue.recv() => {
                let Some(frame) = frame else {
                    // The connection is over; a close reason set before still counts.
                    break (*close.borrow()).unwrap_or(CloseReason::Quiet);
                };
                if frame.is_empty() {
                    continue;
                }
                let io = async {
                    // Give the byte budget back once per batch (one semaphore release).
                    let mut taken = frame.len();
                    sink.feed(Message::Binary(frame)).await?;
                    for _ in 1..COALESCE_FRAMES {
                        match queue.try_recv() {
                            Ok(frame) if frame.is_empty() => break,
                            Ok(frame) => {
                                taken += frame.len();
                                sink.feed(Message::Binary(frame)).await?;
                            }
                            Err(_) => break,
                        }
                    }
                    bytes.add_permits(taken);
                    sink.flush().await
                };
                tokio::select! {
                    biased;
                    r = io => if r.is_err() { break CloseReason::Quiet },
                    // A reader that stopped reading blocks the write: closing interrupts it.
                    _ = close.changed() => {}
                }
            }
            () = &mut ping => {}
        }
    };
    let finish = async {
        if let CloseReason::Code(code) = reason {
            if code != ErrorCode::SlowReader {
                // Frames already queued (e.g. the reply explaining the close) go first.
                while let Ok(frame) = queue.try_recv() {
                    if !frame.is_empty() {
                        sink.feed(Message::Binary(frame)).await?;
                    }
                }
            }
            if let Some(frame) = encode_frame(&ServerFrame::Closing { code }) {
                sink.feed(Message::Binary(frame)).await?;
            }
            let close = CloseFrame {
                code: close_code(code),
                reason: "".into(),
            };
            sink.send(Message::Close(Some(close))).await?;
        } else {
            sink.close().await?;
        }
        Ok::<(), WsError>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(grace, finish).await {
        debug!(error = %e, "closing handshake failed");
    }
}

fn close_code(code: ErrorCode) -> CloseCode {
    match code {
        ErrorCode::TooLarge => CloseCode::Size,
        ErrorCode::Malformed => CloseCode::Protocol,
        ErrorCode::Unavailable | ErrorCode::IdleTimeout => CloseCode::Away,
        ErrorCode::Internal => CloseCode::Error,
        ErrorCode::Displaced => CloseCode::Normal,
        _ => CloseCode::Policy,
    }
}

/// Runs a store call on the blocking pool.
async fn blocking<T, F>(shared: &Shared, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn RelayStore) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(&shared.store);
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::Backend(format!("store task failed: {e}"))),
    }
}

/// Verifies an Ed25519 signature strictly (no malleable or small-order cases).
fn verify(key: &DeviceKey, message: &[u8], signature: &Signature) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&key.0) else {
        return false;
    };
    if key.is_weak() {
        return false;
    }
    let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(message, &signature).is_ok()
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
