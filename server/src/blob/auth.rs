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

/// The fuzz entry point `cove_server::fuzzing::blob_request` (the `blob_request` target in
/// `fuzz/`, replayed over `fuzz/corpus/blob_request/` by this crate's tests). `data` is a
/// request head as text, `METHOD PATH` then `Name: value` lines. What the relay does with a
/// request before it touches storage runs on it: the path's blob id, the signed value
/// (`Upload-Length` of a `POST /v1/blobs`, `Upload-Offset` of a `PATCH`, else 0), the
/// signature headers, the signature under [`fuzzing::device_key`] at [`fuzzing::NOW_MS`], and
/// the replay guard. A request that verifies must be admitted once, refused as a replay the
/// second time, and not verify for another value or path.
pub mod fuzzing {
    use ed25519_dalek::{Signer, SigningKey};
    use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

    use super::{Replay, ReplayGuard, SignedHeaders};
    use cove_wire::{BlobId, DeviceKey};

    /// The relay's clock for fuzzed requests (ms since the Unix epoch).
    pub const NOW_MS: u64 = 1_700_000_000_000;
    /// The seed of the device key fuzzed requests are checked against.
    const DEVICE_SEED: [u8; 32] = [0x11; 32];

    /// The device key fuzzed requests are checked against.
    pub fn device_key() -> DeviceKey {
        DeviceKey(
            SigningKey::from_bytes(&DEVICE_SEED)
                .verifying_key()
                .to_bytes(),
        )
    }

    /// See the module documentation. True when the request's signature verified.
    pub fn blob_request(data: &[u8]) -> bool {
        let Some((method, uri, headers)) = parse_head(data) else {
            return false;
        };
        let path = uri.path();
        let header_u64 =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        let value = if path == "/v1/blobs" || path == "/v1/blobs/" {
            match header_u64("upload-length") {
                Some(v) if method == Method::POST => v,
                _ => return false,
            }
        } else if let Some(id) = path.strip_prefix("/v1/blobs/") {
            if BlobId::from_hex(id).is_err() {
                return false;
            }
            if method == Method::PATCH {
                match header_u64("upload-offset") {
                    Some(v) => v,
                    None => return false,
                }
            } else {
                0
            }
        } else {
            let _ = path.strip_prefix("/s/").map(BlobId::from_hex);
            return false;
        };
        let Ok(signed) = SignedHeaders::parse(&headers) else {
            return false;
        };
        let key = device_key();
        if signed
            .verify(method.as_str(), path, value, &key, NOW_MS)
            .is_err()
        {
            return false;
        }
        assert!(
            signed
                .verify(method.as_str(), path, value ^ 1, &key, NOW_MS)
                .is_err()
                && signed
                    .verify(method.as_str(), "/v1/blobs/x", value, &key, NOW_MS)
                    .is_err(),
            "a blob request signature verified for another request"
        );
        let guard = ReplayGuard::default();
        let first = guard.admit(signed.signature(), signed.timestamp_ms(), NOW_MS);
        let second = guard.admit(signed.signature(), signed.timestamp_ms(), NOW_MS);
        assert!(
            first.is_ok() && second == Err(Replay::Seen),
            "the replay guard let a signature through twice: {first:?} {second:?}"
        );
        true
    }

    /// Requests signed with [`device_key`] at [`NOW_MS`], for a seed corpus: create, append,
    /// status, delete, and a signature for one value sent with another.
    pub fn samples() -> Vec<Vec<u8>> {
        let key = SigningKey::from_bytes(&DEVICE_SEED);
        let blob = "/v1/blobs/00112233445566778899aabbccddeeff";
        let sign = |method: &str, path: &str, value: u64, extra: &str| {
            let msg = cove_wire::sign::blob_request_message(method, path, NOW_MS, value);
            let signature = hex::encode(key.sign(&msg).to_bytes());
            format!(
                "{method} {path} HTTP/1.1\r\nCove-Device: 7\r\nCove-Timestamp: {NOW_MS}\r\n\
                 Cove-Signature: {signature}\r\n{extra}\r\n"
            )
            .into_bytes()
        };
        vec![
            sign("POST", "/v1/blobs", 1000, "Upload-Length: 1000\r\n"),
            sign("PATCH", blob, 64, "Upload-Offset: 64\r\n"),
            sign("HEAD", blob, 0, ""),
            sign("DELETE", blob, 0, ""),
            sign("PATCH", blob, 64, "Upload-Offset: 65\r\n"),
            b"GET /s/00112233445566778899aabbccddeeff HTTP/1.1\r\nRange: bytes=0-9\r\n\r\n"
                .to_vec(),
        ]
    }

    /// `METHOD PATH [VERSION]` then header lines up to an empty line; lines that are not a
    /// valid header are skipped (hyper would refuse the request; here the rest still runs).
    fn parse_head(data: &[u8]) -> Option<(Method, Uri, HeaderMap)> {
        let text = std::str::from_utf8(data).ok()?;
        let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
        let mut request_line = lines.next()?.split(' ');
        let method = Method::from_bytes(request_line.next()?.as_bytes()).ok()?;
        let uri: Uri = request_line.next()?.parse().ok()?;
        let mut headers = HeaderMap::new();
        for line in lines.take_while(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
        Some((method, uri, headers))
    }
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
