//! TURN REST credentials: a username carrying its expiry and a password derived from it.
//!
//! ```text
//! username = "<expiry unix seconds>:<user>"
//! password = base64(HMAC-SHA1(shared_secret, username))
//! ```
//!
//! Whoever holds the shared secret mints them ([`turn_credentials`]); the TURN server derives
//! the password itself from the username, so it keeps no per-user state.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::TurnError;

/// Longest credential lifetime handed out (24 h, as Signal's TURN provider allows).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Suggested credential lifetime (clients cache credentials for at most this long).
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);
/// Longest user name embedded in a TURN username.
pub const MAX_USER_LEN: usize = 128;

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

pub(crate) fn rest_password(secret: &[u8], username: &str) -> String {
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

/// `(expiry, user)` of a well-formed TURN REST username.
pub(crate) fn parse_username(username: &str) -> Option<(u64, &str)> {
    let (expiry, user) = username.split_once(':')?;
    let expiry: u64 = expiry.parse().ok()?;
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return None;
    }
    Some((expiry, user))
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
