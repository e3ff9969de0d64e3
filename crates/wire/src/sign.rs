//! The exact bytes a device signs with its Ed25519 device key. Each starts with its own
//! domain-separation label so a signature made for one purpose can never be replayed for
//! another. Verification lives with whoever holds a verifier (the relay, the client core);
//! this crate only fixes the bytes.

use crate::{DeviceKey, UserName};

/// Label for the connection challenge.
pub const AUTH_LABEL: &[u8] = b"cove/v1/auth-challenge\0";
/// Label for authorising a further device of a user.
pub const ADD_DEVICE_LABEL: &[u8] = b"cove/v1/add-device\0";

/// The TLS exporter label (RFC 8446 §7.5, no context, 32 bytes) of
/// [`ChannelBinding::exporter`].
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-cove-auth-v1";

/// What ties a challenge answer to one TLS connection with one relay: both ends compute it
/// from their side of the connection, and the device signs it with the nonce. A relay that
/// forwards the answer over another TLS connection (a man in the middle, or another relay the
/// user also logs into) has another exporter value, or another certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelBinding {
    /// The connection's TLS exporter value for [`TLS_EXPORTER_LABEL`] (32 bytes, no context).
    pub exporter: [u8; 32],
    /// SHA-256 of the relay's end-entity certificate (DER), as the device saw it / as the
    /// relay serves it.
    pub relay_certificate: [u8; 32],
}

/// What a device signs to answer a connection challenge: it binds the relay's fresh nonce,
/// the TLS connection and the relay's certificate it was sent on (`channel`), the claimed user
/// and the device key, so a response is good for one connection to one relay only.
pub fn auth_challenge_message(
    nonce: &[u8; 32],
    channel: &ChannelBinding,
    user: &UserName,
    key: &DeviceKey,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_LABEL.len() + 32 + 64 + 1 + user.as_str().len() + 32);
    m.extend_from_slice(AUTH_LABEL);
    m.extend_from_slice(nonce);
    m.extend_from_slice(&channel.exporter);
    m.extend_from_slice(&channel.relay_certificate);
    m.push(user.as_str().len() as u8); // at most 32, see limits::USER_NAME_LEN
    m.extend_from_slice(user.as_str().as_bytes());
    m.extend_from_slice(&key.0);
    m
}

/// What an existing device of `user` signs to authorise `new_key` as a further device.
pub fn add_device_message(user: &UserName, new_key: &DeviceKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(ADD_DEVICE_LABEL.len() + 1 + user.as_str().len() + 32);
    m.extend_from_slice(ADD_DEVICE_LABEL);
    m.push(user.as_str().len() as u8); // at most 32, see limits::USER_NAME_LEN
    m.extend_from_slice(user.as_str().as_bytes());
    m.extend_from_slice(&new_key.0);
    m
}

/// Label for HTTP requests to the relay's blob store.
pub const BLOB_REQUEST_LABEL: &[u8] = b"cove/v1/blob-request\0";

/// What a device signs to authenticate one HTTP request to the blob store (headers
/// `Cove-Device`, `Cove-Timestamp`, `Cove-Signature`): the method, the path (without query),
/// the timestamp (ms since the Unix epoch, accepted within ±5 minutes) and `value`, the
/// request's `Upload-Length` for a create, its `Upload-Offset` for an append, else 0.
pub fn blob_request_message(method: &str, path: &str, timestamp_ms: u64, value: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(BLOB_REQUEST_LABEL.len() + 32 + method.len() + path.len());
    m.extend_from_slice(BLOB_REQUEST_LABEL);
    m.extend_from_slice(&(method.len() as u64).to_be_bytes());
    m.extend_from_slice(method.as_bytes());
    m.extend_from_slice(&(path.len() as u64).to_be_bytes());
    m.extend_from_slice(path.as_bytes());
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m.extend_from_slice(&value.to_be_bytes());
    m
}

/// Label for fetching the recovery-wrapped account bundle.
pub const RECOVERY_FETCH_LABEL: &[u8] = b"cove/v1/recovery-fetch\0";

/// What the recovery auth key signs to fetch `user`'s recovery-wrapped bundle: the relay's
/// fresh nonce of this connection, the connection's channel binding (as in
/// [`auth_challenge_message`]) and the user, so a signature is good for one connection to
/// one relay and cannot be forwarded.
pub fn recovery_fetch_message(
    nonce: &[u8; 32],
    channel: &ChannelBinding,
    user: &UserName,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(RECOVERY_FETCH_LABEL.len() + 96 + 1 + user.as_str().len());
    m.extend_from_slice(RECOVERY_FETCH_LABEL);
    m.extend_from_slice(nonce);
    m.extend_from_slice(&channel.exporter);
    m.extend_from_slice(&channel.relay_certificate);
    m.push(user.as_str().len() as u8); // at most 32, see limits::USER_NAME_LEN
    m.extend_from_slice(user.as_str().as_bytes());
    m
}

/// Label for resetting a password with the recovery key.
pub const PASSWORD_RESET_LABEL: &[u8] = b"cove/v1/password-reset\0";

/// What the recovery auth key signs to reset `user`'s password on a connection that fetched
/// the recovery bundle with `nonce` and `channel` (as [`recovery_fetch_message`], under
/// another label): the new OPAQUE `upload` and the new `password_bundle` in full, each
/// after its length (2 bytes, big-endian; both are bounded far below 64 KiB by
/// `limits::MAX_ACCOUNT_MESSAGE_BYTES`). A signature is good for this connection, relay,
/// user, record and bundle only: it cannot be forwarded, replayed or put on other bytes.
pub fn password_reset_message(
    nonce: &[u8; 32],
    channel: &ChannelBinding,
    user: &UserName,
    upload: &[u8],
    password_bundle: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        PASSWORD_RESET_LABEL.len()
            + 96
            + 1
            + user.as_str().len()
            + 4
            + upload.len()
            + password_bundle.len(),
    );
    m.extend_from_slice(PASSWORD_RESET_LABEL);
    m.extend_from_slice(nonce);
    m.extend_from_slice(&channel.exporter);
    m.extend_from_slice(&channel.relay_certificate);
    m.push(user.as_str().len() as u8); // at most 32, see limits::USER_NAME_LEN
    m.extend_from_slice(user.as_str().as_bytes());
    for part in [upload, password_bundle] {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The reset signature covers each of its inputs, and the upload and bundle are
    /// delimited: moving a byte from one to the other changes the signed bytes.
    #[test]
    fn password_reset_message_changes_with_each_input_and_delimits_its_parts() {
        let nonce = [1; 32];
        let channel = ChannelBinding {
            exporter: [2; 32],
            relay_certificate: [3; 32],
        };
        let alice = UserName::new("alice").unwrap();
        let bob = UserName::new("bob").unwrap();
        let m = |n: &[u8; 32], c: &ChannelBinding, u: &UserName, up: &[u8], b: &[u8]| {
            password_reset_message(n, c, u, up, b)
        };
        let base = m(&nonce, &channel, &alice, b"upload", b"bundle");
        assert!(base.starts_with(PASSWORD_RESET_LABEL));
        let other_exporter = ChannelBinding {
            exporter: [9; 32],
            ..channel
        };
        let other_certificate = ChannelBinding {
            relay_certificate: [9; 32],
            ..channel
        };
        for variant in [
            m(&[9; 32], &channel, &alice, b"upload", b"bundle"),
            m(&nonce, &other_exporter, &alice, b"upload", b"bundle"),
            m(&nonce, &other_certificate, &alice, b"upload", b"bundle"),
            m(&nonce, &channel, &bob, b"upload", b"bundle"),
            m(&nonce, &channel, &alice, b"uploaD", b"bundle"),
            m(&nonce, &channel, &alice, b"upload", b"bundlE"),
            m(&nonce, &channel, &alice, b"uploadb", b"undle"),
        ] {
            assert_ne!(variant, base);
        }
        // Not the recovery fetch's bytes either (another label).
        assert!(!base.starts_with(RECOVERY_FETCH_LABEL));
    }

    /// The challenge answer covers each of its inputs: changing any one of nonce, exporter,
    /// relay certificate, user or key changes the signed bytes.
    #[test]
    fn auth_challenge_message_changes_with_each_input() {
        let nonce = [1; 32];
        let channel = ChannelBinding {
            exporter: [2; 32],
            relay_certificate: [3; 32],
        };
        let user = UserName::new("alice").unwrap();
        let key = DeviceKey([4; 32]);
        let base = auth_challenge_message(&nonce, &channel, &user, &key);
        let variants = [
            auth_challenge_message(&[9; 32], &channel, &user, &key),
            auth_challenge_message(
                &nonce,
                &ChannelBinding {
                    exporter: [9; 32],
                    ..channel
                },
                &user,
                &key,
            ),
            auth_challenge_message(
                &nonce,
                &ChannelBinding {
                    relay_certificate: [9; 32],
                    ..channel
                },
                &user,
                &key,
            ),
            auth_challenge_message(&nonce, &channel, &UserName::new("alicf").unwrap(), &key),
            auth_challenge_message(&nonce, &channel, &user, &DeviceKey([9; 32])),
        ];
        for (n, v) in variants.iter().enumerate() {
            assert_ne!(*v, base, "input {n} is not covered");
        }
        assert!(base.starts_with(AUTH_LABEL));
    }
}
