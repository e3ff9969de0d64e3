//! `cove drive sync LOCAL_DIR [REMOTE]`: two-way sync of a local folder with a drive folder.
//!
//! A pass: refresh the drive's tree, walk the drive folder, scan the local folder
//! ([`scan`]), compare both with what was last synced ([`state`]) in a pure three-way plan
//! ([`plan`]), apply the actions. Transfers run [`super::PARALLEL_TRANSFERS`] at a time; the
//! tree operations of a batch are posted together, and the state records a batch only after
//! the relay stored its operations (uploads) or the files are in place (downloads). A pass
//! cut anywhere (`kill -9`) is finished by the next one: every plan rule finds an action
//! that was done but not recorded (the same contents on both sides) and only records it;
//! uploads resume from their journal, downloads from their temporary file.
//!
//! [`Syncer::run`] repeats passes until stopped: after local changes (the `notify` crate,
//! debounced), and every interval otherwise (the fallback rescan, and how changes in the
//! drive are picked up).

pub mod plan;
pub mod scan;
pub mod state;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use sha2::{Digest, Sha256};

use cove_core::drive::{DriveOp, NodeId, NodeKind, ROOT, TreeError};

use self::plan::{Action, Local, PlanContext, Remote};
use self::scan::{Ignore, IgnoreError, Skipped};
use self::state::{Known, StateChange, StateError, SyncState};
use super::content;
use super::device::DriveHandle;
use super::{DriveError, PARALLEL_TRANSFERS};
use crate::config::ConfigError;
use crate::device::Device;
use crate::transfer::BlobClient;

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A drive command or transfer.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// The local state file.
    #[error(transparent)]
    State(#[from] StateError),
    /// A `.coveignore` line.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    /// The home (its database key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A local file or folder.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// The local folder is empty although entries were synced from it: it is not mounted,
    /// or the wrong folder (to empty a drive folder, use `cove drive rm`).
    #[error(
        "{path} is empty but {synced} entries were synced from it: not syncing (is it mounted? \
         `cove drive rm` empties the drive folder)"
    )]
    EmptyFolder {
        /// The local folder.
        path: PathBuf,
        /// Entries the state holds.
        synced: usize,
    },
}

/// What a pass did.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    /// Files uploaded (new files and new versions).
    pub uploaded: usize,
    /// Files downloaded.
    pub downloaded: usize,
    /// Renames and moves (either way).
    pub moved: usize,
    /// Conflict copies made.
    pub conflicts: usize,
    /// Deletes (to the drive's trash, or of local files).
    pub deleted: usize,
    /// Folders created (either way).
    pub folders: usize,
    /// Ciphertext bytes uploaded.
    pub bytes_up: u64,
    /// Ciphertext bytes downloaded.
    pub bytes_down: u64,
    /// Entries not synced, and actions that failed (retried next pass).
    pub skipped: Vec<Skipped>,
}

impl PassReport {
    /// Whether the pass changed anything.
    pub fn changed(&self) -> bool {
        self.uploaded + self.downloaded + self.moved + self.conflicts + self.deleted + self.folders
            > 0
    }
}

/// A sync of one local folder with one drive folder.
pub struct Syncer<'a> {
    device: &'a Device,
    handle: DriveHandle,
    blobs: BlobClient,
    state: SyncState,
    root: PathBuf,
    folder_path: String,
    journals: PathBuf,
    device_name: String,
    log: Box<dyn FnMut(&str) + Send + Sync + 'a>,
}

impl std::fmt::Debug for Syncer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("root", &self.root)
            .field("folder", &self.folder_path)
            .finish()
    }
}

impl<'a> Syncer<'a> {
    /// Opens the sync of `local` (created when missing) with `remote` (a `cove drive` path;
    /// the folder is created in the drive when missing) on `device`. `log` gets a line per
    /// action.
    pub async fn open(
        device: &'a Device,
        local: &Path,
        remote: &str,
        log: Box<dyn FnMut(&str) + Send + Sync + 'a>,
    ) -> Result<Syncer<'a>, SyncError> {
        std::fs::create_dir_all(local).map_err(|source| SyncError::Io {
            path: local.to_owned(),
            source,
        })?;
        let root = std::fs::canonicalize(local).map_err(|source| SyncError::Io {
            path: local.to_owned(),
            source,
        })?;
        let (drive, folder_path) = super::commands::split_spec(remote);
        let folder_path = if folder_path.is_empty() {
            "/".to_owned()
        } else {
            folder_path.to_owned()
        };
        let handle = device.drive_open(drive).await?;
        let blobs = device.drive_blobs().await?;
        let mut id = Sha256::new();
        id.update(b"cove/drive-sync/v1\0");
        id.update(root.as_os_str().as_encoded_bytes());
        id.update(b"\0");
        id.update(handle.group_name.as_bytes());
        id.update(b"\0");
        id.update(folder_path.trim_matches('/').as_bytes());
        let id = hex::encode(&id.finalize()[..16]);
        let dir = device.home().dir().join("drive-sync");
        create_private_dir(&dir)?;
        let journals = dir.join(format!("{id}.journal"));
        create_private_dir(&journals)?;
        let key = device.home().database_key()?;
        let state = SyncState::open(&dir.join(format!("{id}.db")), key.as_ref())?;
        Ok(Syncer {
            device,
            handle,
            blobs,
            state,
            root,
            folder_path,
            journals,
            device_name: device.drive_device_name(),
            log,
        })
    }

    /// The local folder (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// One pass: refresh, scan, plan, apply.
    pub async fn pass(&mut self) -> Result<PassReport, SyncError> {
        let mut report = PassReport::default();
        self.device.drive_refresh(&mut self.handle).await?;
        let folder = self.remote_folder().await?;
        let ignore = Ignore::load(&self.root)?;
        let known = self.state.load()?;

        let mut remote = BTreeMap::new();
        let mut dirs: BTreeMap<String, NodeId> = BTreeMap::new();
        dirs.insert(String::new(), folder);
        for e in self.handle.tree.walk(&folder).map_err(DriveError::from)? {
            let dir = !matches!(e.kind, NodeKind::File { .. });
            if ignore.ignored(&e.path, dir) {
                continue;
            }
            match e.kind {
                NodeKind::Folder => {
                    dirs.insert(e.path.clone(), e.id);
                    remote.insert(
                        e.path,
                        Remote {
                            node: e.id,
                            latest: None,
                        },
                    );
                }
                NodeKind::File { versions } => {
                    if let Some(latest) = versions.last() {
                        remote.insert(
                            e.path,
                            Remote {
                                node: e.id,
                                latest: Some(latest.clone()),
                            },
                        );
                    }
                }
                NodeKind::Mount { .. } => {}
            }
        }
        // Mounted shared folders are synced on their own; their subtrees are skipped.
        let root = self.root.clone();
        let ignore2 = ignore.clone();
        let known2 = known.clone();
        // A new local path is hashed only if it may be compared: with the drive file at its
        // path, or as the rename of a synced file of the same size. (Only paths the state
        // lacks are asked about: a steady drive copies no path here.)
        let remote_paths: HashSet<String> = remote
            .keys()
            .filter(|p| !known.contains_key(*p))
            .cloned()
            .collect();
        let known_sizes: HashSet<u64> = known.values().filter(|k| !k.dir).map(|k| k.size).collect();
        let compare =
            move |path: &str, size: u64| remote_paths.contains(path) || known_sizes.contains(&size);
        let (local, skipped) =
            tokio::task::spawn_blocking(move || scan::scan(&root, &ignore2, &known2, &compare))
                .await
                .map_err(|e| SyncError::Invalid(format!("the scan failed: {e}")))??;
        report.skipped.extend(skipped);
        // An empty folder where files were synced is far more often an unmounted disk or a
        // wrong path than a user deleting everything: nothing is trashed then.
        if local.is_empty() && !known.is_empty() {
            return Err(SyncError::EmptyFolder {
                path: self.root.clone(),
                synced: known.len(),
            });
        }

        let ctx = PlanContext {
            device: self.device_name.clone(),
            today: today(),
        };
        let actions = plan::plan(&known, &local, &remote, &ctx);
        self.apply(actions, &local, &mut dirs, &mut report).await?;
        Ok(report)
    }

    /// Runs passes until `stop` completes: after local changes (debounced), and every
    /// `interval` (remote changes, and the fallback rescan). A pass that fails on the
    /// network or the drive is logged and tried again; a broken state file, home or
    /// `.coveignore` ends the run.
    pub async fn run(
        &mut self,
        interval: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<(), SyncError> {
        use notify::Watcher as _;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.send(());
            }
        })
        .ok();
        if let Some(w) = watcher.as_mut()
            && let Err(e) = w.watch(&self.root, notify::RecursiveMode::Recursive)
        {
            (self.log)(&format!(
                "watching {} failed ({e}); rescanning every {}s",
                self.root.display(),
                interval.as_secs()
            ));
        }
        tokio::pin!(stop);
        loop {
            // A failed pass (the relay unreachable, a refused operation) is logged and
            // tried again after the interval: a long-running sync outlives outages.
            let report = match self.pass().await {
                Ok(r) => r,
                Err(e @ (SyncError::State(_) | SyncError::Config(_) | SyncError::Ignore(_))) => {
                    return Err(e);
                }
                Err(e) => {
                    (self.log)(&format!("the pass failed ({e}); trying again"));
                    PassReport::default()
                }
            };
            for s in &report.skipped {
                (self.log)(&format!("not synced: {}: {}", s.path.display(), s.reason));
            }
            if report.changed() {
                (self.log)(&summary(&report));
            }
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
                Some(()) = rx.recv() => {
                    // Debounce: wait until the folder has been quiet for a moment.
                    loop {
                        tokio::select! {
                            _ = &mut stop => return Ok(()),
                            Some(()) = rx.recv() => {}
                            _ = tokio::time::sleep(Duration::from_millis(500)) => break,
                        }
                    }
                }
            }
        }
    }

    /// The drive folder's node, created (with its parents) when missing.
    async fn remote_folder(&mut self) -> Result<NodeId, SyncError> {
        match self.handle.tree.resolve(&self.folder_path) {
            Ok(id) => return Ok(id),
            Err(TreeError::NotFound(_)) => {}
            Err(e) => return Err(DriveError::from(e).into()),
        }
        let mut at = ROOT;
        for name in self.folder_path.split('/').filter(|n| !n.is_empty()) {
            at = match self.handle.tree.child(&at, name) {
                Some(id) => id,
                None => {
                    let id = random_id();
                    self.device
                        .drive_post_to(
                            &self.handle,
                            vec![DriveOp::Mkdir {
                                id,
                                parent: at,
                                name: name.to_owned(),
                            }],
                        )
                        .await?;
                    self.device.drive_refresh(&mut self.handle).await?;
                    id
                }
            };
        }
        Ok(at)
    }

    async fn apply(
        &mut self,
        actions: Vec<Action>,
        local: &BTreeMap<String, Local>,
        dirs: &mut BTreeMap<String, NodeId>,
        report: &mut PassReport,
    ) -> Result<(), SyncError> {
        // The scan as the actions leave it (a local move renames its entries), for the
        // check that a download overwrites only what the scan saw.
        let mut local = local.clone();
        let mut actions = actions.into_iter().peekable();
        while let Some(action) = actions.next() {
            if let Action::LocalMove { from, to } = &action {
                plan::rename_prefix(&mut local, from, to);
            }
            if matches!(action, Action::Upload { .. } | Action::Download { .. }) {
                // The whole run of transfers the plan put together.
                let mut run = vec![action];
                while let Some(a) = actions
                    .next_if(|a| matches!(a, Action::Upload { .. } | Action::Download { .. }))
                {
                    run.push(a);
                }
                self.transfer_run(run, &local, dirs, report).await?;
                continue;
            }
            if let Err(e) = self.apply_one(action, dirs, report).await {
                skip_or_fail(e, report)?;
            }
        }
        Ok(())
    }

    async fn apply_one(
        &mut self,
        action: Action,
        dirs: &mut BTreeMap<String, NodeId>,
        report: &mut PassReport,
    ) -> Result<(), SyncError> {
        match action {
            Action::LocalMove { from, to } => {
                let (a, b) = (self.abs(&from), self.abs(&to));
                ensure_parent(&b)?;
                std::fs::rename(&a, &b).map_err(|source| SyncError::Io { path: a, source })?;
                self.state.apply(&[StateChange::Rename {
                    from: from.clone(),
                    to: to.clone(),
                }])?;
                report.moved += 1;
                (self.log)(&format!("renamed {from} -> {to} (moved in the drive)"));
            }
            Action::LocalMkdir { path, node } => {
                let abs = self.abs(&path);
                std::fs::create_dir_all(&abs)
                    .map_err(|source| SyncError::Io { path: abs, source })?;
                self.state
                    .apply(&[StateChange::Put(path.clone(), folder_known(node))])?;
                report.folders += 1;
                (self.log)(&format!("mkdir {path} (local)"));
            }
            Action::RemoteMkdir { path } => {
                let (parent, name) = parent_of(&path, dirs)?;
                let id = random_id();
                self.device
                    .drive_post_to(
                        &self.handle,
                        vec![DriveOp::Mkdir {
                            id,
                            parent,
                            name: name.to_owned(),
                        }],
                    )
                    .await?;
                dirs.insert(path.clone(), id);
                self.state
                    .apply(&[StateChange::Put(path.clone(), folder_known(id))])?;
                report.folders += 1;
                (self.log)(&format!("mkdir {path} (drive)"));
            }
            Action::RemoteMove { from, to, node } => {
                let (parent, name) = parent_of(&to, dirs)?;
                self.device
                    .drive_post_to(
                        &self.handle,
                        vec![DriveOp::Move {
                            id: node,
                            parent,
                            name: name.to_owned(),
                        }],
                    )
                    .await?;
                let mut changes = vec![StateChange::Rename {
                    from: from.clone(),
                    to: to.clone(),
                }];
                if let Some(mut k) = self.state.get(&from)? {
                    let abs = self.abs(&to);
                    if let Ok(meta) = std::fs::metadata(&abs) {
                        k.size = meta.len();
                        k.mtime_ns = scan::mtime_ns(&meta);
                        changes.push(StateChange::Put(to.clone(), k));
                    }
                }
                self.state.apply(&changes)?;
                report.moved += 1;
                (self.log)(&format!("moved {from} -> {to} (drive)"));
            }
            Action::ConflictCopy { path, copy } => {
                let (a, b) = (self.abs(&path), self.abs(&copy));
                std::fs::rename(&a, &b).map_err(|source| SyncError::Io { path: a, source })?;
                report.conflicts += 1;
                (self.log)(&format!("conflict: {path}: the local copy is now {copy}"));
            }
            Action::RemoteTrash { path, node } => {
                self.device
                    .drive_post_to(&self.handle, vec![DriveOp::Trash { id: node }])
                    .await?;
                self.state.apply(&[StateChange::Remove(path.clone())])?;
                report.deleted += 1;
                (self.log)(&format!("trashed {path} (deleted locally)"));
            }
            Action::LocalRemove { path } => {
                self.remove_local(&path, |p| std::fs::remove_file(p))?;
                report.deleted += 1;
                (self.log)(&format!("removed {path} (deleted in the drive)"));
            }
            Action::LocalRmdir { path } => {
                // Not empty (ignored files): an error, kept, and tried again next pass.
                self.remove_local(&path, |p| std::fs::remove_dir(p))?;
                report.deleted += 1;
                (self.log)(&format!("removed {path}/ (deleted in the drive)"));
            }
            Action::Record { path, known } => {
                self.state.apply(&[StateChange::Put(path, known)])?;
            }
            Action::RecordMove { from, to } => {
                self.state.apply(&[StateChange::Rename { from, to }])?;
            }
            Action::Forget { path } => {
                self.state.apply(&[StateChange::Remove(path)])?;
            }
            Action::Upload { .. } | Action::Download { .. } => {
                unreachable!("transfers go through transfer_run")
            }
        }
        Ok(())
    }

    /// Removes the local file or folder at `path` with `remove` (gone already is fine) and
    /// forgets it in the state.
    fn remove_local(
        &mut self,
        path: &str,
        remove: fn(&Path) -> std::io::Result<()>,
    ) -> Result<(), SyncError> {
        let abs = self.abs(path);
        match remove(&abs) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SyncError::Io { path: abs, source }),
        }
        self.state.apply(&[StateChange::Remove(path.to_owned())])?;
        Ok(())
    }

    fn abs(&self, path: &str) -> PathBuf {
        abs_path(&self.root, path)
    }

    /// Runs a run of uploads and downloads [`PARALLEL_TRANSFERS`] at a time, without
    /// pausing between them: while transfers go on, what has completed is recorded in
    /// batches (the uploads' operations posted at once, then one state transaction), so a
    /// round trip to the relay or a slow file never leaves the other transfers idle.
    async fn transfer_run(
        &mut self,
        run: Vec<Action>,
        local: &BTreeMap<String, Local>,
        dirs: &BTreeMap<String, NodeId>,
        report: &mut PassReport,
    ) -> Result<(), SyncError> {
        use futures_util::StreamExt as _;
        let transfers = Transfers {
            root: &self.root,
            blobs: &self.blobs,
            journals: &self.journals,
            device_name: &self.device_name,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let produce = async move {
            let t = &transfers;
            let mut done = futures_util::stream::iter(
                run.into_iter()
                    .map(|a| async move { t.transfer(&a, local, dirs).await }),
            )
            .buffer_unordered(PARALLEL_TRANSFERS);
            while let Some(d) = done.next().await {
                if tx.send(d).is_err() {
                    break;
                }
            }
            Ok::<(), SyncError>(())
        };
        let (device, handle) = (self.device, &self.handle);
        let (state, log) = (&mut self.state, &mut self.log);
        let record = async move {
            while let Some(first) = rx.recv().await {
                // What completes within RECORD_WAIT of the first goes in the same batch
                // (one message for many files), up to RECORD_BATCH.
                let mut results = vec![first];
                let deadline = tokio::time::Instant::now() + RECORD_WAIT;
                while results.len() < RECORD_BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => results.push(r),
                        Ok(None) | Err(_) => break,
                    }
                }
                let mut ops = Vec::new();
                let mut changes = Vec::new();
                let mut lines = Vec::new();
                let mut journals = Vec::new();
                for result in results {
                    match result {
                        Ok(Done::Uploaded {
                            path,
                            op,
                            known,
                            bytes,
                            journal,
                        }) => {
                            lines.push(format!("uploaded {path} ({bytes} B sent)"));
                            ops.push(*op);
                            changes.push(StateChange::Put(path, known));
                            journals.push(journal);
                            report.uploaded += 1;
                            report.bytes_up += bytes;
                        }
                        Ok(Done::Downloaded { path, known, bytes }) => {
                            lines.push(format!("downloaded {path} ({bytes} B fetched)"));
                            changes.push(StateChange::Put(path, known));
                            report.downloaded += 1;
                            report.bytes_down += bytes;
                        }
                        Err(e) => skip_or_fail(e, report)?,
                    }
                }
                if !ops.is_empty() {
                    device.drive_post_to(handle, ops).await?;
                }
                state.apply(&changes)?;
                for j in journals {
                    let _ = std::fs::remove_dir_all(j);
                }
                for line in lines {
                    log(&line);
                }
            }
            Ok::<(), SyncError>(())
        };
        // An error that ends the pass (a refused post, a broken state) drops the transfers
        // still running; what they uploaded is resumed from their journals next pass.
        tokio::try_join!(produce, record)?;
        Ok(())
    }
}

/// Completed transfers recorded at once, at most (their operations in one message when
/// they fit, and one state transaction).
const RECORD_BATCH: usize = 64;

/// How long completed transfers wait for others to be recorded with.
const RECORD_WAIT: Duration = Duration::from_millis(250);

/// What a transfer needs of the syncer (borrowed apart from its state, which records the
/// completed transfers meanwhile).
struct Transfers<'s> {
    root: &'s Path,
    blobs: &'s BlobClient,
    journals: &'s Path,
    device_name: &'s str,
}

impl Transfers<'_> {
    async fn transfer(
        &self,
        action: &Action,
        local: &BTreeMap<String, Local>,
        dirs: &BTreeMap<String, NodeId>,
    ) -> Result<Done, SyncError> {
        match action {
            Action::Upload {
                path,
                node,
                previous,
            } => {
                let abs = abs_path(self.root, path);
                let meta = std::fs::metadata(&abs).map_err(|source| SyncError::Io {
                    path: abs.clone(),
                    source,
                })?;
                let journal = self
                    .journals
                    .join(hex::encode(&Sha256::digest(path.as_bytes())[..16]));
                create_private_dir(&journal)?;
                let up = content::upload_file(
                    self.blobs,
                    &abs,
                    previous.as_ref(),
                    self.device_name,
                    Some(&journal),
                )
                .await?;
                let (parent, name) = parent_of(path, dirs)?;
                let id = node.unwrap_or_else(random_id);
                let known = Known {
                    dir: false,
                    node: id,
                    version: Some(up.version.version),
                    size: meta.len(),
                    mtime_ns: scan::mtime_ns(&meta),
                    sha256: Some(up.version.sha256),
                };
                Ok(Done::Uploaded {
                    path: path.clone(),
                    op: Box::new(DriveOp::PutVersion {
                        id,
                        parent,
                        name: name.to_owned(),
                        version: up.version,
                    }),
                    known,
                    bytes: up.bytes_sent,
                    journal,
                })
            }
            Action::Download {
                path,
                node,
                version,
            } => {
                let abs = abs_path(self.root, path);
                // A local file written since the scan is not overwritten: the next pass
                // sees the change (and keeps both if the drive's changed too).
                if let Ok(meta) = std::fs::symlink_metadata(&abs) {
                    let scanned = local.get(path).filter(|l| !l.dir);
                    if scanned
                        .is_none_or(|l| l.size != meta.len() || l.mtime_ns != scan::mtime_ns(&meta))
                    {
                        return Err(SyncError::Io {
                            path: abs,
                            source: std::io::Error::other("changed during the pass; next pass"),
                        });
                    }
                }
                ensure_parent(&abs)?;
                let bytes = content::download_file(self.blobs, version, &abs, true).await?;
                let modified = UNIX_EPOCH + Duration::from_millis(version.modified_ms);
                if let Ok(f) = std::fs::File::options().write(true).open(&abs) {
                    let _ = f.set_modified(modified);
                }
                let meta = std::fs::metadata(&abs).map_err(|source| SyncError::Io {
                    path: abs.clone(),
                    source,
                })?;
                Ok(Done::Downloaded {
                    path: path.clone(),
                    known: Known {
                        dir: false,
                        node: *node,
                        version: Some(version.version),
                        size: meta.len(),
                        mtime_ns: scan::mtime_ns(&meta),
                        sha256: Some(version.sha256),
                    },
                    bytes,
                })
            }
            _ => Err(SyncError::Invalid("not a transfer".into())),
        }
    }
}

/// `path` (a drive path below the synced folder) below `root`.
fn abs_path(root: &Path, path: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(path.split('/'));
    p
}

/// The drive folder holding `path`, and its name there.
fn parent_of<'p>(
    path: &'p str,
    dirs: &BTreeMap<String, NodeId>,
) -> Result<(NodeId, &'p str), SyncError> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let id = dirs
        .get(parent)
        .copied()
        .ok_or_else(|| SyncError::Invalid(format!("{parent}: no such folder in the drive")))?;
    Ok((id, name))
}

/// A completed transfer, to post and record.
enum Done {
    Uploaded {
        path: String,
        op: Box<DriveOp>,
        known: Known,
        bytes: u64,
        journal: PathBuf,
    },
    Downloaded {
        path: String,
        known: Known,
        bytes: u64,
    },
}

/// A one-line summary of a pass.
pub fn summary(r: &PassReport) -> String {
    format!(
        "synced: {} uploaded, {} downloaded, {} moved, {} deleted, {} conflicts, {} folders; \
         {} B up, {} B down",
        r.uploaded,
        r.downloaded,
        r.moved,
        r.deleted,
        r.conflicts,
        r.folders,
        r.bytes_up,
        r.bytes_down
    )
}

/// Local file errors skip the action (reported, tried again next pass); others end the pass.
fn skip_or_fail(e: SyncError, report: &mut PassReport) -> Result<(), SyncError> {
    match e {
        SyncError::Io { path, source } | SyncError::Drive(DriveError::Io { path, source }) => {
            report.skipped.push(Skipped {
                path,
                reason: source.to_string(),
            });
            Ok(())
        }
        SyncError::Drive(DriveError::Exists(path)) => {
            report.skipped.push(Skipped {
                path,
                reason: "exists".into(),
            });
            Ok(())
        }
        e => Err(e),
    }
}

fn folder_known(node: NodeId) -> Known {
    Known {
        dir: true,
        node,
        version: None,
        size: 0,
        mtime_ns: 0,
        sha256: None,
    }
}

fn random_id() -> NodeId {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

fn ensure_parent(path: &Path) -> Result<(), SyncError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| SyncError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), SyncError> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(source) => Err(SyncError::Io {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    civil_date(days)
}

/// The `YYYY-MM-DD` of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(20_792), "2026-12-05");
    }
}
