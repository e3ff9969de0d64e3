//! What every connection shares: the store, the hub, the post pipeline and ack lane, the
//! limits, the blob service, the TLS and WebSocket configuration, and the shutdown signal.
//! [`crate::relay`] builds it; the connection layer ([`crate::http`], [`crate::session`])
//! reads it. It depends on nothing of the connection layer, so the layer's modules only
//! depend downward.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::blob::BlobService;
use crate::config::Limits;
use crate::hub::Hub;
use crate::pipeline::{AckLane, Pipeline};
use crate::store::{RelayStore, StoreError};

/// State shared by every connection.
pub(crate) struct Shared {
    pub store: Arc<dyn RelayStore>,
    /// Handshake validation (the public MLS state of groups).
    pub handshakes: Arc<crate::logic::Handshakes>,
    pub hub: Arc<Hub>,
    pub pipeline: Pipeline,
    pub acks: AckLane,
    pub limits: Limits,
    pub blob: BlobService,
    pub tls: Arc<rustls::ServerConfig>,
    /// SHA-256 of the relay's end-entity certificate (DER): part of every connection's
    /// channel binding (see `crate::tls::channel_binding`).
    pub relay_certificate: [u8; 32],
    pub ws_config: WebSocketConfig,
    pub shutdown: watch::Receiver<bool>,
    pub turn: Option<Arc<crate::turn::TurnService>>,
    /// The link rendezvous (linking a new machine by a code).
    pub links: Arc<crate::links::Links>,
    /// Registrations per client address (a token bucket each).
    pub registrations: crate::admission::RegistrationsPerAddress,
    /// Password-login attempts per user name and per client address.
    pub logins: crate::admission::LoginLimits,
    /// The relay's OPAQUE secrets (`opaque.key` in the data directory).
    pub opaque: Arc<cove_account::ServerSecrets>,
    /// The counters behind `/metrics`, and the `/health` probe's bound.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Open connections per client address (and in all).
    pub connections: Arc<crate::admission::ConnectionsPerAddress>,
}

/// Resolves once shutdown was requested (or the relay handle is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Runs a store call on the blocking pool.
pub(crate) async fn blocking<T, F>(shared: &Shared, f: F) -> Result<T, StoreError>
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
