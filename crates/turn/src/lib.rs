//! `cove-turn`: Cove's TURN server (RFC 5766, the webrtc-rs `turn` crate) with TURN REST
//! credentials. The relay runs it (`cove-server --turn-listen`, handing credentials to
//! authenticated devices with `Request::TurnCredentials`); cove-media's tests, benches and
//! examples run it standalone. It links no other workspace crate, so the relay can use it
//! without linking a client crate or MLS.
//!
//! Credentials are short-lived and need no per-user state on the server: whoever hands them out
//! and the TURN server share one secret ([`credentials`]).
//!
//! ```text
//! username = "<expiry unix seconds>:<user>"
//! password = base64(HMAC-SHA1(shared_secret, username))
//! ```
//!
//! The server derives the password itself. A new allocation needs a credential whose expiry is
//! in the future; the allocation made with it can be refreshed with it after it expired (see
//! `Gate` in [`gate`]'s source), so a call outlives its credential. Expired and forged
//! credentials are answered with `401 Unauthorized` ([`REASON_EXPIRED`],
//! [`REASON_BAD_CREDENTIALS`]); the `turn` crate alone would answer `400` and could not tell
//! one from the other. The only state kept is which client address holds an allocation under
//! which username.
//!
//! - [`credentials`]: minting and checking credentials.
//! - [`gate`]: the check every authenticated request passes before the `turn` crate sees it.
//! - [`peers`]: which peers an allocation may reach (never the relay's own network by
//!   default) and the allocation caps per credential and per user.
//! - [`server`]: starting and stopping the server ([`start_turn_server`]).
#![deny(missing_docs)]

pub mod credentials;
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod peers;
pub mod server;

pub use credentials::{
    DEFAULT_TTL, MAX_TTL, MAX_USER_LEN, TurnCredentials, turn_credentials, verify_turn_credentials,
};
pub use gate::{
    REASON_BAD_CREDENTIALS, REASON_EXPIRED, REASON_FORBIDDEN_PEER, REASON_QUOTA, TurnStats,
};
pub use peers::{IpRange, PeerPolicy};
pub use server::{TurnServerHandle, start_turn_server, start_turn_server_with_relay_ip};

/// Errors of the TURN server.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// Binding the UDP socket failed.
    #[error("bind: {0}")]
    Bind(#[from] std::io::Error),
    /// The `turn` crate refused the configuration or failed.
    #[error("turn: {0}")]
    Turn(String),
    /// Bad parameters (caller misuse).
    #[error("bad TURN parameters: {0}")]
    BadParameters(&'static str),
}
