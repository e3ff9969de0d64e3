//! `cove-server`: the Cove relay. It stores and forwards MLS ciphertext between devices,
//! keeps encrypted blobs, and never sees plaintext or keys. It depends on `cove-wire` only.
//!
//! What it owns:
//! - the network shell: TCP → rustls → hyper (HTTP/1.1) → WebSocket at `/v1/ws`
//!   (`http.rs` routing, one task per connection, a connection cap and one per client
//!   address, handshake deadlines, HTTP body idle timeouts);
//! - the relay core ([`logic`]): every decision of the relay (authentication, requests,
//!   the epoch and repeated-post rules through the store, replies, fan-out recipients,
//!   backlogs), synchronous and without I/O; the connection layer wraps it, and
//!   `cove_test_utils::sim` drives it without sockets for `cove-core`'s tests;
//! - sessions (`session/`, split by job: connection, requests, auth, state, backlog, writer):
//!   challenge-response authentication with Ed25519 device keys, requests and replies
//!   (`reply.rs`), backlog and live delivery, rate limits;
//! - the hot path (`pipeline.rs`): one writer thread appends queued posts in batches (one
//!   sync per batch) and fans each entry out, encoded once, to every online member's bounded
//!   queue (`hub.rs`);
//! - durable state behind [`store::RelayStore`] (SQLite, memory or PostgreSQL) and blobs
//!   ([`blob`]);
//! - the bus between relay nodes on one PostgreSQL store (`bus/`, `[bus]` in the config):
//!   notices through NATS so every node delivers every node's entries, ordered per device
//!   with gap repair in the hub and a periodic catch-up against the store's heads;
//! - operations (`metrics.rs`): `GET /health` for load balancers and `GET /metrics`
//!   (Prometheus text) on the same HTTPS listener, fed by lock-free counters.
//!
//! Start a relay in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), cove_server::StartError> {
//! use cove_server::{Relay, RelayConfig, StoreKind};
//! let mut config = RelayConfig::new("127.0.0.1:0".parse().expect("valid"), "/tmp/cove-demo");
//! config.store = StoreKind::Memory;
//! let relay = Relay::start(config).await?;
//! println!("wss://{}/v1/ws  fingerprint {}", relay.local_addr(), relay.fingerprint());
//! relay.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A connection's life (see `PROTOCOL.md`, "Client-relay protocol"):
//!
//! ```text
//! accept (permit) → TLS → HTTP GET /v1/ws → 101 → WebSocket
//! relay → Challenge{nonce};  device → Register | RegisterDevice | Authenticate
//! relay → Authenticated, Deliver(backlog...), BacklogDone, then live Deliver as posts land
//! device → Post | Ack | Fetch | ... ; relay → exactly one Response per request
//! ```

#![deny(missing_docs)]

mod admission;
pub mod blob;
mod bus;
pub mod config;
/// Fuzz entry points (the targets in `fuzz/`, replayed by this crate's tests). Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::blob::auth::fuzzing::{NOW_MS, blob_request, device_key, samples};
}
mod http;
mod hub;
mod idle;
mod links;
mod logging;
pub mod logic;
mod metrics;
mod opaque_key;
mod pipeline;
mod relay;
pub mod rendezvous;
mod reply;
mod secret_file;
mod session;
mod shared;
pub mod store;
mod tls;
mod turn;

pub use config::{
    BlobBackend, BusConfig, ConfigFile, Limits, RelayConfig, S3Config, SecretFiles, StoreKind,
    TlsSource,
};
pub use logging::log_filter;
pub use relay::{Relay, RelayHandle, StartError};
pub use tls::{TlsError, fingerprint};
