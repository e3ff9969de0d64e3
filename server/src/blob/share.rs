//! The share page at `/s/<id>`: one self-contained HTML file (inline style and script, no
//! external resources) served under a Content-Security-Policy that allows exactly its own
//! script and style (by SHA-256 hash), fetches from this origin only and images from `blob:`.
//! The page reads the key from the URL fragment, which browsers never send to the server.
//!
//! A link whose blob is not here gets `gone.html` (status 404), a styled static page (style
//! only, no script) in one of three wordings: **expired** (swept after its expiry) or
//! **revoked** (deleted by its owner) when the store kept a tombstone for it
//! ([`super::BlobStore::gone`]: the file store does, for 90 days), else one that says it has
//! expired or was revoked (or never existed).

use bytes::Bytes;
use http::{Response, StatusCode, header};
use sha2::{Digest, Sha256};

use super::{BlobBody, body, set};

const PAGE: &str = include_str!("share.html");
const GONE: &str = include_str!("gone.html");

pub(crate) struct SharePage {
    csp: String,
    gone_csp: String,
    expired: String,
    revoked: String,
    unknown: String,
}

/// Which page `/s/<id>` gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Page {
    /// The blob is here: the share page.
    Share,
    /// Swept after its expiry.
    Expired,
    /// Deleted by its owner.
    Revoked,
    /// Not here, and no tombstone says why.
    Unknown,
}

/// The gone page in one wording (the texts are fixed ASCII, no markup).
fn gone(state: &str, title: &str, heading: &str, status: &str, detail: &str) -> String {
    GONE.replace("{{STATE}}", state)
        .replace("{{TITLE}}", title)
        .replace("{{HEADING}}", heading)
        .replace("{{STATUS}}", status)
        .replace("{{DETAIL}}", detail)
}

/// `'sha256-...'` of the text between the first `open` and the next `close` in `page`.
fn hash(page: &str, open: &str, close: &str) -> String {
    let inner = page
        .split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .map(|(inner, _)| inner)
        .unwrap_or_default();
    format!("'sha256-{}'", base64_std(&Sha256::digest(inner.as_bytes())))
}

impl SharePage {
    pub(crate) fn new() -> Self {
        let csp = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src blob:; media-src blob:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hash(PAGE, "<script>", "</script>"),
            hash(PAGE, "<style>", "</style>"),
        );
        let gone_csp = format!(
            "default-src 'none'; style-src {}; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hash(GONE, "<style>", "</style>"),
        );
        SharePage {
            csp,
            gone_csp,
            expired: gone(
                "expired",
                "link expired",
                "This link has expired",
                "The file or folder it pointed to was kept for a limited time, which has passed.",
                "Links made with an expiry stop working once it has passed, and a file shared \
                 from a chat lasts as long as the server keeps attachments.",
            ),
            revoked: gone(
                "revoked",
                "link revoked",
                "This link was revoked",
                "Its owner deleted what it pointed to.",
                "The owner of a link can revoke it at any time.",
            ),
            unknown: gone(
                "gone",
                "link expired or revoked",
                "This link has expired or was revoked",
                "The file or folder it pointed to is not on this server.",
                "Links can expire or be revoked by their owner; this one may also be mistyped.",
            ),
        }
    }

    pub(crate) fn response(&self, page: Page) -> Response<BlobBody> {
        let (html, csp) = match page {
            Page::Share => (Bytes::from_static(PAGE.as_bytes()), &self.csp),
            Page::Expired => (Bytes::from(self.expired.clone()), &self.gone_csp),
            Page::Revoked => (Bytes::from(self.revoked.clone()), &self.gone_csp),
            Page::Unknown => (Bytes::from(self.unknown.clone()), &self.gone_csp),
        };
        let mut r = Response::new(body::full(html));
        if page != Page::Share {
            *r.status_mut() = StatusCode::NOT_FOUND;
        }
        set(&mut r, header::CONTENT_TYPE, "text/html; charset=utf-8");
        set(&mut r, header::CONTENT_SECURITY_POLICY, csp);
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
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    /// The `hidden` attribute wins over the page's own `display` rules (the Save link is
    /// `display: inline-block`, which without this rule shows it, dead, while hidden).
    #[test]
    fn the_share_pages_stylesheet_lets_hidden_hide() {
        let style = super::PAGE
            .split_once("<style>")
            .and_then(|(_, rest)| rest.split_once("</style>"))
            .map(|(style, _)| style)
            .unwrap_or_default();
        assert!(
            style.contains("[hidden] { display: none !important; }"),
            "{style}"
        );
    }

    /// The pages' CSP hashes cover their whole inline style and script.
    #[test]
    fn csp_hashes_name_the_inline_blocks() {
        let page = super::SharePage::new();
        for (csp, html) in [(&page.csp, super::PAGE), (&page.gone_csp, super::GONE)] {
            assert!(
                csp.contains(&super::hash(html, "<style>", "</style>")),
                "{csp}"
            );
            assert!(!super::hash(html, "<style>", "</style>").contains("47DEQpj8"));
        }
        assert!(
            page.csp
                .contains(&super::hash(super::PAGE, "<script>", "</script>"))
        );
        assert!(!super::GONE.contains("<script"));
        for html in [&page.expired, &page.revoked, &page.unknown] {
            assert!(!html.contains("{{"), "{html}");
            assert_eq!(
                super::hash(html, "<style>", "</style>"),
                super::hash(super::GONE, "<style>", "</style>")
            );
        }
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64_std(b""), "");
        assert_eq!(super::base64_std(b"f"), "Zg==");
        assert_eq!(super::base64_std(b"fo"), "Zm8=");
        assert_eq!(super::base64_std(b"foobar"), "Zm9vYmFy");
    }
}
