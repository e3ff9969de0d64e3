//! The SQLite backend's own tests: the conformance suite, reopening, crashes, the ack
//! buffer, corrupt rows and schema versions.

#![allow(clippy::unwrap_used)]

use cove_wire::{DeviceId, Epoch, Seq, Stream};

use super::{SqliteOptions, SqliteStore, Synchronous};
use crate::store::conformance::{app, commit, device, gid, key, one, user};
use crate::store::{RelayStore, StoreError};

fn open_temp() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("relay.db")).unwrap();
    (dir, store)
}

crate::relay_store_conformance!(conformance, open_temp);

/// The duplicate check survives a restart: its window is rebuilt from the log, so a
/// post resent to a restarted relay is answered with its original seq, not stored twice.
#[test]
fn a_repeated_post_is_recognised_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (a, g) = {
        let store = SqliteStore::open(&path).unwrap();
        let a = device(&store, "alice", 1);
        let g = gid(1);
        store.create_group(g, a).unwrap();
        assert_eq!(one(&store, app(g, a, 0, b"m1")).unwrap().entry.seq, Seq(1));
        assert_eq!(one(&store, app(g, a, 0, b"m2")).unwrap().entry.seq, Seq(2));
        (a, g)
    };
    let store = SqliteStore::open(&path).unwrap();
    assert!(matches!(
        one(&store, app(g, a, 0, b"m1")),
        Err(StoreError::Duplicate { seq: Seq(1) })
    ));
    assert_eq!(one(&store, app(g, a, 0, b"m3")).unwrap().entry.seq, Seq(3));
    assert_eq!(
        store.read_group(g, Seq(0), 10, usize::MAX).unwrap().len(),
        3
    );
}

/// Everything written survives dropping the store and opening the same file again, and
/// ids keep counting from where they were.
#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (a, b, c, g) = {
        let store = SqliteStore::open(&path).unwrap();
        let a = device(&store, "alice", 1);
        let b = device(&store, "bob", 2);
        let c = store.add_device(&user("bob"), &key(3)).unwrap();
        store
            .upload_key_packages(
                c,
                vec![b"kp1".to_vec(), b"kp2".to_vec()],
                Some(b"lr".to_vec()),
            )
            .unwrap();
        store.claim_key_packages(&user("bob")).unwrap();
        let g = gid(1);
        store.create_group(g, a).unwrap();
        one(&store, app(g, a, 0, b"m1")).unwrap();
        one(&store, commit(g, a, 0, &[b, c], &[], Some(b"welcome"))).unwrap();
        one(&store, app(g, b, 1, b"m2")).unwrap();
        store.ack(a, Stream::Group(g), Seq(2)).unwrap();
        store.ack(b, Stream::Inbox, Seq(1)).unwrap();
        (a, b, c, g)
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.device(c).unwrap(), Some((user("bob"), key(3))));
    assert_eq!(store.devices(&user("bob")).unwrap().len(), 2);
    assert!(matches!(
        store.register_user(&user("alice"), &key(9)),
        Err(StoreError::UserTaken)
    ));
    let stock = store.key_package_stock(c).unwrap();
    assert_eq!((stock.remaining, stock.has_last_resort), (1, true));
    let claimed = store.claim_key_packages(&user("bob")).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].key_package.as_bytes(), b"kp2");
    let log = store.read_group(g, Seq(0), 10, usize::MAX).unwrap();
    let payloads: Vec<&[u8]> = log.iter().map(|e| e.payload.as_bytes()).collect();
    assert_eq!(payloads, vec![&b"m1"[..], b"commit", b"m2"]);
    assert_eq!(store.groups_of(b).unwrap()[0].epoch, Epoch(1));
    assert!(store.is_member(g, c).unwrap());
    assert_eq!(store.cursor(a, Stream::Group(g)).unwrap(), Seq(2));
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(2));
    assert_eq!(store.cursor(b, Stream::Inbox).unwrap(), Seq(1));
    assert_eq!(
        store.read_inbox(c, Seq(0), 10, usize::MAX).unwrap()[0]
            .payload
            .as_bytes(),
        b"welcome"
    );
    // The epoch and log head were reloaded: a stale commit is refused, the next seq is 4.
    assert!(matches!(
        one(&store, commit(g, a, 0, &[], &[], None)),
        Err(StoreError::StaleEpoch { current: Epoch(1) })
    ));
    assert_eq!(one(&store, app(g, a, 1, b"m3")).unwrap().entry.seq, Seq(4));
    // Device ids are never reused.
    let d = device(&store, "dave", 4);
    assert!(d > c);
    assert!(d > DeviceId(3));
}

/// `kill -9` while posting loses no acknowledged post: a child process (this test binary,
/// re-run on [`kill_child_posts_until_killed`]) appends and prints each seq once
/// `append_batch` has returned; the parent kills it mid-stream and checks every printed
/// seq is in the reopened file.
#[test]
fn kill_9_loses_no_acknowledged_post() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (a, g) = {
        let store = SqliteStore::open(&path).unwrap();
        let a = device(&store, "alice", 1);
        store.create_group(gid(1), a).unwrap();
        (a, gid(1))
    };
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::sqlite::tests::kill_child_posts_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COVE_KILL_CHILD_DB", &path)
        .env("COVE_KILL_CHILD_DEVICE", a.0.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(seq) = line.strip_prefix("acked ") {
            acked.push(seq.parse::<u64>().unwrap());
            if acked.len() == 300 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(acked.len(), 300, "the child stopped early");
    let store = SqliteStore::open(&path).unwrap();
    let mut stored = Vec::new();
    let mut after = Seq(0);
    loop {
        let page = store.read_group(g, after, 500, usize::MAX).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        stored.extend(page.iter().map(|e| (e.seq.0, e.payload.0.clone())));
    }
    for seq in &acked {
        let found = stored.iter().find(|(s, _)| s == seq);
        assert_eq!(
            found.map(|(_, p)| p.clone()),
            Some(seq.to_be_bytes().to_vec())
        );
    }
    // The log has no holes and the store keeps accepting posts after the crash.
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, (s, _))| *s == i as u64 + 1)
    );
    let next = one(&store, app(g, a, 0, b"after")).unwrap().entry.seq;
    assert_eq!(next.0, stored.len() as u64 + 1);
}

/// The child half of [`kill_9_loses_no_acknowledged_post`]; does nothing on its own.
#[test]
#[ignore = "run by kill_9_loses_no_acknowledged_post in a child process"]
fn kill_child_posts_until_killed() {
    let (Some(path), Some(device)) = (
        std::env::var_os("COVE_KILL_CHILD_DB"),
        std::env::var_os("COVE_KILL_CHILD_DEVICE"),
    ) else {
        return;
    };
    let device = DeviceId(device.to_str().unwrap().parse().unwrap());
    let store = SqliteStore::open(path).unwrap();
    // Batches of 1 to 7 posts whose payload is their seq; bounded in case the parent
    // is gone (printing to a closed pipe also ends this process).
    let mut next = 1u64;
    for round in 0..20_000u64 {
        let count = round % 7 + 1;
        let posts = (0..count)
            .map(|i| app(gid(1), device, 0, &(next + i).to_be_bytes()))
            .collect();
        for result in store.append_batch(posts) {
            let seq = result.unwrap().entry.seq.0;
            assert_eq!(seq, next);
            next += 1;
            println!("acked {seq}");
        }
    }
}

/// Acks are buffered: visible through `cursor` at once, written to the file by the next
/// batch of posts, by `flush`, or when the buffer is full.
#[test]
fn acks_are_buffered_and_written_with_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let store = SqliteStore::open(&path).unwrap();
    let a = device(&store, "alice", 1);
    let b = device(&store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(&store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap();
    for i in 0..3u8 {
        one(&store, app(g, a, 1, &[b'm', i])).unwrap();
    }
    let raw = rusqlite::Connection::open(&path).unwrap();
    let on_disk = |device: DeviceId| -> (i64, i64) {
        let group: i64 = raw
            .query_row(
                "SELECT cursor FROM members WHERE group_id = ?1 AND device = ?2",
                rusqlite::params![g.0.as_slice(), device.0 as i64],
                |r| r.get(0),
            )
            .unwrap();
        let inbox: i64 = raw
            .query_row(
                "SELECT inbox_cursor FROM devices WHERE id = ?1",
                rusqlite::params![device.0 as i64],
                |r| r.get(0),
            )
            .unwrap();
        (group, inbox)
    };
    store.ack(a, Stream::Group(g), Seq(2)).unwrap();
    store.ack(b, Stream::Inbox, Seq(1)).unwrap();
    assert_eq!(store.cursor(a, Stream::Group(g)).unwrap(), Seq(2));
    assert_eq!(store.cursor(b, Stream::Inbox).unwrap(), Seq(1));
    assert_eq!(
        (on_disk(a), on_disk(b)),
        ((0, 0), (1, 0)),
        "buffered, not yet written"
    );
    one(&store, app(g, a, 1, b"m")).unwrap();
    assert_eq!(
        (on_disk(a), on_disk(b)),
        ((2, 0), (1, 1)),
        "written with the batch"
    );
    store.ack(b, Stream::Group(g), Seq(4)).unwrap();
    assert_eq!(on_disk(b).0, 1);
    store.flush().unwrap();
    assert_eq!(on_disk(b).0, 4);
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(4));
    // A full buffer is written without waiting for a post.
    let mut devices = Vec::new();
    for i in 0..super::ACK_FLUSH_ENTRIES {
        devices.push(device(&store, &format!("d{i}"), 3));
    }
    for d in &devices {
        store.ack(*d, Stream::Inbox, Seq(0)).unwrap();
    }
    assert!(store.acks().unwrap().is_empty());
}

/// `try_ack_buffered` applies a member's group ack from memory only and declines
/// (`None`) whatever would need the disk: inbox acks, non-members, groups not cached,
/// a due flush of the buffer.
#[test]
fn try_ack_buffered_declines_what_needs_io() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let store = SqliteStore::open(&path).unwrap();
    let a = device(&store, "alice", 1);
    let b = device(&store, "bob", 2);
    let c = device(&store, "carol", 3);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(&store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap();
    let end = (0..3)
        .map(|i: u8| one(&store, app(g, a, 1, &[b'm', i])).unwrap().entry.seq)
        .last()
        .unwrap();
    assert!(store.try_ack_buffered(b, Stream::Inbox, Seq(0)).is_none());
    assert!(
        store
            .try_ack_buffered(c, Stream::Group(g), Seq(1))
            .is_none()
    );
    assert!(
        store
            .try_ack_buffered(b, Stream::Group(gid(9)), Seq(1))
            .is_none()
    );
    assert!(matches!(
        store.try_ack_buffered(b, Stream::Group(g), Seq(end.0 + 1)),
        Some(Err(StoreError::Invalid(_)))
    ));
    assert!(matches!(
        store.try_ack_buffered(b, Stream::Group(g), end),
        Some(Ok(()))
    ));
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), end);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let on_disk = || -> i64 {
        raw.query_row(
            "SELECT cursor FROM members WHERE group_id = ?1 AND device = ?2",
            rusqlite::params![g.0.as_slice(), b.0 as i64],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(on_disk() < end.0 as i64, "buffered, not written inline");
    // A due flush (here: the buffer is old) is left to `ack`, off the async runtime.
    store.acks().unwrap().since = std::time::Instant::now().checked_sub(super::ACK_FLUSH_AGE);
    assert!(store.try_ack_buffered(a, Stream::Group(g), end).is_none());
    assert!(on_disk() < end.0 as i64, "nothing written by the decline");
    store.ack(a, Stream::Group(g), end).unwrap();
    assert!(store.acks().unwrap().is_empty());
    assert_eq!(on_disk(), end.0 as i64);
    // A full buffer is left to `ack` too.
    for i in 0..super::ACK_FLUSH_ENTRIES - 1 {
        store
            .acks()
            .unwrap()
            .inbox
            .insert(DeviceId(1000 + i as u64), Seq(0));
    }
    store.acks().unwrap().since = Some(std::time::Instant::now());
    assert!(store.try_ack_buffered(a, Stream::Group(g), end).is_none());
    assert!(store.try_ack_buffered(b, Stream::Group(g), end).is_none());
}

/// Corrupt rows give Backend errors, never a panic.
#[test]
fn corrupt_rows_are_backend_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let store = SqliteStore::open(&path).unwrap();
    let a = device(&store, "alice", 1);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(&store, commit(g, a, 0, &[], &[], None)).unwrap();
    one(&store, app(g, a, 1, b"m")).unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "UPDATE group_log SET added = x'0102' WHERE seq = 1;
         UPDATE group_log SET kind = 77 WHERE seq = 2;
         UPDATE devices SET key = x'00';",
    )
    .unwrap();
    assert!(matches!(
        store.read_group(g, Seq(0), 1, usize::MAX),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.read_group(g, Seq(1), 1, usize::MAX),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(store.device(a), Err(StoreError::Backend(_))));
    assert!(matches!(
        store.devices(&user("alice")),
        Err(StoreError::Backend(_))
    ));
    raw.execute_batch(
        "UPDATE group_log SET payload = 42 WHERE seq = 2; UPDATE group_log SET kind = 0;",
    )
    .unwrap();
    assert!(matches!(
        store.read_group(g, Seq(1), 1, usize::MAX),
        Err(StoreError::Backend(_))
    ));
    raw.execute_batch("UPDATE groups SET epoch = -5").unwrap();
    drop(store);
    // A fresh store loads the corrupt group state lazily: an error, not a panic.
    let store = SqliteStore::open(&path).unwrap();
    assert!(matches!(store.groups_of(a), Err(StoreError::Backend(_))));
    let results = store.append_batch(vec![app(g, a, 1, b"m")]);
    assert!(matches!(results[0], Err(StoreError::Backend(_))));
}

/// A file written by a newer schema is refused rather than misread.
#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    drop(SqliteStore::open(&path).unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, i64::from(SqliteStore::schema_version()));
    raw.execute("UPDATE schema_version SET version = version + 1", [])
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Backend(_))
    ));
}

/// A version-1 file (no join seqs, no departures) is upgraded in place: its members
/// count as joined at 0 and keep their cursors, and removals then leave departures.
#[test]
fn version_1_file_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let g = gid(1);
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(super::schema::MIGRATIONS[0]).unwrap();
        raw.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version (version) VALUES (1);
             INSERT INTO users (name) VALUES ('alice'), ('bob');",
        )
        .unwrap();
        for (user, k) in [("alice", 1u8), ("bob", 2u8)] {
            raw.execute(
                "INSERT INTO devices (user, key) VALUES (?1, ?2)",
                rusqlite::params![user, vec![k; 32]],
            )
            .unwrap();
        }
        raw.execute(
            "INSERT INTO groups (id, epoch) VALUES (?1, 1)",
            rusqlite::params![g.0.as_slice()],
        )
        .unwrap();
        for (device, cursor) in [(1i64, 0i64), (2, 1)] {
            raw.execute(
                "INSERT INTO members (group_id, device, cursor) VALUES (?1, ?2, ?3)",
                rusqlite::params![g.0.as_slice(), device, cursor],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).unwrap();
    let (a, b) = (DeviceId(1), DeviceId(2));
    assert_eq!(store.joined(g, a).unwrap(), Some(Seq(0)));
    assert_eq!(store.joined(g, b).unwrap(), Some(Seq(0)));
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(1));
    assert!(store.departures(b).unwrap().is_empty());
    let removal = one(&store, commit(g, a, 1, &[], &[b], None)).unwrap();
    assert_eq!(store.departures(b).unwrap(), vec![(g, removal.entry.seq)]);
    assert_eq!(store.cursor(b, Stream::Group(g)).unwrap(), Seq(1));
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.departures(b).unwrap(), vec![(g, removal.entry.seq)]);
}

/// A version-3 file (no last-seen column) is upgraded in place: its devices have no last
/// seen until they log in, then the recorded time, kept across a reopen.
#[test]
fn version_3_file_gets_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        for sql in &super::schema::MIGRATIONS[..3] {
            raw.execute_batch(sql).unwrap();
        }
        raw.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version (version) VALUES (3);
             INSERT INTO users (name) VALUES ('alice');",
        )
        .unwrap();
        raw.execute(
            "INSERT INTO devices (user, key) VALUES ('alice', ?1)",
            rusqlite::params![vec![1u8; 32]],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let alice = user("alice");
    assert_eq!(store.last_seen(&alice).unwrap(), vec![(DeviceId(1), None)]);
    store.record_seen(DeviceId(1), 42).unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.last_seen(&alice).unwrap(),
        vec![(DeviceId(1), Some(42))]
    );
}

/// The file is in WAL mode with the requested sync level on the write connection.
#[test]
fn wal_and_sync_level() {
    let dir = tempfile::tempdir().unwrap();
    for (sync, expected) in [(Synchronous::Full, 2), (Synchronous::Normal, 1)] {
        let path = dir.path().join(format!("relay-{expected}.db"));
        let store = SqliteStore::open_with(&path, SqliteOptions { synchronous: sync }).unwrap();
        let writer = store.writer().unwrap();
        let mode: String = writer
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let level: i64 = writer
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), level), ("wal", expected));
    }
}

/// An emptied group log and inbox go on from their highest pruned seq after a reopen (the
/// file records it): no seq is handed out twice.
#[test]
fn pruned_seqs_are_not_reused_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (a, b, g) = {
        let store = SqliteStore::open(&path).unwrap();
        let a = device(&store, "alice", 1);
        let b = device(&store, "bob", 2);
        let g = gid(1);
        store.create_group(g, a).unwrap();
        one(&store, commit(g, a, 0, &[b], &[], Some(b"welcome"))).unwrap();
        one(&store, app(g, a, 1, b"m2")).unwrap();
        let pruned = store.prune(u64::MAX, 0).unwrap();
        assert_eq!(
            pruned,
            crate::store::Pruned {
                group_entries: 2,
                inbox_entries: 1
            }
        );
        (a, b, g)
    };
    let store = SqliteStore::open(&path).unwrap();
    assert!(
        store
            .read_group(g, Seq(0), 10, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(one(&store, app(g, a, 1, b"m3")).unwrap().entry.seq, Seq(3));
    let g2 = gid(2);
    store.create_group(g2, a).unwrap();
    let added = one(&store, commit(g2, a, 0, &[b], &[], Some(b"again"))).unwrap();
    assert_eq!(added.welcomes, vec![(b, Seq(2))]);
}

/// A prune over more groups than one transaction takes (`GROUPS_PER_TRANSACTION`) prunes
/// every one of them.
#[test]
fn prune_covers_groups_across_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        synchronous: Synchronous::Normal,
    };
    let store = SqliteStore::open_with(dir.path().join("relay.db"), options).unwrap();
    let a = device(&store, "alice", 1);
    let n = super::retention::GROUPS_PER_TRANSACTION + 44;
    let groups: Vec<cove_wire::GroupId> = (0..n)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            cove_wire::GroupId(id)
        })
        .collect();
    for g in &groups {
        store.create_group(*g, a).unwrap();
    }
    let posts = groups.iter().map(|g| app(*g, a, 0, b"m")).collect();
    assert!(store.append_batch(posts).iter().all(Result::is_ok));
    let pruned = store.prune(10_000, u64::MAX).unwrap();
    assert_eq!(pruned.group_entries, 0, "nothing acknowledged yet");
    for g in &groups {
        store.ack(a, Stream::Group(*g), Seq(1)).unwrap();
    }
    let pruned = store.prune(10_000, u64::MAX).unwrap();
    assert_eq!(pruned.group_entries, n as u64);
    for g in &groups {
        assert!(
            store
                .read_group(*g, Seq(0), 10, usize::MAX)
                .unwrap()
                .is_empty()
        );
    }
}

/// A device that left a group without MLS state is still recorded as such after a reopen:
/// not a member, and a commit naming it among the removed devices is accepted as a no-op.
#[test]
fn a_left_device_stays_left_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (a, b, g) = {
        let store = SqliteStore::open(&path).unwrap();
        let a = device(&store, "alice", 1);
        let b = device(&store, "bob", 2);
        let g = gid(1);
        store.create_group(g, a).unwrap();
        one(&store, commit(g, a, 0, &[b], &[], Some(b"welcome"))).unwrap();
        store.leave_group(g, b).unwrap();
        (a, b, g)
    };
    let store = SqliteStore::open(&path).unwrap();
    assert!(!store.is_member(g, b).unwrap());
    let removal = one(&store, commit(g, a, 1, &[], &[b], None)).unwrap();
    assert!(removal.removed.is_empty());
    assert_eq!(removal.members, vec![a]);
}

/// A stored account survives a reopen; a corrupt account row (a recovery key of the wrong
/// length, a KSF version out of range) is a backend error, not a panic or a wrong account.
#[test]
fn accounts_survive_reopening_and_corrupt_rows_are_backend_errors() {
    use crate::store::conformance::account;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        device(&store, "alice", 1);
        device(&store, "bob", 2);
        store.create_account(&user("alice"), account(1)).unwrap();
        store.create_account(&user("bob"), account(2)).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.account(&user("alice")).unwrap(), Some(account(1)));
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE accounts SET recovery_key = x'0102' WHERE user = 'alice'",
        [],
    )
    .unwrap();
    raw.execute(
        "UPDATE accounts SET ksf_version = 300 WHERE user = 'bob'",
        [],
    )
    .unwrap();
    assert!(matches!(
        store.account(&user("alice")),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.account(&user("bob")),
        Err(StoreError::Backend(_))
    ));
}

/// A file from before the account-deletion migration (version 10; the last one)
/// migrates keeping its left devices (`group_left`, rebuilt without the foreign key to
/// `devices`): a left device's user can then be deleted, its
/// left leaf stays, and a member's commit removing it is accepted with nothing delivered
/// to it; the deletion survives a reopen.
#[test]
fn migration_10_keeps_left_devices_and_lets_their_user_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let (a, b, g) = {
        let store = SqliteStore::open(&path).unwrap();
        let a = device(&store, "alice", 1);
        let b = device(&store, "bob", 2);
        let g = gid(1);
        store.create_group(g, a).unwrap();
        one(&store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap();
        store.leave_group(g, b).unwrap();
        (a, b, g)
    };
    // Back to the version before: `group_left` as it was, with its rows.
    let before = i64::from(SqliteStore::schema_version()) - 1;
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE keep AS SELECT group_id, device FROM group_left;
         DROP TABLE group_left;
         CREATE TABLE group_left (
             group_id BLOB NOT NULL REFERENCES groups(id),
             device INTEGER NOT NULL REFERENCES devices(id),
             PRIMARY KEY (group_id, device)
         ) WITHOUT ROWID;
         INSERT INTO group_left (group_id, device) SELECT group_id, device FROM keep;
         DROP TABLE keep;",
    )
    .unwrap();
    raw.execute("UPDATE schema_version SET version = ?1", [before])
        .unwrap();
    drop(raw);
    {
        let store = SqliteStore::open(&path).unwrap();
        assert!(!store.is_member(g, b).unwrap());
        assert_eq!(store.delete_user(&user("bob")).unwrap(), vec![b]);
    }
    let store = SqliteStore::open(&path).unwrap();
    assert!(store.device(b).unwrap().is_none());
    let removal = one(&store, commit(g, a, 1, &[], &[b], None)).unwrap();
    assert!(removal.removed.is_empty(), "{:?}", removal.removed);
    assert_eq!(removal.members, vec![a]);
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, before + 1);
}

/// Cursors acked further while a flush was writing the buffer stay buffered, aged from the
/// flush's snapshot rather than from the first ack before it: the buffer is not left looking
/// due, which sent every later ack off the runtime to write the buffer on its own.
#[test]
fn acks_left_after_a_flush_are_aged_from_its_snapshot() {
    use super::acks::PendingAcks;
    let mut pending = PendingAcks::default();
    let moved = (gid(1), DeviceId(7));
    let unchanged = (gid(1), DeviceId(8));
    pending.group.insert(moved, Seq(1));
    pending.group.insert(unchanged, Seq(1));
    let old = std::time::Instant::now()
        .checked_sub(super::ACK_FLUSH_AGE * 2)
        .unwrap();
    pending.since = Some(old);
    assert!(pending.due());
    let snapshot = pending.snapshot();
    // Acked further while the snapshot is being written.
    pending.group.insert(moved, Seq(2));
    pending.written(&snapshot);
    assert_eq!(pending.group.get(&moved), Some(&Seq(2)));
    assert_eq!(pending.group.get(&unchanged), None);
    let since = pending.since.unwrap();
    assert!(since > old);
    assert_eq!(Some(since), snapshot.since);
    // Written again: nothing left, nothing aging.
    let snapshot = pending.snapshot();
    pending.written(&snapshot);
    assert!(pending.is_empty());
    assert_eq!(pending.since, None);
}

/// An ack that found the buffer due but reaches the write connection after another flush
/// wrote it does not write it again (it stays buffered).
#[test]
fn an_ack_does_not_flush_a_buffer_no_longer_due() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let store = SqliteStore::open(&path).unwrap();
    let a = device(&store, "alice", 1);
    let b = device(&store, "bob", 2);
    let g = gid(1);
    store.create_group(g, a).unwrap();
    one(&store, commit(g, a, 0, &[b], &[], Some(b"w"))).unwrap();
    for i in 0..3u8 {
        one(&store, app(g, a, 1, &[b'm', i])).unwrap();
    }
    store.ack(b, Stream::Group(g), Seq(2)).unwrap();
    store.write_pending_acks(true).unwrap();
    assert!(!store.acks().unwrap().is_empty(), "not due: still buffered");
    store.acks().unwrap().since = std::time::Instant::now().checked_sub(super::ACK_FLUSH_AGE);
    store.write_pending_acks(true).unwrap();
    assert!(store.acks().unwrap().is_empty(), "due: written");
    let raw = rusqlite::Connection::open(&path).unwrap();
    let on_disk: i64 = raw
        .query_row(
            "SELECT cursor FROM members WHERE group_id = ?1 AND device = ?2",
            rusqlite::params![g.0.as_slice(), b.0 as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(on_disk, 2);
}
