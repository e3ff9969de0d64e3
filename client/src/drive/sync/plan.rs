//! The plan: a pure three-way comparison of the state (what was last synced), the local
//! folder and the drive folder, into the actions that bring both sides together.
//!
//! Per path, with `S` the state, `L` local, `R` the drive (the same node as `S`):
//!
//! | S | L         | R          | action                                               |
//! |---|-----------|------------|------------------------------------------------------|
//! | - | new       | -          | upload a new file / create the folder in the drive    |
//! | - | -         | new        | download / create the folder locally                  |
//! | - | new       | new        | same contents: record; else a conflict copy           |
//! | s | changed   | unchanged  | upload a new version (`previous` = the latest)        |
//! | s | unchanged | changed    | download                                              |
//! | s | changed   | changed    | same contents: record; else a conflict copy          |
//! | s | deleted   | unchanged  | move it to the drive's trash (never purge)            |
//! | s | deleted   | changed    | download (the drive's change wins, nothing is lost)   |
//! | s | unchanged | trashed    | remove the local file                                  |
//! | s | changed   | trashed    | upload as a new file (nothing is lost)                |
//!
//! A conflict keeps both: the drive's version stays at the name and is downloaded, the local
//! copy is renamed `name (conflict from DEVICE YYYY-MM-DD).ext` and uploaded as a new file.
//! Moves are found first: the state's node at another path in the drive is a local rename
//! (no download); a locally deleted file and a new local file with the same SHA-256 and size
//! in one scan is a move in the drive (no upload). Every rule is idempotent: a pass cut by a
//! crash after an action but before its state change finds both sides equal and records.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cove_core::drive::{FileVersion, NodeId};

use super::state::Known;

/// A local entry as a scan found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    /// A folder (else a file).
    pub dir: bool,
    /// A file's size.
    pub size: u64,
    /// A file's modification time (ns since the Unix epoch).
    pub mtime_ns: i64,
    /// A file's SHA-256.
    pub sha256: Option<[u8; 32]>,
}

/// A drive entry below the synced folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The node.
    pub node: NodeId,
    /// A file's latest version (`None` for a folder).
    pub latest: Option<FileVersion>,
}

impl Remote {
    fn dir(&self) -> bool {
        self.latest.is_none()
    }
}

/// One step of a plan, in the order to apply them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Renames a local file or folder the drive moved (no download); the state follows.
    LocalMove {
        /// The old path.
        from: String,
        /// The new path.
        to: String,
    },
    /// Creates a local folder the drive has.
    LocalMkdir {
        /// The path.
        path: String,
        /// The drive's folder.
        node: NodeId,
    },
    /// Creates a folder in the drive that exists locally.
    RemoteMkdir {
        /// The path.
        path: String,
    },
    /// Moves a node in the drive to where a local rename put the file.
    RemoteMove {
        /// The old path.
        from: String,
        /// The new path.
        to: String,
        /// The node.
        node: NodeId,
    },
    /// Renames the local file to its conflict copy's name (then `Upload`ed as a new file).
    ConflictCopy {
        /// The path (the drive's version is downloaded there).
        path: String,
        /// The copy's path.
        copy: String,
    },
    /// Uploads the local file as a new version of `node` (or a new file).
    Upload {
        /// The path.
        path: String,
        /// The node, or `None` for a new file.
        node: Option<NodeId>,
        /// The latest version (its secret is kept, its chunks are reused).
        previous: Option<FileVersion>,
    },
    /// Downloads a version over the local path.
    Download {
        /// The path.
        path: String,
        /// The node.
        node: NodeId,
        /// The version.
        version: FileVersion,
    },
    /// Moves a node to the drive's trash (a local delete).
    RemoteTrash {
        /// The path.
        path: String,
        /// The node.
        node: NodeId,
    },
    /// Removes a local file the drive trashed or deleted.
    LocalRemove {
        /// The path.
        path: String,
    },
    /// Removes a local folder (once empty) the drive trashed or deleted.
    LocalRmdir {
        /// The path.
        path: String,
    },
    /// Both sides agree: only the state changes.
    Record {
        /// The path.
        path: String,
        /// What is synced there now.
        known: Known,
    },
    /// A path the state renames (both sides moved it alike).
    RecordMove {
        /// The old path.
        from: String,
        /// The new path.
        to: String,
    },
    /// Neither side has it any more: the state forgets it.
    Forget {
        /// The path.
        path: String,
    },
}

/// What the plan needs besides the three sides.
#[derive(Clone, Debug)]
pub struct PlanContext {
    /// This device's name (for conflict copies).
    pub device: String,
    /// Today's date, `YYYY-MM-DD` (for conflict copies).
    pub today: String,
}

/// Plans a pass.
pub fn plan(
    state: &BTreeMap<String, Known>,
    local: &BTreeMap<String, Local>,
    remote: &BTreeMap<String, Remote>,
    ctx: &PlanContext,
) -> Vec<Action> {
    let mut state = state.clone();
    let mut local = local.clone();
    let mut remote = remote.clone();
    let mut moves = Vec::new();
    let mut remote_moves = Vec::new();

    // 1. The drive moved a node: rename locally (parents first, children follow).
    let node_path: HashMap<NodeId, String> =
        remote.iter().map(|(p, r)| (r.node, p.clone())).collect();
    let paths: Vec<String> = state.keys().cloned().collect();
    for p in paths {
        let Some(k) = state.get(&p).cloned() else {
            continue; // moved with its folder already
        };
        let Some(q) = node_path.get(&k.node) else {
            continue;
        };
        if *q == p || remote.get(q).map(Remote::dir) != Some(k.dir) || state.contains_key(q) {
            continue;
        }
        match (local.get(&p), local.get(q)) {
            (Some(l), None) if l.dir == k.dir && (k.dir || l.sha256 == k.sha256) => {
                moves.push(Action::LocalMove {
                    from: p.clone(),
                    to: q.clone(),
                });
                rename_prefix(&mut state, &p, q);
                rename_prefix(&mut local, &p, q);
            }
            (None, Some(l)) if l.dir == k.dir && (k.dir || l.sha256 == k.sha256) => {
                // Both sides made the same move (or a pass was cut after making it).
                moves.push(Action::RecordMove {
                    from: p.clone(),
                    to: q.clone(),
                });
                rename_prefix(&mut state, &p, q);
            }
            _ => {}
        }
    }

    // 2. A local rename of a file: a deleted path and a new one with the same contents.
    let mut new_local: HashMap<([u8; 32], u64), Vec<String>> = HashMap::new();
    for (q, l) in &local {
        if let (false, Some(sha)) = (l.dir, l.sha256)
            && !state.contains_key(q)
            && !remote.contains_key(q)
        {
            new_local.entry((sha, l.size)).or_default().push(q.clone());
        }
    }
    let gone: Vec<(String, Known)> = state
        .iter()
        .filter(|(p, k)| {
            !k.dir
                && !local.contains_key(*p)
                && remote
                    .get(*p)
                    .is_some_and(|r| r.node == k.node && latest_id(r) == k.version)
        })
        .map(|(p, k)| (p.clone(), k.clone()))
        .collect();
    for (p, k) in gone {
        let Some(sha) = k.sha256 else { continue };
        let Some(q) = new_local.get_mut(&(sha, k.size)).and_then(Vec::pop) else {
            continue;
        };
        remote_moves.push(Action::RemoteMove {
            from: p.clone(),
            to: q.clone(),
            node: k.node,
        });
        rename_prefix(&mut state, &p, &q);
        if let Some(r) = remote.remove(&p) {
            remote.insert(q, r);
        }
    }

    // 3. Path by path.
    let mut mkdirs = Vec::new();
    let mut conflicts = Vec::new();
    let mut transfers = Vec::new();
    let mut removals = Vec::new();
    let mut rmdirs = Vec::new();
    let mut records = Vec::new();
    let all: BTreeSet<String> = state
        .keys()
        .chain(local.keys())
        .chain(remote.keys())
        .cloned()
        .collect();
    let mut taken: BTreeSet<String> = all.clone();
    let mut trashed_dirs: Vec<String> = Vec::new();
    let mut kept_dirs: BTreeSet<String> = BTreeSet::new();
    let mut removed_files: BTreeSet<String> = BTreeSet::new();
    let mut dir_paths = Vec::new();

    for p in &all {
        if trashed_dirs.iter().any(|d| is_below(p, d)) {
            continue;
        }
        let s = state.get(p);
        let l = local.get(p);
        let r = remote.get(p);
        let is_dir = s.map(|k| k.dir).or(l.map(|l| l.dir)).or(r.map(Remote::dir));
        if is_dir == Some(true)
            && s.is_none_or(|k| k.dir)
            && l.is_none_or(|l| l.dir)
            && r.is_none_or(Remote::dir)
        {
            // Folders: a local delete of a folder whose drive subtree is unchanged trashes
            // the folder (one operation, restorable as a whole); the rest after the files.
            if let (Some(k), None, Some(r)) = (s, l, r)
                && r.node == k.node
                && subtree_unchanged(p, &state, &local, &remote)
            {
                removals.push(Action::RemoteTrash {
                    path: p.clone(),
                    node: k.node,
                });
                trashed_dirs.push(p.clone());
                continue;
            }
            dir_paths.push(p.clone());
            continue;
        }
        if is_dir == Some(true)
            || s.is_some_and(|k| k.dir)
            || l.is_some_and(|l| l.dir)
            || r.is_some_and(Remote::dir)
        {
            // A file on one side and a folder on the other: left alone (reported by the
            // caller as nothing to do; the user resolves it).
            if l.is_some_and(|l| l.dir) {
                kept_dirs.insert(p.clone());
            }
            continue;
        }
        // Files. `r_same`: the drive's node at this path is the state's.
        let r_same = match (s, r) {
            (Some(k), Some(r)) => r.node == k.node,
            _ => false,
        };
        let local_changed = |k: &Known, l: &Local| l.sha256 != k.sha256;
        match (s, l, r) {
            (None, Some(_), None) => transfers.push(Action::Upload {
                path: p.clone(),
                node: None,
                previous: None,
            }),
            (None, None, Some(r)) | (Some(_), None, Some(r)) if !r_same => {
                transfers.push(download(p, r));
            }
            (None, Some(l), Some(r)) => {
                if r.latest.as_ref().map(|v| v.sha256) == l.sha256 {
                    records.push(record(p, l, r));
                } else {
                    conflict(p, r, ctx, &mut taken, &mut conflicts, &mut transfers);
                }
            }
            (Some(k), Some(l), Some(r)) if r_same => {
                let lc = local_changed(k, l);
                let rc = latest_id(r) != k.version;
                match (lc, rc) {
                    (false, false) => {
                        if l.mtime_ns != k.mtime_ns || l.size != k.size {
                            records.push(record(p, l, r));
                        }
                    }
                    (true, false) => transfers.push(Action::Upload {
                        path: p.clone(),
                        node: Some(r.node),
                        previous: r.latest.clone(),
                    }),
                    (false, true) => transfers.push(download(p, r)),
                    (true, true) => {
                        if r.latest.as_ref().map(|v| v.sha256) == l.sha256 {
                            records.push(record(p, l, r));
                        } else {
                            conflict(p, r, ctx, &mut taken, &mut conflicts, &mut transfers);
                        }
                    }
                }
            }
            (Some(k), Some(l), Some(r)) => {
                // Another node holds the name in the drive now.
                if local_changed(k, l) {
                    conflict(p, r, ctx, &mut taken, &mut conflicts, &mut transfers);
                } else {
                    transfers.push(download(p, r));
                }
            }
            (Some(k), Some(l), None) => {
                if local_changed(k, l) {
                    transfers.push(Action::Upload {
                        path: p.clone(),
                        node: None,
                        previous: None,
                    });
                } else {
                    removals.push(Action::LocalRemove { path: p.clone() });
                    removed_files.insert(p.clone());
                }
            }
            (Some(k), None, Some(r)) => {
                if latest_id(r) == k.version {
                    removals.push(Action::RemoteTrash {
                        path: p.clone(),
                        node: k.node,
                    });
                } else {
                    transfers.push(download(p, r));
                }
            }
            (Some(_), None, None) => records.push(Action::Forget { path: p.clone() }),
            (None, None, None) | (None, None, Some(_)) => {}
        }
    }

    // Folders, after the files (whether a folder the drive trashed still holds local files
    // that are kept decides whether it goes).
    let mut new_remote_dirs = Vec::new();
    for p in &dir_paths {
        if trashed_dirs.iter().any(|d| is_below(p, d)) {
            continue;
        }
        let s = state.get(p);
        let l = local.get(p);
        let r = remote.get(p);
        let r_same = matches!((s, r), (Some(k), Some(r)) if r.node == k.node);
        match (s, l, r) {
            (_, None, Some(r)) if !r_same || s.is_none() => mkdirs.push(Action::LocalMkdir {
                path: p.clone(),
                node: r.node,
            }),
            (Some(_), None, Some(r)) => {
                // Deleted locally but the drive's subtree changed: created again.
                mkdirs.push(Action::LocalMkdir {
                    path: p.clone(),
                    node: r.node,
                });
            }
            (None, Some(_), None) => new_remote_dirs.push(p.clone()),
            (_, Some(_), Some(r)) => {
                if s.is_none_or(|k| k.node != r.node) {
                    records.push(Action::Record {
                        path: p.clone(),
                        known: Known {
                            dir: true,
                            node: r.node,
                            version: None,
                            size: 0,
                            mtime_ns: 0,
                            sha256: None,
                        },
                    });
                }
            }
            (Some(_), Some(_), None) => {
                let keeps = local.keys().any(|q| {
                    is_below(q, p)
                        && !removed_files.contains(q)
                        && local.get(q).is_some_and(|l| !l.dir)
                }) || kept_dirs.iter().any(|d| d == p || is_below(d, p));
                if keeps {
                    new_remote_dirs.push(p.clone());
                } else {
                    rmdirs.push(Action::LocalRmdir { path: p.clone() });
                }
            }
            (Some(_), None, None) => records.push(Action::Forget { path: p.clone() }),
            (None, None, _) => {}
        }
    }
    for p in new_remote_dirs {
        mkdirs.push(Action::RemoteMkdir { path: p });
    }
    // Parents before children when creating, children before parents when removing.
    mkdirs.sort_by(|a, b| action_path(a).cmp(action_path(b)));
    rmdirs.sort_by(|a, b| action_path(b).cmp(action_path(a)));

    let mut out = moves;
    out.extend(mkdirs);
    out.extend(remote_moves);
    out.extend(conflicts);
    out.extend(transfers);
    out.extend(removals);
    out.extend(rmdirs);
    out.extend(records);
    out
}

/// The name of a conflict copy: `stem (conflict from DEVICE DATE).ext`, then `(2)`, `(3)`...
/// until it is free.
pub fn conflict_name(path: &str, device: &str, today: &str, taken: &BTreeSet<String>) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, path),
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let device: String = device
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    for n in 1u32.. {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!(" ({n})")
        };
        let copy = format!("{stem} (conflict from {device} {today}){suffix}{ext}");
        let full = match dir {
            Some(d) => format!("{d}/{copy}"),
            None => copy,
        };
        if !taken.contains(&full) {
            return full;
        }
    }
    unreachable!("u32 names run out only after 4 billion conflict copies of one file")
}

fn conflict(
    p: &str,
    r: &Remote,
    ctx: &PlanContext,
    taken: &mut BTreeSet<String>,
    conflicts: &mut Vec<Action>,
    transfers: &mut Vec<Action>,
) {
    let copy = conflict_name(p, &ctx.device, &ctx.today, taken);
    taken.insert(copy.clone());
    conflicts.push(Action::ConflictCopy {
        path: p.to_owned(),
        copy: copy.clone(),
    });
    transfers.push(Action::Upload {
        path: copy,
        node: None,
        previous: None,
    });
    transfers.push(download(p, r));
}

fn download(p: &str, r: &Remote) -> Action {
    match &r.latest {
        Some(v) => Action::Download {
            path: p.to_owned(),
            node: r.node,
            version: v.clone(),
        },
        // Only files reach here.
        None => Action::LocalMkdir {
            path: p.to_owned(),
            node: r.node,
        },
    }
}

fn record(p: &str, l: &Local, r: &Remote) -> Action {
    Action::Record {
        path: p.to_owned(),
        known: Known {
            dir: false,
            node: r.node,
            version: latest_id(r),
            size: l.size,
            mtime_ns: l.mtime_ns,
            sha256: l.sha256,
        },
    }
}

fn latest_id(r: &Remote) -> Option<[u8; 16]> {
    r.latest.as_ref().map(|v| v.version)
}

fn is_below(path: &str, folder: &str) -> bool {
    path.len() > folder.len() + 1
        && path.starts_with(folder)
        && path.as_bytes().get(folder.len()) == Some(&b'/')
}

/// Whether the drive's subtree at `p` is exactly what the state last synced, and nothing
/// of it is left locally.
fn subtree_unchanged(
    p: &str,
    state: &BTreeMap<String, Known>,
    local: &BTreeMap<String, Local>,
    remote: &BTreeMap<String, Remote>,
) -> bool {
    remote.iter().filter(|(q, _)| is_below(q, p)).all(|(q, r)| {
        state
            .get(q)
            .is_some_and(|k| k.node == r.node && k.version == latest_id(r))
    }) && !local.keys().any(|q| is_below(q, p))
}

pub(super) fn rename_prefix<V>(map: &mut BTreeMap<String, V>, from: &str, to: &str) {
    let keys: Vec<String> = map
        .keys()
        .filter(|k| *k == from || is_below(k, from))
        .cloned()
        .collect();
    for k in keys {
        if let Some(v) = map.remove(&k) {
            let new = format!("{to}{}", &k[from.len()..]);
            map.insert(new, v);
        }
    }
}

fn action_path(a: &Action) -> &str {
    match a {
        Action::LocalMove { from, .. }
        | Action::RemoteMove { from, .. }
        | Action::RecordMove { from, .. } => from,
        Action::LocalMkdir { path, .. }
        | Action::RemoteMkdir { path }
        | Action::ConflictCopy { path, .. }
        | Action::Upload { path, .. }
        | Action::Download { path, .. }
        | Action::RemoteTrash { path, .. }
        | Action::LocalRemove { path }
        | Action::LocalRmdir { path }
        | Action::Record { path, .. }
        | Action::Forget { path } => path,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
