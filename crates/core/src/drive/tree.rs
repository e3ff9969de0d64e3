//! The folder tree: the deterministic replay of a drive group's [`DriveOp`]s in log order.
//! Every member that applies the same operations in the same order holds the same tree;
//! an operation that does not apply (unknown node, a cycle, a read-only author) is refused
//! and changes nothing, on every member alike.
#![allow(clippy::todo)] // contract stubs (issue 14); the helper filling them removes this

use cove_wire::{GroupId, UserName};
use serde::{Deserialize, Serialize};

use super::op::{DriveOp, FileVersion, NodeId};

/// Most live and trashed nodes in one tree.
pub const MAX_NODES: usize = 2_000_000;
/// Deepest folder nesting.
pub const MAX_DEPTH: usize = 256;

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A folder.
    Folder,
    /// A file with its versions, oldest first (at most [`super::op::MAX_VERSIONS`]).
    File {
        /// The versions.
        versions: Vec<FileVersion>,
    },
    /// A shared folder (its tree is the group's).
    Mount {
        /// The shared folder's group.
        group: GroupId,
    },
}

/// One entry as listings show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The node.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its path from the folder listed or walked (`a/b.txt`); for [`Tree::trash`], the path
    /// it had before it was trashed.
    pub path: String,
    /// What it is (a file's versions included).
    pub kind: NodeKind,
    /// A file's latest size, 0 for others.
    pub size: u64,
    /// A file's latest modification time (ms), else when it was created or last moved.
    pub modified_ms: u64,
    /// Who last changed it.
    pub author: UserName,
}

/// Why an operation was refused or a query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// No `Init` yet (and no snapshot): the tree has no owner.
    #[error("the drive has not been initialised")]
    NoInit,
    /// The author may not write (read-only) or may not change access (not the owner).
    #[error("{0} may not change this drive")]
    NotAllowed(UserName),
    /// A node or path that does not exist (or is in the trash).
    #[error("no such file or folder: {0}")]
    NotFound(String),
    /// A folder was expected.
    #[error("not a folder: {0}")]
    NotAFolder(String),
    /// A file was expected.
    #[error("not a file: {0}")]
    NotAFile(String),
    /// A move into its own subtree.
    #[error("cannot move a folder into itself")]
    Cycle,
    /// A new node with an id already in use.
    #[error("node id already in use")]
    Duplicate,
    /// Beyond [`MAX_NODES`] or [`MAX_DEPTH`].
    #[error("the tree is full")]
    Full,
    /// An operation already covered (its log position is at or before the tree's).
    #[error("operation already applied")]
    Stale,
    /// An invalid operation (bounds) or a snapshot state that does not decode.
    #[error("invalid operation or state")]
    Invalid,
}

/// A drive's tree.
#[derive(Clone, Debug, Default)]
pub struct Tree {}

impl Tree {
    /// An empty tree (no `Init` yet).
    pub fn new() -> Self {
        Tree::default()
    }

    /// Applies the operation at log position `seq` by `author`. Operations at or before
    /// [`Tree::applied`] are [`TreeError::Stale`]. `SnapshotRequest` and `Snapshot` change
    /// nothing here (the shell handles them) but advance [`Tree::applied`].
    ///
    /// Name clashes are resolved the same way on every member: a node created, moved or
    /// restored onto a name another live node of that folder holds gets `stem (2).ext`
    /// (the first free number).
    pub fn apply(&mut self, _seq: u64, _author: &UserName, _op: &DriveOp) -> Result<(), TreeError> {
        todo!("drive-tree")
    }

    /// The last log position applied (0 for none).
    pub fn applied(&self) -> u64 {
        todo!("drive-tree")
    }

    /// The drive's display name and owner, once initialised.
    pub fn info(&self) -> Option<(&str, &UserName)> {
        todo!("drive-tree")
    }

    /// Whether `user` may write (the owner always; others unless set read-only).
    pub fn can_write(&self, _user: &UserName) -> bool {
        todo!("drive-tree")
    }

    /// Members set read-only by the owner.
    pub fn read_only_users(&self) -> Vec<UserName> {
        todo!("drive-tree")
    }

    /// The node at `path` (`/`, `/a/b`, `a/b`; `.` and `..` are refused).
    pub fn resolve(&self, _path: &str) -> Result<NodeId, TreeError> {
        todo!("drive-tree")
    }

    /// The live node `name` in `folder`.
    pub fn child(&self, _folder: &NodeId, _name: &str) -> Option<NodeId> {
        todo!("drive-tree")
    }

    /// A node (live or trashed): its parent, name, kind.
    pub fn node(&self, _id: &NodeId) -> Option<(NodeId, &str, &NodeKind)> {
        todo!("drive-tree")
    }

    /// Whether a node is in the trash (itself or an ancestor).
    pub fn is_trashed(&self, _id: &NodeId) -> bool {
        todo!("drive-tree")
    }

    /// The absolute path of a live node (`/a/b`).
    pub fn path(&self, _id: &NodeId) -> Option<String> {
        todo!("drive-tree")
    }

    /// The live entries of a folder, by name.
    pub fn list(&self, _folder: &NodeId) -> Result<Vec<Entry>, TreeError> {
        todo!("drive-tree")
    }

    /// Every live node below `folder`, depth first, parents before children, paths relative
    /// to it.
    pub fn walk(&self, _folder: &NodeId) -> Result<Vec<Entry>, TreeError> {
        todo!("drive-tree")
    }

    /// The trashed nodes (the tops of trashed subtrees), with the path each had.
    pub fn trash(&self) -> Vec<Entry> {
        todo!("drive-tree")
    }

    /// A file's versions, oldest first.
    pub fn versions(&self, _id: &NodeId) -> Result<&[FileVersion], TreeError> {
        todo!("drive-tree")
    }

    /// Live files, live folders, bytes of the latest versions, bytes of every version
    /// (trash included).
    pub fn usage(&self) -> (u64, u64, u64, u64) {
        todo!("drive-tree")
    }

    /// The live links: the node, the link's sealed blob, its expiry (ms) if any.
    pub fn links(&self) -> Vec<(NodeId, &super::op::SealedBlob, Option<u64>)> {
        todo!("drive-tree")
    }

    /// The whole state (for a [`DriveOp::Snapshot`]): bounded, versioned encoding.
    pub fn encode_state(&self) -> Vec<u8> {
        todo!("drive-tree")
    }

    /// A tree from [`Tree::encode_state`]'s bytes; [`TreeError::Invalid`] for anything that
    /// is not one (never a panic: the bytes come from another member).
    pub fn decode_state(_bytes: &[u8]) -> Result<Tree, TreeError> {
        todo!("drive-tree")
    }

    /// The subtree at `folder` as a new tree (owner `owner`, name `name`), for sharing an
    /// existing folder: node ids and versions are kept.
    pub fn extract(
        &self,
        _folder: &NodeId,
        _name: &str,
        _owner: &UserName,
    ) -> Result<Tree, TreeError> {
        todo!("drive-tree")
    }
}
