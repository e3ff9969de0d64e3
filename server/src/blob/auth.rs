//! Signed HTTP requests: `Cove-Device` (decimal device id), `Cove-Timestamp` (ms since the
//! Unix epoch) and `Cove-Signature` (hex Ed25519 signature by the device key over
//! [`cove_wire::sign::blob_request_message`]). No bearer secret ever crosses the wire; a
//! signature is good for one method, path and offset within a ±5 minute window.

use cove_wire::{DeviceId, DeviceKey};
use ed25519_dalek::{Signature, VerifyingKey};
use http::HeaderMap;

/// Accepted clock difference between device and relay.
pub(crate) const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// The three signature headers of a request.
pub(crate) struct SignedHeaders {
    pub device: DeviceId,
    timestamp_ms: u64,
    signature: [u8; 64],
}

impl SignedHeaders {
    pub(crate) fn parse(h: &HeaderMap) -> Result<Self, &'static str> {
        const MISSING: &str =
            "missing or malformed Cove-Device / Cove-Timestamp / Cove-Signature headers";
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let device = get("cove-device")
            .and_then(|v| v.parse().ok())
            .ok_or(MISSING)?;
        let timestamp_ms = get("cove-timestamp")
            .and_then(|v| v.parse().ok())
            .ok_or(MISSING)?;
        let mut signature = [0u8; 64];
        hex::decode_to_slice(get("cove-signature").ok_or(MISSING)?, &mut signature)
            .map_err(|_| MISSING)?;
        Ok(SignedHeaders {
            device: DeviceId(device),
            timestamp_ms,
            signature,
        })
    }

    pub(crate) fn verify(
        &self,
        method: &str,
        path: &str,
        value: u64,
        key: &DeviceKey,
        now_ms: u64,
    ) -> Result<(), &'static str> {
        if self.timestamp_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err("request timestamp more than 5 minutes off the relay's clock");
        }
        let key = VerifyingKey::from_bytes(&key.0).map_err(|_| "invalid device key")?;
        let msg = cove_wire::sign::blob_request_message(method, path, self.timestamp_ms, value);
        key.verify_strict(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| "invalid request signature")
    }
}
