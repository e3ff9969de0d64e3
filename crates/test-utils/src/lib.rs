//! `cove-test-utils`: fixtures for Cove's tests. A dev-dependency only; never linked into a
//! shipped binary.
//!
//! - [`TestRelay`]: an in-process relay on `127.0.0.1:0` with a temporary data directory
//!   (memory or SQLite store) and a TLS client config that trusts its self-signed certificate.
//! - [`SpawnedRelay`]: the real `cove-server` binary as a child process (for `kill -9` tests).
//! - [`TestClient`]: a wire-level client over real TLS and WebSocket. It registers or
//!   authenticates with a [`DeviceKeys`] Ed25519 key, sends requests and awaits their
//!   responses by id, collects deliveries, and acks.
//! - [`sim::Relay`]: the relay core without sockets, driven frame by frame over a store
//!   (the in-memory one by default); `cove-core`'s tests run their clients through it.
//! - [`engines`]: throwaway `nats-server` and `s3s-fs` (S3) processes for the cluster tests.
//! - [`cluster::Cluster`]: `n` real `cove-server` processes on one PostgreSQL database, one
//!   NATS and one S3 server, behind a TCP load balancer (the end-to-end cluster tests).
//! - [`LogCapture`]: a global tracing subscriber that records every log line, so tests can
//!   assert that secrets never reach the logs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cove_test_utils::ClientError> {
//! use cove_test_utils::{DeviceKeys, TestRelay};
//! let relay = TestRelay::memory().await;
//! let mut alice = DeviceKeys::generate("alice");
//! let mut client = relay.connect().await?;
//! client.register(&mut alice).await?;
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod engines;
pub mod postgres;
pub mod pulse;
pub mod sim;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cove_server::{Limits, Relay, RelayConfig, RelayHandle, StoreKind};
use cove_wire::sign::{ChannelBinding, TLS_EXPORTER_LABEL};
use cove_wire::{
    ClientFrame, DecodeError, Delivery, DeviceId, DeviceKey, EncodeError, Epoch, ErrorCode,
    ErrorReply, GroupId, Payload, PostKind, Reply, Request, RequestId, Seq, ServerFrame, Signature,
    Stream, UserName,
};
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing_subscriber::util::SubscriberInitExt;

/// How long a test client waits for an expected frame before failing.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a test client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A frame from the relay did not decode.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// A frame could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    /// Nothing arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The relay closed the connection (with the `Closing` code, if it sent one).
    #[error("connection closed by the relay ({0:?})")]
    Closed(Option<ErrorCode>),
    /// The relay answered with an error.
    #[error("relay refused: {0}")]
    Refused(ErrorReply),
    /// The relay sent something the test did not expect.
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The error code if the relay refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A device's Ed25519 key pair and identity. No `Debug`: it holds a private key.
pub struct DeviceKeys {
    signing: SigningKey,
    /// The user this device belongs to.
    pub user: UserName,
    /// The relay-assigned id, once registered.
    pub device: Option<DeviceId>,
}

impl DeviceKeys {
    /// A fresh random key for `user` (panics on an invalid user name: tests pass literals).
    pub fn generate(user: &str) -> Self {
        #[allow(clippy::expect_used)]
        let user = UserName::new(user).expect("test user names are valid");
        DeviceKeys {
            signing: SigningKey::generate(&mut rand::rngs::OsRng),
            user,
            device: None,
        }
    }

    /// The public key.
    pub fn public_key(&self) -> DeviceKey {
        DeviceKey(self.signing.verifying_key().to_bytes())
    }

    /// The Ed25519 secret key (a test that signs MLS messages with the device's key, as
    /// Cove devices do, builds its MLS signer from it).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// Signs a connection challenge: `nonce` on the connection `channel` (see
    /// [`TestClient::channel`], `sim::Relay::channel`).
    pub fn sign_challenge(&self, nonce: &[u8; 32], channel: &ChannelBinding) -> Signature {
        let message =
            cove_wire::sign::auth_challenge_message(nonce, channel, &self.user, &self.public_key());
        Signature(self.signing.sign(&message).to_bytes())
    }

    /// Signs an authorisation for a further device `new_key` of the same user.
    pub fn authorize_device(&self, new_key: &DeviceKey) -> Signature {
        let message = cove_wire::sign::add_device_message(&self.user, new_key);
        Signature(self.signing.sign(&message).to_bytes())
    }

    /// Signs arbitrary bytes (for negative tests).
    pub fn sign_raw(&self, message: &[u8]) -> Signature {
        Signature(self.signing.sign(message).to_bytes())
    }

    /// The registered device id (panics if not registered yet).
    pub fn id(&self) -> DeviceId {
        #[allow(clippy::expect_used)]
        self.device.expect("device is registered")
    }
}

/// The channel binding of a TLS WebSocket as the client sees it: the TLS exporter value for
/// [`TLS_EXPORTER_LABEL`] and the SHA-256 of the relay's end-entity certificate.
pub fn channel_binding(ws: &Ws) -> Result<ChannelBinding, ClientError> {
    let MaybeTlsStream::Rustls(tls) = ws.get_ref() else {
        return Err(ClientError::Unexpected("not a TLS connection".into()));
    };
    tls_channel_binding(tls.get_ref().1)
}

/// The channel binding of a client TLS connection (see [`channel_binding`]).
pub fn tls_channel_binding(conn: &rustls::ClientConnection) -> Result<ChannelBinding, ClientError> {
    let exporter = conn
        .export_keying_material([0u8; 32], TLS_EXPORTER_LABEL, None)
        .map_err(|e| ClientError::Unexpected(format!("TLS exporter: {e}")))?;
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| ClientError::Unexpected("no relay certificate".into()))?;
    Ok(ChannelBinding {
        exporter,
        relay_certificate: Sha256::digest(leaf.as_ref()).into(),
    })
}

/// Registers a password account for the user of the authenticated `client`, as `cove init`
/// with a password does: OPAQUE registration (`AccountRegisterStart`/`Finish`) with
/// `cove-account`'s client functions, the account bundle (the identity key seed
/// `identity_seed`, e.g. the first device's `Store::user_identity`, and a fresh history
/// backup key) wrapped under the export key and under a fresh recovery key.
pub async fn register_account(
    client: &mut TestClient,
    user: &UserName,
    password: &[u8],
    identity_seed: [u8; 32],
) -> Result<(), ClientError> {
    use cove_account::opaque::{client_register_finish, client_register_start};
    use cove_account::{AccountBundle, RecoveryKey, WrapKind};
    let account = |e: cove_account::AccountError| ClientError::Unexpected(e.to_string());
    let (state, request) = client_register_start(password).map_err(account)?;
    let response = match client
        .call(Request::AccountRegisterStart {
            request: Payload(request),
        })
        .await?
    {
        Reply::AccountRegisterResponse { response } => response,
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    };
    let (upload, export_key) =
        client_register_finish(state, user.as_str(), response.as_bytes()).map_err(account)?;
    let bundle = AccountBundle::new(identity_seed);
    let recovery = RecoveryKey::generate();
    let password_bundle = bundle
        .wrap(user.as_str(), WrapKind::Password, export_key.as_bytes())
        .map_err(account)?;
    let recovery_bundle = bundle
        .wrap(user.as_str(), WrapKind::Recovery, recovery.as_bytes())
        .map_err(account)?;
    let recovery_key = recovery
        .auth_key()
        .map_err(account)?
        .verifying_key()
        .to_bytes();
    match client
        .call(Request::AccountRegisterFinish {
            upload: Payload(upload),
            password_bundle: Payload(password_bundle),
            recovery_bundle: Payload(recovery_bundle),
            recovery_key,
        })
        .await?
    {
        Reply::AccountRegistered => Ok(()),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// A random group id.
pub fn random_group_id() -> GroupId {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    GroupId(id)
}

/// A TLS client config (ring provider) that trusts exactly `cert_der`.
pub fn client_tls_config(cert_der: &[u8]) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert_der.to_vec()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS client config trusting the first certificate of a PEM file.
pub fn client_tls_config_from_pem_file(
    path: &Path,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::from_pem_file(path)
        .map_err(|e| ClientError::Unexpected(format!("cannot read {}: {e}", path.display())))?;
    client_tls_config(&cert)
}

/// An in-process relay on `127.0.0.1:0` with its own temporary data directory.
pub struct TestRelay {
    handle: Option<RelayHandle>,
    dir: tempfile::TempDir,
    tls: Arc<rustls::ClientConfig>,
}

impl TestRelay {
    /// A relay with the in-memory store and default limits (rate limits raised for tests).
    pub async fn memory() -> Self {
        Self::start(StoreKind::Memory, test_limits()).await
    }

    /// A relay with the SQLite store in its temp directory.
    pub async fn sqlite() -> Self {
        Self::start(StoreKind::Sqlite, test_limits()).await
    }

    /// A relay with the given store and limits. Panics if it cannot start (test fixture).
    pub async fn start(store: StoreKind, limits: Limits) -> Self {
        Self::configured(|config| {
            config.store = store;
            config.limits = limits;
        })
        .await
    }

    /// A relay with the in-memory store and test limits, then whatever `configure` changes
    /// (e.g. a TURN server). Panics if it cannot start (test fixture).
    ///
    /// Handshake validation is OFF here: the wire-level [`TestClient`] posts placeholder MLS
    /// bytes, and the tests using it are about storage, backlog and fan-out. Tests with real
    /// MLS clients (the e2e suite, the relay's `validation` tests) turn it on in `configure`
    /// (`config.validate_handshakes = true`), as every production relay has it.
    pub async fn configured(configure: impl FnOnce(&mut RelayConfig)) -> Self {
        #[allow(clippy::expect_used)]
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = RelayConfig::new(loopback(), dir.path());
        config.store = StoreKind::Memory;
        config.limits = test_limits();
        config.validate_handshakes = false;
        configure(&mut config);
        #[allow(clippy::expect_used)]
        let handle = Relay::start(config).await.expect("relay starts");
        #[allow(clippy::expect_used)]
        let tls = client_tls_config(handle.cert_der()).expect("client TLS config");
        TestRelay {
            handle: Some(handle),
            dir,
            tls,
        }
    }

    /// The relay handle.
    pub fn handle(&self) -> &RelayHandle {
        #[allow(clippy::expect_used)]
        self.handle.as_ref().expect("relay running")
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.handle().local_addr()
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        ws_url(self.addr())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A TLS client config trusting the relay's certificate.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.tls)
    }

    /// Opens a connection and reads the challenge.
    pub async fn connect(&self) -> Result<TestClient, ClientError> {
        TestClient::connect(&self.url(), self.tls()).await
    }

    /// Connects and registers a fresh user `user` with a new device.
    pub async fn register(&self, user: &str) -> Result<(TestClient, DeviceKeys), ClientError> {
        let mut keys = DeviceKeys::generate(user);
        let mut client = self.connect().await?;
        client.register(&mut keys).await?;
        Ok((client, keys))
    }

    /// Connects and authenticates as an existing device.
    pub async fn login(&self, keys: &DeviceKeys) -> Result<TestClient, ClientError> {
        let mut client = self.connect().await?;
        client.authenticate(keys).await?;
        Ok(client)
    }

    /// Shuts the relay down gracefully.
    pub async fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }
}

/// Limits for tests: the defaults with request rates and post quotas high enough for bulk
/// tests, and the per-address limits (every test client comes from 127.0.0.1) raised out of
/// the way: tests of those limits set them.
pub fn test_limits() -> Limits {
    Limits {
        requests_per_second: 100_000,
        request_burst: 100_000,
        max_connections_per_ip: 10_000,
        registrations_per_minute: 100_000,
        registration_burst: 100_000,
        sender_posts_per_minute: 1_000_000,
        sender_post_burst: 1_000_000,
        sender_bytes_per_minute: 1 << 40,
        sender_byte_burst: 1 << 40,
        group_posts_per_minute: 1_000_000,
        group_post_burst: 1_000_000,
        group_bytes_per_minute: 1 << 40,
        group_byte_burst: 1 << 40,
        ..Limits::default()
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `wss://ADDR/v1/ws`.
pub fn ws_url(addr: SocketAddr) -> String {
    format!("wss://{addr}{}", cove_wire::WS_PATH)
}

/// The real `cove-server` binary running as a child process.
pub struct SpawnedRelay {
    child: Child,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl SpawnedRelay {
    /// Starts `binary --listen 127.0.0.1:0 --data DATA [extra...]` and waits for its
    /// `listening on ADDR` line on stdout.
    pub fn spawn(binary: &Path, data: &Path, extra: &[&str]) -> Result<Self, ClientError> {
        let mut child = Command::new(binary)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| ClientError::Unexpected("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(line) => {
                    let line = line?;
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.trim().parse::<SocketAddr>().map_err(|e| {
                            ClientError::Unexpected(format!("bad address {addr:?}: {e}"))
                        })?;
                    }
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ClientError::Unexpected(
                        "relay exited before listening".into(),
                    ));
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let tls = client_tls_config_from_pem_file(&data.join("tls").join("cert.pem"))?;
        Ok(SpawnedRelay { child, addr, tls })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens a connection and reads the challenge.
    pub async fn connect(&self) -> Result<TestClient, ClientError> {
        TestClient::connect(&ws_url(self.addr), Arc::clone(&self.tls)).await
    }

    /// `kill -9`: the process dies at once, with no chance to flush anything.
    pub fn kill9(mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Waits for the process to exit on its own (e.g. after SIGTERM), up to 30 s; kills it
    /// and fails if it does not.
    pub fn wait_exit(mut self) -> Result<std::process::ExitStatus, ClientError> {
        let deadline = std::time::Instant::now() + DEFAULT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                return Err(ClientError::Timeout("the relay process to exit"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SpawnedRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A wire-level client: one WebSocket, frames in and out, nothing hidden.
pub struct TestClient {
    ws: Ws,
    nonce: [u8; 32],
    /// The TLS exporter value and the relay's certificate hash of this connection.
    channel: ChannelBinding,
    next_id: u32,
    responses: HashMap<RequestId, Result<Reply, ErrorReply>>,
    deliveries: VecDeque<Delivery>,
    /// Link rendezvous pushes (`LinkPeerJoined`, `LinkMessage`, `LinkClosed`), in order.
    link_frames: VecDeque<ServerFrame>,
    backlog_done: bool,
    closing: Option<ErrorCode>,
    closed: bool,
    timeout: Duration,
    /// The authenticated device.
    pub device: Option<DeviceId>,
}

impl TestClient {
    /// Connects over TLS to `url` and reads the relay's challenge.
    pub async fn connect(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, ClientError> {
        let ws = Self::connect_ws(url, tls).await?;
        let channel = channel_binding(&ws)?;
        let mut client = TestClient {
            ws,
            nonce: [0; 32],
            channel,
            next_id: 0,
            responses: HashMap::new(),
            deliveries: VecDeque::new(),
            link_frames: VecDeque::new(),
            backlog_done: false,
            closing: None,
            closed: false,
            timeout: DEFAULT_TIMEOUT,
            device: None,
        };
        match client.next_frame("the challenge").await? {
            ServerFrame::Challenge { nonce, .. } => client.nonce = nonce,
            other => {
                return Err(ClientError::Unexpected(format!(
                    "expected a challenge: {other:?}"
                )));
            }
        }
        Ok(client)
    }

    /// A bare WebSocket to the relay (for hostile-input tests).
    pub async fn connect_ws(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Ws, ClientError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(cove_wire::limits::MAX_FRAME_BYTES))
            .max_frame_size(Some(cove_wire::limits::MAX_FRAME_BYTES));
        let (ws, _) = tokio::time::timeout(
            DEFAULT_TIMEOUT,
            tokio_tungstenite::connect_async_tls_with_config(
                url,
                Some(config),
                true,
                Some(Connector::Rustls(tls)),
            ),
        )
        .await
        .map_err(|_| ClientError::Timeout("the WebSocket handshake"))??;
        Ok(ws)
    }

    /// Sets how long to wait for expected frames.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The challenge nonce of this connection.
    pub fn nonce(&self) -> [u8; 32] {
        self.nonce
    }

    /// The channel binding of this connection (what a challenge answer signs with the
    /// nonce), computed from the client's side of the TLS connection.
    pub fn channel(&self) -> ChannelBinding {
        self.channel
    }

    /// The `Closing` code the relay sent, if any.
    pub fn closing(&self) -> Option<ErrorCode> {
        self.closing
    }

    /// Whether the relay has sent `BacklogDone`.
    pub fn backlog_done(&self) -> bool {
        self.backlog_done
    }

    /// Sends a raw WebSocket message.
    pub async fn send_message(&mut self, message: Message) -> Result<(), ClientError> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// Sends a request without waiting; returns its id.
    pub async fn send_request(&mut self, body: Request) -> Result<RequestId, ClientError> {
        self.next_id = self.next_id.wrapping_add(1);
        let id = RequestId(self.next_id);
        let bytes = cove_wire::encode(&ClientFrame::Request { id, body })?;
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(id)
    }

    /// Waits for the response to `id`, buffering deliveries that arrive meanwhile.
    pub async fn response(
        &mut self,
        id: RequestId,
    ) -> Result<Result<Reply, ErrorReply>, ClientError> {
        loop {
            if let Some(result) = self.responses.remove(&id) {
                return Ok(result);
            }
            self.pump("a response").await?;
        }
    }

    /// The response to `id` if it has already been read (buffered), without waiting.
    pub fn take_response(&mut self, id: RequestId) -> Option<Result<Reply, ErrorReply>> {
        self.responses.remove(&id)
    }

    /// Sends a request and waits for its response.
    pub async fn request(
        &mut self,
        body: Request,
    ) -> Result<Result<Reply, ErrorReply>, ClientError> {
        let id = self.send_request(body).await?;
        self.response(id).await
    }

    /// Sends a request; an error reply becomes [`ClientError::Refused`].
    pub async fn call(&mut self, body: Request) -> Result<Reply, ClientError> {
        self.request(body).await?.map_err(ClientError::Refused)
    }

    /// Registers `keys.user` with this device; sets `keys.device`.
    pub async fn register(&mut self, keys: &mut DeviceKeys) -> Result<DeviceId, ClientError> {
        let body = Request::Register {
            user: keys.user.clone(),
            key: keys.public_key(),
            signature: keys.sign_challenge(&self.nonce, &self.channel),
        };
        let device = self.expect_authenticated(body).await?;
        keys.device = Some(device);
        Ok(device)
    }

    /// Registers `keys` as a further device of its user, authorised by `authorizer`.
    pub async fn register_device(
        &mut self,
        keys: &mut DeviceKeys,
        authorizer: &DeviceKeys,
    ) -> Result<DeviceId, ClientError> {
        let body = Request::RegisterDevice {
            user: keys.user.clone(),
            key: keys.public_key(),
            signature: keys.sign_challenge(&self.nonce, &self.channel),
            authorizer: authorizer.id(),
            authorization: authorizer.authorize_device(&keys.public_key()),
        };
        let device = self.expect_authenticated(body).await?;
        keys.device = Some(device);
        Ok(device)
    }

    /// Authenticates as the registered device `keys`.
    pub async fn authenticate(&mut self, keys: &DeviceKeys) -> Result<DeviceId, ClientError> {
        let body = Request::Authenticate {
            user: keys.user.clone(),
            device: keys.id(),
            signature: keys.sign_challenge(&self.nonce, &self.channel),
        };
        self.expect_authenticated(body).await
    }

    async fn expect_authenticated(&mut self, body: Request) -> Result<DeviceId, ClientError> {
        match self.call(body).await? {
            Reply::Authenticated { device } => {
                self.device = Some(device);
                Ok(device)
            }
            other => Err(ClientError::Unexpected(format!(
                "expected Authenticated: {other:?}"
            ))),
        }
    }

    /// Creates a group with this device as its first member, without MLS state (for a relay
    /// that does not validate handshakes).
    pub async fn create_group(&mut self, group: GroupId) -> Result<(), ClientError> {
        self.create_group_with(group, Vec::new(), Vec::new()).await
    }

    /// Creates a group with this device as its first member, with the creator's GroupInfo
    /// and ratchet tree at epoch 0.
    pub async fn create_group_with(
        &mut self,
        group: GroupId,
        group_info: Vec<u8>,
        tree: Vec<u8>,
    ) -> Result<(), ClientError> {
        let body = Request::CreateGroup {
            group,
            group_info: Payload(group_info),
            tree: Payload(tree),
        };
        match self.call(body).await? {
            Reply::GroupCreated => Ok(()),
            other => Err(ClientError::Unexpected(format!(
                "expected GroupCreated: {other:?}"
            ))),
        }
    }

    /// Posts and waits until the relay says it is durable; returns its seq.
    pub async fn post(
        &mut self,
        group: GroupId,
        epoch: Epoch,
        kind: PostKind,
        payload: &[u8],
    ) -> Result<Seq, ClientError> {
        let body = Request::Post {
            group,
            epoch,
            kind,
            payload: Payload::from(payload),
        };
        match self.call(body).await? {
            Reply::Posted { seq } => Ok(seq),
            other => Err(ClientError::Unexpected(format!(
                "expected Posted: {other:?}"
            ))),
        }
    }

    /// Posts an application message in `epoch`.
    pub async fn post_app(
        &mut self,
        group: GroupId,
        epoch: Epoch,
        payload: &[u8],
    ) -> Result<Seq, ClientError> {
        self.post(group, epoch, PostKind::Application, payload)
            .await
    }

    /// Posts a commit adding `added` (with `welcome`) and removing `removed`.
    pub async fn commit(
        &mut self,
        group: GroupId,
        epoch: Epoch,
        added: Vec<DeviceId>,
        removed: Vec<DeviceId>,
        welcome: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<Seq, ClientError> {
        let kind = PostKind::Commit {
            added: added.into(),
            removed: removed.into(),
            welcome: welcome.map(Payload::from),
            group_info: Payload::default(),
        };
        self.post(group, epoch, kind, payload).await
    }

    /// Acknowledges a stream up to `seq`.
    pub async fn ack(&mut self, stream: Stream, seq: Seq) -> Result<(), ClientError> {
        match self.call(Request::Ack { stream, seq }).await? {
            Reply::Acked => Ok(()),
            other => Err(ClientError::Unexpected(format!(
                "expected Acked: {other:?}"
            ))),
        }
    }

    /// The next delivery (buffered or read), waiting up to the timeout.
    pub async fn next_delivery(&mut self) -> Result<Delivery, ClientError> {
        loop {
            if let Some(d) = self.deliveries.pop_front() {
                return Ok(d);
            }
            self.pump("a delivery").await?;
        }
    }

    /// Reads `n` deliveries.
    pub async fn deliveries(&mut self, n: usize) -> Result<Vec<Delivery>, ClientError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_delivery().await?);
        }
        Ok(out)
    }

    /// Waits for `BacklogDone` and returns every delivery received before it.
    pub async fn backlog(&mut self) -> Result<Vec<Delivery>, ClientError> {
        while !self.backlog_done {
            self.pump("BacklogDone").await?;
        }
        Ok(self.deliveries.drain(..).collect())
    }

    /// Deliveries buffered so far (without reading more).
    pub fn take_buffered(&mut self) -> Vec<Delivery> {
        self.deliveries.drain(..).collect()
    }

    /// Reads until the relay closes the connection; returns the deliveries read and the
    /// `Closing` code if one came.
    pub async fn read_until_closed(&mut self) -> (Vec<Delivery>, Option<ErrorCode>) {
        while !self.closed {
            if self.pump("the connection to close").await.is_err() {
                break;
            }
        }
        (self.deliveries.drain(..).collect(), self.closing)
    }

    /// Reads one frame from the socket (buffering nothing), for tests that look at raw
    /// frames. Fails with [`ClientError::Closed`] when the connection ends.
    pub async fn next_frame(&mut self, what: &'static str) -> Result<ServerFrame, ClientError> {
        loop {
            if self.closed {
                return Err(ClientError::Closed(self.closing));
            }
            let message = match tokio::time::timeout(self.timeout, self.ws.next()).await {
                Err(_) => return Err(ClientError::Timeout(what)),
                Ok(None) | Ok(Some(Err(_))) => {
                    self.closed = true;
                    continue;
                }
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Binary(bytes) => {
                    let frame: ServerFrame = cove_wire::decode(&bytes)?;
                    if let ServerFrame::Closing { code } = frame {
                        self.closing = Some(code);
                    }
                    return Ok(frame);
                }
                Message::Close(_) => self.closed = true,
                Message::Text(_) => return Err(ClientError::Unexpected("text frame".into())),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Reads one frame and files it.
    async fn pump(&mut self, what: &'static str) -> Result<(), ClientError> {
        match self.next_frame(what).await? {
            ServerFrame::Response { id, result } => {
                self.responses.insert(id, result);
            }
            ServerFrame::Deliver(d) => self.deliveries.push_back(d),
            ServerFrame::BacklogDone => self.backlog_done = true,
            ServerFrame::Challenge { nonce, .. } => self.nonce = nonce,
            ServerFrame::Closing { .. } => {}
            link @ (ServerFrame::LinkPeerJoined
            | ServerFrame::LinkMessage { .. }
            | ServerFrame::LinkClosed { .. }) => self.link_frames.push_back(link),
        }
        Ok(())
    }

    /// The next link rendezvous push (`LinkPeerJoined`, `LinkMessage`, `LinkClosed`),
    /// buffered or read, waiting up to the timeout.
    pub async fn next_link_frame(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            if let Some(f) = self.link_frames.pop_front() {
                return Ok(f);
            }
            self.pump("a link frame").await?;
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A TLS connection to the relay with nothing on top (for hostile-input tests).
pub async fn connect_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
    let tcp = TcpStream::connect(addr).await?;
    tls_over(tcp, addr, tls).await
}

/// A TLS connection to the relay whose socket receive buffer is as small as the kernel
/// allows (a few KiB), for tests of clients that stop reading: what the relay sends then
/// piles up in the relay, not in this process's kernel buffers.
pub async fn connect_tls_small_window(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_recv_buffer_size(4096)?;
    let tcp = socket.connect(addr).await?;
    tls_over(tcp, addr, tls).await
}

async fn tls_over(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    Ok(stream)
}

/// The headers (each ending in CRLF) that sign one request to the relay's blob store as
/// `keys`' registered device, now: `cove-device`, `cove-timestamp`, `cove-signature` over
/// [`cove_wire::sign::blob_request_message`] (`value` is `Upload-Length` for `POST`,
/// `Upload-Offset` for `PATCH`, else 0).
pub fn blob_signature_headers(keys: &DeviceKeys, method: &str, path: &str, value: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let message = cove_wire::sign::blob_request_message(method, path, now, value);
    let signature: String = keys
        .sign_raw(&message)
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "cove-device: {}\r\ncove-timestamp: {now}\r\ncove-signature: {signature}\r\n",
        keys.id().0
    )
}

/// Reads one HTTP/1.1 response head (status line and headers, up to the blank line) from a
/// raw stream, byte by byte so that nothing after it is consumed. Fails with
/// [`ClientError::Closed`] if the stream ends first.
pub async fn read_response_head<S>(stream: &mut S) -> Result<String, ClientError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(ClientError::Unexpected("response head too long".into()));
        }
        let n = tokio::time::timeout(DEFAULT_TIMEOUT, stream.read(&mut byte))
            .await
            .map_err(|_| ClientError::Timeout("a response head"))??;
        if n == 0 {
            return Err(ClientError::Closed(None));
        }
        head.extend_from_slice(&byte);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Upgrades a raw TLS stream to a WebSocket by hand (so a test can then write raw frame
/// bytes). Returns after the relay's `101` response headers.
pub async fn raw_upgrade<S>(stream: &mut S, addr: SocketAddr) -> Result<(), ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        cove_wire::WS_PATH
    );
    stream.write_all(request.as_bytes()).await?;
    let head = read_response_head(stream).await?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(ClientError::Unexpected(head));
    }
    Ok(())
}

/// Captures every tracing event of the process (installed once, globally, at TRACE).
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Installs the capture as the global subscriber (first call) with the relay's own
    /// filter at `RUST_LOG=trace` (the most verbose a relay can be run), also capturing `log`
    /// records, and returns it. Panics if another global subscriber was installed first.
    pub fn install() -> &'static LogCapture {
        static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
        CAPTURE.get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer = CaptureWriter(Arc::clone(&buffer));
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(cove_server::log_filter("trace"))
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            #[allow(clippy::expect_used)]
            subscriber.try_init().expect("no other global subscriber");
            LogCapture { buffer }
        })
    }

    /// Everything logged so far.
    pub fn contents(&self) -> String {
        let bytes = self.buffer.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A path under the system temp dir, for tests that need a second data directory.
pub fn temp_dir() -> tempfile::TempDir {
    #[allow(clippy::expect_used)]
    tempfile::tempdir().expect("temp dir")
}
