//! The local side: `.coveignore` rules and the scan of the synced folder. A file whose size
//! and modification time match what the state last synced is not read again (its SHA-256
//! is the state's), so a scan with no change only lists directories and stats files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};

use super::plan::Local;
use super::state::Known;

/// The ignore file at the top of the synced folder (local only: it is not synced).
pub const IGNORE_FILE: &str = ".coveignore";

/// Whether a file name belongs to the engine or to transfers in progress (never synced):
/// the ignore file, names starting with `.cove`, and downloads in progress
/// (`.NAME.cove-part` and its sidecar, see [`crate::drive::content::PART_SUFFIX`]).
pub fn engine_file(name: &str) -> bool {
    name == IGNORE_FILE
        || name.starts_with(".cove")
        || name.contains(crate::drive::content::PART_SUFFIX)
}

/// `.coveignore` patterns, gitignore-like: one glob a line, `#` comments; a pattern without
/// `/` matches a name at any depth, one with a `/` (a leading one included) matches a path
/// from the synced folder's top; a trailing `/` matches folders only; `*` and `?` stay within
/// a name, `**` crosses folders. Everything below an ignored folder is ignored. Negation
/// (`!`) is not supported (such lines are skipped).
#[derive(Clone, Debug, Default)]
pub struct Ignore {
    any: Option<GlobSet>,
    dirs: Option<GlobSet>,
}

/// A `.coveignore` line that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("{IGNORE_FILE} line {line}: {source}")]
pub struct IgnoreError {
    /// The line number (1-based).
    pub line: usize,
    /// Why.
    pub source: globset::Error,
}

impl Ignore {
    /// Reads `<root>/.coveignore` (no file: nothing ignored).
    pub fn load(root: &Path) -> Result<Ignore, super::SyncError> {
        let path = root.join(IGNORE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Ignore::parse(&text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ignore::default()),
            Err(source) => Err(super::SyncError::Io { path, source }),
        }
    }

    /// Parses the rules.
    pub fn parse(text: &str) -> Result<Ignore, IgnoreError> {
        let mut any = GlobSetBuilder::new();
        let mut dirs = GlobSetBuilder::new();
        let (mut n_any, mut n_dirs) = (0, 0);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let (pattern, dir_only) = match line.strip_suffix('/') {
                Some(p) => (p, true),
                None => (line, false),
            };
            let glob = if pattern.contains('/') {
                pattern.trim_start_matches('/').to_owned()
            } else {
                format!("**/{pattern}")
            };
            let glob = GlobBuilder::new(&glob)
                .literal_separator(true)
                .build()
                .map_err(|source| IgnoreError {
                    line: i + 1,
                    source,
                })?;
            if dir_only {
                dirs.add(glob);
                n_dirs += 1;
            } else {
                any.add(glob);
                n_any += 1;
            }
        }
        let build = |b: GlobSetBuilder, n: usize| -> Result<Option<GlobSet>, IgnoreError> {
            if n == 0 {
                return Ok(None);
            }
            b.build()
                .map(Some)
                .map_err(|source| IgnoreError { line: 0, source })
        };
        Ok(Ignore {
            any: build(any, n_any)?,
            dirs: build(dirs, n_dirs)?,
        })
    }

    /// Whether `path` (relative, `/`-separated) itself matches (not looking at its folders).
    pub fn matches(&self, path: &str, dir: bool) -> bool {
        self.any.as_ref().is_some_and(|g| g.is_match(path))
            || (dir && self.dirs.as_ref().is_some_and(|g| g.is_match(path)))
    }

    /// Whether `path` or one of its folders is ignored, or it is an engine file.
    pub fn ignored(&self, path: &str, dir: bool) -> bool {
        let mut at = 0;
        for (i, c) in path.char_indices() {
            if c == '/' {
                let folder = &path[..i];
                if self.matches(folder, true) || engine_file(&folder[at..]) {
                    return true;
                }
                at = i + 1;
            }
        }
        self.matches(path, dir) || engine_file(&path[at..])
    }
}

/// What a scan found that it could not sync (reported, not fatal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The path.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Walks `root`: every folder and regular file not ignored, by relative path. Files whose
/// size and mtime equal `known`'s keep its SHA-256; other known paths are hashed. A path
/// `known` does not have is hashed only when `compare(path, size)` says its contents may
/// be compared (a drive file at the same path, or a vanished file of the same size that it
/// may be the rename of); else its SHA-256 is left `None` and the upload computes it while
/// it reads the file, so a new file is read once, not twice. Symbolic links, names that are
/// not UTF-8 or not valid drive names, and unreadable entries are skipped.
pub fn scan(
    root: &Path,
    ignore: &Ignore,
    known: &BTreeMap<String, Known>,
    compare: &dyn Fn(&str, u64) -> bool,
) -> Result<(BTreeMap<String, Local>, Vec<Skipped>), super::SyncError> {
    let mut out = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(source) if rel.is_empty() => {
                return Err(super::SyncError::Io { path: dir, source });
            }
            Err(e) => {
                skipped.push(Skipped {
                    path: dir,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    skipped.push(Skipped {
                        path: dir.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let abs = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                skipped.push(Skipped {
                    path: abs,
                    reason: "the name is not UTF-8".into(),
                });
                continue;
            };
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    skipped.push(Skipped {
                        path: abs,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let dir_entry = meta.is_dir();
            if !dir_entry && !meta.is_file() {
                continue; // symbolic links, sockets, devices
            }
            if engine_file(&name) || ignore.matches(&path, dir_entry) {
                continue;
            }
            if !cove_core::drive::op::valid_name(&name) {
                skipped.push(Skipped {
                    path: abs,
                    reason: "the name is not valid in a drive".into(),
                });
                continue;
            }
            if dir_entry {
                out.insert(
                    path.clone(),
                    Local {
                        dir: true,
                        size: 0,
                        mtime_ns: 0,
                        sha256: None,
                    },
                );
                stack.push((abs, path));
                continue;
            }
            let size = meta.len();
            let mtime_ns = mtime_ns(&meta);
            let sha256 = match known.get(&path) {
                Some(k)
                    if !k.dir && k.size == size && k.mtime_ns == mtime_ns && k.sha256.is_some() =>
                {
                    k.sha256
                }
                None if !compare(&path, size) => None,
                _ => match hash_file(&abs) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        skipped.push(Skipped {
                            path: abs,
                            reason: e.to_string(),
                        });
                        continue;
                    }
                },
            };
            out.insert(
                path,
                Local {
                    dir: false,
                    size,
                    mtime_ns,
                    sha256,
                },
            );
        }
    }
    Ok((out, skipped))
}

/// A file's modification time in ns since the Unix epoch (0 when the platform has none).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// SHA-256 of a file's contents.
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn coveignore_patterns_match_like_gitignore() {
        let ig =
            Ignore::parse("# comment\n*.tmp\n/build\ncache/\ndocs/*.pdf\n!keep.tmp\n").unwrap();
        assert!(ig.ignored("a.tmp", false));
        assert!(ig.ignored("x/y/a.tmp", false));
        assert!(!ig.ignored("a.tmpx", false));
        assert!(ig.ignored("build", true));
        assert!(ig.ignored("build/out.o", false));
        assert!(
            !ig.ignored("src/build", true),
            "a pattern with / is anchored"
        );
        assert!(ig.ignored("cache", true));
        assert!(ig.ignored("a/cache/f", false));
        assert!(
            !ig.ignored("cache", false),
            "a trailing / matches folders only"
        );
        assert!(ig.ignored("docs/a.pdf", false));
        assert!(
            !ig.ignored("docs/sub/a.pdf", false),
            "* stays within a name"
        );
        assert!(!ig.ignored("notes.txt", false));
        assert!(ig.ignored(".coveignore", false));
        assert!(ig.ignored("d/.cove-x", false));
        assert!(ig.ignored("d/.big.bin.cove-part", false));
        assert!(!ig.ignored("d/big.bin", false));
    }

    /// A synced file the state knows with this size and mtime, and digest `[7; 32]`.
    fn synced_file(size: u64, mtime_ns: i64) -> Known {
        Known {
            dir: false,
            node: [1; 16],
            version: Some([1; 16]),
            size,
            mtime_ns,
            sha256: Some([7; 32]),
        }
    }

    #[test]
    fn scan_hashes_only_files_whose_size_or_mtime_changed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join("b.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join(IGNORE_FILE), b"*.tmp\n").unwrap();
        let ignore = Ignore::load(dir.path()).unwrap();
        let (found, skipped) = scan(dir.path(), &ignore, &BTreeMap::new(), &|_, _| true).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(found.keys().collect::<Vec<_>>(), vec!["sub", "sub/a.txt"]);
        let a = &found["sub/a.txt"];
        assert_eq!(a.sha256, Some(Sha256::digest(b"hello").into()));
        // A state entry with the same size and mtime but another digest: the scan trusts it
        // (it does not read the file), which is what makes a no-change rescan cheap.
        let mut known = BTreeMap::new();
        known.insert("sub/a.txt".to_owned(), synced_file(a.size, a.mtime_ns));
        let (found, _) = scan(dir.path(), &ignore, &known, &|_, _| true).unwrap();
        assert_eq!(found["sub/a.txt"].sha256, Some([7; 32]));
    }

    #[test]
    fn a_new_file_is_hashed_only_when_it_may_be_compared() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("new.bin"), b"new").unwrap();
        std::fs::write(dir.path().join("twin.bin"), b"twin").unwrap();
        std::fs::write(dir.path().join("known.bin"), b"edited").unwrap();
        let ignore = Ignore::load(dir.path()).unwrap();
        let mut known = BTreeMap::new();
        known.insert("known.bin".to_owned(), synced_file(1, 0));
        let compare = |path: &str, _size: u64| path == "twin.bin";
        let (found, _) = scan(dir.path(), &ignore, &known, &compare).unwrap();
        assert_eq!(found["new.bin"].sha256, None, "nothing to compare it with");
        assert_eq!(
            found["twin.bin"].sha256,
            Some(Sha256::digest(b"twin").into())
        );
        assert_eq!(
            found["known.bin"].sha256,
            Some(Sha256::digest(b"edited").into()),
            "a known path whose stamps changed is always hashed"
        );
    }
}
