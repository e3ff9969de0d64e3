//! Retention (PROTOCOL.md "Retention"): the relay prunes what every reader acknowledged, on
//! its own schedule and when asked, and a SQLite store under steady traffic with pruning
//! keeps a flat size (soak).

use std::path::Path;
use std::time::{Duration, Instant};

use cove_server::{Limits, StoreKind};
use cove_test_utils::{DEFAULT_TIMEOUT, DeviceKeys, TestClient, TestRelay, test_limits};
use cove_wire::{Delivery, Epoch, GroupId, PostKind, Reply, Request, Seq, Stream};

use crate::{group_with, inbox_entry};

/// The seqs `client` reads with `Fetch` from the start of `group`'s log.
async fn fetch_all(client: &mut TestClient, group: GroupId) -> Vec<u64> {
    match client
        .call(Request::Fetch {
            group,
            after: Seq(0),
            limit: 500,
        })
        .await
        .unwrap()
    {
        Reply::Entries { entries } => entries.0.iter().map(|e| e.seq.0).collect(),
        other => panic!("expected Entries, got {other:?}"),
    }
}

/// Reads deliveries until the group entry at `last` of `group` arrived; returns how many
/// group entries of `group` arrived.
async fn read_through(client: &mut TestClient, group: GroupId, last: Seq) -> usize {
    let mut n = 0;
    loop {
        if let Delivery::Group(e) = client.next_delivery().await.unwrap()
            && e.group == group
        {
            n += 1;
            if e.seq >= last {
                return n;
            }
        }
    }
}

/// With a short `prune_interval_ms`, the relay prunes on its own: once both members have
/// acknowledged every entry, their log is emptied (a later `Fetch` from seq 0 finds
/// nothing), and the next post still gets the next seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_prunes_acknowledged_entries_on_its_own() {
    let limits = Limits {
        prune_interval_ms: 20,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Sqlite, limits).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let mut last = Seq(1);
    for i in 0..5 {
        last = alice
            .post_app(group, Epoch(1), format!("m{i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(fetch_all(&mut bob, group).await, vec![2, 3, 4, 5, 6]);
    // Only alice acknowledges: bob's cursor holds the log.
    alice.ack(Stream::Group(group), last).await.unwrap();
    read_through(&mut bob, group, last).await;
    bob.ack(Stream::Group(group), Seq(3)).await.unwrap();
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    while fetch_all(&mut bob, group).await != vec![4, 5, 6] {
        assert!(Instant::now() < deadline, "the relay never pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bob.ack(Stream::Group(group), last).await.unwrap();
    while !fetch_all(&mut bob, group).await.is_empty() {
        assert!(Instant::now() < deadline, "the relay never pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        alice.post_app(group, Epoch(1), b"after").await.unwrap(),
        Seq(7)
    );
}

/// What the store holds, read from the SQLite file beside the running relay.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Footprint {
    /// Rows of group_log, inbox, inbox_payloads, departures and members.
    rows: [i64; 5],
    /// Pages in use (`page_count - freelist_count`).
    pages_in_use: i64,
    /// Size of `relay.db` in bytes.
    file_bytes: u64,
    /// Size of `relay.db-wal` in bytes (0 when absent).
    wal_bytes: u64,
}

fn footprint(data: &Path) -> Footprint {
    let db = data.join("relay.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    let rows = [
        count("group_log"),
        count("inbox"),
        count("inbox_payloads"),
        count("departures"),
        count("members"),
    ];
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Footprint {
        rows,
        pages_in_use: pages - free,
        file_bytes: size(&db),
        wal_bytes: size(&data.join("relay.db-wal")),
    }
}

/// Soak: a relay with the SQLite store; each round four members post 25 messages of 2 KiB
/// each (pipelined, so the relay batches them), a guest device is added by a commit with a
/// Welcome and removed again, every device reads everything and acknowledges it (the guest
/// its Welcome and its removal), then the relay prunes. After three warm-up rounds, every
/// round leaves exactly the same rows (the members only) and the same pages in use, and
/// the file and WAL no larger than after the warm-up (plus a page-granular slack of 16
/// pages for B-tree layout): pruned pages are reused. Without pruning each round adds about
/// 200 KiB. Runs at least 10 rounds, and for `COVE_SOAK_SECS` seconds (20 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_the_sqlite_store_stays_flat_with_pruning() {
    const MEMBERS: usize = 4;
    const POSTS: usize = 25;
    const WARM_UP: usize = 3;
    const MIN_ROUNDS: usize = 10;
    const SLACK_PAGES: i64 = 16;
    let soak = Duration::from_secs(
        std::env::var("COVE_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let limits = Limits {
        // The test prunes itself, once a round, so each measurement follows a prune.
        prune_interval_ms: 24 * 60 * 60 * 1000,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Sqlite, limits).await;
    let mut members: Vec<(TestClient, DeviceKeys)> = Vec::new();
    for i in 0..MEMBERS {
        members.push(relay.register(&format!("member{i}")).await.unwrap());
    }
    let (mut guest, guest_keys) = relay.register("guest").await.unwrap();
    let (first, rest) = members.split_first_mut().unwrap();
    let mut others: Vec<(&mut TestClient, &DeviceKeys)> =
        rest.iter_mut().map(|(c, k)| (c, &*k)).collect();
    let group = group_with(&mut first.0, &mut others).await;
    let mut epoch = Epoch(1);
    let page_size: i64 = {
        let conn = rusqlite::Connection::open(relay.data_dir().join("relay.db")).unwrap();
        conn.query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    let slack_bytes = u64::try_from(SLACK_PAGES * page_size).unwrap();

    let started = Instant::now();
    let mut baseline: Option<Footprint> = None;
    let mut round = 0;
    while round < MIN_ROUNDS || started.elapsed() < soak {
        round += 1;
        // Everyone posts at once, each with its requests pipelined.
        let posting = members
            .iter_mut()
            .enumerate()
            .map(|(m, (client, _))| async move {
                let mut ids = Vec::new();
                for i in 0..POSTS {
                    let mut payload = vec![0u8; 2048];
                    payload[..16].copy_from_slice(&[m as u8, i as u8, round as u8, 7].repeat(4));
                    let body = Request::Post {
                        group,
                        epoch,
                        kind: PostKind::Application,
                        payload: payload.into(),
                    };
                    ids.push(client.send_request(body).await.unwrap());
                }
                for id in ids {
                    match client.response(id).await.unwrap() {
                        Ok(Reply::Posted { .. }) => {}
                        other => panic!("post refused: {other:?}"),
                    }
                }
            });
        futures_util::future::join_all(posting).await;
        // The guest comes and goes: a Welcome in its inbox, a departure record.
        let host = &mut members[0].0;
        host.commit(
            group,
            epoch,
            vec![guest_keys.id()],
            vec![],
            Some(&[round as u8; 512]),
            b"add guest",
        )
        .await
        .unwrap();
        epoch = Epoch(epoch.0 + 1);
        let welcome = inbox_entry(guest.next_delivery().await.unwrap());
        guest.ack(Stream::Inbox, welcome.seq).await.unwrap();
        let removal = host
            .commit(
                group,
                epoch,
                vec![],
                vec![guest_keys.id()],
                None,
                b"remove guest",
            )
            .await
            .unwrap();
        epoch = Epoch(epoch.0 + 1);
        read_through(&mut guest, group, removal).await;
        guest.ack(Stream::Group(group), removal).await.unwrap();
        for (client, _) in members.iter_mut() {
            read_through(client, group, removal).await;
            client.ack(Stream::Group(group), removal).await.unwrap();
        }
        let pruned = relay.handle().prune().await.unwrap();
        assert!(
            pruned.group_entries >= (MEMBERS * POSTS + 2) as u64,
            "round {round}: {pruned:?}"
        );
        let now = footprint(relay.data_dir());
        assert_eq!(now.rows, [0, 0, 0, 0, MEMBERS as i64], "round {round}");
        match baseline {
            None if round == WARM_UP => baseline = Some(now),
            None => {}
            Some(base) => {
                assert!(
                    (now.pages_in_use - base.pages_in_use).abs() <= SLACK_PAGES,
                    "round {round}: pages in use {now:?} vs after warm-up {base:?}"
                );
                assert!(
                    now.file_bytes <= base.file_bytes + slack_bytes,
                    "round {round}: the file grew: {now:?} vs after warm-up {base:?}"
                );
                assert!(
                    now.wal_bytes <= base.wal_bytes + slack_bytes,
                    "round {round}: the WAL grew: {now:?} vs after warm-up {base:?}"
                );
            }
        }
    }
    eprintln!(
        "soak: {round} rounds in {:?}, final {:?}, after warm-up {:?}",
        started.elapsed(),
        footprint(relay.data_dir()),
        baseline
    );
}
