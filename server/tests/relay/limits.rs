//! Load limits: the connection cap, the per-device request rate (with `retry_after_ms`), and
//! the store queue's back-pressure on posting connections. Each keeps the connection open
//! and loses nothing.

use std::net::SocketAddr;
use std::time::Duration;

use cove_server::{Limits, StoreKind};
use cove_test_utils::{DEFAULT_TIMEOUT, TestClient, TestRelay, test_limits};
use cove_wire::{
    Delivery, EntryKind, Epoch, ErrorCode, GroupEntry, GroupId, PostKind, Reply, Request, RequestId,
};

use crate::{group_with, wait_until};

/// With `max_connections = 2` and both slots taken, a third client is not accepted: its TCP
/// connection waits in the listening socket's accept queue (the kernel's count, read from
/// `/proc/net/tcp`; PROTOCOL.md: "more wait in the accept queue"; there is no refusal). It
/// is still waiting after a full request round trip on an open connection, in which an
/// accept loop without the cap, polled by this same single-threaded runtime, would have
/// taken it. Once one connection closes, its handshake completes and it is served.
#[tokio::test(flavor = "current_thread")]
async fn over_the_connection_cap_a_client_waits_until_a_slot_frees() {
    let limits = Limits {
        max_connections: 2,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Memory, limits).await;
    let addr = relay.addr();
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (bob, _) = relay.register("bob").await.unwrap();
    assert_eq!(accept_queue(addr), 0);

    let (url, tls) = (relay.url(), relay.tls());
    let waiting = tokio::spawn(async move { TestClient::connect(&url, tls).await });
    wait_until(|| accept_queue(addr) == 1).await;
    assert_eq!(alice.call(Request::Ping).await.unwrap(), Reply::Pong);
    assert_eq!(
        accept_queue(addr),
        1,
        "a connection over the cap was accepted"
    );
    assert!(!waiting.is_finished());

    bob.close().await;
    let mut carol = tokio::time::timeout(DEFAULT_TIMEOUT, waiting)
        .await
        .expect("the waiting client is served once a slot frees")
        .unwrap()
        .unwrap();
    let mut carol_keys = cove_test_utils::DeviceKeys::generate("carol");
    carol.register(&mut carol_keys).await.unwrap();
    assert_eq!(carol.call(Request::Ping).await.unwrap(), Reply::Pong);
    assert_eq!(accept_queue(addr), 0);
    assert_eq!(alice.call(Request::Ping).await.unwrap(), Reply::Pong);
}

/// A device that floods posts past its request rate (burst 10, 20 per second) gets
/// `RateLimited` with a `retry_after_ms` of at most one token's time for each post over the
/// limit, and none of those is stored: the other member receives exactly the accepted posts,
/// then a sentinel. Retrying each refused post on the same connection after the time it was
/// told gets every one in: the other member receives each of the 40 exactly once, in log
/// order, then a second sentinel.
#[tokio::test]
async fn a_device_flooding_posts_is_rate_limited_and_loses_nothing() {
    const RATE: u32 = 20;
    const FLOOD: usize = 40;
    let limits = Limits {
        requests_per_second: RATE,
        request_burst: 10,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Memory, limits).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let post = |text: String| Request::Post {
        group,
        epoch: Epoch(1),
        kind: PostKind::Application,
        payload: text.into_bytes().into(),
    };

    let mut ids: Vec<RequestId> = Vec::new();
    for i in 0..FLOOD {
        ids.push(
            alice
                .send_request(post(format!("flood {i}")))
                .await
                .unwrap(),
        );
    }
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        match alice.response(id).await.unwrap() {
            Ok(Reply::Posted { .. }) => accepted.push(format!("flood {i}")),
            Err(e) if e.code == ErrorCode::RateLimited => {
                let retry_after = e
                    .retry_after_ms
                    .expect("RateLimited carries retry_after_ms");
                assert!(
                    (1..=1000 / RATE + 1).contains(&retry_after),
                    "retry after {retry_after} ms"
                );
                refused.push((format!("flood {i}"), retry_after));
            }
            other => panic!("post {i}: {other:?}"),
        }
    }
    assert!(!accepted.is_empty() && !refused.is_empty(), "{accepted:?}");

    // Only the accepted posts are in the log: the sentinel comes right after them.
    post_until_accepted(&mut alice, post("sentinel 1".into()), 1).await;
    let mut expected = accepted.clone();
    expected.push("sentinel 1".into());
    let got = read_posts(&mut bob, group, expected.len()).await;
    assert_eq!(texts(&got), expected);

    // Retried after the time the relay named, every refused post gets in.
    for (text, retry_after) in &refused {
        post_until_accepted(&mut alice, post(text.clone()), *retry_after).await;
    }
    post_until_accepted(&mut alice, post("sentinel 2".into()), 1).await;
    let mut expected: Vec<String> = refused.into_iter().map(|(text, _)| text).collect();
    expected.push("sentinel 2".into());
    let got = read_posts(&mut bob, group, expected.len()).await;
    assert_eq!(texts(&got), expected);
    assert_eq!(alice.closing(), None);
}

/// With room for one post in the store queue (`post_queue_bytes` below two posts' payload),
/// 50 posts pipelined on one connection, each of which must wait for the one before to be
/// stored, are all answered `Posted` with consecutive seqs, reach the other member in order,
/// and the connection stays open.
#[tokio::test]
async fn posts_beyond_the_store_queue_wait_and_are_all_stored_in_order() {
    const PAYLOAD: usize = 6_000;
    const POSTS: usize = 50;
    let limits = Limits {
        max_message_bytes: 8 * 1024,
        post_queue_bytes: 8 * 1024,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Sqlite, limits).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let payload = |i: usize| {
        let mut p = format!("queued {i:03} ").into_bytes();
        p.resize(PAYLOAD, b'.');
        p
    };

    let mut ids = Vec::new();
    for i in 0..POSTS {
        let body = Request::Post {
            group,
            epoch: Epoch(1),
            kind: PostKind::Application,
            payload: payload(i).into(),
        };
        ids.push(alice.send_request(body).await.unwrap());
    }
    let mut seqs = Vec::new();
    for id in ids {
        match alice.response(id).await.unwrap() {
            Ok(Reply::Posted { seq }) => seqs.push(seq.0),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "not consecutive: {seqs:?}"
    );
    let got = read_posts(&mut bob, group, POSTS).await;
    for (i, entry) in got.iter().enumerate() {
        assert_eq!(entry.seq.0, seqs[i]);
        assert_eq!(entry.payload.as_bytes(), payload(i).as_slice());
    }
    assert_eq!(alice.call(Request::Ping).await.unwrap(), Reply::Pong);
    assert_eq!(alice.closing(), None);
}

/// Posts `body` until the relay accepts it, waiting `retry_after_ms` first and then as long
/// as each `RateLimited` answer says; any other refusal fails the test.
async fn post_until_accepted(client: &mut TestClient, body: Request, first_wait_ms: u32) {
    let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
    let mut wait = first_wait_ms;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never accepted");
        tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
        match client.request(body.clone()).await.unwrap() {
            Ok(Reply::Posted { .. }) => return,
            Err(e) if e.code == ErrorCode::RateLimited => {
                wait = e
                    .retry_after_ms
                    .expect("RateLimited carries retry_after_ms");
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Reads deliveries until `n` application entries of `group` arrived (skipping the commit
/// that added the reader); returns them in order.
async fn read_posts(client: &mut TestClient, group: GroupId, n: usize) -> Vec<GroupEntry> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Delivery::Group(e) = client.next_delivery().await.unwrap()
            && e.group == group
            && e.kind == EntryKind::Application
        {
            out.push(e);
        }
    }
    out
}

fn texts(entries: &[GroupEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8(e.payload.as_bytes().to_vec()).unwrap())
        .collect()
}

/// Connections waiting in the accept queue of the listening socket at `addr`: the kernel
/// reports it as the receive queue of a socket in state LISTEN in `/proc/net/tcp`.
fn accept_queue(addr: SocketAddr) -> u32 {
    let SocketAddr::V4(v4) = addr else {
        panic!("the test relay listens on IPv4")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let line = table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
        .unwrap_or_else(|| panic!("no listening socket {local} in /proc/net/tcp"));
    let queues = line[4];
    let rx = queues.split(':').nth(1).unwrap();
    u32::from_str_radix(rx, 16).unwrap()
}

/// With `max_read_bytes` at 600 KiB, 500 entries of 257 KiB (each within the post size
/// limit; three would still fit in one frame) are read two per store read: a reconnecting
/// member's backlog delivers all 500 in order, and `Fetch` pages through them in exactly
/// 250 replies of two entries, each within the byte bound, in order.
#[tokio::test]
async fn fetch_and_backlog_of_large_entries_are_bounded_in_bytes() {
    const SIZE: usize = 257 * 1024;
    const BOUND: usize = 600 * 1024;
    const POSTS: usize = 500;
    let limits = Limits {
        max_read_bytes: BOUND,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Sqlite, limits).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    // Bob is offline while Alice posts: everything waits in his backlog.
    drop(bob);
    let payload = |i: usize| {
        let mut p = format!("large {i:03} ").into_bytes();
        p.resize(SIZE, b'.');
        p
    };
    let mut seqs = Vec::with_capacity(POSTS);
    for i in 0..POSTS {
        seqs.push(alice.post_app(group, Epoch(1), &payload(i)).await.unwrap());
    }
    let tag = |e: &GroupEntry| e.payload.as_bytes()[..10].to_vec();
    let expected: Vec<Vec<u8>> = (0..POSTS).map(|i| payload(i)[..10].to_vec()).collect();

    let mut bob = relay.login(&bob_keys).await.unwrap();
    let backlog: Vec<GroupEntry> = bob
        .backlog()
        .await
        .unwrap()
        .into_iter()
        .map(crate::group_entry)
        .collect();
    assert_eq!(backlog.len(), POSTS);
    assert_eq!(backlog.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(backlog.iter().map(tag).collect::<Vec<_>>(), expected);
    assert!(backlog.iter().all(|e| e.payload.len() == SIZE));

    let mut after = cove_wire::Seq(0);
    let mut fetched = Vec::new();
    let mut pages = 0;
    loop {
        let body = Request::Fetch {
            group,
            after,
            limit: 500,
        };
        let entries = match bob.call(body).await.unwrap() {
            Reply::Entries { entries } => entries.0,
            other => panic!("{other:?}"),
        };
        let Some(last) = entries.last() else { break };
        after = last.seq;
        let bytes: usize = entries.iter().map(|e| e.payload.len()).sum();
        assert!(bytes <= BOUND, "a page of {bytes} bytes");
        assert_eq!(entries.len(), 2);
        pages += 1;
        fetched.extend(entries);
    }
    assert_eq!(pages, POSTS / 2);
    assert_eq!(fetched.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(fetched.iter().map(tag).collect::<Vec<_>>(), expected);
}
