//! The history-backup format (`cove_core::backup`): sealing and opening segments, what is
//! refused, planning incremental segments from the store and importing them.

use cove_core::backup::{
    self, BackupError, BackupKey, MAX_SEALED_SEGMENT, MAX_SEGMENT_MESSAGES, OrderCheck, Segment,
    SegmentEntry, SegmentId,
};
use cove_core::cove_store::{GroupRecord, Membership, MemoryStore, Store, StoredMessage};
use cove_wire::{DeviceId, GroupId, Seq};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

use super::user;

fn key(n: u8) -> BackupKey {
    BackupKey::new(Zeroizing::new([n; 32]))
}

fn row(group: GroupId, seq: u64, text: &str) -> StoredMessage {
    let mut message_id = [0u8; 16];
    message_id[..8].copy_from_slice(&seq.to_be_bytes());
    message_id[8] = group.0[0];
    StoredMessage {
        group,
        seq: Seq(seq),
        from: user("alice"),
        from_device: DeviceId(1),
        message_id,
        sent_at_ms: 1_700_000_000_000 + seq,
        content: text.as_bytes().to_vec(),
    }
}

fn group(store: &MemoryStore, n: u8, name: &str) -> GroupId {
    let id = GroupId([n; 16]);
    store
        .put_group(&GroupRecord {
            id,
            name: name.into(),
            membership: Membership::Active,
            joined_at_ms: 1,
        })
        .unwrap();
    id
}

/// A store with `n` rows in group "one" and `n` in group "two".
fn history(n: u64) -> (MemoryStore, GroupId, GroupId) {
    let store = MemoryStore::new();
    let (a, b) = (group(&store, 1, "one"), group(&store, 2, "two"));
    for seq in 1..=n {
        store
            .put_message(&row(a, seq, &format!("one {seq}")))
            .unwrap();
        store
            .put_message(&row(b, seq, &format!("two {seq}")))
            .unwrap();
    }
    (store, a, b)
}

fn entry(segment: &Segment) -> SegmentEntry {
    SegmentEntry {
        version: backup::BACKUP_VERSION,
        id: segment.id,
    }
}

fn one_segment() -> (Segment, Vec<u8>) {
    let (store, _, _) = history(3);
    let planned = backup::plan(&store, &user("alice"), DeviceId(7)).unwrap();
    assert_eq!(planned.len(), 1);
    let segment = planned[0].segment.clone();
    let sealed = backup::seal(&key(1), &segment, &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    (segment, sealed)
}

#[test]
fn a_sealed_segment_opens_as_itself_under_its_user_and_id() {
    let (segment, sealed) = one_segment();
    let opened = backup::open(&key(1), &user("alice"), &entry(&segment), &sealed).unwrap();
    assert_eq!(opened, segment);
    assert_eq!(opened.messages.len(), 6);
    assert_eq!(
        opened
            .groups
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        vec!["one", "two"]
    );
}

/// Another user's segment (another key, or the same key under another user name), a
/// renumbered one (another counter or device in its entry), and every one-byte change are
/// refused as `Tampered` (a change in the header: `Malformed`/`Version`); none opens.
#[test]
fn foreign_renumbered_and_tampered_segments_are_refused() {
    let (segment, sealed) = one_segment();
    let e = entry(&segment);
    assert_eq!(
        backup::open(&key(2), &user("alice"), &e, &sealed),
        Err(BackupError::Tampered)
    );
    assert_eq!(
        backup::open(&key(1), &user("bob"), &e, &sealed),
        Err(BackupError::Tampered)
    );
    for id in [
        SegmentId {
            device: DeviceId(7),
            counter: e.id.counter + 1,
        },
        SegmentId {
            device: DeviceId(8),
            counter: e.id.counter,
        },
    ] {
        let moved = SegmentEntry { id, ..e };
        assert_eq!(
            backup::open(&key(1), &user("alice"), &moved, &sealed),
            Err(BackupError::Tampered)
        );
    }
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        let refused = backup::open(&key(1), &user("alice"), &e, &bad).unwrap_err();
        if i >= 17 {
            assert_eq!(refused, BackupError::Tampered, "byte {i}");
        }
    }
    for len in [0, 5, 16, 17, 32, sealed.len() - 1] {
        assert!(backup::open(&key(1), &user("alice"), &e, &sealed[..len]).is_err());
    }
}

/// Fuzz-style: random bytes, random lengths, and random mutations of a real segment never
/// panic and never open.
#[test]
fn random_bytes_never_open_and_never_panic() {
    let (segment, sealed) = one_segment();
    let e = entry(&segment);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    for round in 0..3000 {
        let bytes = if round % 2 == 0 {
            let len = rng.gen_range(0..2048);
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            if round % 4 == 0 && b.len() >= 5 {
                b[..4].copy_from_slice(b"covh");
                b[4] = backup::BACKUP_VERSION;
            }
            b
        } else {
            let mut b = sealed.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.r#gen();
            }
            if b == sealed {
                continue;
            }
            b
        };
        assert!(backup::open(&key(1), &user("alice"), &e, &bytes).is_err());
        let _ = SegmentEntry::decode(&bytes);
    }
    assert_eq!(
        backup::open(
            &key(1),
            &user("alice"),
            &e,
            &vec![0u8; MAX_SEALED_SEGMENT + 1]
        ),
        Err(BackupError::TooLarge)
    );
}

#[test]
fn index_entries_round_trip_and_refuse_other_versions_and_trailing_bytes() {
    let e = SegmentEntry {
        version: backup::BACKUP_VERSION,
        id: SegmentId {
            device: DeviceId(3),
            counter: 9,
        },
    };
    assert_eq!(SegmentEntry::decode(&e.encode()).unwrap(), e);
    let mut trailing = e.encode();
    trailing.push(0);
    assert!(matches!(
        SegmentEntry::decode(&trailing),
        Err(BackupError::Malformed(_))
    ));
    let other = SegmentEntry { version: 2, ..e };
    assert_eq!(
        SegmentEntry::decode(&other.encode()),
        Err(BackupError::Version(2))
    );
}

#[test]
fn a_devices_counters_must_grow_along_the_index() {
    let at = |device, counter| SegmentEntry {
        version: backup::BACKUP_VERSION,
        id: SegmentId {
            device: DeviceId(device),
            counter,
        },
    };
    let mut check = OrderCheck::default();
    check.accept(&at(1, 0)).unwrap();
    check.accept(&at(2, 5)).unwrap();
    check.accept(&at(1, 3)).unwrap();
    assert_eq!(
        check.accept(&at(1, 2)),
        Err(BackupError::OutOfOrder {
            device: DeviceId(1),
            counter: 2
        })
    );
    assert!(check.accept(&at(1, 3)).is_err());
    check.accept(&at(2, 6)).unwrap();
}

/// A plan carries every row after the marks; once its marks are committed, the next plan
/// carries only rows stored since, under a higher counter.
#[test]
fn plans_are_incremental_and_counters_only_grow() {
    let (store, a, b) = history(5);
    assert_eq!(backup::pending(&store).unwrap(), 10);
    let first = backup::plan(&store, &user("alice"), DeviceId(7)).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].segment.messages.len(), 10);
    assert_eq!(first[0].segment.id.counter, 0);
    // Not committed (the upload failed): the rows come again, under a new counter.
    let again = backup::plan(&store, &user("alice"), DeviceId(7)).unwrap();
    assert_eq!(again[0].segment.messages.len(), 10);
    assert_eq!(again[0].segment.id.counter, 1);
    backup::commit_marks(&store, &again[0].marks).unwrap();
    assert_eq!(backup::pending(&store).unwrap(), 0);
    assert!(
        backup::plan(&store, &user("alice"), DeviceId(7))
            .unwrap()
            .is_empty()
    );
    store.put_message(&row(a, 6, "one 6")).unwrap();
    store.put_message(&row(b, 6, "two 6")).unwrap();
    store.put_message(&row(b, 7, "two 7")).unwrap();
    let next = backup::plan(&store, &user("alice"), DeviceId(7)).unwrap();
    assert_eq!(next.len(), 1);
    let seqs: Vec<(u8, u64)> = next[0]
        .segment
        .messages
        .iter()
        .map(|m| (m.group.0[0], m.seq.0))
        .collect();
    assert_eq!(seqs, vec![(1, 6), (2, 6), (2, 7)]);
    assert_eq!(next[0].segment.id.counter, 2);
    assert_eq!(next[0].marks, vec![(a, Seq(6)), (b, Seq(7))]);
}

/// A history larger than one segment is cut into segments of at most
/// `MAX_SEGMENT_MESSAGES` rows that each seal within `MAX_SEALED_SEGMENT`.
#[test]
fn large_histories_are_cut_into_bounded_segments() {
    let (store, _, _) = history(2600);
    let planned = backup::plan(&store, &user("alice"), DeviceId(7)).unwrap();
    assert_eq!(
        planned
            .iter()
            .map(|p| p.segment.messages.len())
            .sum::<usize>(),
        5200
    );
    assert!(planned.len() >= 3);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for p in &planned {
        assert!(p.segment.messages.len() <= MAX_SEGMENT_MESSAGES);
        let sealed = backup::seal(&key(1), &p.segment, &mut rng).unwrap();
        assert!(sealed.len() <= MAX_SEALED_SEGMENT);
    }
}

/// Import stores unseen rows, skips seen ones (by message id) and never overwrites a row
/// at the same position; creates a `Left` record named as in the segment for an unknown
/// group and fills the empty name of a known one; moves the marks so the rows are not
/// backed up again.
#[test]
fn import_dedups_never_overwrites_and_names_groups() {
    let (segment, _) = one_segment();
    let target = MemoryStore::new();
    let two = GroupId([2; 16]);
    target
        .put_group(&GroupRecord {
            id: two,
            name: String::new(),
            membership: Membership::Active,
            joined_at_ms: 1,
        })
        .unwrap();
    let mut local = row(two, 2, "local row at 2");
    local.message_id = [0xee; 16];
    target.put_message(&local).unwrap();
    let (imported, records) = backup::import(&target, segment.clone(), 5).unwrap();
    assert_eq!(imported.messages, 5);
    assert_eq!(imported.duplicates, 1);
    assert_eq!(imported.groups_named, 2);
    assert_eq!(records.len(), 2);
    let one = target.group(&GroupId([1; 16])).unwrap().unwrap();
    assert_eq!(
        (one.name.as_str(), one.membership),
        ("one", Membership::Left)
    );
    let two_record = target.group(&two).unwrap().unwrap();
    assert_eq!(
        (two_record.name.as_str(), two_record.membership),
        ("two", Membership::Active)
    );
    assert_eq!(
        target.message(&two, Seq(2)).unwrap().unwrap().content,
        b"local row at 2".to_vec()
    );
    assert_eq!(target.messages(&GroupId([1; 16])).unwrap().len(), 3);
    let (again, _) = backup::import(&target, segment, 6).unwrap();
    assert_eq!((again.messages, again.duplicates), (0, 6));
    assert_eq!(backup::pending(&target).unwrap(), 0);
}

/// The persisted formats are pinned: an index entry's bytes, and the SHA-256 of a segment
/// sealed with a fixed key and nonce source (a change to the key derivation, the AAD, the
/// header or the plaintext encoding changes it). Changing a format is a decision: bump
/// `BACKUP_VERSION` and update these.
#[test]
fn the_entry_and_segment_formats_are_pinned() {
    use sha2::Digest as _;
    let id = SegmentId {
        device: DeviceId(3),
        counter: 7,
    };
    let entry = SegmentEntry {
        version: backup::BACKUP_VERSION,
        id,
    };
    assert_eq!(entry.encode(), vec![1, 3, 7]);
    let segment = Segment {
        version: backup::BACKUP_VERSION,
        user: user("alice"),
        id,
        groups: cove_wire::BoundedVec(vec![backup::GroupName {
            group: GroupId([1; 16]),
            name: "friends".into(),
        }]),
        messages: cove_wire::BoundedVec(vec![cove_core::link::HistoryMessage::from(row(
            GroupId([1; 16]),
            4,
            "hi",
        ))]),
    };
    let sealed = backup::seal(&key(1), &segment, &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
    assert_eq!(&sealed[..5], b"covh\x01");
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&sealed)),
        "594a98c74a2b3aa0aa8106e71a683a4bb89bda435cb1d962d5acb1cfe356dda0"
    );
}
