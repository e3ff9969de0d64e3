//! cove-turn integration tests: the `stun_turn` fuzz corpus (`fuzz/corpus/stun_turn/`, see
//! `fuzz/README.md`) replayed through the target's own function,
//! [`cove_turn::fuzzing::stun_turn`]. With `COVE_WRITE_FUZZ_SEEDS=1` the generated seed
//! datagrams (`seed-*`) are (re)written into the corpus first.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

/// The corpus is there (so this test fails if it goes missing), holds the seeds, and replays
/// without a panic.
#[test]
fn stun_turn_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/stun_turn");
    let seeds = cove_turn::fuzzing::samples();
    assert_eq!(seeds.len(), 7);
    if std::env::var_os("COVE_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (n, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
        }
    }
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        cove_turn::fuzzing::stun_turn(&bytes);
        replayed += 1;
    }
    assert!(
        replayed >= seeds.len(),
        "only {replayed} files in {}",
        dir.display()
    );
}
