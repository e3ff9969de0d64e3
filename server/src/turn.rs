//! The relay's TURN server (RFC 5766, the webrtc-rs `turn` crate) and the short-lived TURN
//! REST credentials it hands to authenticated devices (`Request::TurnCredentials`).
//!
//! ```text
//! username = "<expiry unix seconds>:d<device id>"
//! password = base64(HMAC-SHA1(secret, username))
//! ```
//!
//! The shared secret is 32 random bytes created once per data directory
//! (`DATA/turn.secret`, mode 0600) and never logged. The TURN server derives the password
//! itself from the username, so it keeps no per-device state. The relay only relays UDP
//! datagrams for calls; what it relays is DTLS-SRTP carrying SFrame-encrypted media.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cove_wire::{BoundedVec, DeviceId, ErrorCode, ErrorReply, Reply};
use rand::RngCore;
use ring::hmac;
use tokio::net::UdpSocket;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::relay_static::RelayAddressGeneratorStatic;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::vnet::net::Net;

/// Lifetime of the credentials handed out.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(600);
/// The TURN realm.
pub const REALM: &str = "cove";
/// The secret's file name in the data directory.
pub const SECRET_FILE: &str = "turn.secret";
/// Longest identity embedded in a TURN username.
const MAX_USER_LEN: usize = 128;

/// Why the TURN server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// Binding the UDP socket or reading/writing the secret failed.
    #[error("TURN: {0}")]
    Io(#[from] std::io::Error),
    /// The `turn` crate refused the configuration.
    #[error("TURN server: {0}")]
    Turn(String),
    /// The listen address is unusable (it is also the relayed address, so it must be a
    /// concrete IP).
    #[error("turn_listen must be a concrete IP address (it is also the relayed address)")]
    Unspecified,
}

struct Secret(Vec<u8>);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// The running TURN server and its credential minting.
pub(crate) struct TurnService {
    server: Server,
    local_addr: SocketAddr,
    secret: Arc<Secret>,
}

impl TurnService {
    /// Loads (or creates) the secret in `data_dir` and starts the server on `listen`.
    pub(crate) async fn start(listen: SocketAddr, data_dir: &Path) -> Result<Self, TurnError> {
        if listen.ip().is_unspecified() {
            return Err(TurnError::Unspecified);
        }
        let secret = Arc::new(load_secret(data_dir)?);
        let conn = Arc::new(UdpSocket::bind(listen).await?);
        let local_addr = conn.local_addr()?;
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn,
                relay_addr_generator: Box::new(RelayAddressGeneratorStatic {
                    relay_address: listen.ip(),
                    address: listen.ip().to_string(),
                    net: Arc::new(Net::new(None)),
                }),
            }],
            realm: REALM.to_owned(),
            auth_handler: Arc::new(RestAuth {
                secret: Arc::clone(&secret),
            }),
            channel_bind_timeout: Duration::from_secs(0),
            alloc_close_notify: None,
        })
        .await
        .map_err(|e| TurnError::Turn(e.to_string()))?;
        Ok(TurnService {
            server,
            local_addr,
            secret,
        })
    }

    /// The UDP address the server listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Credentials for `device`, valid for [`CREDENTIAL_TTL`].
    pub(crate) fn credentials(&self, device: DeviceId) -> Result<Reply, ErrorReply> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ErrorReply::new(ErrorCode::Internal, "clock"))?;
        let expires = now + CREDENTIAL_TTL;
        let username = format!("{}:d{device}", expires.as_secs());
        let password = rest_password(&self.secret.0, &username);
        Ok(Reply::TurnCredentials {
            urls: BoundedVec(vec![format!("turn:{}?transport=udp", self.local_addr)]),
            username,
            password,
            expires_at_ms: u64::try_from(expires.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Stops the server.
    pub(crate) async fn close(self) {
        if let Err(e) = self.server.close().await {
            tracing::warn!(error = %e, "TURN server did not close cleanly");
        }
    }
}

fn load_secret(data_dir: &Path) -> Result<Secret, TurnError> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 32 => return Ok(Secret(bytes)),
        Ok(_) => {
            return Err(TurnError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not 32 bytes", path.display()),
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut bytes = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let tmp = data_dir.join(format!("{SECRET_FILE}.tmp"));
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(Secret(bytes))
}

fn rest_password(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    BASE64.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

struct RestAuth {
    secret: Arc<Secret>,
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
        let password = rest_password(&self.secret.0, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secret_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_secret(dir.path()).unwrap();
        let b = load_secret(dir.path()).unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(a.0.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
        std::fs::write(dir.path().join(SECRET_FILE), b"short").unwrap();
        assert!(load_secret(dir.path()).is_err());
    }

    #[test]
    fn auth_handler_accepts_fresh_credentials_only() {
        let secret = Arc::new(Secret(vec![9; 32]));
        let auth = RestAuth {
            secret: Arc::clone(&secret),
        };
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let future = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let user = format!("{future}:d1");
        let key = auth.auth_handle(&user, REALM, addr).unwrap();
        let password = rest_password(&secret.0, &user);
        assert_eq!(key, generate_auth_key(&user, REALM, &password));
        assert!(auth.auth_handle("1:d1", REALM, addr).is_err());
        assert!(auth.auth_handle("nocolon", REALM, addr).is_err());
    }
}
