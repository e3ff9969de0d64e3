//! A TURN server (RFC 5766, the webrtc-rs `turn` crate) with TURN REST credentials.
//!
//! Credentials are short-lived and need no per-user state on the server: the relay that hands
//! them out and the TURN server share one secret.
//!
//! ```text
//! username = "<expiry unix seconds>:<user>"
//! password = base64(HMAC-SHA1(shared_secret, username))
//! ```
//!
//! The server derives the password itself. A new allocation needs a credential whose expiry is
//! in the future; the allocation made with it can be refreshed with it after it expired (see
//! `Gate` in the source), so a call outlives its credential. Expired and forged credentials are
//! answered with `401 Unauthorized` ([`REASON_EXPIRED`], [`REASON_BAD_CREDENTIALS`]). The
//! only state kept is which client address holds an allocation under which username. This
//! module depends on nothing else in cove-media, so the relay can call it (or copy it) without
//! linking MLS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;
use serde::{Deserialize, Serialize};
use stun::agent::TransactionId;
use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::{CODE_UNAUTHORIZED, ErrorCodeAttribute};
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, Message, MessageType, Method,
    Setter, is_message,
};
use stun::textattrs::{Nonce, Realm, Username};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use turn::allocation::AllocationInfo;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::relay_static::RelayAddressGeneratorStatic;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;
use webrtc_util::vnet::net::Net;

/// Longest credential lifetime handed out (24 h, as Signal's TURN provider allows).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Suggested credential lifetime (clients cache credentials for at most this long).
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);
/// Longest user name embedded in a TURN username.
pub const MAX_USER_LEN: usize = 128;

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

/// TURN REST credentials for one user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnCredentials {
    /// `expiry:user`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Mints credentials for `user` valid for `ttl` (at most [`MAX_TTL`]) from `now`.
pub fn turn_credentials(
    shared_secret: &[u8],
    user: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<TurnCredentials, TurnError> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.contains(':') {
        return Err(TurnError::BadParameters(
            "user must be 1..=128 bytes without ':'",
        ));
    }
    let ttl = ttl.min(MAX_TTL);
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TurnError::BadParameters("clock"))?;
    let expires_at = (now + ttl).as_secs();
    let username = format!("{expires_at}:{user}");
    let password = rest_password(shared_secret, &username);
    Ok(TurnCredentials {
        username,
        password,
        expires_at,
    })
}

fn rest_password(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    BASE64.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

/// Checks TURN REST credentials; returns the user name if valid at `now`.
pub fn verify_turn_credentials(
    shared_secret: &[u8],
    username: &str,
    password: &str,
    now: SystemTime,
) -> Option<String> {
    let (expiry, user) = username.split_once(':')?;
    let expiry: u64 = expiry.parse().ok()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    if expiry <= now || user.is_empty() || user.len() > MAX_USER_LEN {
        return None;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, shared_secret);
    let given = BASE64.decode(password).ok()?;
    hmac::verify(&key, username.as_bytes(), &given).ok()?;
    Some(user.to_owned())
}

/// The key derivation the `turn` crate's server runs for every authenticated request.
///
/// It refuses only malformed usernames: whether a credential is good (signature, expiry, the
/// allocation it belongs to) is decided before the request reaches the crate, by [`Gate`],
/// which answers refused requests itself with `401 Unauthorized`.
struct RestAuth {
    secret: Vec<u8>,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        parse_username(username).ok_or_else(|| turn::Error::Other("bad username".into()))?;
        let password = rest_password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// `(expiry, user)` of a well-formed TURN REST username.
fn parse_username(username: &str) -> Option<(u64, &str)> {
    let (expiry, user) = username.split_once(':')?;
    let expiry: u64 = expiry.parse().ok()?;
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return None;
    }
    Some((expiry, user))
}

/// The reason phrase of a `401` for a correctly signed but expired credential.
pub const REASON_EXPIRED: &str = "Unauthorized: credential expired";
/// The reason phrase of a `401` for a forged credential (wrong HMAC, malformed username,
/// foreign realm).
pub const REASON_BAD_CREDENTIALS: &str = "Unauthorized";
/// Most allocations tracked for renewal after their credential expired; beyond it, new
/// allocations still work but cannot be renewed past their credential's expiry.
const MAX_TRACKED_ALLOCATIONS: usize = 65_536;
/// Most renewals awaiting the server's answer (statistics only).
const MAX_PENDING_RENEWALS: usize = 4096;

/// Counters of a running TURN server (for tests and monitoring).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Requests refused with `401` because their (correctly signed) credential had expired.
    pub refused_expired: u64,
    /// Requests refused with `401` because their credential was forged or malformed.
    pub refused_bad_credentials: u64,
    /// `Refresh` requests answered with success for an allocation whose credential had
    /// already expired.
    pub refreshes_after_expiry: u64,
    /// `CreatePermission` and `ChannelBind` requests answered with success for an allocation
    /// whose credential had already expired.
    pub permissions_after_expiry: u64,
}

/// Checks TURN REST credentials before the `turn` crate sees a request.
///
/// The crate answers a refused credential with `400 Bad Request` and cannot tell a new
/// allocation from the renewal of an existing one. The gate answers `401 Unauthorized`
/// (RFC 8489 §9.2.4, with `REALM` and `NONCE`) and applies the expiry rule:
/// - a credential must be correctly signed for every request;
/// - a new allocation (`Allocate`) needs an unexpired credential;
/// - the allocation made with a credential can be refreshed, and its permissions and channels
///   created or refreshed (`Refresh`, `CreatePermission`, `ChannelBind`) with that same
///   credential from the same address after it expired, for at most [`MAX_TTL`] past its
///   expiry, so a call outlives its credential but a leaked, expired credential opens
///   nothing new.
struct Gate {
    realm: String,
    secret: Vec<u8>,
    /// Client address -> the username its allocation was made with.
    allocations: Mutex<HashMap<SocketAddr, String>>,
    /// Transaction ids of renewals let through after expiry, awaiting the server's answer.
    renewals: Mutex<HashMap<TransactionId, Method>>,
    refused_expired: AtomicU64,
    refused_bad_credentials: AtomicU64,
    refreshes_after_expiry: AtomicU64,
    permissions_after_expiry: AtomicU64,
}

enum Verdict {
    Pass,
    Refuse(Vec<u8>),
}

enum Refusal {
    Expired,
    BadCredentials,
}

impl Gate {
    fn stats(&self) -> TurnStats {
        TurnStats {
            refused_expired: self.refused_expired.load(Ordering::Relaxed),
            refused_bad_credentials: self.refused_bad_credentials.load(Ordering::Relaxed),
            refreshes_after_expiry: self.refreshes_after_expiry.load(Ordering::Relaxed),
            permissions_after_expiry: self.permissions_after_expiry.load(Ordering::Relaxed),
        }
    }

    /// Decides on one datagram from `src`. Anything that is not an authenticated STUN request
    /// passes unchanged (the crate answers unauthenticated requests with its nonce challenge).
    fn inspect(&self, packet: &[u8], src: SocketAddr, now: SystemTime) -> Verdict {
        if !is_message(packet) {
            return Verdict::Pass;
        }
        let mut m = Message::new();
        if m.unmarshal_binary(packet).is_err()
            || m.typ.class != CLASS_REQUEST
            || !m.contains(ATTR_MESSAGE_INTEGRITY)
        {
            return Verdict::Pass;
        }
        let (Ok(username), Ok(realm)) = (
            Username::get_from_as(&m, ATTR_USERNAME),
            Realm::get_from_as(&m, ATTR_REALM),
        ) else {
            // The crate answers 400 Bad Request.
            return Verdict::Pass;
        };
        match self.check(&mut m, &username.text, &realm.text, src, now) {
            Ok(()) => Verdict::Pass,
            Err(refusal) => {
                let (counter, reason) = match refusal {
                    Refusal::Expired => (&self.refused_expired, REASON_EXPIRED),
                    Refusal::BadCredentials => {
                        (&self.refused_bad_credentials, REASON_BAD_CREDENTIALS)
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                match self.unauthorized(&m, reason) {
                    Some(response) => Verdict::Refuse(response),
                    // Cannot happen for the attributes used; dropping the request is safe.
                    None => Verdict::Refuse(Vec::new()),
                }
            }
        }
    }

    fn check(
        &self,
        m: &mut Message,
        username: &str,
        realm: &str,
        src: SocketAddr,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        if realm != self.realm {
            return Err(Refusal::BadCredentials);
        }
        let (expiry, _) = parse_username(username).ok_or(Refusal::BadCredentials)?;
        let password = rest_password(&self.secret, username);
        let key = generate_auth_key(username, realm, &password);
        MessageIntegrity(key)
            .check(m)
            .map_err(|_| Refusal::BadCredentials)?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Refusal::Expired)?
            .as_secs();
        let method = m.typ.method;
        if expiry > now {
            if method == METHOD_ALLOCATE {
                // The first username stays until the server closes that allocation (as the
                // server itself refuses a second allocation for the same address), so a spoofed
                // Allocate from the same address cannot take over the renewal right.
                let mut allocations = lock(&self.allocations);
                if allocations.len() < MAX_TRACKED_ALLOCATIONS {
                    allocations
                        .entry(src)
                        .or_insert_with(|| username.to_owned());
                }
            }
            return Ok(());
        }
        let renewal = matches!(
            method,
            METHOD_REFRESH | METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND
        );
        let own_allocation =
            lock(&self.allocations).get(&src).map(String::as_str) == Some(username);
        if renewal && own_allocation && now < expiry.saturating_add(MAX_TTL.as_secs()) {
            let mut renewals = lock(&self.renewals);
            if renewals.len() >= MAX_PENDING_RENEWALS {
                renewals.clear();
            }
            renewals.insert(m.transaction_id, method);
            return Ok(());
        }
        Err(Refusal::Expired)
    }

    /// `401 Unauthorized` for request `m`, with the realm and the request's nonce.
    fn unauthorized(&self, m: &Message, reason: &str) -> Option<Vec<u8>> {
        let mut response = Message::new();
        let mut attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(Message {
                transaction_id: m.transaction_id,
                ..Default::default()
            }),
            Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code: CODE_UNAUTHORIZED,
                reason: reason.as_bytes().to_vec(),
            }),
            Box::new(Realm::new(ATTR_REALM, self.realm.clone())),
        ];
        if let Ok(nonce) = Nonce::get_from_as(m, ATTR_NONCE) {
            attrs.push(Box::new(nonce));
        }
        response.build(&attrs).ok()?;
        Some(response.raw)
    }

    /// Notes the server's answer to a renewal let through after its credential expired.
    fn observe_outgoing(&self, packet: &[u8]) {
        if lock(&self.renewals).is_empty() || !is_message(packet) {
            return;
        }
        let mut m = Message::new();
        if m.unmarshal_binary(packet).is_err() {
            return;
        }
        let Some(method) = lock(&self.renewals).remove(&m.transaction_id) else {
            return;
        };
        if m.typ.class != CLASS_SUCCESS_RESPONSE {
            return;
        }
        let counter = if method == METHOD_REFRESH {
            &self.refreshes_after_expiry
        } else {
            &self.permissions_after_expiry
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets an allocation the server closed.
    fn closed(&self, info: &AllocationInfo) {
        let mut allocations = lock(&self.allocations);
        if allocations.get(&info.five_tuple.src_addr) == Some(&info.username) {
            allocations.remove(&info.five_tuple.src_addr);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The server's UDP socket with the [`Gate`] in front of it.
struct GatedConn {
    socket: Arc<UdpSocket>,
    gate: Arc<Gate>,
}

#[async_trait]
impl Conn for GatedConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, src) = self.socket.recv_from(buf).await?;
            let packet = buf.get(..n).unwrap_or_default();
            match self.gate.inspect(packet, src, SystemTime::now()) {
                Verdict::Pass => return Ok((n, src)),
                Verdict::Refuse(response) => {
                    if !response.is_empty() {
                        // A failed answer is like a lost datagram: the client retransmits.
                        let _ = self.socket.send_to(&response, src).await;
                    }
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.gate.observe_outgoing(buf);
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A running TURN server.
pub struct TurnServerHandle {
    server: Server,
    local_addr: SocketAddr,
    gate: Arc<Gate>,
}

impl TurnServerHandle {
    /// The UDP address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `turn:` URL clients use (with the listening address; behind NAT or when bound to
    /// `0.0.0.0`, build the URL from the public address instead).
    pub fn url(&self) -> String {
        format!("turn:{}?transport=udp", self.local_addr)
    }

    /// Counters of refused credentials and renewals after expiry.
    pub fn stats(&self) -> TurnStats {
        self.gate.stats()
    }

    /// Stops the server.
    pub async fn close(self) -> Result<(), TurnError> {
        self.server
            .close()
            .await
            .map_err(|e| TurnError::Turn(e.to_string()))
    }
}

/// Starts a TURN server on `udp_addr` (port 0 picks one). Relayed addresses are allocated on
/// the same IP as `udp_addr` (so an unspecified address is refused: give the public or
/// loopback IP, or use [`start_turn_server_with_relay_ip`]).
pub async fn start_turn_server(
    udp_addr: SocketAddr,
    realm: &str,
    shared_secret: &[u8],
) -> Result<TurnServerHandle, TurnError> {
    if udp_addr.ip().is_unspecified() {
        return Err(TurnError::BadParameters(
            "bind a concrete IP (it is also the relay IP)",
        ));
    }
    start_turn_server_with_relay_ip(udp_addr, udp_addr.ip(), realm, shared_secret).await
}

/// Starts a TURN server listening on `udp_addr` (which may be `0.0.0.0:3478`) that allocates
/// relayed addresses on `relay_ip` (the address clients can reach, e.g. the public IP).
pub async fn start_turn_server_with_relay_ip(
    udp_addr: SocketAddr,
    relay_ip: IpAddr,
    realm: &str,
    shared_secret: &[u8],
) -> Result<TurnServerHandle, TurnError> {
    if relay_ip.is_unspecified() {
        return Err(TurnError::BadParameters(
            "the relay IP must be a concrete address",
        ));
    }
    if shared_secret.len() < 16 {
        return Err(TurnError::BadParameters(
            "shared secret must be at least 16 bytes",
        ));
    }
    let socket = Arc::new(UdpSocket::bind(udp_addr).await?);
    let local_addr = socket.local_addr()?;
    let gate = Arc::new(Gate {
        realm: realm.to_owned(),
        secret: shared_secret.to_vec(),
        allocations: Mutex::default(),
        renewals: Mutex::default(),
        refused_expired: AtomicU64::new(0),
        refused_bad_credentials: AtomicU64::new(0),
        refreshes_after_expiry: AtomicU64::new(0),
        permissions_after_expiry: AtomicU64::new(0),
    });
    let conn = Arc::new(GatedConn {
        socket,
        gate: gate.clone(),
    });
    // Closed allocations are forgotten by the gate; the task ends with the server.
    let (closed_tx, mut closed_rx) = mpsc::channel::<AllocationInfo>(64);
    let closed_gate = Arc::downgrade(&gate);
    tokio::spawn(async move {
        while let Some(info) = closed_rx.recv().await {
            let Some(gate) = closed_gate.upgrade() else {
                break;
            };
            gate.closed(&info);
        }
    });
    // Relayed sockets bind on the listening IP and are announced as `relay_ip`.
    let bind_ip = udp_addr.ip();
    let server = Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn,
            relay_addr_generator: Box::new(RelayAddressGeneratorStatic {
                relay_address: relay_ip,
                address: bind_ip.to_string(),
                net: Arc::new(Net::new(None)),
            }),
        }],
        realm: realm.to_owned(),
        auth_handler: Arc::new(RestAuth {
            secret: shared_secret.to_vec(),
        }),
        channel_bind_timeout: Duration::from_secs(0),
        alloc_close_notify: Some(closed_tx),
    })
    .await
    .map_err(|e| TurnError::Turn(e.to_string()))?;
    Ok(TurnServerHandle {
        server,
        local_addr,
        gate,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rest_credentials_round_trip_and_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c =
            turn_credentials(b"0123456789abcdef", "alice", Duration::from_secs(600), now).unwrap();
        assert_eq!(c.username, "1700000600:alice");
        assert_eq!(
            verify_turn_credentials(b"0123456789abcdef", &c.username, &c.password, now),
            Some("alice".into())
        );
        let later = now + Duration::from_secs(601);
        assert_eq!(
            verify_turn_credentials(b"0123456789abcdef", &c.username, &c.password, later),
            None
        );
        assert_eq!(
            verify_turn_credentials(b"another-secret-x", &c.username, &c.password, now),
            None
        );
        assert!(turn_credentials(b"k", "a:b", Duration::from_secs(1), now).is_err());
        // TTL is capped.
        let c = turn_credentials(
            b"0123456789abcdef",
            "bob",
            Duration::from_secs(1 << 30),
            now,
        )
        .unwrap();
        assert_eq!(c.expires_at, 1_700_000_000 + MAX_TTL.as_secs());
        assert!(!format!("{c:?}").contains(&c.password));
    }
}
