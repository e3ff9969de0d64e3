//! Secret files the relay creates once and reads on every later start (`opaque.key`,
//! `turn.secret`), possibly shared by several relay nodes (`[secrets]` in the config file).
//!
//! A missing file is created with fresh bytes, mode 0600, without ever replacing a file
//! another process wrote: the bytes go to a private temporary file beside it, which is then
//! hard-linked to the final name. The link either creates the complete file or fails because
//! the file exists, so two nodes starting at once agree: the loser reads the winner's file,
//! and nobody ever reads a half-written one.

use std::io::{ErrorKind, Write as _};
use std::path::Path;

use rand::RngCore;

/// The contents of the secret file at `path`, created with `generate()`'s bytes if it does
/// not exist. Checking the contents is the caller's job.
pub(crate) fn load_or_create(
    path: &Path,
    generate: impl FnOnce() -> Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let bytes = generate();
    let mut suffix = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(suffix)
    ));
    let tmp = std::path::PathBuf::from(tmp_name);
    let written = write_private(&tmp, &bytes).and_then(|()| std::fs::hard_link(&tmp, path));
    // The temporary name goes in every case; the final name (if linked) keeps the file.
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            sync_parent(path);
            Ok(bytes)
        }
        // Another process created the file first: its secrets are the cluster's.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => std::fs::read(path),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a new file at `path` (mode 0600 on Unix) and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes the new directory entry durable (best effort: not every platform can open a
/// directory).
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Created once (0600), then read back unchanged; a second creator never replaces it.
    #[test]
    fn created_once_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let a = load_or_create(&path, || vec![1; 32]).unwrap();
        let b = load_or_create(&path, || vec![2; 32]).unwrap();
        assert_eq!((a, b), (vec![1; 32], vec![1; 32]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temporary file was left behind");
    }

    /// Many threads creating the same file at once all end up with the same bytes (the
    /// winner's), and none reads a partial file.
    #[test]
    fn racing_creators_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let results: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || load_or_create(path, || vec![i; 64]).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 64);
        assert!(results.iter().all(|r| *r == on_disk));
    }

    /// A file in a directory that does not exist is an error, not a panic.
    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/s");
        let err = load_or_create(&path, || vec![1]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}
