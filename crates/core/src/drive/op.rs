//! The tree operations carried by [`crate::Content::Drive`]. **Variants are only ever
//! appended** (postcard encodes the variant index).

use cove_wire::{BlobId, GroupId, UserName};
use serde::{Deserialize, Serialize};

use super::chunk::{FileSecret, Manifest};

/// A node's id: random, chosen by the device that creates the node.
pub type NodeId = [u8; 16];

/// The root folder of every drive tree.
pub const ROOT: NodeId = [0; 16];

/// Longest name of a file or folder, bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 255;

/// Most versions kept per file; an older one is dropped from the tree (its blobs become
/// garbage the uploader may delete).
pub const MAX_VERSIONS: usize = 32;

/// Most chunks a manifest may carry inline in an operation; a longer one goes in a blob
/// ([`ManifestRef::Blob`]). Keeps an operation under the 64 KiB application limit.
pub const MAX_INLINE_CHUNKS: usize = 256;

/// Most node ids in one [`DriveOp::Purge`].
pub const MAX_PURGE_IDS: usize = 1000;

/// One tree operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriveOp {
    /// The first operation of a drive: its display name and its owner (the user who created
    /// it). Only the first `Init` in the log counts.
    Init {
        /// Display name ("Drive" for a personal drive, the folder's name for a shared one).
        name: String,
        /// The owning user: the only one who may change access.
        owner: UserName,
    },
    /// Creates a folder.
    Mkdir {
        /// The new folder's id.
        id: NodeId,
        /// Its parent folder.
        parent: NodeId,
        /// Its name.
        name: String,
    },
    /// Adds a version of a file: creates the file when `id` is new (at `parent`/`name`),
    /// else appends a version to it (then `parent` and `name` are ignored).
    PutVersion {
        /// The file.
        id: NodeId,
        /// Parent folder (creation only).
        parent: NodeId,
        /// Name (creation only).
        name: String,
        /// The version.
        version: FileVersion,
    },
    /// Moves and/or renames a node.
    Move {
        /// The node.
        id: NodeId,
        /// Its new parent folder.
        parent: NodeId,
        /// Its new name.
        name: String,
    },
    /// Moves a node (and its subtree) to the trash.
    Trash {
        /// The node.
        id: NodeId,
    },
    /// Brings a node back from the trash to where it was (to the root if that folder is
    /// gone).
    Restore {
        /// The node.
        id: NodeId,
    },
    /// Deletes trashed nodes for good ("empty trash").
    Purge {
        /// The nodes (at most [`MAX_PURGE_IDS`]); ids not in the trash are ignored.
        ids: Vec<NodeId>,
    },
    /// Sets a member's access to this drive (owner only): read-only members' operations are
    /// ignored by every client.
    SetAccess {
        /// The member.
        user: UserName,
        /// True for read-only.
        read_only: bool,
    },
    /// A folder of this drive that is shared: its contents live in another drive group
    /// (the shared folder), this node only points at it.
    Mount {
        /// The node.
        id: NodeId,
        /// Parent folder.
        parent: NodeId,
        /// Name.
        name: String,
        /// The shared folder's group.
        group: GroupId,
    },
    /// A member joined and holds no tree: asks a member that does for a snapshot.
    SnapshotRequest,
    /// The tree's whole state after applying every operation up to log position `covers`
    /// (sealed in a blob). A member without a tree starts from it and applies the
    /// operations after `covers`.
    Snapshot {
        /// Log position the state covers (inclusive).
        covers: u64,
        /// The sealed state.
        blob: SealedBlob,
    },
    /// A public link to a file or folder was made: its sealed blob (the key is what goes
    /// after `#`), so any member device can show or revoke it.
    Link {
        /// The node linked (its state when the link was made is what the link shows).
        node: NodeId,
        /// The link's sealed blob.
        link: SealedBlob,
        /// When it expires (ms since the Unix epoch), if it does.
        expires_ms: Option<u64>,
    },
    /// A link was revoked (its blob deleted).
    Unlink {
        /// The link's blob.
        link: BlobId,
    },
}

/// A blob sealed under a one-time key ([`super::seal`]): manifests too long to go inline,
/// snapshots, folder links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBlob {
    /// Where it is.
    pub blob: BlobId,
    /// Its one-time key.
    pub key: FileSecret,
    /// Its length in bytes (ciphertext).
    pub len: u64,
}

/// One version of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// Random id of this version.
    pub version: [u8; 16],
    /// Plaintext size in bytes.
    pub size: u64,
    /// The file's modification time on the uploading device, ms since the Unix epoch.
    pub modified_ms: u64,
    /// SHA-256 of the whole plaintext (sync compares it).
    pub sha256: [u8; 32],
    /// The file's secret: chunk ids and chunk keys derive from it. Kept across versions of
    /// one file (so unchanged chunks are reused), random per file.
    pub secret: FileSecret,
    /// The chunks, inline or in a sealed blob.
    pub manifest: ManifestRef,
    /// The device that uploaded it (its device name, for conflict copies and `versions`).
    pub device: String,
}

/// Where a version's chunk list is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManifestRef {
    /// In the operation (at most [`MAX_INLINE_CHUNKS`] chunks).
    Inline(Manifest),
    /// In a sealed blob.
    Blob(SealedBlob),
}

/// Why an operation is invalid on its own (before any tree): the sender is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpInvalid {
    /// A name that is empty, too long, `.`/`..`, or holds `/`, NUL or a control character.
    #[error("invalid name")]
    Name,
    /// A node id that is the root where a new node is meant.
    #[error("the root cannot be created, moved or deleted")]
    Root,
    /// A list beyond its bound.
    #[error("too many items")]
    TooMany,
    /// A device name that is empty or too long.
    #[error("invalid device name")]
    Device,
}

/// Whether `name` may name a file or folder: 1..=[`MAX_NAME_BYTES`] bytes, not `.` or `..`,
/// no `/`, `\`, NUL or control characters.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

impl DriveOp {
    /// Checks the bounds a receiver enforces on an operation alone.
    pub fn validate(&self) -> Result<(), OpInvalid> {
        let name = |n: &str| valid_name(n).then_some(()).ok_or(OpInvalid::Name);
        let not_root = |id: &NodeId| (*id != ROOT).then_some(()).ok_or(OpInvalid::Root);
        match self {
            DriveOp::Init { name: n, .. } => {
                if n.is_empty() || n.len() > MAX_NAME_BYTES || n.chars().any(char::is_control) {
                    return Err(OpInvalid::Name);
                }
                Ok(())
            }
            DriveOp::Mkdir { id, name: n, .. }
            | DriveOp::Move { id, name: n, .. }
            | DriveOp::Mount { id, name: n, .. } => {
                not_root(id)?;
                name(n)
            }
            DriveOp::PutVersion {
                id,
                name: n,
                version,
                ..
            } => {
                not_root(id)?;
                name(n)?;
                if version.device.is_empty()
                    || version.device.len() > cove_wire::limits::DEVICE_NAME_LEN.end() * 4
                {
                    return Err(OpInvalid::Device);
                }
                match &version.manifest {
                    ManifestRef::Inline(m) if m.chunks.len() > MAX_INLINE_CHUNKS => {
                        Err(OpInvalid::TooMany)
                    }
                    _ => Ok(()),
                }
            }
            DriveOp::Trash { id } | DriveOp::Restore { id } => not_root(id),
            DriveOp::Purge { ids } if ids.len() > MAX_PURGE_IDS => Err(OpInvalid::TooMany),
            DriveOp::Purge { .. }
            | DriveOp::SetAccess { .. }
            | DriveOp::SnapshotRequest
            | DriveOp::Snapshot { .. }
            | DriveOp::Unlink { .. } => Ok(()),
            DriveOp::Link { .. } => Ok(()),
        }
    }
}
