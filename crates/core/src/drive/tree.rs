//! The folder tree: the deterministic replay of a drive group's [`DriveOp`]s in log order.
//! Every member that applies the same operations in the same order holds the same tree;
//! an operation that does not apply (unknown node, a cycle, a read-only author) is refused
//! and changes nothing, on every member alike.
//!
//! The rules [`Tree::apply`] enforces (the same on every member):
//!
//! - **Log positions.** An operation at or before [`Tree::applied`] is [`TreeError::Stale`].
//!   Every other operation advances [`Tree::applied`] to its position, *whether it applies
//!   or is refused*: an operation is considered exactly once, so a device that re-applies
//!   the log from `applied() + 1` after a restart holds the same tree as one that never
//!   stopped.
//! - **Init.** The first `Init` sets the name and the owner; its author must be the owner it
//!   names. Every later `Init` is refused ([`TreeError::NotAllowed`]). Before it, every
//!   operation but `Init`, `SnapshotRequest` and `Snapshot` is [`TreeError::NoInit`]. A tree
//!   from [`Tree::decode_state`] or [`Tree::extract`] is initialised.
//! - **Access.** `SetAccess` only from the owner, never on the owner. Every other change
//!   (nodes, links) needs [`Tree::can_write`]. `SnapshotRequest` and `Snapshot` come from
//!   anyone and change nothing here.
//! - **Creation** (`Mkdir`, `Mount`, `PutVersion` of a new id): the parent is a live folder
//!   (not trashed, not a file, not a mount), the id is unused (trash included), the new node
//!   is at most [`MAX_DEPTH`] deep and the tree holds at most [`MAX_NODES`] nodes. A name
//!   another live child of the folder holds becomes `stem (2).ext`, `stem (3).ext`, ... (the
//!   first free number; `ext` is what follows the last dot, none when the only dot starts
//!   the name; the stem is cut on a character boundary if the result would be longer than
//!   [`super::op::MAX_NAME_BYTES`]). `PutVersion` on an existing live file appends a
//!   version (the oldest dropped beyond [`super::op::MAX_VERSIONS`]), ignoring parent and
//!   name.
//! - **Move** of a live node other than the root into a live folder, never into its own
//!   subtree ([`TreeError::Cycle`]); the clash rule applies; a move onto its own place
//!   changes nothing.
//! - **Trash** takes a live node and its subtree out of the tree, remembering its parent and
//!   its path; **Restore** puts such a trashed top back under that parent when it is still a
//!   live folder, else under the root (clash rule); **Purge** deletes trashed tops and their
//!   subtrees for good and ignores every other id.
//! - **Links** are kept from `Link` (the node must be live) until `Unlink`.
//!
//! Memory is one map entry per node plus one name index per folder: no node stores its
//! path, so a tree of 100,000 entries stays in tens of MiB (`benches/drive_tree.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use cove_wire::{BlobId, GroupId, UserName};
use serde::{Deserialize, Serialize};

use super::op::{
    DriveOp, FileVersion, MAX_INLINE_CHUNKS, MAX_NAME_BYTES, MAX_VERSIONS, ManifestRef, NodeId,
    ROOT, SealedBlob, valid_name,
};

/// Most live and trashed nodes in one tree (the root not counted).
pub const MAX_NODES: usize = 2_000_000;
/// Deepest folder nesting (a child of the root is at depth 1).
pub const MAX_DEPTH: usize = 256;
/// Most live links of one drive.
pub const MAX_LINKS: usize = 100_000;

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
    /// A file's latest modification time (ms); 0 for folders and mounts (operations carry
    /// no clock).
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
#[derive(Clone, Debug)]
pub struct Tree {
    /// The last log position applied (refused operations included).
    applied: u64,
    /// Display name and owner, from the first `Init`.
    info: Option<(String, UserName)>,
    /// Members the owner set read-only.
    read_only: BTreeSet<UserName>,
    /// Every node but the root, live and trashed.
    nodes: HashMap<NodeId, Node>,
    /// Per folder (the root included, trashed folders too): its children by name (the name
    /// shared with the node's). A trashed top is in no index (it is out of its parent's).
    children: HashMap<NodeId, BTreeMap<Name, NodeId>>,
    /// The trashed tops: the path each had when it was trashed.
    trash: BTreeMap<NodeId, String>,
    /// The live links by their blob: the node and the link's sealed blob and expiry.
    links: BTreeMap<BlobId, Link>,
    /// Every author seen, so that nodes share one copy of each name (a cache: not part of
    /// the state, never compared or encoded).
    authors: HashSet<Arc<UserName>>,
}

/// A node's name, shared by the node and its folder's index.
type Name = Arc<str>;

impl PartialEq for Tree {
    fn eq(&self, other: &Self) -> bool {
        self.applied == other.applied
            && self.info == other.info
            && self.read_only == other.read_only
            && self.nodes == other.nodes
            && self.children == other.children
            && self.trash == other.trash
            && self.links == other.links
    }
}

impl Eq for Tree {}

/// One node (not the root).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    /// Its folder; for a trashed top, the folder it was trashed from (which may be gone).
    parent: NodeId,
    /// Its name in that folder.
    name: Name,
    kind: NodeKind,
    /// Who last changed it.
    author: Arc<UserName>,
}

/// A live link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Link {
    node: NodeId,
    link: SealedBlob,
    expires_ms: Option<u64>,
}

/// The root's kind, for [`Tree::node`].
static ROOT_KIND: NodeKind = NodeKind::Folder;

impl Default for Tree {
    fn default() -> Self {
        Tree {
            applied: 0,
            info: None,
            read_only: BTreeSet::new(),
            nodes: HashMap::new(),
            // The root's index always exists, so equal trees compare equal.
            children: HashMap::from([(ROOT, BTreeMap::new())]),
            trash: BTreeMap::new(),
            links: BTreeMap::new(),
            authors: HashSet::new(),
        }
    }
}

impl Tree {
    /// An empty tree (no `Init` yet).
    pub fn new() -> Self {
        Tree::default()
    }

    /// Applies the operation at log position `seq` by `author`. Operations at or before
    /// [`Tree::applied`] are [`TreeError::Stale`]; every later one advances
    /// [`Tree::applied`] to `seq`, whether it applies or is refused (a refused operation
    /// changes nothing else). `SnapshotRequest` and `Snapshot` change nothing here (the
    /// shell handles them) but advance [`Tree::applied`].
    ///
    /// Name clashes are resolved the same way on every member: a node created, moved or
    /// restored onto a name another live node of that folder holds gets `stem (2).ext`
    /// (the first free number). See the module documentation for every rule.
    pub fn apply(&mut self, seq: u64, author: &UserName, op: &DriveOp) -> Result<(), TreeError> {
        if seq <= self.applied {
            return Err(TreeError::Stale);
        }
        self.applied = seq;
        op.validate().map_err(|_| TreeError::Invalid)?;
        match op {
            // Each operation of a batch as if it were its own message: one refused (a
            // clash, a missing parent) changes nothing and the others still apply. The
            // first refusal is returned.
            DriveOp::Batch { ops } => {
                let mut first = Ok(());
                for op in ops {
                    let r = self.apply_validated(author, op);
                    first = first.and(r);
                }
                first
            }
            op => self.apply_validated(author, op),
        }
    }

    /// [`Tree::apply`] of a validated operation, after its log position was taken.
    fn apply_validated(&mut self, author: &UserName, op: &DriveOp) -> Result<(), TreeError> {
        let owner = match (&self.info, op) {
            (_, DriveOp::SnapshotRequest | DriveOp::Snapshot { .. }) => return Ok(()),
            (None, DriveOp::Init { name, owner }) => {
                if owner != author {
                    return Err(TreeError::NotAllowed(author.clone()));
                }
                self.info = Some((name.clone(), owner.clone()));
                return Ok(());
            }
            (Some(_), DriveOp::Init { .. }) => return Err(TreeError::NotAllowed(author.clone())),
            (None, _) => return Err(TreeError::NoInit),
            (Some((_, owner)), _) => owner,
        };
        if let DriveOp::SetAccess { user, read_only } = op {
            if author != owner {
                return Err(TreeError::NotAllowed(author.clone()));
            }
            if user == owner {
                return Err(TreeError::Invalid);
            }
            if *read_only {
                self.read_only.insert(user.clone());
            } else {
                self.read_only.remove(user);
            }
            return Ok(());
        }
        if !self.can_write(author) {
            return Err(TreeError::NotAllowed(author.clone()));
        }
        let author = &self.intern(author);
        match op {
            DriveOp::Mkdir { id, parent, name } => {
                self.create(id, parent, name, NodeKind::Folder, author)
            }
            DriveOp::Mount {
                id,
                parent,
                name,
                group,
            } => self.create(id, parent, name, NodeKind::Mount { group: *group }, author),
            DriveOp::PutVersion {
                id,
                parent,
                name,
                version,
            } => self.put_version(id, parent, name, version, author),
            DriveOp::Move { id, parent, name } => self.move_node(id, parent, name, author),
            DriveOp::Trash { id } => self.trash_node(id, author),
            DriveOp::Restore { id } => self.restore(id, author),
            DriveOp::Purge { ids } => {
                for id in ids {
                    self.purge(id);
                }
                Ok(())
            }
            DriveOp::Link {
                node,
                link,
                expires_ms,
            } => {
                if !self.is_live(node) {
                    return Err(TreeError::NotFound(hex::encode(node)));
                }
                if self.links.contains_key(&link.blob) {
                    return Err(TreeError::Duplicate);
                }
                if self.links.len() >= MAX_LINKS {
                    return Err(TreeError::Full);
                }
                self.links.insert(
                    link.blob,
                    Link {
                        node: *node,
                        link: link.clone(),
                        expires_ms: *expires_ms,
                    },
                );
                Ok(())
            }
            DriveOp::Unlink { link } => match self.links.remove(link) {
                Some(_) => Ok(()),
                None => Err(TreeError::NotFound(link.to_hex())),
            },
            // Handled above (a batch by `apply`, which never nests them: `validate`);
            // listed so a new variant is a compile error here.
            DriveOp::Init { .. }
            | DriveOp::SetAccess { .. }
            | DriveOp::SnapshotRequest
            | DriveOp::Snapshot { .. }
            | DriveOp::Batch { .. } => Ok(()),
        }
    }

    /// The last log position applied (0 for none).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The drive's display name and owner, once initialised.
    pub fn info(&self) -> Option<(&str, &UserName)> {
        self.info
            .as_ref()
            .map(|(name, owner)| (name.as_str(), owner))
    }

    /// Whether `user` may write (the owner always; others unless set read-only).
    pub fn can_write(&self, user: &UserName) -> bool {
        self.info.as_ref().is_some_and(|(_, owner)| owner == user) || !self.read_only.contains(user)
    }

    /// Members set read-only by the owner, sorted.
    pub fn read_only_users(&self) -> Vec<UserName> {
        self.read_only.iter().cloned().collect()
    }

    /// The live node at `path` (`/`, `/a/b`, `a/b`; empty components are skipped, `.` and
    /// `..` are refused).
    pub fn resolve(&self, path: &str) -> Result<NodeId, TreeError> {
        let mut at = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(TreeError::NotFound(path.to_owned()));
            }
            at = self
                .children
                .get(&at)
                .and_then(|c| c.get(part))
                .copied()
                .ok_or_else(|| TreeError::NotFound(path.to_owned()))?;
        }
        Ok(at)
    }

    /// The live node `name` in `folder` (`None` when `folder` is not a live folder).
    pub fn child(&self, folder: &NodeId, name: &str) -> Option<NodeId> {
        if !self.is_live(folder) {
            return None;
        }
        self.children.get(folder)?.get(name).copied()
    }

    /// A node (live or trashed): its parent, name, kind. The root is its own parent, with
    /// an empty name.
    pub fn node(&self, id: &NodeId) -> Option<(NodeId, &str, &NodeKind)> {
        if *id == ROOT {
            return Some((ROOT, "", &ROOT_KIND));
        }
        self.nodes.get(id).map(|n| (n.parent, &*n.name, &n.kind))
    }

    /// Whether a node is in the trash (itself or an ancestor). False for unknown ids.
    pub fn is_trashed(&self, id: &NodeId) -> bool {
        self.nodes.contains_key(id) && !self.is_live(id)
    }

    /// The absolute path of a live node (`/a/b`; `/` for the root).
    pub fn path(&self, id: &NodeId) -> Option<String> {
        if !self.is_live(id) {
            return None;
        }
        let mut names = Vec::new();
        let mut at = *id;
        while at != ROOT {
            let node = self.nodes.get(&at)?;
            names.push(&*node.name);
            at = node.parent;
        }
        if names.is_empty() {
            return Some("/".to_owned());
        }
        let mut path = String::new();
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        Some(path)
    }

    /// A live node other than the root as listings show it, its path absolute (`/a/b.txt`).
    pub fn entry(&self, id: &NodeId) -> Option<Entry> {
        let path = self.path(id).filter(|_| *id != ROOT)?;
        self.make_entry(id, path)
    }

    /// The live entries of a folder, by name (paths are the names).
    pub fn list(&self, folder: &NodeId) -> Result<Vec<Entry>, TreeError> {
        let index = self.live_folder(folder)?;
        Ok(index
            .iter()
            .filter_map(|(name, id)| self.make_entry(id, name.to_string()))
            .collect())
    }

    /// Every live node below `folder`, depth first, parents before children, siblings by
    /// name, paths relative to `folder` (`a/b.txt`).
    pub fn walk(&self, folder: &NodeId) -> Result<Vec<Entry>, TreeError> {
        let index = self.live_folder(folder)?;
        let mut out = Vec::new();
        // (id, path of its parent relative to `folder`), popped in name order.
        let mut stack: Vec<(NodeId, String)> = index
            .values()
            .rev()
            .map(|id| (*id, String::new()))
            .collect();
        while let Some((id, prefix)) = stack.pop() {
            let Some(node) = self.nodes.get(&id) else {
                continue;
            };
            let path = if prefix.is_empty() {
                node.name.to_string()
            } else {
                format!("{prefix}/{}", node.name)
            };
            if let Some(index) = self.children.get(&id) {
                stack.extend(index.values().rev().map(|child| (*child, path.clone())));
            }
            if let Some(entry) = self.make_entry(&id, path) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The trashed nodes (the tops of trashed subtrees), with the path each had, by that
    /// path (then id).
    pub fn trash(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .trash
            .iter()
            .filter_map(|(id, path)| self.make_entry(id, path.clone()))
            .collect();
        out.sort_by(|a, b| (&a.path, a.id).cmp(&(&b.path, b.id)));
        out
    }

    /// A file's versions (live or trashed), oldest first.
    pub fn versions(&self, id: &NodeId) -> Result<&[FileVersion], TreeError> {
        match self.nodes.get(id) {
            None => Err(TreeError::NotFound(hex::encode(id))),
            Some(Node {
                kind: NodeKind::File { versions },
                ..
            }) => Ok(versions),
            Some(node) => Err(TreeError::NotAFile(node.name.to_string())),
        }
    }

    /// Live files, live folders (the root and mounts not counted), bytes of the latest
    /// versions of live files, bytes of every version of every file (trash included).
    pub fn usage(&self) -> (u64, u64, u64, u64) {
        let (mut files, mut folders, mut latest) = (0u64, 0u64, 0u64);
        let mut stack = vec![ROOT];
        while let Some(folder) = stack.pop() {
            for id in self
                .children
                .get(&folder)
                .into_iter()
                .flat_map(|c| c.values())
            {
                match self.nodes.get(id).map(|n| &n.kind) {
                    Some(NodeKind::Folder) => {
                        folders += 1;
                        stack.push(*id);
                    }
                    Some(NodeKind::File { versions }) => {
                        files += 1;
                        latest = latest.saturating_add(versions.last().map_or(0, |v| v.size));
                    }
                    Some(NodeKind::Mount { .. }) | None => {}
                }
            }
        }
        let all = self
            .nodes
            .values()
            .filter_map(|n| match &n.kind {
                NodeKind::File { versions } => Some(versions),
                _ => None,
            })
            .flatten()
            .fold(0u64, |sum, v| sum.saturating_add(v.size));
        (files, folders, latest, all)
    }

    /// The live links: the node, the link's sealed blob, its expiry (ms) if any; by blob id.
    /// A link outlives a change to its node (it shows the node as it was when made), even
    /// its purge, until it is unlinked.
    pub fn links(&self) -> Vec<(NodeId, &super::op::SealedBlob, Option<u64>)> {
        self.links
            .values()
            .map(|l| (l.node, &l.link, l.expires_ms))
            .collect()
    }

    /// The whole state (for a [`DriveOp::Snapshot`]): bounded, versioned encoding (postcard
    /// of a versioned record: applied, name and owner, read-only members, every node sorted
    /// by id, the trash, the links). Equal trees encode to equal bytes.
    pub fn encode_state(&self) -> Vec<u8> {
        let mut ids: Vec<&NodeId> = self.nodes.keys().collect();
        ids.sort_unstable();
        let nodes = ids
            .into_iter()
            .filter_map(|id| {
                self.nodes.get(id).map(|n| NodeRecord {
                    id: *id,
                    parent: n.parent,
                    name: &*n.name,
                    kind: &n.kind,
                    author: &*n.author,
                })
            })
            .collect();
        let (name, owner) = match &self.info {
            Some((name, owner)) => (name.as_str(), Some(owner)),
            None => ("", None),
        };
        let state: StateFormat<&str, &UserName, &NodeKind, &Link> = StateFormat::V1(StateV1 {
            applied: self.applied,
            name,
            owner,
            read_only: self.read_only.iter().collect(),
            nodes,
            trash: self
                .trash
                .iter()
                .map(|(id, path)| (*id, path.as_str()))
                .collect(),
            links: self.links.values().collect(),
        });
        // Serializing in-memory values to a Vec cannot fail (postcard fails only on a full
        // fixed buffer or unsupported serde features, neither used here). Sized first, so a
        // large state is never copied while the buffer grows.
        let size = postcard::serialize_with_flavor(&state, postcard::ser_flavors::Size::default())
            .unwrap_or(0);
        postcard::to_extend(&state, Vec::with_capacity(size)).unwrap_or_default()
    }

    /// A tree from [`Tree::encode_state`]'s bytes; [`TreeError::Invalid`] for anything that
    /// is not one (never a panic: the bytes come from another member). Checks every bound
    /// and invariant [`Tree::apply`] keeps: names, versions, ids sorted and unique, every
    /// parent a folder, no name twice in a folder, no cycle, the depth, canonical order.
    pub fn decode_state(bytes: &[u8]) -> Result<Tree, TreeError> {
        let (state, rest): (StateFormat<String, UserName, NodeKind, Link>, _) =
            postcard::take_from_bytes(bytes).map_err(|_| TreeError::Invalid)?;
        if !rest.is_empty() {
            return Err(TreeError::Invalid);
        }
        let StateFormat::V1(state) = state;
        let owner = state.owner.ok_or(TreeError::Invalid)?;
        check(valid_drive_name(&state.name))?;
        check(state.nodes.len() <= MAX_NODES && state.links.len() <= MAX_LINKS)?;
        check(strictly_increasing(state.read_only.iter()))?;
        check(!state.read_only.contains(&owner))?;
        check(strictly_increasing(state.nodes.iter().map(|n| &n.id)))?;
        check(strictly_increasing(state.trash.iter().map(|(id, _)| id)))?;
        check(strictly_increasing(
            state.links.iter().map(|l| &l.link.blob),
        ))?;
        let mut tree = Tree {
            applied: state.applied,
            info: Some((state.name, owner)),
            read_only: state.read_only.into_iter().collect(),
            ..Tree::default()
        };
        for n in state.nodes {
            check(n.id != ROOT && valid_name(&n.name) && valid_kind(&n.kind))?;
            if n.kind == NodeKind::Folder {
                tree.children.insert(n.id, BTreeMap::new());
            }
            let author = tree.intern(&n.author);
            tree.nodes.insert(
                n.id,
                Node {
                    parent: n.parent,
                    name: n.name.into(),
                    kind: n.kind,
                    author,
                },
            );
        }
        for (id, path) in state.trash {
            check(tree.nodes.contains_key(&id) && path.len() <= MAX_PATH_BYTES)?;
            tree.trash.insert(id, path);
        }
        tree.links = state.links.into_iter().map(|l| (l.link.blob, l)).collect();
        // Index every node that is not a trashed top under its parent, which must be a
        // folder; a name twice in one folder is refused.
        for (id, node) in &tree.nodes {
            if tree.trash.contains_key(id) {
                continue;
            }
            let index = tree
                .children
                .get_mut(&node.parent)
                .ok_or(TreeError::Invalid)?;
            check(index.insert(Arc::clone(&node.name), *id).is_none())?;
        }
        // Every node is reached from the root or a trashed top, within the depth: a cycle
        // (or a node hanging off one) is never reached.
        let mut reached = 0usize;
        let mut stack: Vec<(NodeId, usize)> = vec![(ROOT, 0)];
        stack.extend(tree.trash.keys().map(|id| (*id, 1)));
        while let Some((id, depth)) = stack.pop() {
            check(depth <= MAX_DEPTH)?;
            if id != ROOT {
                reached += 1;
            }
            if let Some(index) = tree.children.get(&id) {
                stack.extend(index.values().map(|child| (*child, depth + 1)));
            }
        }
        check(reached == tree.nodes.len())?;
        Ok(tree)
    }

    /// The subtree at `folder` as a new tree (owner `owner`, name `name`, nothing applied),
    /// for sharing an existing folder: its live nodes keep their ids, names, versions and
    /// authors; the folder's children are the new root's. Trash, links and read-only
    /// members are not carried over.
    pub fn extract(
        &self,
        folder: &NodeId,
        name: &str,
        owner: &UserName,
    ) -> Result<Tree, TreeError> {
        if !valid_drive_name(name) {
            return Err(TreeError::Invalid);
        }
        self.live_folder(folder)?;
        let mut tree = Tree {
            info: Some((name.to_owned(), owner.clone())),
            ..Tree::default()
        };
        let mut stack = vec![*folder];
        while let Some(at) = stack.pop() {
            let Some(index) = self.children.get(&at) else {
                continue;
            };
            let new_at = if at == *folder { ROOT } else { at };
            tree.children.insert(new_at, index.clone());
            for id in index.values() {
                if let Some(node) = self.nodes.get(id) {
                    let mut node = node.clone();
                    if node.parent == *folder {
                        node.parent = ROOT;
                    }
                    node.author = tree.intern(&node.author);
                    if node.kind == NodeKind::Folder {
                        stack.push(*id);
                    }
                    tree.nodes.insert(*id, node);
                }
            }
        }
        Ok(tree)
    }
}

/// Longest path a trashed top remembers (every level at the longest name).
const MAX_PATH_BYTES: usize = MAX_DEPTH * (MAX_NAME_BYTES + 1);

/// The encoded state. Generic so that encoding borrows the tree and decoding owns.
#[derive(Serialize, Deserialize)]
enum StateFormat<S, U, K, L> {
    /// Version 1. New versions are appended.
    V1(StateV1<S, U, K, L>),
}

#[derive(Serialize, Deserialize)]
struct StateV1<S, U, K, L> {
    applied: u64,
    name: S,
    /// Always `Some` (only initialised trees are encoded usefully; `None` decodes as
    /// invalid).
    owner: Option<U>,
    read_only: Vec<U>,
    nodes: Vec<NodeRecord<S, U, K>>,
    trash: Vec<(NodeId, S)>,
    links: Vec<L>,
}

#[derive(Serialize, Deserialize)]
struct NodeRecord<S, U, K> {
    id: NodeId,
    parent: NodeId,
    name: S,
    kind: K,
    author: U,
}

fn check(ok: bool) -> Result<(), TreeError> {
    ok.then_some(()).ok_or(TreeError::Invalid)
}

fn strictly_increasing<'a, T: Ord + 'a>(mut items: impl Iterator<Item = &'a T>) -> bool {
    let Some(mut last) = items.next() else {
        return true;
    };
    for item in items {
        if item <= last {
            return false;
        }
        last = item;
    }
    true
}

/// The bounds of an `Init` name (as [`DriveOp::validate`] checks them).
fn valid_drive_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

/// A node kind within the bounds [`DriveOp::validate`] and [`Tree::apply`] keep.
fn valid_kind(kind: &NodeKind) -> bool {
    match kind {
        NodeKind::Folder | NodeKind::Mount { .. } => true,
        NodeKind::File { versions } => {
            (1..=MAX_VERSIONS).contains(&versions.len())
                && versions.iter().all(|v| {
                    !v.device.is_empty()
                        && v.device.len() <= cove_wire::limits::DEVICE_NAME_LEN.end() * 4
                        && match &v.manifest {
                            ManifestRef::Inline(m) => m.chunks.len() <= MAX_INLINE_CHUNKS,
                            ManifestRef::Blob(_) => true,
                        }
                })
        }
    }
}

/// `wanted`, or the first of `stem (2).ext`, `stem (3).ext`, ... that `index` does not hold.
fn free_name(index: &BTreeMap<Name, NodeId>, wanted: &str) -> Name {
    if !index.contains_key(wanted) {
        return wanted.into();
    }
    let (stem, ext) = split_ext(wanted);
    // The answer is at most `index.len() + 2`: the candidates 2..=len+2 are distinct and
    // `index` holds at most `len - 1` of them (it holds `wanted`, no candidate).
    let most = index.len() + 2;
    if stem.len() + format!(" ({most}){ext}").len() <= MAX_NAME_BYTES {
        // No candidate up to `most` is cut, so each is exactly `stem (n)ext`: one scan of
        // the names starting with `stem (` finds the numbers taken (linear in those
        // names, not in the numbers times the folder).
        let prefix = format!("{stem} (");
        let mut taken: Vec<usize> = Vec::new();
        let from = (Bound::Included(prefix.as_str()), Bound::Unbounded);
        for key in index.range::<str, _>(from).map(|(key, _)| key) {
            let Some(rest) = key.strip_prefix(prefix.as_str()) else {
                break;
            };
            let digits = rest.strip_suffix(ext).and_then(|r| r.strip_suffix(')'));
            let n = digits
                .filter(|d| !d.starts_with('0') && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<usize>().ok());
            taken.extend(n);
        }
        taken.sort_unstable();
        let mut n = 2;
        for t in taken {
            if t == n {
                n += 1;
            } else if t > n {
                break;
            }
        }
        // `n` is at most 2 + the candidates taken, so at most `most`: not cut.
        return format!("{stem} ({n}){ext}").into();
    }
    free_name_probing(index, wanted)
}

/// [`free_name`] the slow way (one lookup per number), for names long enough that a
/// candidate may be cut.
fn free_name_probing(index: &BTreeMap<Name, NodeId>, wanted: &str) -> Name {
    let (stem, ext) = split_ext(wanted);
    // Distinct numbers give distinct names (the number is the digits just before the
    // final ")"), so at most `index.len() + 1` numbers are tried.
    let mut n: u64 = 2;
    loop {
        let candidate = numbered(stem, ext, n)
            .or_else(|| numbered(wanted, "", n))
            .unwrap_or_default();
        if !candidate.is_empty() && !index.contains_key(candidate.as_str()) {
            return candidate.into();
        }
        n += 1;
    }
}

/// `(stem, ext)`: `ext` from the last dot on, none when that dot starts the name.
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    }
}

/// `stem (n)ext`, the stem cut (on a character boundary) to keep within
/// [`MAX_NAME_BYTES`]; `None` when the suffix alone leaves no room for the stem.
fn numbered(stem: &str, ext: &str, n: u64) -> Option<String> {
    let suffix = format!(" ({n}){ext}");
    let room = MAX_NAME_BYTES
        .checked_sub(suffix.len())
        .filter(|r| *r > 0)?;
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + suffix.len());
    out.push_str(stem.get(..cut)?);
    out.push_str(&suffix);
    Some(out)
}

impl Tree {
    /// The shared copy of `user`'s name.
    fn intern(&mut self, user: &UserName) -> Arc<UserName> {
        if let Some(shared) = self.authors.get(user) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(user.clone());
        self.authors.insert(Arc::clone(&shared));
        shared
    }

    /// Whether `id` is the root or a node whose ancestors up to the root are not trashed.
    fn is_live(&self, id: &NodeId) -> bool {
        self.depth(id).is_some()
    }

    /// The depth of a live node (the root 0), `None` for a trashed or unknown one.
    fn depth(&self, id: &NodeId) -> Option<usize> {
        let mut at = *id;
        let mut depth = 0;
        // Bounded: a live node is at most MAX_DEPTH deep.
        while at != ROOT {
            if depth > MAX_DEPTH || self.trash.contains_key(&at) {
                return None;
            }
            at = self.nodes.get(&at)?.parent;
            depth += 1;
        }
        Some(depth)
    }

    /// The name index of a live folder (the root included).
    fn live_folder(&self, id: &NodeId) -> Result<&BTreeMap<Name, NodeId>, TreeError> {
        self.live_folder_depth(id).map(|(index, _)| index)
    }

    /// The name index and depth of a live folder: [`TreeError::NotFound`] for an unknown
    /// or trashed node, [`TreeError::NotAFolder`] for a file or a mount.
    fn live_folder_depth(
        &self,
        id: &NodeId,
    ) -> Result<(&BTreeMap<Name, NodeId>, usize), TreeError> {
        let depth = self
            .depth(id)
            .ok_or_else(|| TreeError::NotFound(hex::encode(id)))?;
        match self.children.get(id) {
            Some(index) => Ok((index, depth)),
            None => Err(TreeError::NotAFolder(
                self.nodes
                    .get(id)
                    .map_or_else(|| hex::encode(id), |n| n.name.to_string()),
            )),
        }
    }

    /// How many levels the subtree of `id` reaches below it (0 for a leaf).
    fn height(&self, id: &NodeId) -> usize {
        let mut max = 0;
        let mut stack = vec![(*id, 0usize)];
        while let Some((at, h)) = stack.pop() {
            max = max.max(h);
            if let Some(index) = self.children.get(&at) {
                stack.extend(index.values().map(|child| (*child, h + 1)));
            }
        }
        max
    }

    fn make_entry(&self, id: &NodeId, path: String) -> Option<Entry> {
        let node = self.nodes.get(id)?;
        let (size, modified_ms) = match &node.kind {
            NodeKind::File { versions } => {
                versions.last().map_or((0, 0), |v| (v.size, v.modified_ms))
            }
            _ => (0, 0),
        };
        Some(Entry {
            id: *id,
            name: node.name.to_string(),
            path,
            kind: node.kind.clone(),
            size,
            modified_ms,
            author: UserName::clone(&node.author),
        })
    }

    /// Creates a node under a live folder (the clash rule applies).
    fn create(
        &mut self,
        id: &NodeId,
        parent: &NodeId,
        name: &str,
        kind: NodeKind,
        author: &Arc<UserName>,
    ) -> Result<(), TreeError> {
        if self.nodes.contains_key(id) {
            return Err(TreeError::Duplicate);
        }
        let (index, depth) = self.live_folder_depth(parent)?;
        if depth >= MAX_DEPTH || self.nodes.len() >= MAX_NODES {
            return Err(TreeError::Full);
        }
        let name = free_name(index, name);
        if kind == NodeKind::Folder {
            self.children.insert(*id, BTreeMap::new());
        }
        self.children
            .entry(*parent)
            .or_default()
            .insert(Arc::clone(&name), *id);
        self.nodes.insert(
            *id,
            Node {
                parent: *parent,
                name,
                kind,
                author: Arc::clone(author),
            },
        );
        Ok(())
    }

    fn put_version(
        &mut self,
        id: &NodeId,
        parent: &NodeId,
        name: &str,
        version: &FileVersion,
        author: &Arc<UserName>,
    ) -> Result<(), TreeError> {
        if !self.nodes.contains_key(id) {
            let kind = NodeKind::File {
                versions: vec![version.clone()],
            };
            return self.create(id, parent, name, kind, author);
        }
        if !self.is_live(id) {
            return Err(TreeError::NotFound(hex::encode(id)));
        }
        let node = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| TreeError::NotFound(hex::encode(id)))?;
        let NodeKind::File { versions } = &mut node.kind else {
            return Err(TreeError::NotAFile(node.name.to_string()));
        };
        versions.push(version.clone());
        if versions.len() > MAX_VERSIONS {
            let extra = versions.len() - MAX_VERSIONS;
            versions.drain(..extra);
        }
        node.author = Arc::clone(author);
        Ok(())
    }

    fn move_node(
        &mut self,
        id: &NodeId,
        parent: &NodeId,
        name: &str,
        author: &Arc<UserName>,
    ) -> Result<(), TreeError> {
        let old_depth = self
            .depth(id)
            .ok_or_else(|| TreeError::NotFound(hex::encode(id)))?;
        let (_, parent_depth) = self.live_folder_depth(parent)?;
        // The target's ancestors (itself included) must not include the node.
        let mut at = *parent;
        while at != ROOT {
            if at == *id {
                return Err(TreeError::Cycle);
            }
            at = self.nodes.get(&at).map_or(ROOT, |n| n.parent);
        }
        let Some(node) = self.nodes.get(id) else {
            return Err(TreeError::NotFound(hex::encode(id)));
        };
        let old_parent = node.parent;
        if old_parent == *parent && *node.name == *name {
            return Ok(());
        }
        if parent_depth + 1 > old_depth && parent_depth + 1 + self.height(id) > MAX_DEPTH {
            return Err(TreeError::Full);
        }
        let old_name = Arc::clone(&node.name);
        if let Some(index) = self.children.get_mut(&old_parent) {
            index.remove(&*old_name);
        }
        let index = self.children.entry(*parent).or_default();
        let name = free_name(index, name);
        index.insert(Arc::clone(&name), *id);
        if let Some(node) = self.nodes.get_mut(id) {
            node.parent = *parent;
            node.name = name;
            node.author = Arc::clone(author);
        }
        Ok(())
    }

    fn trash_node(&mut self, id: &NodeId, author: &Arc<UserName>) -> Result<(), TreeError> {
        let path = self
            .path(id)
            .ok_or_else(|| TreeError::NotFound(hex::encode(id)))?;
        let Some(node) = self.nodes.get_mut(id) else {
            return Err(TreeError::NotFound(hex::encode(id)));
        };
        node.author = Arc::clone(author);
        let (parent, name) = (node.parent, Arc::clone(&node.name));
        if let Some(index) = self.children.get_mut(&parent) {
            index.remove(&*name);
        }
        self.trash.insert(*id, path);
        Ok(())
    }

    fn restore(&mut self, id: &NodeId, author: &Arc<UserName>) -> Result<(), TreeError> {
        let Some(node) = self.nodes.get(id).filter(|_| self.trash.contains_key(id)) else {
            return Err(TreeError::NotFound(hex::encode(id)));
        };
        let (parent, depth) = match self.live_folder_depth(&node.parent) {
            Ok((_, depth)) => (node.parent, depth),
            Err(_) => (ROOT, 0),
        };
        if depth + 1 + self.height(id) > MAX_DEPTH {
            return Err(TreeError::Full);
        }
        let wanted = Arc::clone(&node.name);
        self.trash.remove(id);
        let index = self.children.entry(parent).or_default();
        let name = free_name(index, &wanted);
        index.insert(Arc::clone(&name), *id);
        if let Some(node) = self.nodes.get_mut(id) {
            node.parent = parent;
            node.name = name;
            node.author = Arc::clone(author);
        }
        Ok(())
    }

    /// Deletes a trashed top and its subtree; any other id is ignored.
    fn purge(&mut self, id: &NodeId) {
        if self.trash.remove(id).is_none() {
            return;
        }
        let mut stack = vec![*id];
        while let Some(at) = stack.pop() {
            self.nodes.remove(&at);
            if let Some(index) = self.children.remove(&at) {
                stack.extend(index.into_values());
            }
        }
    }
}

#[cfg(test)]
mod tests;
