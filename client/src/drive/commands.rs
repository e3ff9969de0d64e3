//! The drive commands on a [`Device`] (`cove drive ...`), built on the seam in
//! the `device` module. Paths: `/a/b` in the personal drive (a shared folder mounted there is
//! entered transparently), `OWNER:FOLDER/a/b` in a shared folder (by its owner and display
//! name).

use std::path::{Path, PathBuf};

use futures_util::stream::{self, StreamExt};
use rand::RngCore;

use cove_core::drive::op::{FileVersion, MAX_PURGE_IDS};
use cove_core::drive::{
    DriveOp, Entry, NodeId, NodeKind, ROOT, Tree, TreeError, shared_folder_name,
};
use cove_wire::UserName;

use super::device::{DriveHandle, de, owner_of};
use super::{DriveError, PARALLEL_TRANSFERS, content};
use crate::device::Device;
use crate::session;
use crate::transfer::Retention;

/// A node found by its path: the drive it is in and the node.
#[derive(Clone, Debug)]
pub struct Located {
    /// The drive (the shared folder's when the path went through a mount).
    pub handle: DriveHandle,
    /// The node.
    pub node: NodeId,
}

/// What `put` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutReport {
    /// Files uploaded (new files and new versions).
    pub files: usize,
    /// Folders created.
    pub folders: usize,
    /// Ciphertext bytes sent.
    pub bytes_sent: u64,
    /// Chunks sent.
    pub chunks_sent: usize,
    /// Chunks reused from previous versions.
    pub chunks_reused: usize,
}

/// What `get` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetReport {
    /// Files written.
    pub files: usize,
    /// Folders created.
    pub folders: usize,
    /// Ciphertext bytes fetched.
    pub bytes: u64,
}

/// What `empty-trash` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmptyReport {
    /// Trashed nodes purged (the tops of trashed subtrees).
    pub purged: usize,
    /// Blobs of this user deleted from the relay.
    pub deleted: usize,
    /// Blobs the relay did not delete (other members' uploads stay until they delete them).
    pub kept: usize,
}

/// A shared folder this device is in (`cove drive shared`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedView {
    /// Its display name (`None` while its tree is not here yet).
    pub name: Option<String>,
    /// Its owner.
    pub owner: Option<UserName>,
    /// Its members.
    pub members: Vec<UserName>,
    /// Whether this user may only read it.
    pub read_only: bool,
    /// Its group (hex).
    pub group: String,
}

/// The drive's usage (`cove drive usage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageView {
    /// Live files, live folders, bytes of their latest versions, bytes of every version
    /// (trash included), per drive: the personal drive first, then the shared folders.
    pub drives: Vec<(String, (u64, u64, u64, u64))>,
}

/// Splits `OWNER:FOLDER/a/b` into the drive (`OWNER:FOLDER`, or `""` for the personal
/// drive) and the path in it.
pub fn split_spec(spec: &str) -> (&str, &str) {
    if spec.starts_with('/') {
        return ("", spec);
    }
    let head = spec.split('/').next().unwrap_or_default();
    if head.contains(':') {
        let rest = &spec[head.len()..];
        return (head, rest);
    }
    ("", spec)
}

fn segments(path: &str) -> Result<Vec<&str>, DriveError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.iter().any(|s| *s == "." || *s == "..") {
        return Err(DriveError::Invalid(format!(
            "{path:?}: `.` and `..` are not drive paths"
        )));
    }
    Ok(segs)
}

fn new_id() -> NodeId {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DriveError + '_ {
    move |source| DriveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn entry_of(tree: &Tree, id: &NodeId) -> Option<Entry> {
    let (parent, _, _) = tree.node(id)?;
    tree.list(&parent).ok()?.into_iter().find(|e| e.id == *id)
}

fn latest(tree: &Tree, id: &NodeId) -> Option<FileVersion> {
    tree.versions(id).ok()?.last().cloned()
}

/// Local files and folders below `dir`, parents before children, as relative paths.
fn local_walk(dir: &Path) -> Result<Vec<(Vec<String>, bool)>, DriveError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), Vec::<String>::new())];
    while let Some((at, rel)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&at)
            .map_err(io(&at))?
            .collect::<Result<_, _>>()
            .map_err(io(&at))?;
        entries.sort_by_key(|e| e.file_name());
        let mut dirs = Vec::new();
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let kind = e.file_type().map_err(io(&e.path()))?;
            let mut path = rel.clone();
            path.push(name);
            if kind.is_dir() {
                out.push((path.clone(), true));
                dirs.push((e.path(), path));
            } else if kind.is_file() {
                out.push((path, false));
            }
        }
        stack.extend(dirs.into_iter().rev());
    }
    Ok(out)
}

/// A file `put` uploads: local path, parent folder, name, the existing file and its latest
/// version (a new version then).
type PutFile = (PathBuf, NodeId, String, Option<NodeId>, Option<FileVersion>);

impl Device {
    /// The node at `spec`; with `enter_last`, a mount found there is entered (its drive's
    /// root is returned).
    pub async fn drive_locate(&self, spec: &str, enter_last: bool) -> Result<Located, DriveError> {
        let (drive, path) = split_spec(spec);
        let segs = segments(path)?;
        let mut at = Located {
            handle: self.drive_open(drive).await?,
            node: ROOT,
        };
        for seg in segs {
            at = self.enter(at).await?;
            let child = at
                .handle
                .tree
                .child(&at.node, seg)
                .ok_or_else(|| TreeError::NotFound(spec.to_owned()))?;
            at.node = child;
        }
        if enter_last {
            self.enter(at).await
        } else {
            Ok(at)
        }
    }

    async fn enter(&self, at: Located) -> Result<Located, DriveError> {
        match at.handle.tree.node(&at.node) {
            Some((_, _, NodeKind::Mount { group })) => Ok(Located {
                handle: self.drive_open_group(*group).await?,
                node: ROOT,
            }),
            _ => Ok(at),
        }
    }

    /// The folder that holds (or would hold) `spec` and the last name of `spec`.
    async fn drive_locate_parent(&self, spec: &str) -> Result<(Located, String), DriveError> {
        let (drive, path) = split_spec(spec);
        let segs = segments(path)?;
        let Some((name, parents)) = segs.split_last() else {
            return Err(DriveError::Invalid(format!(
                "{spec:?} names no file or folder"
            )));
        };
        let parent = format!("{drive}/{}", parents.join("/"));
        let at = self.drive_locate(&parent, true).await?;
        Ok((at, (*name).to_owned()))
    }

    fn check_write(&self, handle: &DriveHandle) -> Result<(), DriveError> {
        if handle.tree.can_write(self.user()) {
            Ok(())
        } else {
            Err(DriveError::ReadOnly)
        }
    }

    /// `ls`: the entries of the folder at `spec`, or the file there alone.
    pub async fn drive_ls(&self, spec: &str) -> Result<Vec<Entry>, DriveError> {
        let at = self.drive_locate(spec, true).await?;
        let tree = &at.handle.tree;
        match tree.node(&at.node) {
            Some((_, _, NodeKind::File { .. })) => {
                Ok(entry_of(tree, &at.node).into_iter().collect())
            }
            _ => Ok(tree.list(&at.node)?),
        }
    }

    /// `put`: uploads the local file or folder `local` to `remote` (an existing folder: into
    /// it under its own name; an existing file: as its new version; else the new name).
    /// Files that exist remotely get a new version whose `previous` is their latest. Up to
    /// [`PARALLEL_TRANSFERS`] files at once; with `progress`, a line per file on stderr.
    pub async fn drive_put(
        &self,
        local: &Path,
        remote: &str,
        progress: bool,
    ) -> Result<PutReport, DriveError> {
        let meta = std::fs::metadata(local).map_err(io(local))?;
        let local_name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| DriveError::Invalid(format!("{}: no file name", local.display())))?;
        let (mut at, name) = match self.drive_locate(remote, true).await {
            Ok(at) => match at.handle.tree.node(&at.node) {
                Some((parent, name, NodeKind::File { .. })) if meta.is_file() => {
                    let name = name.to_owned();
                    (Located { node: parent, ..at }, name)
                }
                Some((_, name, NodeKind::File { .. })) => {
                    return Err(TreeError::NotAFolder(name.to_owned()).into());
                }
                _ => (at, local_name),
            },
            Err(DriveError::Tree(TreeError::NotFound(_))) => {
                self.drive_locate_parent(remote).await?
            }
            Err(e) => return Err(e),
        };
        self.check_write(&at.handle)?;
        let mut report = PutReport::default();
        let device = self.drive_device_name();
        let blobs = self.drive_blobs().await?;
        let mut files: Vec<PutFile> = Vec::new();
        let mut mkdirs = Vec::new();
        if meta.is_file() {
            let existing = at.handle.tree.child(&at.node, &name);
            let previous = existing.and_then(|id| latest(&at.handle.tree, &id));
            files.push((local.to_path_buf(), at.node, name, existing, previous));
        } else {
            // The folders first (ids chosen here), then the files.
            let top = match at.handle.tree.child(&at.node, &name) {
                Some(id) => {
                    if !matches!(at.handle.tree.node(&id), Some((_, _, NodeKind::Folder))) {
                        return Err(TreeError::NotAFolder(name).into());
                    }
                    id
                }
                None => {
                    let id = new_id();
                    mkdirs.push(DriveOp::Mkdir {
                        id,
                        parent: at.node,
                        name: name.clone(),
                    });
                    id
                }
            };
            let mut folders: std::collections::HashMap<Vec<String>, (NodeId, bool)> =
                Default::default();
            folders.insert(Vec::new(), (top, mkdirs.is_empty()));
            for (rel, is_dir) in local_walk(local)? {
                let Some((leaf, parents)) = rel.split_last() else {
                    continue;
                };
                let Some(&(parent, parent_exists)) = folders.get(parents) else {
                    continue;
                };
                let existing = parent_exists
                    .then(|| at.handle.tree.child(&parent, leaf))
                    .flatten();
                if is_dir {
                    let (id, exists) = match existing {
                        Some(id)
                            if matches!(
                                at.handle.tree.node(&id),
                                Some((_, _, NodeKind::Folder))
                            ) =>
                        {
                            (id, true)
                        }
                        _ => {
                            let id = new_id();
                            mkdirs.push(DriveOp::Mkdir {
                                id,
                                parent,
                                name: leaf.clone(),
                            });
                            (id, false)
                        }
                    };
                    folders.insert(rel.clone(), (id, exists));
                } else {
                    let existing = existing.filter(|id| {
                        matches!(at.handle.tree.node(id), Some((_, _, NodeKind::File { .. })))
                    });
                    let previous = existing.and_then(|id| latest(&at.handle.tree, &id));
                    let path = rel.iter().fold(local.to_path_buf(), |p, s| p.join(s));
                    files.push((path, parent, leaf.clone(), existing, previous));
                }
            }
        }
        report.folders = mkdirs.len();
        if !mkdirs.is_empty() {
            self.drive_post_unchecked(at.handle.group, mkdirs).await?;
        }
        let uploads = stream::iter(files.into_iter().map(
            |(path, parent, name, existing, previous)| {
                let (blobs, device) = (&blobs, device.as_str());
                async move {
                    let up =
                        content::upload_file(blobs, &path, previous.as_ref(), device, None).await;
                    (path, parent, name, existing, up)
                }
            },
        ))
        .buffer_unordered(PARALLEL_TRANSFERS)
        .collect::<Vec<_>>()
        .await;
        let mut ops = Vec::new();
        let mut failed = None;
        for (path, parent, name, existing, up) in uploads {
            match up {
                Ok(up) => {
                    if progress {
                        eprintln!(
                            "put {} ({} bytes; {} chunks sent, {} reused)",
                            path.display(),
                            up.version.size,
                            up.chunks_sent,
                            up.chunks_reused
                        );
                    }
                    report.files += 1;
                    report.bytes_sent += up.bytes_sent;
                    report.chunks_sent += up.chunks_sent;
                    report.chunks_reused += up.chunks_reused;
                    ops.push(DriveOp::PutVersion {
                        id: existing.unwrap_or_else(new_id),
                        parent,
                        name,
                        version: up.version,
                    });
                }
                Err(e) => {
                    if progress {
                        eprintln!("failed {}: {e}", path.display());
                    }
                    failed.get_or_insert(e);
                }
            }
        }
        // What uploaded is published even when another file failed.
        if !ops.is_empty() {
            self.drive_post_unchecked(at.handle.group, ops).await?;
        }
        self.drive_refresh(&mut at.handle).await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// `get`: downloads the file or folder at `remote` to `local` (an existing folder: into
    /// it under the remote name). Existing local files are not overwritten unless
    /// `overwrite`.
    pub async fn drive_get(
        &self,
        remote: &str,
        local: &Path,
        overwrite: bool,
    ) -> Result<GetReport, DriveError> {
        let at = self.drive_locate(remote, true).await?;
        let tree = &at.handle.tree;
        let blobs = self.drive_blobs().await?;
        let mut report = GetReport::default();
        let remote_name = tree
            .node(&at.node)
            .map(|(_, n, _)| n.to_owned())
            .filter(|_| at.node != ROOT)
            .or_else(|| tree.info().map(|(n, _)| n.to_owned()))
            .unwrap_or_else(|| "Drive".into());
        let into_dir = local.is_dir();
        if let Some((_, _, NodeKind::File { versions })) = tree.node(&at.node) {
            let version = versions
                .last()
                .ok_or_else(|| TreeError::NotFound(remote.to_owned()))?;
            let target = if into_dir {
                local.join(&remote_name)
            } else {
                local.to_path_buf()
            };
            report.bytes += content::download_file(&blobs, version, &target, overwrite).await?;
            report.files = 1;
            return Ok(report);
        }
        let base = if into_dir && at.node != ROOT {
            local.join(&remote_name)
        } else {
            local.to_path_buf()
        };
        std::fs::create_dir_all(&base).map_err(io(&base))?;
        let mut files = Vec::new();
        for e in tree.walk(&at.node)? {
            let target = e.path.split('/').fold(base.clone(), |p, s| p.join(s));
            match &e.kind {
                NodeKind::Folder => {
                    std::fs::create_dir_all(&target).map_err(io(&target))?;
                    report.folders += 1;
                }
                NodeKind::File { versions } => {
                    if let Some(v) = versions.last() {
                        files.push((target, v.clone()));
                    }
                }
                NodeKind::Mount { .. } => {}
            }
        }
        let results = stream::iter(files.into_iter().map(|(target, version)| {
            let blobs = &blobs;
            async move { content::download_file(blobs, &version, &target, overwrite).await }
        }))
        .buffer_unordered(PARALLEL_TRANSFERS)
        .collect::<Vec<_>>()
        .await;
        for r in results {
            report.bytes += r?;
            report.files += 1;
        }
        Ok(report)
    }

    /// `mkdir`: creates the folder at `spec`; with `parents`, the missing folders on the
    /// way too (and an existing folder is fine).
    pub async fn drive_mkdir(&self, spec: &str, parents: bool) -> Result<(), DriveError> {
        if !parents {
            let (at, name) = self.drive_locate_parent(spec).await?;
            self.check_write(&at.handle)?;
            if at.handle.tree.child(&at.node, &name).is_some() {
                return Err(DriveError::Invalid(format!("{spec:?} exists")));
            }
            let op = DriveOp::Mkdir {
                id: new_id(),
                parent: at.node,
                name,
            };
            return self.drive_post_unchecked(at.handle.group, vec![op]).await;
        }
        let (drive, path) = split_spec(spec);
        let mut at = self.drive_locate(&format!("{drive}/"), true).await?;
        for seg in segments(path)? {
            at = self.enter(at).await?;
            match at.handle.tree.child(&at.node, seg) {
                Some(id) => at.node = id,
                None => {
                    self.check_write(&at.handle)?;
                    let id = new_id();
                    let op = DriveOp::Mkdir {
                        id,
                        parent: at.node,
                        name: seg.to_owned(),
                    };
                    self.drive_post_unchecked(at.handle.group, vec![op]).await?;
                    self.drive_refresh(&mut at.handle).await?;
                    at.node = id;
                }
            }
        }
        match at.handle.tree.node(&at.node) {
            Some((_, name, NodeKind::File { .. })) => {
                Err(TreeError::NotAFolder(name.to_owned()).into())
            }
            _ => Ok(()),
        }
    }

    /// `mv`: moves and/or renames `from` to `to` (an existing folder: into it under its
    /// own name). Both must be in the same drive.
    pub async fn drive_mv(&self, from: &str, to: &str) -> Result<(), DriveError> {
        let src = self.drive_locate(from, false).await?;
        let name = src
            .handle
            .tree
            .node(&src.node)
            .map(|(_, n, _)| n.to_owned())
            .ok_or_else(|| TreeError::NotFound(from.to_owned()))?;
        let (dst, name) = match self.drive_locate(to, true).await {
            Ok(at)
                if at.node == ROOT
                    || matches!(
                        at.handle.tree.node(&at.node),
                        Some((_, _, NodeKind::Folder))
                    ) =>
            {
                (at, name)
            }
            Ok(_) => return Err(DriveError::Invalid(format!("{to:?} exists"))),
            Err(DriveError::Tree(TreeError::NotFound(_))) => self.drive_locate_parent(to).await?,
            Err(e) => return Err(e),
        };
        if dst.handle.group != src.handle.group {
            return Err(DriveError::Invalid(
                "moving between the personal drive and a shared folder is not supported: \
                 get and put instead"
                    .into(),
            ));
        }
        self.check_write(&src.handle)?;
        let op = DriveOp::Move {
            id: src.node,
            parent: dst.node,
            name,
        };
        self.drive_post_unchecked(src.handle.group, vec![op]).await
    }

    /// `rm`: moves the node at `spec` (a file, a folder, a mounted shared folder) to the
    /// trash.
    pub async fn drive_rm(&self, spec: &str) -> Result<(), DriveError> {
        let at = self.drive_locate(spec, false).await?;
        if at.node == ROOT {
            return Err(DriveError::Invalid("the root cannot be removed".into()));
        }
        self.check_write(&at.handle)?;
        self.drive_post_unchecked(at.handle.group, vec![DriveOp::Trash { id: at.node }])
            .await
    }

    /// `restore`: brings back the trashed node that was at `spec`.
    pub async fn drive_restore(&self, spec: &str) -> Result<String, DriveError> {
        let (drive, path) = split_spec(spec);
        // The drive the path is in: the deepest live folder on the way (through mounts).
        let (mut handle, mut rest) = (self.drive_open(drive).await?, String::new());
        if let Ok((at, name)) = self.drive_locate_parent(spec).await {
            let base = at.handle.tree.path(&at.node).unwrap_or_else(|| "/".into());
            rest = format!("{}/{name}", base.trim_end_matches('/'));
            handle = at.handle;
        }
        let wanted = if rest.is_empty() {
            format!("/{}", segments(path)?.join("/"))
        } else {
            rest
        };
        let found: Vec<Entry> = handle
            .tree
            .trash()
            .into_iter()
            .filter(|e| e.path == wanted)
            .collect();
        let Some(top) = found.last() else {
            return Err(TreeError::NotFound(format!("{spec} (in the trash)")).into());
        };
        self.check_write(&handle)?;
        let id = top.id;
        self.drive_post_unchecked(handle.group, vec![DriveOp::Restore { id }])
            .await?;
        self.drive_refresh(&mut handle).await?;
        Ok(handle.tree.path(&id).unwrap_or(wanted))
    }

    /// The trashed entries of a drive (`""` or `OWNER:FOLDER`).
    pub async fn drive_trash(&self, drive: &str) -> Result<Vec<Entry>, DriveError> {
        Ok(self.drive_open(drive).await?.tree.trash())
    }

    /// `empty-trash`: purges the drive's trash (`""` or `OWNER:FOLDER`) and deletes the
    /// blobs of the purged versions this user uploaded; other members' blobs stay on the
    /// relay until they delete them.
    pub async fn drive_empty_trash(&self, drive: &str) -> Result<EmptyReport, DriveError> {
        let handle = self.drive_open(drive).await?;
        self.check_write(&handle)?;
        let trashed = handle.tree.trash();
        let mut report = EmptyReport {
            purged: trashed.len(),
            ..EmptyReport::default()
        };
        if trashed.is_empty() {
            return Ok(report);
        }
        // The versions below each trashed top: restored in a copy of the tree to walk it.
        let mut copy = handle.tree.clone();
        let mut versions = Vec::new();
        for top in &trashed {
            let seq = copy.applied() + 1;
            let _ = copy.apply(seq, self.user(), &DriveOp::Restore { id: top.id });
            if let Ok(vs) = copy.versions(&top.id) {
                versions.extend(vs.iter().cloned());
            }
            if let Ok(below) = copy.walk(&top.id) {
                for e in below {
                    if let NodeKind::File { versions: vs } = e.kind {
                        versions.extend(vs);
                    }
                }
            }
        }
        let ids: Vec<NodeId> = trashed.iter().map(|e| e.id).collect();
        let ops = ids
            .chunks(MAX_PURGE_IDS)
            .map(|c| DriveOp::Purge { ids: c.to_vec() })
            .collect();
        self.drive_post_unchecked(handle.group, ops).await?;
        let blobs = self.drive_blobs().await?;
        let mut all = std::collections::BTreeSet::new();
        for v in &versions {
            all.extend(content::blobs_of(&blobs, v).await?);
        }
        for id in all {
            match blobs.delete_blob(id).await {
                Ok(()) => report.deleted += 1,
                Err(_) => report.kept += 1,
            }
        }
        Ok(report)
    }

    /// `versions`: a file's versions, oldest first.
    pub async fn drive_versions(&self, spec: &str) -> Result<Vec<FileVersion>, DriveError> {
        let at = self.drive_locate(spec, true).await?;
        Ok(at.handle.tree.versions(&at.node)?.to_vec())
    }

    /// `share`: shares the folder at `spec` with `user` (`read_only`: the user may only
    /// read it). A folder of the personal drive becomes a shared folder: a new drive group
    /// with the folder's tree as its first snapshot, mounted where the folder was (its blobs
    /// are kept: the shared folder refers to them). Sharing a shared folder adds the user.
    /// Returns the shared folder's `OWNER:FOLDER`.
    pub async fn drive_share(
        &self,
        spec: &str,
        user: &UserName,
        read_only: bool,
    ) -> Result<String, DriveError> {
        if user == self.user() {
            return Err(DriveError::Invalid(
                "a folder is shared with another user".into(),
            ));
        }
        let at = self.drive_locate(spec, false).await?;
        let me = self.user().clone();
        let group = match at.handle.tree.node(&at.node) {
            Some((_, _, NodeKind::Mount { group })) => *group,
            _ if at.node == ROOT
                && !cove_core::drive::is_personal_drive(&at.handle.group_name, &me) =>
            {
                at.handle.group
            }
            Some((parent, name, NodeKind::Folder)) => {
                let (parent, name) = (parent, name.to_owned());
                self.check_write(&at.handle)?;
                let created = self
                    .create_drive(|tag| shared_folder_name(&me, tag), &name)
                    .await?;
                let (group, group_name) = (created.id, created.name);
                let mut shared = DriveHandle {
                    group,
                    group_name,
                    tree: at.handle.tree.extract(&at.node, &name, &me)?,
                };
                self.drive_refresh(&mut shared).await?;
                self.drive_post_snapshot(&shared).await?;
                let ops = vec![
                    DriveOp::Trash { id: at.node },
                    DriveOp::Purge { ids: vec![at.node] },
                    DriveOp::Mount {
                        id: new_id(),
                        parent,
                        name,
                        group,
                    },
                ];
                self.drive_post_unchecked(at.handle.group, ops).await?;
                group
            }
            Some((_, name, _)) => return Err(TreeError::NotAFolder(name.to_owned()).into()),
            None => return Err(TreeError::NotFound(spec.to_owned()).into()),
        };
        let mut handle = self.drive_open_group(group).await?;
        if handle.tree.info().map(|(_, o)| o) != Some(&me) {
            return Err(DriveError::Invalid(
                "only the folder's owner shares it".into(),
            ));
        }
        if read_only || handle.tree.read_only_users().contains(user) {
            self.drive_post_unchecked(
                group,
                vec![DriveOp::SetAccess {
                    user: user.clone(),
                    read_only,
                }],
            )
            .await?;
        }
        let (hex, users) = (group.to_hex(), vec![user.clone()]);
        self.session()
            .op(self.timeout(), move |c| {
                c.add_users(session::now_ms(), &hex, &users)
            })
            .await
            .map_err(de)?
            .map_err(de)?;
        // The new member reads nothing from before its add: a snapshot after it.
        self.drive_refresh(&mut handle).await?;
        self.drive_post_snapshot(&handle).await?;
        let name = handle
            .tree
            .info()
            .map(|(n, _)| n.to_owned())
            .unwrap_or_default();
        Ok(format!("{me}:{name}"))
    }

    /// `unshare`: removes `user` from the shared folder at `spec` (what they hold from
    /// before stays theirs; nothing after reaches them).
    pub async fn drive_unshare(&self, spec: &str, user: &UserName) -> Result<(), DriveError> {
        let at = self.drive_locate(spec, true).await?;
        if at.node != ROOT || owner_of(&at.handle.group_name).as_ref() == Some(user) {
            return Err(DriveError::Invalid(format!(
                "{spec:?} is not a shared folder"
            )));
        }
        if at.handle.tree.info().map(|(_, o)| o) != Some(self.user()) {
            return Err(DriveError::Invalid(
                "only the folder's owner unshares it".into(),
            ));
        }
        let (hex, users) = (at.handle.group.to_hex(), vec![user.clone()]);
        self.session()
            .op(self.timeout(), move |c| {
                c.remove_users(session::now_ms(), &hex, &users)
            })
            .await
            .map_err(de)?
            .map_err(de)?;
        Ok(())
    }

    /// `shared`: the shared folders this device is in.
    pub async fn drive_shared(&self) -> Result<Vec<SharedView>, DriveError> {
        self.settle_shared().await.map_err(de)?;
        let mut out = Vec::new();
        for g in self.drive_groups().await? {
            if cove_core::drive::is_personal_drive(&g.name, self.user()) {
                continue;
            }
            let view = match self.drive_handle(g.id, g.name.clone()).await {
                Ok(h) => SharedView {
                    name: h.tree.info().map(|(n, _)| n.to_owned()),
                    owner: h.tree.info().map(|(_, o)| o.clone()),
                    members: g.members.clone(),
                    read_only: !h.tree.can_write(self.user()),
                    group: g.id.to_hex(),
                },
                // Named as this user's, yet no tree from this user's devices: not ours.
                Err(DriveError::NoSnapshot(_))
                    if owner_of(&g.name).as_ref() == Some(self.user()) =>
                {
                    continue;
                }
                Err(DriveError::NoSnapshot(_)) => SharedView {
                    name: None,
                    owner: owner_of(&g.name),
                    members: g.members.clone(),
                    read_only: false,
                    group: g.id.to_hex(),
                },
                // A group passing itself off as another user's drive: not listed.
                Err(DriveError::NoDrive(_)) => continue,
                Err(e) => return Err(e),
            };
            out.push(view);
        }
        Ok(out)
    }

    /// `link`: makes a public link to the file or folder at `spec` (kept until revoked, or
    /// `expires_in_secs`) and records it in the drive; returns its URL.
    pub async fn drive_link(
        &self,
        spec: &str,
        expires_in_secs: Option<u64>,
    ) -> Result<String, DriveError> {
        let at = self.drive_locate(spec, true).await?;
        self.check_write(&at.handle)?;
        let blobs = match expires_in_secs {
            Some(secs) => self
                .drive_blobs()
                .await?
                .with_retention(Retention::ExpiresIn(secs)),
            None => self.drive_blobs().await?,
        };
        let created =
            super::link::create(&blobs, &at.handle.tree, &at.node, expires_in_secs).await?;
        let expires_ms =
            expires_in_secs.map(|s| session::now_ms().saturating_add(s.saturating_mul(1000)));
        self.drive_post_unchecked(
            at.handle.group,
            vec![DriveOp::Link {
                node: at.node,
                link: created.sealed,
                expires_ms,
            }],
        )
        .await?;
        Ok(created.url)
    }

    /// `link --revoke`: deletes every link to the node at `spec`; returns how many.
    pub async fn drive_unlink(&self, spec: &str) -> Result<usize, DriveError> {
        let at = self.drive_locate(spec, true).await?;
        self.check_write(&at.handle)?;
        let blobs = self.drive_blobs().await?;
        let links: Vec<_> = at
            .handle
            .tree
            .links()
            .into_iter()
            .filter(|(node, _, _)| *node == at.node)
            .map(|(_, sealed, _)| sealed.blob)
            .collect();
        for blob in &links {
            blobs.delete_blob(*blob).await?;
        }
        let ops = links.iter().map(|b| DriveOp::Unlink { link: *b }).collect();
        self.drive_post_unchecked(at.handle.group, ops).await?;
        Ok(links.len())
    }

    /// The links of the drive at `spec`'s node (their URLs and expiries).
    pub async fn drive_links(&self, spec: &str) -> Result<Vec<(String, Option<u64>)>, DriveError> {
        let at = self.drive_locate(spec, true).await?;
        let blobs = self.drive_blobs().await?;
        Ok(at
            .handle
            .tree
            .links()
            .into_iter()
            .filter(|(node, _, _)| *node == at.node)
            .map(|(_, sealed, exp)| (super::link::url(&blobs, sealed), exp))
            .collect())
    }

    /// The tree counts of the personal drive and every shared folder this device holds.
    pub async fn drive_tree_usage(&self) -> Result<UsageView, DriveError> {
        let personal = self.drive_open("").await?;
        let mut drives = vec![("Drive".to_owned(), personal.tree.usage())];
        for g in self.drive_groups().await? {
            if g.id == personal.group {
                continue;
            }
            if let Ok(h) = self.drive_handle(g.id, g.name.clone()).await {
                let name = h
                    .tree
                    .info()
                    .map(|(n, o)| format!("{o}:{n}"))
                    .unwrap_or(g.name);
                drives.push((name, h.tree.usage()));
            }
        }
        Ok(UsageView { drives })
    }
}
