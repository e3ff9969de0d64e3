//! Public links to a drive file or folder (`cove drive link`): the linked subtree as it is
//! now, with the keys of its files, sealed in a blob whose key goes after `#`; the share
//! page at `/s/<id>` lists it and decrypts files in the browser. See `PROTOCOL.md`,
//! "Drive links".
//!
//! The link document is JSON (the share page parses it):
//!
//! ```text
//! {"v":1,"name":"<linked node>","kind":"folder"|"file","folders":["a","a/b"],
//!  "files":[{"path":"a/x.txt","size":N,"modified_ms":N,"sha256":"<hex>",
//!            "secret":"<base64url>","chunks":[{"id":"<hex>","blob":"<hex>","len":N}]}]}
//! ```
//!
//! Paths are relative to the linked node, parents listed before children; a file link holds
//! one file whose path is its name. Manifests kept in blobs are fetched and inlined, so the
//! page needs nothing but the document and the chunk blobs. The document is sealed
//! ([`seal::seal`] with [`seal::LINK_AAD`]) under a new one-time key and uploaded kept until
//! revoked (or until its expiry); it is at most [`MAX_LINK_DOCUMENT`] bytes.

use cove_core::drive::op::SealedBlob;
use cove_core::drive::seal;
use cove_core::drive::{
    FileSecret, FileVersion, ManifestRef, NodeId, NodeKind, ROOT, Tree, TreeError,
};
use cove_wire::BlobId;
use serde::Serialize;

use super::DriveError;
use crate::transfer::{BlobClient, Retention};

/// Largest link document (JSON, before sealing): about 300,000 chunks, that is some
/// 150 GiB of files at the average chunk size. The share page refuses a larger blob.
pub const MAX_LINK_DOCUMENT: usize = 64 << 20;

/// Longest expiry of a link (the relay's bound on `Cove-Retention`: ten years of 365 days).
pub const MAX_EXPIRY_SECS: u64 = 315_360_000;

/// Version of the link document format.
pub const LINK_VERSION: u32 = 1;

/// A link made.
#[derive(Clone, Debug)]
pub struct Created {
    /// `https://HOST:PORT/s/<blob>#drive.<key>` (the key never reaches the relay).
    pub url: String,
    /// The link's sealed blob (for the `Link` operation).
    pub sealed: SealedBlob,
}

/// The link document (see the module doc).
#[derive(Serialize)]
struct Document {
    v: u32,
    name: String,
    kind: &'static str,
    folders: Vec<String>,
    files: Vec<LinkedFile>,
}

#[derive(Serialize)]
struct LinkedFile {
    path: String,
    size: u64,
    modified_ms: u64,
    sha256: String,
    secret: String,
    chunks: Vec<LinkedChunk>,
}

#[derive(Serialize)]
struct LinkedChunk {
    id: String,
    blob: String,
    len: u32,
}

/// Makes a link to `node` of `tree` (a file or a folder): builds the link document (every
/// file below with its size, secret and chunk list), seals and uploads it, kept until
/// `expires_in_secs` if given (else until revoked).
///
/// Shared folders mounted below a linked folder are left out (their trees are other
/// groups'); linking a mount itself is refused with [`DriveError::Invalid`], as are a
/// document beyond [`MAX_LINK_DOCUMENT`] and an expiry outside 1..=[`MAX_EXPIRY_SECS`]
/// (checked before anything is uploaded). A trashed or unknown node is
/// [`TreeError::NotFound`].
pub async fn create(
    blobs: &BlobClient,
    tree: &Tree,
    node: &NodeId,
    expires_in_secs: Option<u64>,
) -> Result<Created, DriveError> {
    if let Some(secs) = expires_in_secs
        && !(1..=MAX_EXPIRY_SECS).contains(&secs)
    {
        return Err(DriveError::Invalid(format!(
            "a link expires after 1 second to {} days",
            MAX_EXPIRY_SECS / 86_400
        )));
    }
    let json = document(blobs, tree, node).await?;
    let key = FileSecret::generate(&mut rand::rngs::OsRng);
    let sealed = seal::seal(&key, seal::LINK_AAD, &json);
    let len = sealed.len() as u64;
    let retention = match expires_in_secs {
        Some(secs) => Retention::ExpiresIn(secs),
        None => Retention::Keep,
    };
    let blob = blobs
        .clone()
        .with_retention(retention)
        .upload_bytes(sealed)
        .await?;
    let sealed = SealedBlob { blob, key, len };
    Ok(Created {
        url: url(blobs, &sealed),
        sealed,
    })
}

/// The URL of a link made earlier (from its `Link` operation).
pub fn url(blobs: &BlobClient, sealed: &SealedBlob) -> String {
    format!(
        "{}/s/{}#drive.{}",
        blobs.origin(),
        sealed.blob.to_hex(),
        base64url(&sealed.key.0)
    )
}

/// Revokes a link: deletes its blob (`link`, from its `Link` operation), after which its
/// page says the link has expired or was revoked. A blob already gone (expired, or revoked
/// from another device) counts as revoked. The caller publishes the `Unlink` operation.
pub async fn revoke(blobs: &BlobClient, link: BlobId) -> Result<(), DriveError> {
    Ok(blobs.delete_blob(link).await?)
}

/// The link document of `node` (JSON bytes).
async fn document(blobs: &BlobClient, tree: &Tree, node: &NodeId) -> Result<Vec<u8>, DriveError> {
    let not_found = || TreeError::NotFound(hex::encode(node));
    if tree.is_trashed(node) {
        return Err(not_found().into());
    }
    const ROOT_KIND: NodeKind = NodeKind::Folder;
    let (name, kind) = match tree.node(node) {
        Some((_, name, kind)) if !name.is_empty() => (name.to_owned(), kind),
        // The root (named after the drive).
        found if *node == ROOT || found.is_some() => {
            let name = tree.info().map_or("Drive", |(name, _)| name).to_owned();
            (name, found.map_or(&ROOT_KIND, |(_, _, kind)| kind))
        }
        _ => return Err(not_found().into()),
    };
    let mut doc = Document {
        v: LINK_VERSION,
        name: name.clone(),
        kind: "folder",
        folders: Vec::new(),
        files: Vec::new(),
    };
    // A running bound on the JSON size, so that a huge tree fails before it is all built.
    let mut bytes = 128 + name.len();
    let mut add = |doc: &mut Document, file: LinkedFile| -> Result<(), DriveError> {
        bytes += 300 + file.path.len() + file.chunks.len() * 150;
        if bytes > MAX_LINK_DOCUMENT {
            return Err(too_large());
        }
        doc.files.push(file);
        Ok(())
    };
    match kind {
        NodeKind::File { versions } => {
            doc.kind = "file";
            let latest = versions.last().ok_or_else(not_found)?;
            let file = linked(blobs, name, latest).await?;
            add(&mut doc, file)?;
        }
        NodeKind::Mount { .. } => {
            return Err(DriveError::Invalid(
                "a shared folder: make the link inside it (cove drive link OWNER:FOLDER/...)"
                    .into(),
            ));
        }
        NodeKind::Folder => {
            for entry in tree.walk(node)? {
                match &entry.kind {
                    NodeKind::Folder => doc.folders.push(entry.path),
                    NodeKind::File { versions } => {
                        let Some(latest) = versions.last() else {
                            continue;
                        };
                        let file = linked(blobs, entry.path, latest).await?;
                        add(&mut doc, file)?;
                    }
                    // Another group's tree: not part of this link.
                    NodeKind::Mount { .. } => {}
                }
            }
        }
    }
    let json =
        serde_json::to_vec(&doc).map_err(|e| DriveError::Invalid(format!("link document: {e}")))?;
    if json.len() > MAX_LINK_DOCUMENT {
        return Err(too_large());
    }
    Ok(json)
}

fn too_large() -> DriveError {
    DriveError::Invalid(format!(
        "too much to link at once (the link document would exceed {} MiB): link a subfolder",
        MAX_LINK_DOCUMENT >> 20
    ))
}

/// One file of the document: its latest version with the manifest inlined.
async fn linked(
    blobs: &BlobClient,
    path: String,
    version: &FileVersion,
) -> Result<LinkedFile, DriveError> {
    let manifest = match &version.manifest {
        ManifestRef::Inline(m) => m.clone(),
        r @ ManifestRef::Blob(_) => super::content::manifest(blobs, r).await?,
    };
    manifest.validate()?;
    Ok(LinkedFile {
        path,
        size: version.size,
        modified_ms: version.modified_ms,
        sha256: hex::encode(version.sha256),
        secret: base64url(&version.secret.0),
        chunks: manifest
            .chunks
            .iter()
            .map(|c| LinkedChunk {
                id: hex::encode(c.id),
                blob: c.blob.to_hex(),
                len: c.len,
            })
            .collect(),
    })
}

/// base64url without padding (RFC 4648 §5), as the share page decodes it.
fn base64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64url_matches_rfc4648_without_padding() {
        assert_eq!(super::base64url(b""), "");
        assert_eq!(super::base64url(b"f"), "Zg");
        assert_eq!(super::base64url(b"fo"), "Zm8");
        assert_eq!(super::base64url(b"foo"), "Zm9v");
        assert_eq!(super::base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64url(&[0xfb, 0xff]), "-_8");
    }
}
