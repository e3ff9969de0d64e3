//! The relay's TURN server (`cove-turn`, the one TURN implementation Cove has) and the
//! short-lived TURN REST credentials it hands to authenticated devices
//! (`Request::TurnCredentials`).
//!
//! ```text
//! username = "<expiry unix seconds>:<user>/d<device id>"
//! password = base64(HMAC-SHA1(secret, username))
//! ```
//!
//! The TURN server relays only to peers its [`cove_turn::PeerPolicy`] permits (never the
//! relay host's loopback, private or link-local networks, nor its own addresses, unless the
//! config's `turn_allow_peers` names them) and caps the allocations per credential and per
//! user (the user part before the `/`).
//!
//! The shared secret is 32 random bytes created once per data directory
//! (`DATA/turn.secret`, mode 0600), or in the file `[secrets] turn_secret` names, which every
//! node of a cluster shares so that a credential minted by one node is accepted by the TURN
//! server of any other; it is never logged. The TURN server derives the password
//! itself from the username, so it keeps no per-device state. An expired credential cannot make
//! a new allocation but still renews the allocation made with it (see `cove-turn`), so a call
//! outlives its credential. The relay only relays UDP datagrams for calls; what it relays is
//! DTLS-SRTP carrying SFrame-encrypted media.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use cove_turn::{TurnServerHandle, TurnStats, turn_credentials};
use cove_wire::{BoundedVec, DeviceId, ErrorCode, ErrorReply, Reply};
use rand::RngCore;

/// Default lifetime of the credentials handed out ([`crate::RelayConfig::turn_credential_ttl`]).
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(600);
/// The TURN realm.
pub const REALM: &str = "cove";
/// The secret's file name in the data directory.
pub const SECRET_FILE: &str = "turn.secret";

/// Why the TURN server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// Reading or writing the secret failed.
    #[error("TURN secret: {0}")]
    Io(#[from] std::io::Error),
    /// The TURN server could not start (binding its socket failed, or the listen address is
    /// unspecified: it is also the relayed address, so it must be a concrete IP).
    #[error("TURN server: {0}")]
    Server(#[from] cove_turn::TurnError),
}

struct Secret(Vec<u8>);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// The running TURN server and its credential minting.
pub(crate) struct TurnService {
    server: TurnServerHandle,
    secret: Secret,
    ttl: Duration,
}

impl TurnService {
    /// Loads (or creates) the secret file `secret_path` and starts the server on `listen`;
    /// the credentials it hands out are valid for `ttl`.
    pub(crate) async fn start(
        listen: SocketAddr,
        secret_path: &Path,
        ttl: Duration,
        peers: cove_turn::PeerPolicy,
    ) -> Result<Self, TurnError> {
        let secret = load_secret(secret_path)?;
        let server = cove_turn::start_turn_server(listen, REALM, &secret.0, peers).await?;
        Ok(TurnService {
            server,
            secret,
            ttl,
        })
    }

    /// The UDP address the server listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Counters of refused credentials and renewals after expiry.
    pub(crate) fn stats(&self) -> TurnStats {
        self.server.stats()
    }

    /// Credentials for `device` of `user`, valid for the configured lifetime.
    pub(crate) fn credentials(
        &self,
        user: &cove_wire::UserName,
        device: DeviceId,
    ) -> Result<Reply, ErrorReply> {
        let c = turn_credentials(
            &self.secret.0,
            &format!("{user}/d{device}"),
            self.ttl,
            SystemTime::now(),
        )
        .map_err(|_| ErrorReply::new(ErrorCode::Internal, "TURN credentials"))?;
        Ok(Reply::TurnCredentials {
            urls: BoundedVec(vec![self.server.url()]),
            username: c.username,
            password: c.password,
            expires_at_ms: c.expires_at.saturating_mul(1000),
        })
    }

    /// Stops the server.
    pub(crate) async fn close(self) {
        if let Err(e) = self.server.close().await {
            tracing::warn!(error = %e, "TURN server did not close cleanly");
        }
    }
}

/// Loads the secret from `path`, creating it with 32 random bytes if absent (two nodes
/// creating it at once agree: see [`crate::secret_file`]). A file of another length is an
/// error.
fn load_secret(path: &Path) -> Result<Secret, TurnError> {
    let bytes = Secret(
        crate::secret_file::load_or_create(path, || {
            let mut bytes = vec![0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            bytes
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
    );
    if bytes.0.len() != 32 {
        return Err(TurnError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not 32 bytes", path.display()),
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secret_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE);
        let a = load_secret(&path).unwrap();
        let b = load_secret(&path).unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(a.0.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            load_secret(&path),
            Err(TurnError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData
        ));
    }

    /// The credentials the relay hands out carry the user and device and the configured
    /// lifetime, and check against the data directory's secret (and no other).
    #[tokio::test]
    async fn credentials_name_the_device_and_verify_with_the_secret_only() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(90);
        let turn = TurnService::start(
            "127.0.0.1:0".parse().unwrap(),
            &dir.path().join(SECRET_FILE),
            ttl,
            cove_turn::PeerPolicy::default(),
        )
        .await
        .unwrap();
        let alice = cove_wire::UserName::new("alice").unwrap();
        let before = SystemTime::now();
        let Reply::TurnCredentials {
            urls,
            username,
            password,
            expires_at_ms,
        } = turn.credentials(&alice, DeviceId(7)).unwrap()
        else {
            panic!("not TurnCredentials");
        };
        assert_eq!(
            urls.0,
            vec![format!("turn:{}?transport=udp", turn.local_addr())]
        );
        let expires_at = expires_at_ms / 1000;
        assert_eq!(username, format!("{expires_at}:alice/d7"));
        let now_secs = before
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now_secs + 89..=now_secs + 91).contains(&expires_at));
        let secret = load_secret(&dir.path().join(SECRET_FILE)).unwrap();
        assert_eq!(
            cove_turn::verify_turn_credentials(&secret.0, &username, &password, before),
            Some("alice/d7".to_owned())
        );
        assert_eq!(
            cove_turn::verify_turn_credentials(&[9; 32], &username, &password, before),
            None
        );
        turn.close().await;
    }
}
