//! Replays the `frame_decoder` fuzz corpus (`fuzz/corpus/frame_decoder/`, see
//! `fuzz/README.md`) through the target's own function, [`cove_wire::fuzzing::frame_decoder`]:
//! no input may panic, and every frame that decodes round-trips.

use std::path::PathBuf;

/// The corpus is there (so this test fails if it goes missing) and replays without a panic.
#[test]
fn frame_decoder_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/frame_decoder");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        cove_wire::fuzzing::frame_decoder(&bytes);
        replayed += 1;
    }
    assert!(replayed >= 10, "only {replayed} files in {}", dir.display());
}
