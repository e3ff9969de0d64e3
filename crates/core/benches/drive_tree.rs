//! Drive tree replay: 100,000 operations (10,000 folders, 90,000 files with an inline
//! one-chunk manifest each) applied to a [`Tree`], then the state encoded and decoded.
//! Prints operations per second, the encode and decode times and the state's size, and the
//! growth of the process's peak RSS (`VmHWM`) over the replay, the encoding and the
//! decoding (the original tree dropped first, as on a member starting from a snapshot).
//!
//! `cargo bench -p cove-core --bench drive_tree`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    missing_docs
)]

use std::time::Instant;

use cove_core::drive::chunk::{ChunkRef, FileSecret, Manifest};
use cove_core::drive::{DriveOp, FileVersion, ManifestRef, NodeId, ROOT, Tree};
use cove_wire::{BlobId, UserName};

const FOLDERS: u64 = 10_000;
const FILES_PER_FOLDER: u64 = 9;

fn main() {
    let alice = UserName::new("alice").unwrap();
    let ops = build_ops(&alice);
    let base = vm_hwm_kib();
    let mut tree = Tree::new();
    let start = Instant::now();
    for (seq, op) in (1..).zip(&ops) {
        tree.apply(seq, &alice, op).unwrap();
    }
    let replay = start.elapsed();
    let after_replay = vm_hwm_kib();
    let (files, folders, latest, _) = tree.usage();
    assert_eq!((files, folders), (FOLDERS * FILES_PER_FOLDER, FOLDERS));

    let n = tree.applied();
    // A member posting a snapshot holds its tree and the encoding; one starting from a
    // snapshot holds the encoding and the decoded tree.
    let start = Instant::now();
    let bytes = tree.encode_state();
    let encode = start.elapsed();
    let after_encode = vm_hwm_kib();
    drop(tree);
    let start = Instant::now();
    let decoded = Tree::decode_state(&bytes).unwrap();
    let decode = start.elapsed();
    assert_eq!(decoded.applied(), n);
    let after_decode = vm_hwm_kib();
    // Held to the end, so memory it frees never hides the tree's growth.
    drop(ops);

    println!("drive_tree: {n} ops ({folders} folders, {files} files, {latest} bytes)");
    println!(
        "  replay: {:.0} ms, {:.0} ops/s",
        replay.as_secs_f64() * 1e3,
        n as f64 / replay.as_secs_f64()
    );
    println!(
        "  encode_state: {:.0} ms, {} bytes ({:.1} MiB); decode_state: {:.0} ms",
        encode.as_secs_f64() * 1e3,
        bytes.len(),
        bytes.len() as f64 / 1048576.0,
        decode.as_secs_f64() * 1e3
    );
    println!(
        "  peak RSS growth: {:.1} MiB after the replay (the tree of {n} entries), \
         {:.1} MiB after encoding (tree + encoding), {:.1} MiB after dropping the tree \
         and decoding (peak so far)",
        (after_replay - base) as f64 / 1024.0,
        (after_encode - base) as f64 / 1024.0,
        (after_decode - base) as f64 / 1024.0
    );
}

/// 100 top folders of 99 subfolders each (10,000), 9 files in every folder.
fn build_ops(alice: &UserName) -> Vec<DriveOp> {
    let mut ops = vec![DriveOp::Init {
        name: "Drive".to_owned(),
        owner: alice.clone(),
    }];
    let mut next = 0u64;
    let mut new_id = || {
        next += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&next.to_be_bytes());
        id[8..].copy_from_slice(&next.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        id
    };
    let mut folders: Vec<NodeId> = Vec::new();
    let mut tops = Vec::new();
    for t in 0..100 {
        let id = new_id();
        ops.push(DriveOp::Mkdir {
            id,
            parent: ROOT,
            name: format!("folder {t:03}"),
        });
        tops.push(id);
        folders.push(id);
    }
    for (t, top) in tops.iter().enumerate() {
        for s in 0..(FOLDERS / 100 - 1) {
            let id = new_id();
            ops.push(DriveOp::Mkdir {
                id,
                parent: *top,
                name: format!("sub {t:03}-{s:02}"),
            });
            folders.push(id);
        }
    }
    for folder in &folders {
        for f in 0..FILES_PER_FOLDER {
            let id = new_id();
            ops.push(DriveOp::PutVersion {
                id,
                parent: *folder,
                name: format!("IMG_{f:04}.jpg"),
                version: FileVersion {
                    version: id,
                    size: 100_000 + f,
                    modified_ms: 1_764_000_000_000,
                    sha256: [f as u8; 32],
                    secret: FileSecret([f as u8; 32]),
                    manifest: ManifestRef::Inline(Manifest {
                        chunks: vec![ChunkRef {
                            id: [f as u8; 32],
                            blob: BlobId(id),
                            len: 100_000,
                        }],
                    }),
                    device: "laptop".to_owned(),
                },
            });
        }
    }
    ops
}

/// The process's peak resident set size (KiB), from `/proc/self/status`.
fn vm_hwm_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
