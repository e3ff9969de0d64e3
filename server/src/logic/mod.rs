//! The relay core: every decision of the relay, synchronous and without I/O.
//!
//! Given the store ([`RelayStore`]) and one connection's state ([`Connection`]), the core
//! decides what a request does and what it answers: the challenge-response authentication
//! (Register, RegisterDevice, Authenticate with the Ed25519 signature over the nonce), every
//! authenticated request (directory, device lists, KeyPackages, groups, fetch, acks), what an appended post
//! answers and to whom its entry and Welcome go ([`posted`]), the post quotas per sender and
//! per group ([`Quotas`]), and what a device's backlog is
//! ([`Backlog`]). It has no sockets, no runtime, no clock and no randomness: the nonce and
//! the time are inputs.
//!
//! Two drivers wrap it:
//! - the relay's connection layer (`session/`, `pipeline.rs`, `hub.rs`),
//!   which adds only I/O: TLS and WebSocket, rate limits, the post pipeline (batching posts
//!   into one [`RelayStore::append_batch`], then [`posted`] per post), the ack lane, the
//!   bounded queues and back-pressure, the backlog task stepping [`Backlog`];
//! - `cove_test_utils::sim::Relay`, a step-by-step relay without sockets over the same core
//!   and the in-memory store, which `cove-core`'s tests drive.
//!
//! [`Connection::route`] says where a request goes; [`Connection::handle`] runs one request
//! to the end synchronously (what the simulation uses), built from the same parts the
//! connection layer calls one by one ([`Connection::authenticate`], [`request`], [`posted`]).

mod accounts;
mod auth;
mod backlog;
pub mod backup;
mod device_lists;
pub mod handshake;
mod posts;
mod quotas;
mod requests;

pub use accounts::{AccountSession, fetch_recovery_bundle};
pub use auth::Auth;
pub use backlog::{Backlog, BacklogStep};
pub use handshake::{HandshakeError, Handshakes, PostError};
pub use posts::{Fanout, PostOutcome, append, append_posts, posted};
pub use quotas::{MAX_TRACKED_BUCKETS, QuotaLimits, Quotas, SWEEP_INTERVAL_MS, Ticket};
pub(crate) use requests::ENTRY_OVERHEAD_BYTES;
pub use requests::{acked, request};

use cove_wire::sign::ChannelBinding;
use cove_wire::{
    DeviceId, ErrorCode, ErrorReply, PROTOCOL_VERSION, Reply, Request, Seq, ServerFrame, Stream,
    UserName,
};

use crate::store::{DEFAULT_READ_BYTES, NewPost, RelayStore};

/// One connection's state in the core: its challenge until it is used, then the device it
/// authenticated as.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    /// The challenge; `None` once used (authenticated, or a signature failed).
    nonce: Option<[u8; 32]>,
    /// The TLS connection and relay certificate the challenge answer must be bound to.
    channel: ChannelBinding,
    /// The authenticated device.
    device: Option<DeviceId>,
}

/// What the connection does with a request, decided by [`Connection::route`].
#[derive(Debug)]
pub enum Route {
    /// Answer this at once; nothing else happens.
    Answer(Result<Reply, ErrorReply>),
    /// Register, RegisterDevice or Authenticate: [`Connection::authenticate`].
    Authenticate(Auth),
    /// A post by the connection's device: append it ([`RelayStore::append_batch`], alone or
    /// in a batch), then answer and fan out what [`posted`] says.
    Post(NewPost),
    /// An acknowledgement by the connection's device: [`RelayStore::ack`], answered by
    /// [`acked`] (a quiet one only if refused).
    Ack {
        /// The acking device.
        device: DeviceId,
        /// Which log.
        stream: Stream,
        /// Up to which entry.
        seq: Seq,
        /// A `QuietAck`: no reply when it succeeds.
        quiet: bool,
    },
    /// TURN credentials for the device: answered by the relay's TURN service, or by
    /// [`no_turn`] when it runs none.
    TurnCredentials(DeviceId),
    /// Any other request of an authenticated device: [`request`].
    Request(DeviceId, Request),
    /// A password-account request: `AccountLoginStart`, `AccountLoginFinish`,
    /// `FetchRecoveryBundle`, `AccountPasswordStart`, `AccountPasswordFinish` and
    /// `AccountDelete` of any connection, `AccountRegisterStart` and
    /// `AccountRegisterFinish` of an authenticated one (its device given): [`account`].
    Account(Option<DeviceId>, Request),
    /// A link rendezvous request (`OpenLink` of an authenticated device, `JoinLink` and
    /// `LinkSend` of any connection): answered by the relay's rendezvous, or by [`no_link`]
    /// where it runs none.
    Link(Request),
}

/// The answer to a request and what follows it on the connection.
#[derive(Debug)]
pub struct Answer {
    /// The reply.
    pub reply: Result<Reply, ErrorReply>,
    /// Close the connection with this code once the reply is sent.
    pub close: Option<ErrorCode>,
    /// The connection has just authenticated as this device: after the reply, send its
    /// backlog ([`Backlog`]), then `BacklogDone`, then deliver live. An older connection
    /// of the same device is displaced.
    pub authenticated: Option<DeviceId>,
    /// Send no reply at all (a `QuietAck` that succeeded).
    pub quiet: bool,
}

impl Answer {
    /// Just a reply.
    pub fn reply(reply: Result<Reply, ErrorReply>) -> Self {
        Answer {
            reply,
            close: None,
            authenticated: None,
            quiet: false,
        }
    }
}

/// One request handled to the end by [`Connection::handle`].
#[derive(Debug)]
pub struct Handled {
    /// The answer to the requesting connection.
    pub answer: Answer,
    /// For an accepted post: what goes to the other devices.
    pub fanout: Option<Fanout>,
}

impl Connection {
    /// A fresh connection whose challenge is `nonce` (random, from the caller), on the TLS
    /// connection and with the relay certificate `channel` (the challenge answer must sign
    /// both).
    pub fn new(nonce: [u8; 32], channel: ChannelBinding) -> Self {
        Connection {
            nonce: Some(nonce),
            channel,
            device: None,
        }
    }

    /// Uses up the connection's challenge (for a recovery-bundle fetch): it serves one
    /// signature check, whatever its purpose. Returned with the connection's channel
    /// binding, which the signature covers too.
    pub fn take_challenge(&mut self) -> Option<([u8; 32], ChannelBinding)> {
        self.nonce.take().map(|nonce| (nonce, self.channel))
    }

    /// The first frame of the connection: the challenge.
    pub fn challenge(&self) -> Option<ServerFrame> {
        self.nonce.map(|nonce| ServerFrame::Challenge {
            version: PROTOCOL_VERSION,
            nonce,
        })
    }

    /// The device this connection authenticated as.
    pub fn device(&self) -> Option<DeviceId> {
        self.device
    }

    /// Where a request goes on a connection that may be logged in as `logged_in` with the
    /// password ([`AccountSession::logged_in`]) and has no device yet: then
    /// `RegisterDevice` for that user needs no authorizer ([`Auth::RegisterListed`]), and
    /// `PublishDeviceList` and `FetchDeviceList` are answered by [`account`]. Otherwise
    /// as [`Connection::route`].
    pub fn route_logged_in(
        &self,
        logged_in: Option<&UserName>,
        body: Request,
        now_ms: u64,
    ) -> Route {
        match (logged_in, self.device, body) {
            (
                Some(me),
                None,
                Request::RegisterDevice {
                    user,
                    key,
                    signature,
                    ..
                },
            ) if &user == me => Route::Authenticate(Auth::RegisterListed {
                user,
                key,
                signature,
            }),
            (
                Some(_),
                None,
                body @ (Request::PublishDeviceList { .. } | Request::FetchDeviceList { .. }),
            ) => Route::Account(None, body),
            (_, _, body) => self.route(body, now_ms),
        }
    }

    /// Where a request goes. `now_ms` stamps a post.
    pub fn route(&self, body: Request, now_ms: u64) -> Route {
        match (body, self.device) {
            (Request::Ping, _) => Route::Answer(Ok(Reply::Pong)),
            (
                Request::Register {
                    user,
                    key,
                    signature,
                },
                None,
            ) => Route::Authenticate(Auth::Register {
                user,
                key,
                signature,
            }),
            (
                Request::RegisterDevice {
                    user,
                    key,
                    signature,
                    authorizer,
                    authorization,
                },
                None,
            ) => Route::Authenticate(Auth::RegisterDevice {
                user,
                key,
                signature,
                authorizer,
                authorization,
            }),
            (
                Request::Authenticate {
                    user,
                    device,
                    signature,
                },
                None,
            ) => Route::Authenticate(Auth::Authenticate {
                user,
                device,
                signature,
            }),
            (
                Request::Register { .. }
                | Request::RegisterDevice { .. }
                | Request::Authenticate { .. },
                Some(_),
            ) => Route::Answer(Err(ErrorReply::new(
                ErrorCode::AlreadyAuthenticated,
                "already authenticated",
            ))),
            (body @ (Request::JoinLink { .. } | Request::LinkSend { .. }), _) => Route::Link(body),
            (
                body @ (Request::AccountLoginStart { .. }
                | Request::AccountLoginFinish { .. }
                | Request::FetchRecoveryBundle { .. }
                | Request::AccountPasswordStart { .. }
                | Request::AccountPasswordFinish { .. }
                | Request::AccountDelete),
                device,
            ) => Route::Account(device, body),
            (
                body @ (Request::AccountRegisterStart { .. }
                | Request::AccountRegisterFinish { .. }),
                Some(device),
            ) => Route::Account(Some(device), body),
            (body @ Request::OpenLink, Some(_)) => Route::Link(body),
            (_, None) => Route::Answer(Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                "authenticate first",
            ))),
            (
                Request::Post {
                    group,
                    epoch,
                    kind,
                    payload,
                },
                Some(device),
            ) => Route::Post(NewPost {
                group,
                sender: device,
                epoch,
                kind,
                payload: payload.into_vec(),
                now_ms,
                public_state: None,
            }),
            (Request::Ack { stream, seq }, Some(device)) => Route::Ack {
                device,
                stream,
                seq,
                quiet: false,
            },
            (Request::QuietAck { stream, seq }, Some(device)) => Route::Ack {
                device,
                stream,
                seq,
                quiet: true,
            },
            (Request::TurnCredentials, Some(device)) => Route::TurnCredentials(device),
            (body, Some(device)) => Route::Request(device, body),
        }
    }

    /// Handles one request to the end, synchronously, with the store: authentication, the
    /// request, or a post appended on its own. What the relay does with the request, minus
    /// rate limits, batching and back-pressure (the connection layer's), and without TURN.
    pub fn handle(
        &mut self,
        store: &dyn RelayStore,
        handshakes: &Handshakes,
        body: Request,
        now_ms: u64,
    ) -> Handled {
        let (answer, fanout) = match self.route(body, now_ms) {
            Route::Answer(reply) => (Answer::reply(reply), None),
            Route::Authenticate(auth) => (self.authenticate(store, auth, now_ms), None),
            Route::Post(post) => {
                let outcome = append(store, handshakes, post);
                (Answer::reply(outcome.reply), outcome.fanout)
            }
            Route::Ack {
                device,
                stream,
                seq,
                quiet,
            } => {
                let reply = acked(store.ack(device, stream, seq));
                let quiet = quiet && reply.is_ok();
                (
                    Answer {
                        quiet,
                        ..Answer::reply(reply)
                    },
                    None,
                )
            }
            Route::TurnCredentials(_) => (Answer::reply(no_turn()), None),
            Route::Link(_) => (Answer::reply(no_link()), None),
            Route::Account(..) => (Answer::reply(no_accounts()), None),
            Route::Request(device, body) => (
                Answer::reply(request(store, handshakes, device, body, DEFAULT_READ_BYTES)),
                None,
            ),
        };
        Handled { answer, fanout }
    }
}

/// The answer to `TurnCredentials` on a relay without a TURN server.
pub fn no_turn() -> Result<Reply, ErrorReply> {
    Err(ErrorReply::new(
        ErrorCode::InvalidRequest,
        "this relay runs no TURN server",
    ))
}

/// The answer to a link request where no rendezvous runs (the simulation).
pub fn no_link() -> Result<Reply, ErrorReply> {
    Err(ErrorReply::new(
        ErrorCode::InvalidRequest,
        "this relay runs no link rendezvous",
    ))
}

/// The answer to an account request where the relay keeps no OPAQUE secrets (the
/// simulation).
pub fn no_accounts() -> Result<Reply, ErrorReply> {
    Err(ErrorReply::new(
        ErrorCode::InvalidRequest,
        "this relay keeps no accounts",
    ))
}

/// Answers a password-account request (routed as [`Route::Account`]) with the connection's
/// account state, the store and the relay's OPAQUE secrets. `device` is the connection's
/// authenticated device; `challenge` the connection's challenge, which the caller used up
/// for a `FetchRecoveryBundle` (and passes `None` otherwise).
pub fn account(
    session: &mut AccountSession,
    store: &dyn RelayStore,
    secrets: &cove_account::ServerSecrets,
    device: Option<DeviceId>,
    challenge: Option<([u8; 32], ChannelBinding)>,
    body: Request,
) -> Result<Reply, ErrorReply> {
    let own_user = |device: Option<DeviceId>| match device {
        None => Err(ErrorReply::new(
            ErrorCode::Unauthenticated,
            "authenticate first",
        )),
        Some(device) => match store.device(device) {
            Ok(Some((user, _))) => Ok(user),
            Ok(None) => Err(ErrorReply::new(ErrorCode::UnknownDevice, "unknown device")),
            Err(e) => Err(crate::reply::store_error_reply(&e)),
        },
    };
    match body {
        Request::AccountRegisterStart { request } => {
            let user = own_user(device)?;
            session.register_start(store, secrets, user, &request)
        }
        Request::AccountRegisterFinish {
            upload,
            password_bundle,
            recovery_bundle,
            recovery_key,
        } => {
            let user = own_user(device)?;
            session.register_finish(
                store,
                user,
                &upload,
                password_bundle,
                recovery_bundle,
                recovery_key,
            )
        }
        Request::AccountLoginStart { user, request } => {
            session.login_start(store, secrets, user, &request)
        }
        Request::AccountLoginFinish { finalization } => session.login_finish(&finalization),
        Request::FetchRecoveryBundle { user, signature } => {
            session.fetch_recovery(store, challenge, &user, &signature)
        }
        Request::AccountPasswordStart { request } => {
            session.password_start(store, secrets, &request)
        }
        Request::AccountPasswordFinish {
            upload,
            password_bundle,
            reset_signature,
        } => session.password_finish(store, &upload, password_bundle, reset_signature),
        Request::AccountDelete => session.delete(store),
        Request::PublishDeviceList { entries } => match session.logged_in() {
            Some(user) => device_lists::publish_logged_in(store, user, entries.0),
            None => Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                "authenticate first",
            )),
        },
        Request::FetchDeviceList { user } => match session.logged_in() {
            Some(_) => device_lists::fetch(store, &user),
            None => Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                "authenticate first",
            )),
        },
        _ => Err(ErrorReply::new(ErrorCode::Internal, "internal error")),
    }
}

/// The store answered a batch with the wrong number of results.
pub(crate) fn wrong_count() -> crate::store::StoreError {
    crate::store::StoreError::Backend("wrong number of results".into())
}

#[cfg(test)]
mod tests {
    /// The core stays sans-IO: none of its files names the runtime, sockets, the clock or
    /// the connection layer it is wrapped by (which would also make a module cycle).
    #[test]
    fn the_core_does_no_io_and_knows_nothing_of_its_drivers() {
        let files = [
            ("mod.rs", include_str!("mod.rs")),
            ("accounts.rs", include_str!("accounts.rs")),
            ("auth.rs", include_str!("auth.rs")),
            ("backlog.rs", include_str!("backlog.rs")),
            ("backup.rs", include_str!("backup.rs")),
            ("device_lists.rs", include_str!("device_lists.rs")),
            ("handshake.rs", include_str!("handshake.rs")),
            ("posts.rs", include_str!("posts.rs")),
            ("quotas.rs", include_str!("quotas.rs")),
            ("requests.rs", include_str!("requests.rs")),
        ];
        let forbidden = [
            "tokio",
            "std::net",
            "std::fs",
            "SystemTime",
            "Instant",
            "rand::",
            "crate::session",
            "crate::pipeline",
            "crate::hub",
            "crate::shared",
            "crate::http",
            "crate::relay",
        ];
        for (name, text) in files {
            // This test's own list is not a use.
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            for word in forbidden {
                assert!(!code.contains(word), "logic/{name} mentions {word}");
            }
        }
    }
}
