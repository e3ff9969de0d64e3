//! One connection's state.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use cove_wire::ErrorCode;
use tokio::task::JoinHandle;

use crate::hub::{Outbox, TokenBucket};
use crate::logic::{AccountSession, Connection};
use crate::pipeline::PostJob;
use crate::shared::Shared;

/// One connection's state, read and changed by the request handling.
pub(super) struct Session {
    /// What every connection shares.
    pub(super) shared: Arc<Shared>,
    /// The connection's outgoing queue.
    pub(super) outbox: Arc<Outbox>,
    /// The relay core's state of this connection: the challenge, then the device.
    pub(super) conn: Connection,
    /// The connection's password-account state (OPAQUE between start and finish).
    pub(super) account: AccountSession,
    /// Request rate limit before authentication.
    pub(super) preauth: TokenBucket,
    /// The client's address (registrations are rate limited per address).
    pub(super) peer: IpAddr,
    /// The backlog task, once started.
    pub(super) backlog: Option<JoinHandle<()>>,
    /// Set on authentication: start the backlog once the reply is queued.
    pub(super) start_backlog: bool,
    /// Close the connection with this code once the current reply is queued.
    pub(super) close_after_answer: Option<ErrorCode>,
    /// This connection's acks waiting in or applied by the ack lane, not yet answered.
    pub(super) acks_in_lane: Arc<AtomicUsize>,
    /// Posts decoded from what the socket had ready, not yet handed to the pipeline: they
    /// go as one job once no further frame is ready (or before any other request).
    pub(super) posts: Vec<PostJob>,
}
