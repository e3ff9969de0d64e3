//! The [`BlobStore`] conformance suite, run on [`FsBlobStore`] and on [`S3BlobStore`] over
//! a real `s3s-fs` ([`cove_test_utils::engines::S3Server`]), plus the S3 store's cluster
//! cases: two stores on one bucket are two relay nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::time::{Duration, Instant};

use cove_test_utils::engines::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};
use cove_wire::{BlobId, UserName};

use super::s3::{PART_SIZE, S3BlobStore};
use super::store::{BlobStore, BlobStoreError, FsBlobStore};
use crate::config::S3Config;

fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

fn read_all(store: &dyn BlobStore, id: &BlobId, start: u64) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .reader(id, start)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Appends `data` at `offset` in one writer, in `write` calls of `step` bytes.
fn append(store: &dyn BlobStore, id: &BlobId, offset: u64, data: &[u8], step: usize) -> u64 {
    let mut w = store.writer(id, offset).unwrap();
    for chunk in data.chunks(step.max(1)) {
        w.write(chunk).unwrap();
    }
    w.commit(1_000_000).unwrap().offset
}

/// Bytes that differ everywhere (a misplaced range shows).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// Create, two appends, the blob is complete, reads from 0 and from inside; its metadata
/// says so.
fn create_append_read(store: &dyn BlobStore) {
    let id = BlobId([1; 16]);
    let meta = store.create(id, &user("alice"), 10, 100, 5, 50).unwrap();
    assert_eq!(
        (meta.offset, meta.length, meta.created_ms, meta.expires_ms),
        (0, 10, 5, 50)
    );
    assert_eq!(append(store, &id, 0, b"0123", 4), 4);
    let meta = store.meta(&id).unwrap().unwrap();
    assert!(!meta.complete());
    assert_eq!((meta.offset, meta.expires_ms), (4, 50));
    assert_eq!(append(store, &id, 4, b"456789", 2), 10);
    let meta = store.meta(&id).unwrap().unwrap();
    assert!(meta.complete());
    assert_eq!(meta.expires_ms, 1_000_000, "complete: the new expiry");
    assert_eq!(meta.owner, user("alice"));
    assert_eq!(read_all(store, &id, 0), b"0123456789");
    assert_eq!(read_all(store, &id, 7), b"789");
    assert_eq!(store.meta(&BlobId([9; 16])).unwrap(), None);
}

/// An append at another offset than the stored length is refused with the stored length;
/// past the declared length with `PastEnd`; an unknown blob is `NotFound`.
fn wrong_offset_and_past_end_are_refused(store: &dyn BlobStore) {
    let id = BlobId([2; 16]);
    store.create(id, &user("alice"), 6, 100, 0, 50).unwrap();
    append(store, &id, 0, b"abc", 3);
    for offset in [0, 2, 4] {
        assert!(matches!(
            store.writer(&id, offset),
            Err(BlobStoreError::OffsetMismatch { stored: 3 })
        ));
    }
    let mut w = store.writer(&id, 3).unwrap();
    w.write(b"de").unwrap();
    assert!(matches!(
        w.write(b"fg"),
        Err(BlobStoreError::PastEnd { length: 6 })
    ));
    assert_eq!(
        w.commit(0).unwrap().offset,
        5,
        "the bytes before it are kept"
    );
    assert!(matches!(
        store.writer(&BlobId([3; 16]), 0),
        Err(BlobStoreError::NotFound)
    ));
}

/// The quota counts declared lengths of complete and incomplete blobs per owner.
fn quota(store: &dyn BlobStore) {
    let (alice, bob) = (user("alice"), user("bob"));
    store
        .create(BlobId([4; 16]), &alice, 60, 100, 0, 50)
        .unwrap();
    let err = store
        .create(BlobId([5; 16]), &alice, 41, 100, 0, 50)
        .unwrap_err();
    assert!(
        matches!(
            err,
            BlobStoreError::QuotaExceeded {
                used: 60,
                quota: 100,
                needed: 41
            }
        ),
        "{err}"
    );
    store
        .create(BlobId([5; 16]), &alice, 40, 100, 0, 50)
        .unwrap();
    store
        .create(BlobId([6; 16]), &bob, 100, 100, 0, 50)
        .unwrap();
    assert_eq!(store.usage(&alice).unwrap(), 100);
    assert_eq!(store.usage(&bob).unwrap(), 100);
    store.delete(&BlobId([4; 16])).unwrap();
    assert_eq!(store.usage(&alice).unwrap(), 40);
    assert_eq!(store.meta(&BlobId([4; 16])).unwrap(), None);
    store.delete(&BlobId([4; 16])).unwrap(); // absent: no error
}

/// While an append runs, a second writer and a delete are `Busy`; after its commit both work.
fn one_writer_at_a_time(store: &dyn BlobStore) {
    let id = BlobId([7; 16]);
    store.create(id, &user("alice"), 4, 100, 0, 50).unwrap();
    let mut w = store.writer(&id, 0).unwrap();
    w.write(b"ab").unwrap();
    assert!(matches!(store.writer(&id, 0), Err(BlobStoreError::Busy)));
    assert!(matches!(store.delete(&id), Err(BlobStoreError::Busy)));
    assert_eq!(w.commit(0).unwrap().offset, 2);
    assert_eq!(append(store, &id, 2, b"cd", 1), 4);
    assert_eq!(read_all(store, &id, 0), b"abcd");
    store.delete(&id).unwrap();
    assert_eq!(store.meta(&id).unwrap(), None);
}

/// The sweep deletes at the expiry and not before, spares a blob being appended (until a
/// later sweep) and the blobs `keep` names.
fn sweep(store: &dyn BlobStore) {
    let alice = user("alice");
    let (stale, done, busy, kept) = (
        BlobId([10; 16]),
        BlobId([11; 16]),
        BlobId([12; 16]),
        BlobId([13; 16]),
    );
    for id in [stale, done, busy, kept] {
        store.create(id, &alice, 2, 100, 0, 10).unwrap();
    }
    append(store, &stale, 0, b"a", 1);
    let mut w = store.writer(&done, 0).unwrap();
    w.write(b"ok").unwrap();
    assert_eq!(
        w.commit(500).unwrap().expires_ms,
        500,
        "complete: new expiry"
    );
    let mut running = store.writer(&busy, 0).unwrap();
    running.write(b"x").unwrap();
    assert_eq!(store.sweep_keeping(9, &|_| false).unwrap(), 0);
    assert_eq!(store.sweep_keeping(10, &|m| m.id == kept).unwrap(), 1);
    assert_eq!(store.meta(&stale).unwrap(), None);
    assert!(store.meta(&busy).unwrap().is_some());
    assert!(store.meta(&kept).unwrap().is_some());
    assert!(store.meta(&done).unwrap().is_some_and(|m| m.complete()));
    assert_eq!(running.commit(500).unwrap().offset, 1);
    assert_eq!(
        store.sweep(10).unwrap(),
        2,
        "the appended one and the unkept one"
    );
    assert_eq!(store.meta(&busy).unwrap(), None);
    assert_eq!(store.usage(&alice).unwrap(), 2);
    assert_eq!(read_all(store, &done, 0), b"ok");
}

/// `delete_owner` deletes the owner's blobs, makes one being appended expire now instead
/// (which its append completing does not undo), and leaves other users' blobs alone.
fn delete_owner(store: &dyn BlobStore) {
    let (alice, bob) = (user("alice"), user("bob"));
    let (a1, a2, busy, b1) = (
        BlobId([20; 16]),
        BlobId([21; 16]),
        BlobId([22; 16]),
        BlobId([23; 16]),
    );
    for id in [a1, a2, busy] {
        store.create(id, &alice, 3, 100, 0, 10_000).unwrap();
    }
    store.create(b1, &bob, 3, 100, 0, 10_000).unwrap();
    append(store, &a1, 0, b"abc", 3);
    let mut running = store.writer(&busy, 0).unwrap();
    running.write(b"x").unwrap();
    assert_eq!(store.delete_owner(&alice).unwrap(), 2);
    assert_eq!(store.meta(&a1).unwrap(), None);
    assert_eq!(store.meta(&a2).unwrap(), None);
    assert_eq!(store.meta(&busy).unwrap().unwrap().expires_ms, 0);
    running.write(b"yz").unwrap();
    let meta = running.commit(10_000).unwrap();
    assert!(meta.complete());
    assert_eq!(meta.expires_ms, 0, "still doomed");
    assert_eq!(store.meta(&busy).unwrap(), Some(meta));
    assert_eq!(store.sweep(1).unwrap(), 1);
    assert_eq!(store.usage(&alice).unwrap(), 0);
    assert_eq!(store.usage(&bob).unwrap(), 3);
    assert!(store.meta(&b1).unwrap().is_some());
}

/// A 12 MiB blob (more than two parts) uploaded in uneven appends, each in uneven writes,
/// reads back byte-identical, whole and from starts around the part boundaries.
fn larger_than_one_part(store: &dyn BlobStore) {
    let len = 12 << 20;
    let data = pattern(len, 0x5a);
    let id = BlobId([30; 16]);
    store
        .create(id, &user("alice"), len as u64, 1 << 30, 0, 50)
        .unwrap();
    let cuts = [0, 3 << 20, (3 << 20) + 1, (9 << 20) + 7, len];
    for (i, pair) in cuts.windows(2).enumerate() {
        let step = [131_072, 1, 77_777, 1 << 20][i % 4];
        let stored = append(store, &id, pair[0] as u64, &data[pair[0]..pair[1]], step);
        assert_eq!(stored, pair[1] as u64);
    }
    assert!(store.meta(&id).unwrap().unwrap().complete());
    assert!(read_all(store, &id, 0) == data, "whole blob differs");
    for start in [
        1,
        PART_SIZE - 1,
        PART_SIZE,
        PART_SIZE + 1,
        2 * PART_SIZE,
        len - 3,
    ] {
        assert!(
            read_all(store, &id, start as u64) == data[start..],
            "read from {start} differs"
        );
    }
}

/// An 11 MiB upload interrupted at uneven offsets, each append ending either in a commit or
/// in its writer being dropped (a request cancelled mid-way: the store records what was
/// written, in the background for S3), resumes each time at the stored offset; the blob
/// reads back byte-identical.
fn interrupted_appends_resume_at_the_stored_offset(store: &dyn BlobStore) {
    let len = (11 << 20) + 333;
    let data = pattern(len, 0x33);
    let id = BlobId([32; 16]);
    store
        .create(id, &user("alice"), len as u64, 1 << 30, 0, 50)
        .unwrap();
    let mut seed = 0x2545_f491_u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut round = 0;
    // Where the last append ended: what the store must have recorded.
    let mut expect = 0u64;
    loop {
        let meta = store.meta(&id).unwrap().unwrap();
        // A dropped writer may still be recording (S3): wait until it did, and for the next
        // writer to start.
        let ready = meta.offset == expect;
        if ready && meta.complete() {
            break;
        }
        let attempt = if ready {
            store.writer(&id, meta.offset)
        } else {
            Err(BlobStoreError::Busy)
        };
        let mut w = match attempt {
            Ok(w) => w,
            Err(BlobStoreError::Busy) => {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: stored {} of {expect}",
                    meta.offset
                );
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => panic!("round {round}: {e}"),
        };
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let at = meta.offset as usize;
        let n = ((seed >> 33) as usize % (3 << 20)).max(1).min(len - at);
        for chunk in data[at..at + n].chunks(65_536) {
            w.write(chunk).unwrap();
        }
        if round % 2 == 0 {
            assert_eq!(w.commit(1_000).unwrap().offset, (at + n) as u64);
        } else {
            drop(w);
        }
        expect = (at + n) as u64;
        round += 1;
    }
    assert!(round >= 4, "{round} rounds");
    assert!(read_all(store, &id, 0) == data, "the resumed blob differs");
}

/// An empty blob is complete at creation and reads as nothing.
fn empty_blob(store: &dyn BlobStore) {
    let id = BlobId([31; 16]);
    assert!(
        store
            .create(id, &user("alice"), 0, 1, 0, 50)
            .unwrap()
            .complete()
    );
    assert!(read_all(store, &id, 0).is_empty());
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod fs {
            $(
                #[test]
                fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::FsBlobStore::open(dir.path()).unwrap();
                    super::$case(&store);
                }
            )*
        }
        mod s3 {
            $(
                #[test]
                fn $case() {
                    let server = super::S3Server::start();
                    let store = super::s3_store(&server, "");
                    super::$case(&store);
                }
            )*
        }
    };
}

suite!(
    create_append_read,
    wrong_offset_and_past_end_are_refused,
    quota,
    one_writer_at_a_time,
    sweep,
    delete_owner,
    larger_than_one_part,
    interrupted_appends_resume_at_the_stored_offset,
    empty_blob,
);

fn s3_config(server: &S3Server, prefix: &str) -> S3Config {
    S3Config {
        endpoint: server.endpoint(),
        bucket: "cove-blobs".into(),
        region: "us-east-1".into(),
        access_key: S3_ACCESS_KEY.into(),
        secret_key: S3_SECRET_KEY.into(),
        prefix: prefix.into(),
    }
}

fn s3_store(server: &S3Server, prefix: &str) -> S3BlobStore {
    S3BlobStore::open(&s3_config(server, prefix)).unwrap()
}

/// Two stores on one bucket are two nodes: an upload begun on A (past one part, with a
/// tail) resumes on B at the stored length, completes on A, reads back on B; while A
/// appends, B's writer is `Busy`.
#[test]
fn s3_an_upload_moves_between_nodes() {
    let server = S3Server::start();
    let (a, b) = (s3_store(&server, "x/y"), s3_store(&server, "x/y"));
    let len = PART_SIZE * 2 + 1234;
    let data = pattern(len, 7);
    let id = BlobId([40; 16]);
    a.create(id, &user("alice"), len as u64, u64::MAX, 0, 50)
        .unwrap();
    let first = PART_SIZE + 99;
    let mut w = a.writer(&id, 0).unwrap();
    w.write(&data[..first]).unwrap();
    assert!(matches!(b.writer(&id, 0), Err(BlobStoreError::Busy)));
    assert_eq!(w.commit(0).unwrap().offset, first as u64);
    assert_eq!(b.meta(&id).unwrap().unwrap().offset, first as u64);
    let second = first + 4096;
    assert_eq!(
        append(&b, &id, first as u64, &data[first..second], 1000),
        second as u64
    );
    assert_eq!(
        append(&a, &id, second as u64, &data[second..], 65_536),
        len as u64
    );
    assert!(read_all(&b, &id, 0) == data);
    assert!(read_all(&b, &id, (PART_SIZE + 5) as u64) == data[PART_SIZE + 5..]);
    assert_eq!(b.usage(&user("alice")).unwrap(), len as u64);
}

/// A node that died mid-append (its writer never committed nor dropped) leaves a lease
/// that another node takes over once expired; the dead node's writer can then no longer
/// record anything (`Busy`), and what it had not recorded is not stored.
#[test]
fn s3_an_expired_lease_is_taken_over_and_its_old_holder_cannot_commit() {
    let server = S3Server::start();
    let config = s3_config(&server, "");
    // Node A's leases expire at once: as if its lease outlived its renewals.
    let a = S3BlobStore::open_with_lease(&config, Duration::ZERO).unwrap();
    let b = S3BlobStore::open(&config).unwrap();
    let id = BlobId([41; 16]);
    a.create(id, &user("alice"), 8, 100, 0, 50).unwrap();
    let mut stale = a.writer(&id, 0).unwrap();
    stale.write(b"AAAA").unwrap();
    let mut w = b.writer(&id, 0).unwrap();
    w.write(b"bbbb").unwrap();
    assert!(matches!(a.writer(&id, 0), Err(BlobStoreError::Busy)));
    assert_eq!(w.commit(0).unwrap().offset, 4);
    assert!(matches!(stale.commit(0), Err(BlobStoreError::Busy)));
    assert_eq!(append(&b, &id, 4, b"cccc", 4), 8);
    assert_eq!(read_all(&a, &id, 0), b"bbbbcccc");
}

/// A wrong secret key (403, the key not in the message) or nothing listening at the
/// endpoint (a connection error) fails at open, not at the first upload.
#[test]
fn s3_open_checks_the_endpoint_and_the_keys() {
    let server = S3Server::start();
    let mut config = s3_config(&server, "");
    config.secret_key = "wrong".into();
    let err = S3BlobStore::open(&config)
        .err()
        .expect("opened with a wrong key");
    assert!(
        matches!(
            err,
            BlobStoreError::ObjectStore(object_store::Error::PermissionDenied { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("403 Forbidden"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the key is not in the error: {err}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config = s3_config(&server, "");
    config.endpoint = format!("http://127.0.0.1:{port}");
    let err = S3BlobStore::open(&config)
        .err()
        .expect("opened with no server");
    assert!(
        matches!(
            err,
            BlobStoreError::ObjectStore(object_store::Error::Generic { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("error sending request"), "{err}");
}

/// Two stores on one bucket under different prefixes are two separate blob stores (their
/// objects under `<prefix>/blobs/`), and one with the same prefix sees the same blobs.
#[test]
fn s3_prefixes_keep_relays_apart() {
    let server = S3Server::start();
    let (one, other) = (s3_store(&server, "one"), s3_store(&server, "/other/"));
    let id = BlobId([50; 16]);
    one.create(id, &user("alice"), 3, 100, 0, 50).unwrap();
    append(&one, &id, 0, b"abc", 3);
    assert_eq!(other.meta(&id).unwrap(), None);
    assert_eq!(other.usage(&user("alice")).unwrap(), 0);
    assert_eq!(other.delete_owner(&user("alice")).unwrap(), 0);
    assert_eq!(other.sweep(u64::MAX).unwrap(), 0);
    let again = s3_store(&server, "one");
    assert_eq!(read_all(&again, &id, 0), b"abc");
    let data = server
        .dir()
        .join("cove-blobs/one/blobs/data")
        .join(id.to_hex());
    assert_eq!(std::fs::read(data).unwrap(), b"abc");
}
