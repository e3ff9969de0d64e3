//! Replays the core's fuzz corpora (`fuzz/corpus/<target>/`, see `fuzz/README.md`) through
//! the targets' own functions in `cove_core::fuzzing`: no input may panic. With
//! `COVE_WRITE_FUZZ_SEEDS=1` the tests also (re)write their generated seed inputs
//! (`seed-*` files) into the corpora.

use std::path::PathBuf;

use cove_core::attachment::{Encryptor, FileKey, MIN_CHUNK_SIZE};
use cove_core::content::ENVELOPE_VERSION;
use cove_core::fuzzing::{self, FixtureRelay, MlsIngest};
use cove_core::{Content, Envelope, Event};
use cove_test_utils::sim;
use cove_wire::sign::ChannelBinding;
use cove_wire::{ClientFrame, ServerFrame};

/// The relay core of cove-server, as the fixture's relay.
struct Sim(sim::Relay);

impl FixtureRelay for Sim {
    fn connect(&mut self, slot: usize) -> ServerFrame {
        self.0.connect(slot)
    }
    fn channel(&self, slot: usize) -> Option<ChannelBinding> {
        self.0.channel(slot)
    }
    fn handle(
        &mut self,
        slot: usize,
        frame: ClientFrame,
        now_ms: u64,
    ) -> Vec<(usize, ServerFrame)> {
        self.0.handle(slot, frame, now_ms)
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Writes `seeds` as `seed-<n>` into the target's corpus when `COVE_WRITE_FUZZ_SEEDS` is set.
fn write_seeds(target: &str, seeds: &[Vec<u8>]) {
    if std::env::var_os("COVE_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (n, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
    }
}

/// Every file of the target's corpus; fails when there are fewer than `min`.
fn corpus(target: &str, min: usize) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        files.len() >= min,
        "{} files in {}, expected at least {min}",
        files.len(),
        dir.display()
    );
    files
}

#[test]
fn content_envelope_corpus_replays() {
    let envelope = |content| Envelope {
        version: ENVELOPE_VERSION,
        id: [5; 16],
        sent_at_ms: 1_700_000_000_000,
        content,
    };
    let seeds: Vec<Vec<u8>> = [
        Content::Text {
            text: "hello".into(),
        },
        Content::GroupInfo {
            name: "friends".into(),
        },
        Content::LeaveRequest,
    ]
    .into_iter()
    .map(|c| envelope(c).encode().unwrap())
    .collect();
    write_seeds("content_envelope", &seeds);
    for input in corpus("content_envelope", 3) {
        fuzzing::content_envelope(&input);
    }
}

#[test]
fn attachment_decrypt_corpus_replays() {
    let key = FileKey::from_bytes(fuzzing::FUZZ_FILE_KEY);
    let blob = |plain: &[u8]| {
        let mut enc = Encryptor::with_nonce_prefix(&key, [3; 7], MIN_CHUNK_SIZE).unwrap();
        let mut out = Vec::new();
        enc.push(plain, &mut out).unwrap();
        enc.finish(&mut out).unwrap();
        out
    };
    // flags: expect size 5 and the header's chunk size; pieces of 7 bytes.
    let seeds = vec![
        [&[3, 0, 7, 0, 5][..], &blob(b"hello")].concat(),
        [&[4, 0, 1, 0, 0][..], &blob(b"")].concat(),
    ];
    write_seeds("attachment_decrypt", &seeds);
    for input in corpus("attachment_decrypt", 2) {
        fuzzing::attachment_decrypt(&input);
    }
}

/// A real segment (and its entry) under the fuzz key opens; the corpus replays without a
/// panic.
#[test]
fn backup_segment_corpus_replays() {
    use cove_core::backup::{self, BackupKey, Segment, SegmentEntry, SegmentId};
    use cove_core::link::HistoryMessage;
    use cove_wire::{BoundedVec, DeviceId, GroupId, Payload, Seq, UserName};
    use rand::SeedableRng;
    let user = UserName::new(fuzzing::FUZZ_BACKUP_USER).unwrap();
    let id = SegmentId {
        device: DeviceId(3),
        counter: 7,
    };
    let segment = Segment {
        version: backup::BACKUP_VERSION,
        user: user.clone(),
        id,
        groups: BoundedVec(vec![backup::GroupName {
            group: GroupId([1; 16]),
            name: "friends".into(),
        }]),
        messages: BoundedVec(vec![HistoryMessage {
            group: GroupId([1; 16]),
            seq: Seq(4),
            from: UserName::new("bob").unwrap(),
            from_device: DeviceId(2),
            message_id: [5; 16],
            sent_at_ms: 1_700_000_000_000,
            content: Payload(b"hi".to_vec()),
        }]),
    };
    let key = BackupKey::new(fuzzing::FUZZ_BACKUP_KEY.into());
    let sealed = backup::seal(
        &key,
        &segment,
        &mut rand_chacha::ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap();
    let entry = SegmentEntry {
        version: backup::BACKUP_VERSION,
        id,
    }
    .encode();
    assert_eq!(
        backup::open(&key, &user, &SegmentEntry::decode(&entry).unwrap(), &sealed).unwrap(),
        segment
    );
    let n = u8::try_from(entry.len()).unwrap();
    let seeds = vec![
        [&[n][..], &entry, &sealed].concat(),
        [&[0][..], &sealed].concat(),
    ];
    write_seeds("backup_segment", &seeds);
    for input in corpus("backup_segment", 2) {
        fuzzing::backup_segment(&input);
    }
}

/// The fixture is a real member: alice's text, unseen by bob, reaches him as a message (also
/// through the patch path without patches), and not once one of its bytes is flipped; the
/// corpus replays without a panic.
#[test]
fn mls_ingest_corpus_replays() {
    let fixture = MlsIngest::build(&mut Sim(sim::Relay::new())).unwrap();
    let samples = fixture.samples();
    assert_eq!(samples.len(), 3, "text, key update, Welcome");
    let events = fixture.ingest(&samples[0]);
    assert_eq!(
        fixture.ingest(&[fuzzing::INGEST_PATCHED_SAMPLE]),
        events,
        "sample 0 without patches is sample 0"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.text == "hello bob")),
        "{events:?}"
    );
    // Seeds: the samples as they are (valid for the fixture that made them only), and
    // each sample through the patch path with one flipped byte.
    let mut seeds = samples.to_vec();
    seeds.extend((0..3).map(|k| vec![fuzzing::INGEST_PATCHED_SAMPLE + k, 0, 40, 1]));
    write_seeds("mls_ingest", &seeds);
    for input in corpus("mls_ingest", 6) {
        fixture.ingest(&input);
    }
}

/// A real drive tree's state (nested folders, files, a trashed folder, a link, a read-only
/// member) decodes to that tree, and so does a folder extracted from it; the corpus replays
/// without a panic.
#[test]
fn drive_state_corpus_replays() {
    use cove_core::drive::chunk::{ChunkRef, FileSecret, Manifest};
    use cove_core::drive::op::SealedBlob;
    use cove_core::drive::{DriveOp, FileVersion, ManifestRef, ROOT, Tree};
    use cove_wire::{BlobId, UserName};
    let alice = UserName::new("alice").unwrap();
    let node = |n: u8| [n; 16];
    let version = |n: u8| FileVersion {
        version: [n; 16],
        size: 5,
        modified_ms: 1_700_000_000_000,
        sha256: [n; 32],
        secret: FileSecret([n; 32]),
        manifest: ManifestRef::Inline(Manifest {
            chunks: vec![ChunkRef {
                id: [n; 32],
                blob: BlobId([n; 16]),
                len: 5,
            }],
        }),
        device: "laptop".into(),
    };
    let ops = [
        DriveOp::Init {
            name: "Drive".into(),
            owner: alice.clone(),
        },
        DriveOp::Mkdir {
            id: node(1),
            parent: ROOT,
            name: "docs".into(),
        },
        DriveOp::Mkdir {
            id: node(2),
            parent: node(1),
            name: "2026".into(),
        },
        DriveOp::PutVersion {
            id: node(3),
            parent: node(2),
            name: "notes.txt".into(),
            version: version(3),
        },
        DriveOp::PutVersion {
            id: node(4),
            parent: ROOT,
            name: "old.txt".into(),
            version: version(4),
        },
        DriveOp::Trash { id: node(4) },
        DriveOp::Link {
            node: node(1),
            link: SealedBlob {
                blob: BlobId([9; 16]),
                key: FileSecret([9; 32]),
                len: 100,
            },
            expires_ms: Some(1_800_000_000_000),
        },
        DriveOp::SetAccess {
            user: UserName::new("bob").unwrap(),
            read_only: true,
        },
    ];
    let mut tree = Tree::new();
    for (seq, op) in (1..).zip(&ops) {
        tree.apply(seq, &alice, op).unwrap();
    }
    let state = tree.encode_state();
    assert_eq!(Tree::decode_state(&state), Ok(tree.clone()));
    let shared = tree.extract(&node(1), "docs", &alice).unwrap();
    let shared_state = shared.encode_state();
    assert_eq!(Tree::decode_state(&shared_state), Ok(shared));
    write_seeds("drive_state", &[state, shared_state]);
    for input in corpus("drive_state", 2) {
        fuzzing::drive_state(&input);
    }
}
