//! The share page at `/s/<id>`: one self-contained HTML file (inline style and script, no
//! external resources) served under a Content-Security-Policy that allows exactly its own
//! script and style (by SHA-256 hash), fetches from this origin only and images from `blob:`.
//! The page reads the key from the URL fragment, which browsers never send to the server.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use sha2::{Digest, Sha256};

use super::{BlobBody, body, set, text};

const PAGE: &str = include_str!("share.html");

pub(crate) struct SharePage {
    csp: String,
}

impl SharePage {
    pub(crate) fn new() -> Self {
        let hash = |open: &str, close: &str| -> String {
            let inner = PAGE
                .split_once(open)
                .and_then(|(_, rest)| rest.split_once(close))
                .map(|(inner, _)| inner)
                .unwrap_or_default();
            format!("'sha256-{}'", base64_std(&Sha256::digest(inner.as_bytes())))
        };
        let csp = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src blob:; media-src blob:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hash("<script>", "</script>"),
            hash("<style>", "</style>"),
        );
        SharePage { csp }
    }

    pub(crate) fn response(&self, exists: bool) -> Response<BlobBody> {
        if !exists {
            return text(
                StatusCode::NOT_FOUND,
                "This shared file does not exist or has expired.",
            );
        }
        let mut r = Response::new(body::full(Bytes::from_static(PAGE.as_bytes())));
        set(&mut r, header::CONTENT_TYPE, "text/html; charset=utf-8");
        set(&mut r, header::CONTENT_SECURITY_POLICY, &self.csp);
        set(&mut r, header::REFERRER_POLICY, "no-referrer");
        set(&mut r, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        set(&mut r, header::X_FRAME_OPTIONS, "DENY");
        set(&mut r, header::CACHE_CONTROL, "no-store");
        set(&mut r, "cross-origin-opener-policy", "same-origin");
        r
    }
}

/// Standard base64 with padding (for CSP hash sources).
fn base64_std(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c.first().copied(), c.get(1).copied(), c.get(2).copied()];
        let n = (u32::from(b[0].unwrap_or(0)) << 16)
            | (u32::from(b[1].unwrap_or(0)) << 8)
            | u32::from(b[2].unwrap_or(0));
        let idx = |shift: u32| char::from(T[((n >> shift) & 63) as usize]);
        out.push(idx(18));
        out.push(idx(12));
        out.push(if b[1].is_some() { idx(6) } else { '=' });
        out.push(if b[2].is_some() { idx(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64_std(b""), "");
        assert_eq!(super::base64_std(b"f"), "Zg==");
        assert_eq!(super::base64_std(b"fo"), "Zm8=");
        assert_eq!(super::base64_std(b"foobar"), "Zm9vYmFy");
    }
}
