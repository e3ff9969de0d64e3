//! Starting and stopping a relay: [`Relay::start`] binds, loads the TLS identity, opens the
//! store and the blob service, starts the post writer and the accept loop, and returns a
//! [`RelayHandle`].
//!
//! The accept loop takes a connection slot (a `Semaphore` permit, so at most
//! `max_connections` connections exist), accepts, closes the connection at once if its
//! address already holds `max_connections_per_ip` ([`crate::admission`]), and spawns one
//! task per connection ([`crate::http::serve`]). Shutdown is broadcast through a `watch` channel: the loop stops
//! accepting, every connection is closed with `Closing { Unavailable }`, and once they are
//! gone the post writer drains its queue and the store is dropped (closed) last.
//!
//! Beside them a task prunes the store every `prune_interval_ms` ([`RelayStore::prune`]:
//! acknowledged entries, and entries older than `retention_max_age_ms`). With `[bus]`, the
//! bus to the other relay nodes ([`crate::bus`]) starts before the accept loop (waiting a
//! bounded time for its NATS subscription) and its tasks end with the shutdown signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle as ThreadHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use cove_wire::{DeviceId, ErrorCode};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, error, info, warn};

use crate::admission::{ConnectionsPerAddress, RegistrationsPerAddress};
use crate::blob::{BlobError, BlobService};
use crate::config::{ConfigError, RelayConfig, StoreKind};
use crate::hub::{Hub, Rates};
use crate::pipeline::{AckLane, Pipeline};
use crate::shared::{Shared, stopped};
use crate::store::{MemoryStore, PostgresStore, Pruned, RelayStore, SqliteStore, StoreError};
use crate::tls::{self, TlsError};

/// Most bytes tungstenite reads from a connection at once. It zeroes this much before every
/// read, including the read that finds nothing more: with most reads being a 30-byte ack,
/// 16 KiB made those `memset`s about a tenth of the relay's CPU in the fan-out benchmark.
/// Larger frames are still read whole, in steps of this size out of rustls' buffer.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS identity could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The blob service could not be opened.
    #[error("cannot open the blob store: {0}")]
    Blob(#[from] BlobError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The OPAQUE secrets (`opaque.key`) could not be read or created.
    #[error("cannot load the OPAQUE secrets {path}: {source}")]
    OpaqueKey {
        /// The file (`opaque.key` in the data directory, or `[secrets] opaque_key`).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The post writer thread could not be started.
    #[error("cannot start the post writer: {0}")]
    Thread(std::io::Error),
    /// The TURN server could not be started.
    #[error(transparent)]
    Turn(#[from] crate::turn::TurnError),
}

/// The relay.
pub struct Relay;

impl Relay {
    /// Starts a relay and returns once it is listening.
    pub async fn start(config: RelayConfig) -> Result<RelayHandle, StartError> {
        crate::config::validate(&config)?;
        let RelayConfig {
            listen,
            data_dir,
            tls: tls_source,
            store: store_kind,
            limits,
            blob,
            turn_listen,
            turn_credential_ttl,
            turn_peers,
            validate_handshakes,
            bus,
            blob_backend,
            secrets,
        } = config;
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let identity = tls::load(&tls_source, &data_dir, local_addr)?;
        let fingerprint = tls::fingerprint(&identity.cert_der);
        let opaque_path = secrets
            .opaque_key
            .unwrap_or_else(|| data_dir.join(crate::opaque_key::FILE));
        let opaque = crate::opaque_key::load(&opaque_path)?;
        let turn_secret = secrets
            .turn_secret
            .unwrap_or_else(|| data_dir.join(crate::turn::SECRET_FILE));

        let turn = match turn_listen {
            Some(addr) => Some(
                crate::turn::TurnService::start(
                    addr,
                    &turn_secret,
                    turn_credential_ttl,
                    turn_peers,
                )
                .await?,
            ),
            None => None,
        };
        let turn_addr = turn.as_ref().map(|t| t.local_addr());
        let store = open_store(store_kind.clone(), &data_dir).await?;
        // Opening an S3 store probes the bucket over the network: off the async workers.
        let blob = {
            let (dir, store) = (data_dir.clone(), Arc::clone(&store));
            tokio::task::spawn_blocking(move || BlobService::open(&dir, &blob_backend, blob, store))
                .await
                .map_err(|e| {
                    BlobError::Io(std::io::Error::other(format!(
                        "blob store opening failed: {e}"
                    )))
                })??
        };
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let hub = Hub::new(
            limits.outgoing_queue_frames,
            Rates {
                requests_per_second: f64::from(limits.requests_per_second),
                request_burst: f64::from(limits.request_burst),
                claims_per_second: f64::from(limits.claims_per_minute) / 60.0,
                claim_burst: f64::from(limits.claim_burst),
                target_claims_per_second: f64::from(limits.target_claims_per_minute) / 60.0,
                target_claim_burst: f64::from(limits.target_claim_burst),
            },
        );
        // A node of a cluster: the bus to the other nodes, and the hub's end of it.
        let (bus, hub) = match &bus {
            Some(config) => {
                let (bus, link) = crate::bus::Bus::new(config, Arc::clone(&metrics));
                (Some(bus), hub.with_cluster(link))
            }
            None => (None, hub),
        };
        let hub = Arc::new(hub);
        let handshakes = Arc::new(crate::logic::Handshakes::new(validate_handshakes));
        let (pipeline, writer) = Pipeline::start(
            Arc::clone(&store),
            Arc::clone(&handshakes),
            Arc::clone(&hub),
            limits.post_queue_bytes,
            limits.post_batch_max,
            limits.quotas(),
            Arc::clone(&metrics),
        )
        .map_err(StartError::Thread)?;
        let (acks, ack_thread) = AckLane::start(Arc::clone(&store)).map_err(StartError::Thread)?;
        let message_bytes = limits.message_bytes();
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(message_bytes))
            .max_frame_size(Some(message_bytes))
            .write_buffer_size(limits.write_buffer_bytes)
            .max_write_buffer_size(limits.max_write_buffer_bytes)
            .read_buffer_size(READ_BUFFER_BYTES);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let registrations = RegistrationsPerAddress::new(
            limits.registrations_per_minute,
            limits.registration_burst,
        );
        let logins = crate::admission::LoginLimits {
            users: crate::admission::KeyedBuckets::new(
                limits.logins_per_minute_per_user,
                limits.login_burst_per_user,
            ),
            addresses: crate::admission::KeyedBuckets::new(
                limits.logins_per_minute_per_address,
                limits.login_burst_per_address,
            ),
        };
        let connections = ConnectionsPerAddress::new(limits.max_connections_per_ip);
        let retention = Retention {
            store: Arc::clone(&store),
            max_age_ms: limits.retention_max_age_ms,
        };
        tokio::spawn(prune_loop(
            retention.clone(),
            limits.prune_interval(),
            shutdown_rx.clone(),
        ));
        let links = Arc::new(crate::links::Links::new(limits.link_code_lifetime_ms));
        tokio::spawn(crate::links::sweep_loop(
            Arc::clone(&links),
            shutdown_rx.clone(),
        ));
        let shared = Arc::new(Shared {
            store,
            handshakes,
            hub: Arc::clone(&hub),
            pipeline,
            acks,
            limits,
            blob,
            relay_certificate: tls::certificate_sha256(&identity.cert_der),
            tls: identity.server_config,
            ws_config,
            shutdown: shutdown_rx,
            turn: turn.map(Arc::new),
            links,
            registrations,
            logins,
            opaque: Arc::new(opaque),
            metrics,
            connections: Arc::clone(&connections),
        });
        let turn_handle = shared.turn.clone();
        if let Some(bus) = bus {
            bus.start(Arc::clone(&shared)).await;
        }
        info!(
            addr = %local_addr,
            store = ?store_kind,
            data = %data_dir.display(),
            "relay started"
        );
        let accept = tokio::spawn(accept_loop(listener, shared));
        Ok(RelayHandle {
            local_addr,
            cert_pem: identity.cert_pem,
            cert_der: identity.cert_der.to_vec(),
            cert_path: identity.cert_path,
            cert_created: identity.created,
            fingerprint,
            hub,
            shutdown: shutdown_tx,
            accept: Some(accept),
            threads: vec![writer, ack_thread],
            turn_addr,
            turn: turn_handle,
            connections,
            retention: Some(retention),
        })
    }
}

/// A running relay. Dropping it without [`RelayHandle::shutdown`] also stops the relay
/// (without waiting for it).
pub struct RelayHandle {
    local_addr: SocketAddr,
    cert_pem: String,
    cert_der: Vec<u8>,
    cert_path: PathBuf,
    cert_created: bool,
    fingerprint: String,
    hub: Arc<Hub>,
    shutdown: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    threads: Vec<ThreadHandle<()>>,
    turn_addr: Option<SocketAddr>,
    turn: Option<Arc<crate::turn::TurnService>>,
    connections: Arc<ConnectionsPerAddress>,
    /// The store and the maximum age, for [`RelayHandle::prune`]; dropped at shutdown.
    retention: Option<Retention>,
}

impl RelayHandle {
    /// The bound address (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    /// The TURN server's UDP address, if one runs.
    pub fn turn_addr(&self) -> Option<SocketAddr> {
        self.turn_addr
    }
    /// The TURN server's counters (refused credentials, renewals after expiry), if one runs.
    pub fn turn_stats(&self) -> Option<cove_turn::TurnStats> {
        self.turn.as_ref().map(|t| t.stats())
    }
    /// The served certificate, PEM (clients trust it with `--ca`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
    /// The served certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }
    /// Where the certificate file is.
    pub fn cert_path(&self) -> &std::path::Path {
        &self.cert_path
    }
    /// Whether the self-signed certificate was created by this start.
    pub fn cert_created(&self) -> bool {
        self.cert_created
    }
    /// SHA-256 fingerprint of the certificate (colon-separated hex).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// Whether `device` has an authenticated connection right now.
    pub fn is_online(&self, device: DeviceId) -> bool {
        self.hub.is_online(device)
    }
    /// Number of authenticated connections.
    pub fn online_count(&self) -> usize {
        self.hub.online_count()
    }
    /// Number of TCP connections (HTTP and WebSocket, authenticated or not) being served
    /// now; a connection counts from its acceptance until its task ended.
    pub fn connection_count(&self) -> usize {
        self.connections.total()
    }

    /// Prunes the store now, as the relay does every `prune_interval_ms`
    /// ([`RelayStore::prune`] at the current time with `retention_max_age_ms`).
    pub async fn prune(&self) -> Result<Pruned, StoreError> {
        match &self.retention {
            Some(retention) => retention.clone().run().await,
            None => Err(StoreError::Backend("the relay is shut down".into())),
        }
    }

    /// Stops accepting, closes every connection with `Closing { Unavailable }`, waits for
    /// them (up to the shutdown grace), lets the post writer finish and closes the store.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        // The store closes once the threads below, its last users, are done.
        self.retention = None;
        if let Some(accept) = self.accept.take()
            && let Err(e) = accept.await
        {
            warn!(error = %e, "accept loop failed");
        }
        // The last `Shared` is gone once every connection task ended, which ends the post
        // writer's and the ack thread's channels; joining them waits for the last batch to
        // be durable and the store to be flushed.
        for thread in std::mem::take(&mut self.threads) {
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(())) => {}
                _ => warn!("a relay thread ended abnormally"),
            }
        }
        if let Some(turn) = self.turn.take().and_then(|t| Arc::try_unwrap(t).ok()) {
            turn.close().await;
        }
        info!("relay stopped");
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let per_address = Arc::clone(&shared.connections);
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut shutdown = shared.shutdown.clone();
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut shutdown) => break,
        };
        match accepted {
            // Over its address's cap, a connection is closed before TLS costs anything.
            Ok((tcp, peer)) => match per_address.admit(peer.ip()) {
                None => {
                    debug!(%peer, "connection refused: too many from this address");
                    drop(tcp);
                }
                Some(address_slot) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        warn!(error = %e, "set_nodelay failed");
                    }
                    let held = (permit, address_slot);
                    tasks.spawn(crate::http::serve(tcp, peer, Arc::clone(&shared), held));
                }
            },
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    info!(
        connections = tasks.len(),
        "shutting down: closing connections"
    );
    shared.hub.close_all(ErrorCode::Unavailable);
    let grace = shared.limits.shutdown_grace();
    drop(shared);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            connections = tasks.len(),
            "connections did not close in time; aborting them"
        );
        tasks.shutdown().await;
    }
}

/// What the periodic prune needs.
#[derive(Clone)]
struct Retention {
    store: Arc<dyn RelayStore>,
    max_age_ms: u64,
}

impl Retention {
    /// One prune on the blocking pool, at the current time.
    async fn run(self) -> Result<Pruned, StoreError> {
        let Retention { store, max_age_ms } = self;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        tokio::task::spawn_blocking(move || store.prune(now_ms, max_age_ms))
            .await
            .unwrap_or_else(|e| Err(StoreError::Backend(format!("prune task failed: {e}"))))
    }
}

/// Prunes acknowledged and expired entries every `interval` until shutdown (the first
/// time one interval after the start).
async fn prune_loop(
    retention: Retention,
    interval: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let start = tokio::time::Instant::now() + interval;
    let mut ticks = tokio::time::interval_at(start, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stopped(&mut shutdown) => break,
        }
        match retention.clone().run().await {
            Ok(pruned) => info!(
                group_entries = pruned.group_entries,
                inbox_entries = pruned.inbox_entries,
                "pruned acknowledged and expired entries"
            ),
            Err(e) => error!(error = %e, "pruning the store failed"),
        }
    }
}

/// Opens the configured store.
async fn open_store(
    kind: StoreKind,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn RelayStore>, StartError> {
    match kind {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreKind::Sqlite => {
            let path = data_dir.join("relay.db");
            Ok(Arc::new(SqliteStore::open(&path)?))
        }
        // The PostgreSQL client blocks on a runtime of its own: connected off this one.
        StoreKind::Postgres(url) => {
            let store = tokio::task::spawn_blocking(move || PostgresStore::connect(&url))
                .await
                .map_err(|e| StoreError::Backend(format!("connecting to PostgreSQL: {e}")))??;
            Ok(Arc::new(store))
        }
    }
}
