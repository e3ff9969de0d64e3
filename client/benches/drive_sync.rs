//! Drive sync: a no-change rescan of 10,000 files (`COVE_BENCH_FILES`) in 100 folders, as
//! `cove drive sync` does it before every pass: walk the folder, stat every file, compare
//! size and mtime with the sync state loaded from its SQLCipher file, hash nothing. Goal
//! (issue 14): under 1 s. Printed: the state load, the scan, and both together (median of
//! 5 runs, after one warm-up run).
//!
//! Run: `cargo bench -p cove --bench drive_sync`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use cove::drive::sync::scan::{Ignore, scan};
use cove::drive::sync::state::{Known, StateChange, SyncState};
use cove_core::cove_store::DatabaseKey;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("COVE_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    for i in 0..n {
        let folder = root.join(format!("d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&folder).unwrap();
        }
        std::fs::write(folder.join(format!("f{i:05}.txt")), format!("file {i}\n")).unwrap();
    }
    let ignore = Ignore::default();
    // The first scan hashes everything (as if every file could be compared); its result
    // becomes the state, as after a sync.
    let t = Instant::now();
    let (found, _) = scan(&root, &ignore, &Default::default(), &|_, _| true).unwrap();
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(found.values().filter(|l| !l.dir).count(), n);
    let key = DatabaseKey::from_bytes([7; 32]);
    let state_path = dir.path().join("state.db");
    let mut state = SyncState::open(&state_path, Some(&key)).unwrap();
    let changes: Vec<StateChange> = found
        .iter()
        .enumerate()
        .map(|(i, (path, l))| {
            let mut node = [0u8; 16];
            node[..8].copy_from_slice(&(i as u64).to_le_bytes());
            StateChange::Put(
                path.clone(),
                Known {
                    dir: l.dir,
                    node,
                    version: (!l.dir).then_some(node),
                    size: l.size,
                    mtime_ns: l.mtime_ns,
                    sha256: l.sha256,
                },
            )
        })
        .collect();
    state.apply(&changes).unwrap();
    drop(state);

    let mut runs = Vec::new();
    for run in 0..6 {
        let t0 = Instant::now();
        let state = SyncState::open(&state_path, Some(&key)).unwrap();
        let known = state.load().unwrap();
        let t1 = Instant::now();
        let (again, skipped) = scan(&root, &ignore, &known, &|_, _| true).unwrap();
        let t2 = Instant::now();
        assert!(skipped.is_empty());
        assert_eq!(
            again, found,
            "a no-change rescan finds what the first scan found"
        );
        if run > 0 {
            runs.push((
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                (t2 - t0).as_secs_f64() * 1e3,
            ));
        }
    }
    let median = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("drive sync, no-change rescan of {n} files in 100 folders:");
    println!("  first scan (hashing every file): {first_ms:.1} ms");
    println!(
        "  state load (SQLCipher):          {:.1} ms",
        median(|r| r.0)
    );
    println!(
        "  rescan (stat, no hashing):       {:.1} ms",
        median(|r| r.1)
    );
    println!(
        "  total (goal < 1000 ms):          {:.1} ms",
        median(|r| r.2)
    );
}
