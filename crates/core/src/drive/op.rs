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
    /// Several operations in one message, applied in order as if each were its own (at one
    /// log position): what a sync or a `put` of many files sends, so a thousand files are
    /// a few messages, not a thousand. Only file and folder changes may be batched
    /// ([`DriveOp::batchable`]), at most [`MAX_BATCH_OPS`]; the message bounds the bytes.
    Batch {
        /// The operations.
        ops: Vec<DriveOp>,
    },
}

/// Most operations in one [`DriveOp::Batch`].
pub const MAX_BATCH_OPS: usize = 1024;

/// Most bytes (encoded) of the operations [`pack`] puts in one batch: the message's
/// envelope fits in the rest of [`cove_wire::limits::MAX_APPLICATION_PLAINTEXT`].
pub const MAX_BATCH_BYTES: usize = 48 * 1024;

/// `ops` as the operations to send, one message each, in the same order: every run of
/// [`DriveOp::batchable`] operations packed into [`DriveOp::Batch`]es of at most
/// [`MAX_BATCH_OPS`] operations and [`MAX_BATCH_BYTES`] bytes (a batch of one is sent as
/// that operation), the others as they are.
pub fn pack(ops: Vec<DriveOp>) -> Vec<DriveOp> {
    fn flush(run: &mut Vec<DriveOp>, out: &mut Vec<DriveOp>) {
        match run.len() {
            0 => {}
            1 => out.append(run),
            _ => out.push(DriveOp::Batch {
                ops: std::mem::take(run),
            }),
        }
    }
    let mut out = Vec::new();
    let mut run = Vec::new();
    let mut bytes = 0usize;
    for op in ops {
        if !op.batchable() {
            flush(&mut run, &mut out);
            out.push(op);
            continue;
        }
        // Serializing an operation into a Vec cannot fail.
        let len = postcard::to_allocvec(&op).map(|v| v.len()).unwrap_or(0);
        if !run.is_empty() && (run.len() == MAX_BATCH_OPS || bytes + len > MAX_BATCH_BYTES) {
            flush(&mut run, &mut out);
            bytes = 0;
        }
        bytes += len;
        run.push(op);
    }
    flush(&mut run, &mut out);
    out
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
    /// A batch that is empty or holds an operation that may not be batched.
    #[error("invalid batch")]
    Batch,
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
    /// Whether the operation may go in a [`DriveOp::Batch`]: a change to files and folders
    /// (`Mkdir`, `PutVersion`, `Move`, `Trash`, `Restore`). Everything that the shell acts
    /// on by itself (snapshots, links, access, mounts) or that has its own list (`Purge`)
    /// stays a message of its own.
    pub fn batchable(&self) -> bool {
        matches!(
            self,
            DriveOp::Mkdir { .. }
                | DriveOp::PutVersion { .. }
                | DriveOp::Move { .. }
                | DriveOp::Trash { .. }
                | DriveOp::Restore { .. }
        )
    }

    /// Checks the bounds a receiver enforces on an operation alone (for a batch, on each of
    /// its operations too).
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
            DriveOp::Batch { ops } => {
                if ops.is_empty() || !ops.iter().all(DriveOp::batchable) {
                    return Err(OpInvalid::Batch);
                }
                if ops.len() > MAX_BATCH_OPS {
                    return Err(OpInvalid::TooMany);
                }
                ops.iter().try_for_each(DriveOp::validate)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::drive::chunk::ChunkRef;

    fn put(n: u32, chunks: usize) -> DriveOp {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_le_bytes());
        id[15] = 1;
        DriveOp::PutVersion {
            id,
            parent: ROOT,
            name: format!("file {n}.bin"),
            version: FileVersion {
                version: id,
                size: 1,
                modified_ms: 1,
                sha256: [1; 32],
                secret: FileSecret([2; 32]),
                manifest: ManifestRef::Inline(Manifest {
                    chunks: (0..chunks)
                        .map(|_| ChunkRef {
                            id: [3; 32],
                            blob: BlobId([4; 16]),
                            len: 1,
                        })
                        .collect(),
                }),
                device: "alice device 1".to_owned(),
            },
        }
    }

    fn inner(op: &DriveOp) -> Vec<DriveOp> {
        match op {
            DriveOp::Batch { ops } => ops.clone(),
            op => vec![op.clone()],
        }
    }

    #[test]
    fn pack_keeps_the_order_and_batches_only_runs_of_file_changes() {
        let ops = vec![
            put(1, 1),
            put(2, 1),
            DriveOp::SnapshotRequest,
            put(3, 1),
            DriveOp::Trash { id: [9; 16] },
        ];
        let packed = pack(ops.clone());
        assert_eq!(packed.len(), 3);
        assert!(matches!(&packed[0], DriveOp::Batch { ops } if ops.len() == 2));
        assert_eq!(packed[1], DriveOp::SnapshotRequest);
        assert!(matches!(&packed[2], DriveOp::Batch { ops } if ops.len() == 2));
        let flat: Vec<DriveOp> = packed.iter().flat_map(inner).collect();
        assert_eq!(flat, ops);
        // A run of one is sent as itself.
        assert_eq!(pack(vec![put(7, 1)]), vec![put(7, 1)]);
        assert!(pack(Vec::new()).is_empty());
    }

    #[test]
    fn every_packed_message_fits_the_application_limit() {
        // Versions with the largest inline manifests (256 chunks, ~13 KiB each) and small
        // ones, many of both.
        let ops: Vec<DriveOp> = (0..3000)
            .map(|n| put(n, if n % 7 == 0 { MAX_INLINE_CHUNKS } else { 1 }))
            .collect();
        let packed = pack(ops.clone());
        assert!(packed.len() < 200, "{} messages", packed.len());
        for op in &packed {
            assert_eq!(op.validate(), Ok(()));
            let envelope = crate::content::Envelope {
                version: crate::content::ENVELOPE_VERSION,
                id: [0xff; 16],
                sent_at_ms: u64::MAX,
                content: crate::content::Content::Drive(Box::new(op.clone())),
            };
            let bytes = envelope.encode().unwrap();
            assert!(bytes.len() <= cove_wire::limits::MAX_APPLICATION_PLAINTEXT);
            if let DriveOp::Batch { ops } = op {
                assert!(ops.len() <= MAX_BATCH_OPS);
            }
        }
        let flat: Vec<DriveOp> = packed.iter().flat_map(inner).collect();
        assert_eq!(flat, ops);
    }
}
