//! Relay configuration: where to listen, where the data lives, which certificate to serve,
//! which storage backend to use, and every limit. [`ConfigFile`] is the TOML form that
//! `cove-server --config FILE` reads; command-line flags override it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::blob::BlobConfig;

/// The default listen address of `cove-server`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// The default data directory of `cove-server`.
pub const DEFAULT_DATA_DIR: &str = "./cove-data";

/// Everything [`crate::Relay::start`] needs.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Address to bind; port 0 picks a free port (see [`crate::RelayHandle::local_addr`]).
    pub listen: SocketAddr,
    /// Data directory: `relay.db` (SQLite), `blobs/`, and `tls/` for a self-signed certificate.
    pub data_dir: PathBuf,
    /// The certificate to serve.
    pub tls: TlsSource,
    /// The storage backend.
    pub store: StoreKind,
    /// Limits on connections, frames, rates and queues.
    pub limits: Limits,
    /// Limits of the blob (attachment) store.
    pub blob: BlobConfig,
    /// UDP address of the TURN server for calls (`None`: no TURN server). It must be a
    /// concrete IP (it is also the relayed address), e.g. `127.0.0.1:3478`.
    pub turn_listen: Option<SocketAddr>,
    /// Lifetime of the TURN credentials handed to devices (default 10 minutes, at most 24
    /// hours). An allocation made in time outlives its credential; a new one needs a fresh
    /// credential.
    pub turn_credential_ttl: Duration,
    /// Which peers the TURN server relays to (by default never loopback, private,
    /// link-local, multicast or the relay's own addresses) and its allocation caps per
    /// credential and per user.
    pub turn_peers: cove_turn::PeerPolicy,
    /// Validate every MLS handshake against the group's public state (`logic/handshake.rs`):
    /// on by default and always on from the config file. Only tests that post placeholder
    /// MLS bytes (about storage, backlog or fan-out) turn it off.
    pub validate_handshakes: bool,
    /// The bus between relay nodes (`[bus]` in the config file): `None` (the default) for a
    /// single node. With it, the node publishes each accepted entry's notice on NATS and
    /// delivers the other nodes' entries to its own devices (`crate::bus`).
    pub bus: Option<BusConfig>,
    /// Where blob contents live (`[blobs]` in the config file): the filesystem under
    /// `DATA/blobs` (the default) or an S3-compatible object store several nodes share.
    pub blob_backend: BlobBackend,
    /// The secrets every node of a cluster must share (`[secrets]`): by default the files
    /// `DATA/opaque.key` and `DATA/turn.secret`, created on the first start.
    pub secrets: SecretFiles,
}

/// The `[bus]` table: NATS between relay nodes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats: String,
    /// This node's name, unique in the cluster (notices it published come back to it and
    /// are recognised by it). A random one when absent.
    #[serde(default)]
    pub node: Option<String>,
    /// How often the node compares its devices' positions with the store's heads, closing
    /// any gap a lost notice left (milliseconds; 2000 when absent).
    #[serde(default = "default_catch_up_ms")]
    pub catch_up_ms: u64,
}

fn default_catch_up_ms() -> u64 {
    2000
}

/// Where blob contents live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BlobBackend {
    /// Files under `DATA/blobs` (the default).
    #[default]
    Filesystem,
    /// An S3-compatible object store.
    S3(S3Config),
}

/// The `[blobs.s3]` table: an S3-compatible object store.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The endpoint, e.g. `http://127.0.0.1:9000` (path-style requests).
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region (`us-east-1` when absent).
    #[serde(default = "default_region")]
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key (never logged).
    pub secret_key: String,
    /// Objects are named below this prefix (none when absent).
    #[serde(default)]
    pub prefix: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Prints everything but the secret key.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The `[blobs]` table of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobsFile {
    /// An S3-compatible store instead of the filesystem.
    pub s3: Option<S3Config>,
}

/// The `[secrets]` table: files holding the secrets the nodes of a cluster share (each is
/// created, mode 0600, if absent; give every node the same files).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretFiles {
    /// The OPAQUE server secrets (`DATA/opaque.key` when absent).
    pub opaque_key: Option<PathBuf>,
    /// The TURN shared secret (`DATA/turn.secret` when absent).
    pub turn_secret: Option<PathBuf>,
}

impl RelayConfig {
    /// A configuration with every default: self-signed certificate and SQLite in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        RelayConfig {
            listen,
            data_dir: data_dir.into(),
            tls: TlsSource::SelfSigned,
            store: StoreKind::Sqlite,
            limits: Limits::default(),
            blob: BlobConfig::default(),
            turn_listen: None,
            turn_credential_ttl: crate::turn::CREDENTIAL_TTL,
            turn_peers: cove_turn::PeerPolicy::default(),
            validate_handshakes: true,
            bus: None,
            blob_backend: BlobBackend::Filesystem,
            secrets: SecretFiles::default(),
        }
    }
}

/// Where the TLS certificate comes from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// A self-signed certificate created once under `DATA/tls/{cert.pem,key.pem}` and reused.
    SelfSigned,
    /// A certificate chain and private key in PEM files.
    Files {
        /// Certificate chain (leaf first).
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
}

/// The storage backend.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In memory: nothing survives a restart (tests, demos).
    Memory,
    /// SQLite in WAL mode at `DATA/relay.db` (the default).
    Sqlite,
    /// PostgreSQL at this URL (`postgresql://user[:password]@host:port/database`), which
    /// several relay nodes may share (`store::PostgresStore`). In the config file:
    /// `[store]` with `postgres = "..."`.
    Postgres(String),
}

/// Prints the PostgreSQL URL without what follows `//` up to `@` (a password).
impl std::fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreKind::Memory => f.write_str("Memory"),
            StoreKind::Sqlite => f.write_str("Sqlite"),
            StoreKind::Postgres(url) => {
                let shown = match (url.find("//"), url.rfind('@')) {
                    (Some(start), Some(at)) if at > start => {
                        format!("{}//…@{}", &url[..start], &url[at + 1..])
                    }
                    _ => url.clone(),
                };
                write!(f, "Postgres({shown:?})")
            }
        }
    }
}

/// Every limit of the relay. Defaults follow `DESIGN.md`; all can be set in the `[limits]`
/// table of the config file. Durations are in milliseconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message and frame accepted, in bytes (capped at
    /// [`cove_wire::limits::MAX_FRAME_BYTES`]).
    pub max_message_bytes: usize,
    /// Bytes tungstenite buffers before writing to the socket (writes are also flushed after
    /// each batch of queued frames).
    pub write_buffer_bytes: usize,
    /// Hard cap of a connection's write buffer, in bytes.
    pub max_write_buffer_bytes: usize,
    /// TLS + HTTP + WebSocket handshake deadline, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Most simultaneous connections (WebSocket and HTTP); further clients wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// Most simultaneous connections (WebSocket and HTTP) from one client address (an IPv4
    /// address or an IPv6 /64; loopback too). A connection over it is closed at once,
    /// before TLS.
    pub max_connections_per_ip: usize,
    /// An HTTP body (a blob upload or download) that moves no byte for this long is cut
    /// off and its connection closed, in milliseconds (an upload is answered `408` first).
    pub http_body_idle_ms: u64,
    /// Sustained registrations (`Register` and `RegisterDevice`) per minute from one client
    /// address; over it they are refused with `RateLimited`.
    pub registrations_per_minute: u32,
    /// Burst of registrations from one client address.
    pub registration_burst: u32,
    /// Sustained password-login attempts (`AccountLoginStart`) per minute for one user
    /// name, known or not; over it they are refused with `RateLimited`.
    pub logins_per_minute_per_user: u32,
    /// Burst of login attempts for one user name.
    pub login_burst_per_user: u32,
    /// Sustained password-login attempts per minute from one client address (IPv4
    /// address or IPv6 /64).
    pub logins_per_minute_per_address: u32,
    /// Burst of login attempts from one client address.
    pub login_burst_per_address: u32,
    /// Interval of WebSocket pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// A connection with no traffic (not even a pong) for this long after a ping is closed
    /// with `Closing { IdleTimeout }`, in milliseconds.
    pub pong_timeout_ms: u64,
    /// Frames queued per connection before the relay gives up on a slow reader
    /// (`Closing { SlowReader }`; its entries stay stored).
    pub outgoing_queue_frames: usize,
    /// Bytes queued per connection before the relay gives up on a slow reader (at least one
    /// largest message).
    pub outgoing_queue_bytes: usize,
    /// Sustained requests per second per device.
    pub requests_per_second: u32,
    /// Burst of requests per device above the sustained rate.
    pub request_burst: u32,
    /// Sustained KeyPackage claims per minute per device (device-list publishes, which
    /// verify signatures, count against the same budget).
    pub claims_per_minute: u32,
    /// Burst of KeyPackage claims (and device-list publishes) per device.
    pub claim_burst: u32,
    /// Sustained KeyPackage claims per minute on one target user, from all claimers
    /// together (RFC 9420 16.8: a burst of claims, even from many registered devices, must
    /// not drain a user's KeyPackages).
    pub target_claims_per_minute: u32,
    /// Burst of KeyPackage claims on one target user.
    pub target_claim_burst: u32,
    /// Payload bytes of posts waiting for the store; a connection posting past this waits.
    pub post_queue_bytes: usize,
    /// Most posts appended in one store batch (one sync).
    pub post_batch_max: usize,
    /// How long a closing connection may take to deliver its `Closing` frame, in ms.
    pub close_grace_ms: u64,
    /// How long shutdown waits for connections to close, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// How long a link code (a rendezvous slot for linking a new machine) lives from its
    /// opening, in milliseconds (default 5 minutes).
    pub link_code_lifetime_ms: u64,
    /// Payload bytes one `Fetch` or one backlog step reads from the store (default 4 MiB):
    /// a read stops before the entry that would pass it, but always returns one entry, so
    /// a reader makes progress through entries of any allowed size.
    pub max_read_bytes: usize,
    /// Sustained posts per minute by one device to one group (commits and proposals
    /// count; see PROTOCOL.md "Quotas"). A post over quota is refused with `RateLimited`
    /// and nothing is stored.
    pub sender_posts_per_minute: u32,
    /// Burst of posts by one device to one group.
    pub sender_post_burst: u32,
    /// Sustained payload bytes per minute by one device to one group (a commit's Welcome
    /// counts).
    pub sender_bytes_per_minute: u64,
    /// Burst of payload bytes by one device to one group (at least the largest message).
    pub sender_byte_burst: u64,
    /// Sustained posts per minute to one group, from all its members together.
    pub group_posts_per_minute: u32,
    /// Burst of posts to one group.
    pub group_post_burst: u32,
    /// Sustained payload bytes per minute to one group, from all its members together.
    pub group_bytes_per_minute: u64,
    /// Burst of payload bytes to one group (at least the largest message).
    pub group_byte_burst: u64,
    /// Group-log and inbox entries older than this are pruned even if a device has not
    /// acknowledged them, in milliseconds (default 30 days). A device offline for longer
    /// loses them.
    pub retention_max_age_ms: u64,
    /// How often the relay prunes acknowledged and expired entries, in milliseconds
    /// (default 10 minutes).
    pub prune_interval_ms: u64,
    /// Whether `GET /metrics` answers clients on any address. By default (false) only
    /// loopback clients get the metrics; others get `404`, as for an unknown path.
    pub metrics_public: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: cove_wire::limits::MAX_FRAME_BYTES,
            write_buffer_bytes: 128 * 1024,
            max_write_buffer_bytes: 4 * 1024 * 1024,
            handshake_timeout_ms: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 64,
            http_body_idle_ms: 30_000,
            registrations_per_minute: 10,
            registration_burst: 20,
            logins_per_minute_per_user: 10,
            login_burst_per_user: 10,
            logins_per_minute_per_address: 30,
            login_burst_per_address: 30,
            ping_interval_ms: 30_000,
            pong_timeout_ms: 30_000,
            outgoing_queue_frames: cove_wire::limits::OUTGOING_QUEUE_FRAMES,
            outgoing_queue_bytes: 16 * 1024 * 1024,
            requests_per_second: 200,
            request_burst: 1000,
            claims_per_minute: 120,
            claim_burst: 60,
            target_claims_per_minute: 60,
            target_claim_burst: 30,
            post_queue_bytes: 64 * 1024 * 1024,
            post_batch_max: 1024,
            close_grace_ms: 2_000,
            shutdown_grace_ms: 5_000,
            link_code_lifetime_ms: crate::rendezvous::SLOT_LIFETIME_MS,
            max_read_bytes: crate::store::DEFAULT_READ_BYTES,
            sender_posts_per_minute: 120,
            sender_post_burst: 240,
            sender_bytes_per_minute: 8 * 1024 * 1024,
            sender_byte_burst: 16 * 1024 * 1024,
            group_posts_per_minute: 600,
            group_post_burst: 1200,
            group_bytes_per_minute: 32 * 1024 * 1024,
            group_byte_burst: 64 * 1024 * 1024,
            retention_max_age_ms: 30 * 24 * 60 * 60 * 1000,
            prune_interval_ms: 10 * 60 * 1000,
            metrics_public: false,
        }
    }
}

impl Limits {
    /// The message size limit actually enforced (never above the protocol's hard cap).
    pub fn message_bytes(&self) -> usize {
        self.max_message_bytes
            .min(cove_wire::limits::MAX_FRAME_BYTES)
    }
    /// Handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// Ping interval (at least 1 ms).
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.max(1))
    }
    /// How long a connection may stay silent before it is closed.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(
            self.ping_interval_ms
                .saturating_add(self.pong_timeout_ms)
                .max(1),
        )
    }
    /// Grace for a closing connection's last frames.
    pub fn close_grace(&self) -> Duration {
        Duration::from_millis(self.close_grace_ms)
    }
    /// Grace for shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    /// How long an HTTP body may make no progress (at least 1 ms).
    pub fn http_body_idle(&self) -> Duration {
        Duration::from_millis(self.http_body_idle_ms.max(1))
    }

    /// The post quotas these limits set.
    pub fn quotas(&self) -> crate::logic::QuotaLimits {
        crate::logic::QuotaLimits {
            sender_posts_per_minute: self.sender_posts_per_minute,
            sender_post_burst: self.sender_post_burst,
            sender_bytes_per_minute: self.sender_bytes_per_minute,
            sender_byte_burst: self.sender_byte_burst,
            group_posts_per_minute: self.group_posts_per_minute,
            group_post_burst: self.group_post_burst,
            group_bytes_per_minute: self.group_bytes_per_minute,
            group_byte_burst: self.group_byte_burst,
        }
    }
    /// How often the relay prunes (at least 1 ms).
    pub fn prune_interval(&self) -> Duration {
        Duration::from_millis(self.prune_interval_ms.max(1))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let message_bytes = u64::try_from(self.message_bytes()).unwrap_or(u64::MAX);
        let checks: [(&str, bool); 18] = [
            (
                "max_connections_per_ip must be at least 1",
                self.max_connections_per_ip >= 1,
            ),
            (
                "http_body_idle_ms must be at least 1",
                self.http_body_idle_ms >= 1,
            ),
            (
                "registrations_per_minute and registration_burst must be at least 1",
                self.registrations_per_minute >= 1 && self.registration_burst >= 1,
            ),
            (
                "logins_per_minute_per_user, login_burst_per_user, \
                 logins_per_minute_per_address and login_burst_per_address must be at least 1",
                self.logins_per_minute_per_user >= 1
                    && self.login_burst_per_user >= 1
                    && self.logins_per_minute_per_address >= 1
                    && self.login_burst_per_address >= 1,
            ),
            (
                "sender_posts_per_minute, sender_post_burst, group_posts_per_minute and \
                 group_post_burst must be at least 1",
                self.sender_posts_per_minute >= 1
                    && self.sender_post_burst >= 1
                    && self.group_posts_per_minute >= 1
                    && self.group_post_burst >= 1,
            ),
            (
                "sender_bytes_per_minute and group_bytes_per_minute must be at least 1",
                self.sender_bytes_per_minute >= 1 && self.group_bytes_per_minute >= 1,
            ),
            (
                "sender_byte_burst and group_byte_burst must be at least the largest message",
                self.sender_byte_burst >= message_bytes && self.group_byte_burst >= message_bytes,
            ),
            (
                "retention_max_age_ms must be at least one minute",
                self.retention_max_age_ms >= 60_000,
            ),
            (
                "target_claims_per_minute and target_claim_burst must be at least 1",
                self.target_claims_per_minute >= 1 && self.target_claim_burst >= 1,
            ),
            (
                "max_read_bytes must be at least 1",
                self.max_read_bytes >= 1,
            ),
            (
                "outgoing_queue_bytes must be at least the largest message",
                self.outgoing_queue_bytes >= self.message_bytes(),
            ),
            (
                "max_message_bytes must be at least 1024",
                self.max_message_bytes >= 1024,
            ),
            (
                "max_connections must be at least 1",
                self.max_connections >= 1,
            ),
            (
                "outgoing_queue_frames must be at least 1",
                self.outgoing_queue_frames >= 1,
            ),
            (
                "requests_per_second and request_burst must be at least 1",
                { self.requests_per_second >= 1 && self.request_burst >= 1 },
            ),
            ("claims_per_minute and claim_burst must be at least 1", {
                self.claims_per_minute >= 1 && self.claim_burst >= 1
            }),
            (
                "post_queue_bytes must be at least the largest message",
                self.post_queue_bytes >= self.message_bytes(),
            ),
            (
                "max_write_buffer_bytes must exceed write_buffer_bytes by the largest message",
                self.max_write_buffer_bytes
                    >= self.write_buffer_bytes.saturating_add(self.message_bytes()),
            ),
        ];
        match checks.iter().find(|(_, ok)| !ok) {
            Some((msg, _)) => Err(ConfigError::Invalid(msg)),
            None if self.post_batch_max == 0 => {
                Err(ConfigError::Invalid("post_batch_max must be at least 1"))
            }
            None => Ok(()),
        }
    }
}

/// The TOML config file (`cove-server --config FILE`). Every key is optional.
///
/// ```toml
/// listen = "0.0.0.0:7443"
/// data = "/var/lib/cove"
/// cert = "/etc/cove/cert.pem"   # with key; omit both for a self-signed certificate
/// key = "/etc/cove/key.pem"
/// store = "sqlite"              # or "memory", or the [store] table below
///
/// [limits]
/// requests_per_second = 200
/// outgoing_queue_frames = 4096
/// max_connections_per_ip = 64      # per IPv4 address or IPv6 /64, loopback included
/// http_body_idle_ms = 30000        # a blob transfer that moves no byte this long is cut
/// registrations_per_minute = 10    # Register + RegisterDevice per client address
/// registration_burst = 20
/// logins_per_minute_per_user = 10  # AccountLoginStart per user name (known or not)
/// login_burst_per_user = 10
/// logins_per_minute_per_address = 30  # AccountLoginStart per client address
/// login_burst_per_address = 30
/// metrics_public = false           # GET /metrics for loopback clients only
/// sender_posts_per_minute = 120     # per device and group; see PROTOCOL.md "Quotas"
/// retention_max_age_ms = 2592000000 # 30 days: older entries are pruned even if unread
///
/// turn_listen = "203.0.113.7:3478"   # TURN server for calls (off when absent)
/// turn_credential_ttl_secs = 600
/// turn_allow_peers = ["192.168.1.0/24"]   # peers allowed although internal (default none)
/// turn_max_allocations_per_credential = 8
/// turn_max_allocations_per_user = 32
///
/// [blob]
/// max_blob_bytes = 2147483648
/// quota_bytes_per_user = 10737418240
///
/// # instead of `store = "..."`: the store on PostgreSQL, shared by several relay nodes
/// [store]
/// postgres = "postgresql://cove@127.0.0.1:5432/cove"
///
/// # a cluster: NATS between the nodes, blobs in S3, the secrets every node shares
/// [bus]
/// nats = "nats://127.0.0.1:4222"
/// node = "relay-1"                 # unique per node; random when absent
/// catch_up_ms = 2000
///
/// [blobs.s3]
/// endpoint = "http://127.0.0.1:9000"
/// bucket = "cove-blobs"
/// region = "us-east-1"
/// access_key = "..."
/// secret_key = "..."
///
/// [secrets]
/// opaque_key = "/etc/cove/opaque.key"
/// turn_secret = "/etc/cove/turn.secret"
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// Listen address.
    pub listen: Option<SocketAddr>,
    /// Data directory.
    pub data: Option<PathBuf>,
    /// Certificate chain PEM.
    pub cert: Option<PathBuf>,
    /// Private key PEM.
    pub key: Option<PathBuf>,
    /// Storage backend.
    pub store: Option<StoreKind>,
    /// Limits.
    pub limits: Limits,
    /// Blob store limits.
    pub blob: BlobLimits,
    /// UDP address of the TURN server for calls (off when absent).
    pub turn_listen: Option<SocketAddr>,
    /// Lifetime of the TURN credentials handed to devices, in seconds (1 to 86400; 600 when
    /// absent).
    pub turn_credential_ttl_secs: Option<u64>,
    /// Peer ranges the TURN server relays to although they are internal (loopback, private,
    /// ...), e.g. `["192.168.1.0/24"]` on a LAN; none when absent.
    pub turn_allow_peers: Vec<String>,
    /// Most TURN allocations one credential holds at once (8 when absent).
    pub turn_max_allocations_per_credential: Option<usize>,
    /// Most TURN allocations one user's credentials hold at once (32 when absent).
    pub turn_max_allocations_per_user: Option<usize>,
    /// NATS between relay nodes (a single node when absent).
    pub bus: Option<BusConfig>,
    /// Where blob contents live (the filesystem when absent).
    pub blobs: BlobsFile,
    /// Secret files every node of a cluster shares.
    pub secrets: SecretFiles,
}

/// The `[blob]` table of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobLimits {
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Per-user quota, in bytes.
    pub quota_bytes_per_user: u64,
}

impl Default for BlobLimits {
    fn default() -> Self {
        let d = BlobConfig::default();
        BlobLimits {
            max_blob_bytes: d.max_blob_bytes,
            quota_bytes_per_user: d.quota_bytes_per_user,
        }
    }
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`ConfigFile`].
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
    /// A `turn_allow_peers` entry is not an IP range.
    #[error("invalid configuration: turn_allow_peers: {0}")]
    PeerRange(#[from] cove_turn::peers::BadIpRange),
    /// Only one of certificate and key was given.
    #[error("give both a certificate and a key (--cert and --key), or neither")]
    CertWithoutKey,
}

impl ConfigFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses config file text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Turns the file (with overrides already applied to its fields) into a relay
    /// configuration, filling in defaults.
    pub fn into_config(self) -> Result<RelayConfig, ConfigError> {
        let listen = match self.listen {
            Some(addr) => addr,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| ConfigError::Invalid("default listen address"))?,
        };
        let tls = match (self.cert, self.key) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            (None, None) => TlsSource::SelfSigned,
            _ => return Err(ConfigError::CertWithoutKey),
        };
        self.limits.validate()?;
        let config = RelayConfig {
            listen,
            data_dir: self.data.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            tls,
            validate_handshakes: true,
            store: self.store.unwrap_or(StoreKind::Sqlite),
            limits: self.limits,
            blob: BlobConfig {
                max_blob_bytes: self.blob.max_blob_bytes,
                quota_bytes_per_user: self.blob.quota_bytes_per_user,
                ..BlobConfig::default()
            },
            turn_listen: self.turn_listen,
            turn_credential_ttl: self
                .turn_credential_ttl_secs
                .map_or(crate::turn::CREDENTIAL_TTL, Duration::from_secs),
            turn_peers: {
                let ranges = self
                    .turn_allow_peers
                    .iter()
                    .map(|r| r.parse::<cove_turn::IpRange>())
                    .collect::<Result<Vec<_>, _>>()?;
                let mut peers = cove_turn::PeerPolicy::allowing(ranges);
                if let Some(n) = self.turn_max_allocations_per_credential {
                    peers.max_allocations_per_credential = n;
                }
                if let Some(n) = self.turn_max_allocations_per_user {
                    peers.max_allocations_per_user = n;
                }
                peers
            },
            bus: self.bus,
            blob_backend: match self.blobs.s3 {
                Some(s3) => BlobBackend::S3(s3),
                None => BlobBackend::Filesystem,
            },
            secrets: self.secrets,
        };
        validate(&config)?;
        Ok(config)
    }
}

/// Checks a configuration's limits (also done by [`crate::Relay::start`]).
pub fn validate(config: &RelayConfig) -> Result<(), ConfigError> {
    if config.turn_credential_ttl < Duration::from_secs(1)
        || config.turn_credential_ttl > cove_turn::MAX_TTL
    {
        return Err(ConfigError::Invalid(
            "turn_credential_ttl must be between 1 second and 24 hours",
        ));
    }
    if let Some(bus) = &config.bus {
        if !matches!(config.store, StoreKind::Postgres(_)) {
            return Err(ConfigError::Invalid(
                "[bus] joins relay nodes that share one store: set [store] postgres too",
            ));
        }
        if !(100..=600_000).contains(&bus.catch_up_ms) {
            return Err(ConfigError::Invalid(
                "[bus] catch_up_ms must be between 100 and 600000",
            ));
        }
        if let Some(node) = &bus.node
            && (node.is_empty()
                || node.len() > 64
                || !node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(ConfigError::Invalid(
                "[bus] node must be 1 to 64 letters, digits, '-' or '_'",
            ));
        }
    }
    config.limits.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[bus]`, `[blobs.s3]` and `[secrets]` are read; a bus without a shared store is
    /// refused; the S3 secret key is never printed.
    #[test]
    fn cluster_tables_are_read_and_checked() {
        let text = r#"
            [store]
            postgres = "postgresql://cove@127.0.0.1:5432/cove"
            [bus]
            nats = "nats://127.0.0.1:4222"
            node = "relay-2"
            [blobs.s3]
            endpoint = "http://127.0.0.1:9000"
            bucket = "cove"
            access_key = "K"
            secret_key = "very-secret"
            [secrets]
            opaque_key = "/etc/cove/opaque.key"
            turn_secret = "/etc/cove/turn.secret"
        "#;
        let cfg = ConfigFile::parse(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_config()
            .unwrap_or_else(|e| panic!("{e}"));
        let bus = cfg.bus.clone().unwrap_or_else(|| panic!("no bus"));
        assert_eq!(bus.nats, "nats://127.0.0.1:4222");
        assert_eq!(bus.node.as_deref(), Some("relay-2"));
        assert_eq!(bus.catch_up_ms, 2000);
        let BlobBackend::S3(s3) = &cfg.blob_backend else {
            panic!("not S3: {:?}", cfg.blob_backend)
        };
        assert_eq!((s3.region.as_str(), s3.prefix.as_str()), ("us-east-1", ""));
        assert!(!format!("{cfg:?}").contains("very-secret"));
        assert_eq!(
            cfg.secrets.turn_secret.as_deref(),
            Some(Path::new("/etc/cove/turn.secret"))
        );
        let lone = "[bus]\nnats = \"nats://127.0.0.1:4222\"\n";
        let refused = ConfigFile::parse(lone).map(ConfigFile::into_config);
        assert!(matches!(refused, Ok(Err(ConfigError::Invalid(_)))));
        assert!(ConfigFile::parse("[blobs.s3]\nendpoint = \"x\"\n").is_err());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = ConfigFile::parse("").and_then(|f| f.into_config().map_err(|e| e.to_string()));
        let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(cfg.store, StoreKind::Sqlite);
        assert!(matches!(cfg.tls, TlsSource::SelfSigned));
    }

    /// `store = "sqlite"`, `store = "memory"` and a `[store]` table with `postgres` are read;
    /// another key in the table is refused; the Debug form hides a password in the URL.
    #[test]
    fn the_store_is_sqlite_memory_or_postgres() {
        let kind = |text: &str| ConfigFile::parse(text).map(|f| f.store);
        assert_eq!(kind("store = \"sqlite\"\n"), Ok(Some(StoreKind::Sqlite)));
        assert_eq!(kind("store = \"memory\"\n"), Ok(Some(StoreKind::Memory)));
        let url = "postgresql://cove:secret@10.0.0.5:5432/cove";
        let pg = kind(&format!("[store]\npostgres = \"{url}\"\n"));
        assert_eq!(pg, Ok(Some(StoreKind::Postgres(url.to_string()))));
        assert!(kind("[store]\nmysql = \"x\"\n").is_err());
        assert_eq!(
            format!("{:?}", StoreKind::Postgres(url.to_string())),
            "Postgres(\"postgresql://…@10.0.0.5:5432/cove\")"
        );
    }

    #[test]
    fn limits_and_unknown_keys() {
        let f = ConfigFile::parse("store = \"memory\"\n[limits]\nrequests_per_second = 5\n");
        let f = f.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.limits.requests_per_second, 5);
        assert_eq!(f.limits.request_burst, Limits::default().request_burst);
        assert!(ConfigFile::parse("[limits]\nno_such_limit = 1\n").is_err());
        let bad = ConfigFile::parse("[limits]\nmax_connections = 0\n").unwrap_or_default();
        assert!(bad.into_config().is_err());
    }

    #[test]
    fn metrics_are_loopback_only_unless_public() {
        assert!(!Limits::default().metrics_public);
        let f = ConfigFile::parse("[limits]\nmetrics_public = true\n");
        let f = f.unwrap_or_else(|e| panic!("{e}"));
        assert!(f.limits.metrics_public);
    }

    #[test]
    fn per_address_limits_and_body_idle_are_read_and_refused_at_zero() {
        let text = "[limits]\nmax_connections_per_ip = 3\nhttp_body_idle_ms = 500\n\
                    registrations_per_minute = 4\nregistration_burst = 5\n";
        let f = ConfigFile::parse(text).unwrap_or_else(|e| panic!("{e}"));
        let cfg = f.into_config().unwrap_or_else(|e| panic!("{e}"));
        let l = &cfg.limits;
        assert_eq!(
            (
                l.max_connections_per_ip,
                l.http_body_idle(),
                l.registrations_per_minute,
                l.registration_burst
            ),
            (3, Duration::from_millis(500), 4, 5)
        );
        let d = Limits::default();
        assert_eq!(
            (
                d.max_connections_per_ip,
                d.http_body_idle_ms,
                d.registrations_per_minute,
                d.registration_burst
            ),
            (64, 30_000, 10, 20)
        );
        for zero in [
            "max_connections_per_ip",
            "http_body_idle_ms",
            "registrations_per_minute",
            "registration_burst",
            "logins_per_minute_per_user",
            "login_burst_per_user",
            "logins_per_minute_per_address",
            "login_burst_per_address",
        ] {
            let f = ConfigFile::parse(&format!("[limits]\n{zero} = 0\n")).unwrap_or_default();
            assert!(
                matches!(f.into_config(), Err(ConfigError::Invalid(_))),
                "{zero} = 0 accepted"
            );
        }
    }

    #[test]
    fn login_limits_are_read_and_default_to_ten_per_user_and_thirty_per_address() {
        let text = "[limits]\nlogins_per_minute_per_user = 2\nlogin_burst_per_user = 3\n\
                    logins_per_minute_per_address = 4\nlogin_burst_per_address = 5\n";
        let f = ConfigFile::parse(text).unwrap_or_else(|e| panic!("{e}"));
        let cfg = f.into_config().unwrap_or_else(|e| panic!("{e}"));
        let l = &cfg.limits;
        assert_eq!(
            (
                l.logins_per_minute_per_user,
                l.login_burst_per_user,
                l.logins_per_minute_per_address,
                l.login_burst_per_address
            ),
            (2, 3, 4, 5)
        );
        let d = Limits::default();
        assert_eq!(
            (
                d.logins_per_minute_per_user,
                d.login_burst_per_user,
                d.logins_per_minute_per_address,
                d.login_burst_per_address
            ),
            (10, 10, 30, 30)
        );
    }

    #[test]
    fn turn_credential_ttl_defaults_to_ten_minutes_and_is_bounded() {
        let ttl = |text: &str| {
            ConfigFile::parse(text)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_config()
                .map(|c| c.turn_credential_ttl)
        };
        assert_eq!(ttl("").ok(), Some(Duration::from_secs(600)));
        assert_eq!(
            ttl("turn_credential_ttl_secs = 60").ok(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            ttl("turn_credential_ttl_secs = 86400").ok(),
            Some(Duration::from_secs(86400))
        );
        for bad in [
            "turn_credential_ttl_secs = 0",
            "turn_credential_ttl_secs = 86401",
        ] {
            assert!(
                matches!(ttl(bad), Err(ConfigError::Invalid(_))),
                "{bad} accepted"
            );
        }
    }

    /// The quota and retention keys parse under `[limits]`, default to the documented
    /// values, and out-of-range values are refused.
    #[test]
    fn quota_and_retention_limits() {
        let d = Limits::default();
        assert_eq!((d.sender_posts_per_minute, d.sender_post_burst), (120, 240));
        assert_eq!(d.sender_bytes_per_minute, 8 * 1024 * 1024);
        assert_eq!((d.group_posts_per_minute, d.group_post_burst), (600, 1200));
        assert_eq!(d.retention_max_age_ms, 30 * 24 * 3600 * 1000);
        let f = ConfigFile::parse(
            "[limits]\nsender_posts_per_minute = 5\ngroup_post_burst = 9\n\
             retention_max_age_ms = 86400000\nprune_interval_ms = 1000\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.limits.sender_posts_per_minute, 5);
        assert_eq!(f.limits.group_post_burst, 9);
        assert_eq!(f.limits.prune_interval(), Duration::from_secs(1));
        assert!(f.into_config().is_ok());
        for bad in [
            "sender_post_burst = 0",
            "group_posts_per_minute = 0",
            "sender_byte_burst = 1000",
            "group_byte_burst = 1000",
            "retention_max_age_ms = 59999",
        ] {
            let f = ConfigFile::parse(&format!("[limits]\n{bad}\n")).unwrap_or_default();
            assert!(
                matches!(f.into_config(), Err(ConfigError::Invalid(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn cert_needs_key() {
        let f = ConfigFile {
            cert: Some("c.pem".into()),
            ..ConfigFile::default()
        };
        assert!(matches!(f.into_config(), Err(ConfigError::CertWithoutKey)));
    }
}
