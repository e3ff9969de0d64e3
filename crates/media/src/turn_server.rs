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
//! The server accepts a username only if its expiry is in the future, and derives the password
//! itself. This module depends on nothing else in cove-media, so the relay can call it (or copy
//! it) without linking MLS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::relay_static::RelayAddressGeneratorStatic;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
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
        let (expiry, user) = username
            .split_once(':')
            .ok_or_else(|| turn::Error::Other("bad username".into()))?;
        let expiry: u64 = expiry
            .parse()
            .map_err(|_| turn::Error::Other("bad expiry".into()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| turn::Error::Other("clock".into()))?
            .as_secs();
        if expiry <= now || user.is_empty() || user.len() > MAX_USER_LEN {
            return Err(turn::Error::Other("expired or bad credentials".into()));
        }
        let password = rest_password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// A running TURN server.
pub struct TurnServerHandle {
    server: Server,
    local_addr: SocketAddr,
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
    let conn = Arc::new(UdpSocket::bind(udp_addr).await?);
    let local_addr = conn.local_addr()?;
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
        alloc_close_notify: None,
    })
    .await
    .map_err(|e| TurnError::Turn(e.to_string()))?;
    Ok(TurnServerHandle { server, local_addr })
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
