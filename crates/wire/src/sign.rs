//! The exact bytes a device signs with its Ed25519 device key. Each starts with its own
//! domain-separation label so a signature made for one purpose can never be replayed for
//! another. Verification lives with whoever holds a verifier (the relay, the client core);
//! this crate only fixes the bytes.

use crate::{DeviceKey, UserName};

/// Label for the connection challenge.
pub const AUTH_LABEL: &[u8] = b"cove/v1/auth-challenge\0";
/// Label for authorising a further device of a user.
pub const ADD_DEVICE_LABEL: &[u8] = b"cove/v1/add-device\0";

/// What a device signs to answer a connection challenge: it binds the relay's fresh nonce,
/// the claimed user and the device key, so a response is good for one connection only.
pub fn auth_challenge_message(nonce: &[u8; 32], user: &UserName, key: &DeviceKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_LABEL.len() + 32 + 1 + user.as_str().len() + 32);
    m.extend_from_slice(AUTH_LABEL);
    m.extend_from_slice(nonce);
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
/// fresh nonce of this connection and the user, so a signature is good for one connection.
pub fn recovery_fetch_message(nonce: &[u8; 32], user: &UserName) -> Vec<u8> {
    let mut m = Vec::with_capacity(RECOVERY_FETCH_LABEL.len() + 32 + 1 + user.as_str().len());
    m.extend_from_slice(RECOVERY_FETCH_LABEL);
    m.extend_from_slice(nonce);
    m.push(user.as_str().len() as u8); // at most 32, see limits::USER_NAME_LEN
    m.extend_from_slice(user.as_str().as_bytes());
    m
}
