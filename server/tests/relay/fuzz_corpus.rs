//! Replays the `blob_request` fuzz corpus (`fuzz/corpus/blob_request/`, see
//! `fuzz/README.md`) through the target's own function,
//! [`cove_server::fuzzing::blob_request`]. With `COVE_WRITE_FUZZ_SEEDS=1` the generated seed
//! requests (`seed-*`) are (re)written into the corpus first.

use std::path::PathBuf;

/// The seeds signed for their own request verify (so the verified path runs) and the one
/// signed for another offset does not; the corpus is there (so this test fails if it goes
/// missing) and replays without a panic.
#[test]
fn blob_request_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/blob_request");
    let seeds = cove_server::fuzzing::samples();
    let verified: Vec<bool> = seeds
        .iter()
        .map(|s| cove_server::fuzzing::blob_request(s))
        .collect();
    assert_eq!(verified, [true, true, true, true, false, false]);
    if std::env::var_os("COVE_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (n, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
        }
    }
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        cove_server::fuzzing::blob_request(&bytes);
        replayed += 1;
    }
    assert!(
        replayed >= seeds.len(),
        "only {replayed} files in {}",
        dir.display()
    );
}
