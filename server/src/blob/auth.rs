//! Signed HTTP requests: `Cove-Device` (decimal device id), `Cove-Timestamp` (ms since the
//! Unix epoch) and `Cove-Signature` (hex Ed25519 signature by the device key over
//! [`cove_wire::sign::blob_request_message`]). No bearer secret ever crosses the wire; a
//! signature is good for one method, path and offset within a ±5 minute window, and only
//! once: [`ReplayGuard`] remembers every accepted signature until its timestamp has left the
//! window.

use std::collections::HashMap;
use std::sync::Mutex;

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

    /// The signature bytes (the replay-cache key; strict verification makes them unique per
    /// signed message).
    pub(crate) fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The signed timestamp.
    pub(crate) fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }
}

/// Most signatures remembered at once; beyond it new requests are refused (503) until old
/// ones leave the window. About 100 bytes each.
pub(crate) const MAX_REMEMBERED: usize = 1 << 20;

/// Why [`ReplayGuard::admit`] refused a signature.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// This signature was accepted before.
    Seen,
    /// Too many signatures in the window to remember another.
    Full,
}

/// Signatures accepted within the clock window. A request whose signature is already here is
/// a replay; entries are dropped once their timestamp is more than [`MAX_SKEW_MS`] in the
/// past, when the skew check refuses them anyway.
#[derive(Default)]
pub(crate) struct ReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Signature -> its timestamp.
    map: HashMap<[u8; 64], u64>,
    /// When expired entries were last dropped (at most once a second, as it walks them all).
    pruned_ms: u64,
}

impl ReplayGuard {
    /// Records a verified signature; refuses one seen before.
    pub(crate) fn admit(
        &self,
        signature: &[u8; 64],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), Replay> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.map.contains_key(signature) {
            return Err(Replay::Seen);
        }
        if seen.map.len() >= MAX_REMEMBERED / 2 && now_ms >= seen.pruned_ms.saturating_add(1000) {
            prune(&mut seen.map, now_ms);
            seen.pruned_ms = now_ms;
        }
        if seen.map.len() >= MAX_REMEMBERED {
            return Err(Replay::Full);
        }
        seen.map.insert(*signature, timestamp_ms);
        Ok(())
    }

    /// Forgets signatures whose timestamp is too old to pass the skew check at `now_ms`.
    #[cfg(test)]
    fn prune(&self, now_ms: u64) -> usize {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut seen.map, now_ms);
        seen.map.len()
    }
}

fn prune(seen: &mut HashMap<[u8; 64], u64>, now_ms: u64) {
    seen.retain(|_, ts| ts.saturating_add(MAX_SKEW_MS) >= now_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_admitted_once_and_forgotten_only_after_the_window() {
        let guard = ReplayGuard::default();
        let (a, b) = ([1u8; 64], [2u8; 64]);
        let now = 10 * MAX_SKEW_MS;
        assert_eq!(guard.admit(&a, now, now), Ok(()));
        assert_eq!(guard.admit(&a, now, now), Err(Replay::Seen));
        assert_eq!(guard.admit(&b, now + 1, now), Ok(()));
        // Still inside the window: both kept (a replay would still be caught).
        assert_eq!(guard.prune(now + MAX_SKEW_MS), 2);
        assert_eq!(guard.admit(&a, now, now + MAX_SKEW_MS), Err(Replay::Seen));
        // Past it: `a` is forgotten (the skew check refuses it from now on), `b` is not.
        assert_eq!(guard.prune(now + MAX_SKEW_MS + 1), 1);
        assert_eq!(guard.prune(now + MAX_SKEW_MS + 2), 0);
    }
}
