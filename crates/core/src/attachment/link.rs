//! Share links: `https://HOST:PORT/s/<blob-id>#<key>.<digest>.<size>.<name>.<type>`.
//!
//! Everything after `#` is the fragment, which browsers and the Cove CLI never send to the
//! server: the relay sees only the blob id. Fields are base64url without padding (`size` is
//! decimal); only the key is required, the others are checked or shown when present.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cove_wire::BlobId;

use super::pointer::{validate_media_type, validate_name};
use super::{AttachmentPointer, FileKey, KEY_LEN};

/// Longest link accepted by [`ShareLink::parse`].
pub const MAX_LINK_LEN: usize = 2048;

/// A parsed share link.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ShareLink {
    /// `https://HOST:PORT` (no trailing slash).
    pub origin: String,
    /// The blob.
    pub blob_id: BlobId,
    /// The file key.
    pub key: FileKey,
    /// SHA-256 of the blob, if the link carries it.
    pub digest: Option<[u8; 32]>,
    /// Plaintext size, if the link carries it.
    pub size: Option<u64>,
    /// File name, if the link carries it.
    pub name: Option<String>,
    /// Media type, if the link carries it.
    pub media_type: Option<String>,
}

/// Why a share link could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareLinkError {
    /// Not of the form `https://HOST[:PORT]/s/<32 hex digits>#<key>...`.
    #[error("not a Cove share link (expected https://HOST:PORT/s/<id>#<key>)")]
    Malformed,
    /// The key part is not 32 bytes of base64url.
    #[error("share link has an invalid key")]
    Key,
    /// An optional field is malformed.
    #[error("share link has an invalid {0}")]
    Field(&'static str),
}

impl ShareLink {
    /// The link for an uploaded attachment on the relay at `origin` (`https://HOST:PORT`).
    pub fn from_pointer(origin: &str, p: &AttachmentPointer) -> Self {
        ShareLink {
            origin: origin.trim_end_matches('/').to_owned(),
            blob_id: p.blob_id,
            key: p.key.clone(),
            digest: Some(p.digest),
            size: Some(p.size),
            name: Some(p.name.clone()),
            media_type: Some(p.media_type.clone()),
        }
    }

    /// The link as text.
    pub fn to_url(&self) -> String {
        let mut s = format!(
            "{}/s/{}#{}",
            self.origin,
            self.blob_id.to_hex(),
            B64.encode(self.key.as_bytes())
        );
        s.push('.');
        if let Some(d) = &self.digest {
            s.push_str(&B64.encode(d));
        }
        s.push('.');
        if let Some(n) = self.size {
            s.push_str(&n.to_string());
        }
        s.push('.');
        if let Some(n) = &self.name {
            s.push_str(&B64.encode(n.as_bytes()));
        }
        s.push('.');
        if let Some(t) = &self.media_type {
            s.push_str(&B64.encode(t.as_bytes()));
        }
        s
    }

    /// Parses a link.
    pub fn parse(link: &str) -> Result<Self, ShareLinkError> {
        let link = link.trim();
        if link.len() > MAX_LINK_LEN {
            return Err(ShareLinkError::Malformed);
        }
        let (url, fragment) = link.split_once('#').ok_or(ShareLinkError::Malformed)?;
        let rest = url
            .strip_prefix("https://")
            .ok_or(ShareLinkError::Malformed)?;
        let (authority, path) = rest.split_once('/').ok_or(ShareLinkError::Malformed)?;
        if authority.is_empty() || authority.contains(['@', '?']) {
            return Err(ShareLinkError::Malformed);
        }
        let id = path.strip_prefix("s/").ok_or(ShareLinkError::Malformed)?;
        let blob_id = BlobId::from_hex(id).map_err(|_| ShareLinkError::Malformed)?;
        let mut parts = fragment.split('.');
        let key_bytes = B64
            .decode(parts.next().unwrap_or_default())
            .map_err(|_| ShareLinkError::Key)?;
        let key: [u8; KEY_LEN] = key_bytes
            .as_slice()
            .try_into()
            .map_err(|_| ShareLinkError::Key)?;
        let field = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        let digest = match field(parts.next()) {
            Some(d) => Some(
                B64.decode(d)
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
                    .ok_or(ShareLinkError::Field("digest"))?,
            ),
            None => None,
        };
        let size = match field(parts.next()) {
            Some(s) => Some(
                s.parse::<u64>()
                    .map_err(|_| ShareLinkError::Field("size"))?,
            ),
            None => None,
        };
        let text =
            |s: Option<String>, what: &'static str| -> Result<Option<String>, ShareLinkError> {
                match s {
                    Some(s) => {
                        let v = B64.decode(s).map_err(|_| ShareLinkError::Field(what))?;
                        String::from_utf8(v)
                            .map(Some)
                            .map_err(|_| ShareLinkError::Field(what))
                    }
                    None => Ok(None),
                }
            };
        let name = text(field(parts.next()), "name")?;
        if let Some(n) = &name {
            validate_name(n).map_err(|_| ShareLinkError::Field("name"))?;
        }
        let media_type = text(field(parts.next()), "media type")?;
        if let Some(t) = &media_type {
            validate_media_type(t).map_err(|_| ShareLinkError::Field("media type"))?;
        }
        if parts.next().is_some() {
            return Err(ShareLinkError::Malformed);
        }
        Ok(ShareLink {
            origin: format!("https://{authority}"),
            blob_id,
            key: FileKey::from_bytes(key),
            digest,
            size,
            name,
            media_type,
        })
    }
}
