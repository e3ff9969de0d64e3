//! Relay nodes joined by the bus (issue 15 item 2): in-process relays on one PostgreSQL
//! database (`PgCluster`) and one real `nats-server`, with wire-level clients. Entries
//! posted on one node reach devices on the others, in seq order without gaps; a NATS outage
//! only delays delivery; a device's new connection on one node closes its older one on
//! another; a garbled notice on the bus is ignored; the handshake cache of a node follows
//! commits made through another.
//!
//! "The client's rule" below is what every Cove client does with a delivery: an entry at or
//! below the last seq it has of that stream is a re-sent one and is dropped; anything else
//! must be the next seq (a gap would be fatal: acks are cumulative).

use std::collections::HashMap;

use cove_server::StoreKind;
use cove_server::config::BusConfig;
use cove_test_utils::engines::NatsServer;
use cove_test_utils::postgres::PgCluster;
use cove_test_utils::{DeviceKeys, TestClient, TestRelay};
use cove_wire::{Delivery, Epoch, ErrorCode, GroupId, Reply, Request, Seq, Stream};

use crate::accounts::{login, register_account};
use crate::group_with;
use crate::health::{sample, scrape};
use crate::validation::Member;

/// A node on the database at `db` and the NATS server at `nats`, validation as given.
async fn node(db: &str, nats: &str, name: &str, validate: bool) -> TestRelay {
    let (db, nats, name) = (db.to_string(), nats.to_string(), name.to_string());
    TestRelay::configured(move |config| {
        config.store = StoreKind::Postgres(db);
        config.validate_handshakes = validate;
        config.bus = Some(BusConfig {
            nats,
            node: Some(name),
            catch_up_ms: 300,
        });
    })
    .await
}

/// One fresh database, a NATS server and nodes "a" and "b" on both (the database guard and
/// the server must outlive the test's nodes).
async fn two_nodes(
    validate: bool,
) -> (
    cove_test_utils::postgres::PgDatabase<'static>,
    NatsServer,
    TestRelay,
    TestRelay,
) {
    let db = PgCluster::shared().database();
    let nats = NatsServer::start();
    let a = node(db.url(), &nats.url(), "a", validate).await;
    let b = node(db.url(), &nats.url(), "b", validate).await;
    (db, nats, a, b)
}

/// What a client has of each stream, applying the client's rule (see the module docs).
#[derive(Default)]
struct Applied {
    last: HashMap<Stream, Seq>,
    /// The group entries taken, in order: (group, seq, payload).
    taken: Vec<(GroupId, Seq, Vec<u8>)>,
    /// Re-sent entries dropped by the rule.
    resent: usize,
}

impl Applied {
    /// Applies one delivery; panics on a gap.
    fn apply(&mut self, delivery: Delivery) {
        let (stream, seq) = match &delivery {
            Delivery::Group(e) => (Stream::Group(e.group), e.seq),
            Delivery::Inbox(e) => (Stream::Inbox, e.seq),
        };
        match self.last.get(&stream) {
            Some(last) if seq <= *last => {
                self.resent += 1;
                return;
            }
            Some(last) => assert_eq!(seq.0, last.0 + 1, "a gap in {stream:?} after {last}"),
            None => {}
        }
        self.last.insert(stream, seq);
        if let Delivery::Group(e) = delivery {
            self.taken
                .push((e.group, e.seq, e.payload.as_bytes().to_vec()));
        }
    }

    /// Reads until `group`'s entry `until` was taken.
    async fn read_until(&mut self, client: &mut TestClient, group: GroupId, until: Seq) {
        while self
            .last
            .get(&Stream::Group(group))
            .is_none_or(|s| *s < until)
        {
            self.apply(client.next_delivery().await.unwrap());
        }
    }
}

/// The group's position for a client that joined at `joined` (its cursor starts there).
fn start_at(group: GroupId, joined: Seq) -> Applied {
    let mut applied = Applied::default();
    applied.last.insert(Stream::Group(group), joined);
    applied
}

/// An entry posted on node A reaches a device on node B exactly once: the Welcome, then
/// the entry, then a sentinel, with nothing else in between (not even a re-sent entry);
/// both nodes' `/metrics` count the notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_posted_on_a_reaches_a_device_on_b_exactly_once() {
    let (_db, _nats, a, b) = two_nodes(false).await;
    let (mut alice, _) = a.register("alice").await.unwrap();
    alice.backlog().await.unwrap();
    let (mut bob, bob_keys) = b.register("bob").await.unwrap();
    bob.backlog().await.unwrap();

    // The Welcome reaches Bob on B through the bus (group_with reads and acks it).
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let hello = alice
        .post_app(group, Epoch(1), b"hello from A")
        .await
        .unwrap();
    let sentinel = alice.post_app(group, Epoch(1), b"sentinel").await.unwrap();
    let got = bob.deliveries(2).await.unwrap();
    let got: Vec<(Seq, Vec<u8>)> = got
        .into_iter()
        .map(|d| match d {
            Delivery::Group(e) => (e.seq, e.payload.as_bytes().to_vec()),
            Delivery::Inbox(e) => panic!("inbox entry {} again", e.seq),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (hello, b"hello from A".to_vec()),
            (sentinel, b"sentinel".to_vec())
        ]
    );
    assert!(bob.take_buffered().is_empty());

    // A published a notice per entry and Welcome; B received them (the Welcome, the two
    // posts) and nothing was dropped or malformed.
    let on_a = scrape(&a).await;
    let on_b = scrape(&b).await;
    let notices = |m: &HashMap<String, f64>, what: &str| {
        sample(
            m,
            &format!("cove_relay_bus_notices_total{{what=\"{what}\"}}"),
        )
    };
    assert!(notices(&on_a, "published") >= 4.0, "{on_a:?}");
    assert!(notices(&on_b, "received") >= 3.0, "{on_b:?}");
    for m in [&on_a, &on_b] {
        assert_eq!(notices(m, "dropped"), 0.0);
        assert_eq!(notices(m, "malformed"), 0.0);
    }

    bob.close().await;
    alice.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Two posters on two nodes race on one group (40 posts each, interleaved by the store):
/// each of four devices, two per node, takes every seq from the group's join to the
/// closing sentinel in order, with no gap and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_posters_on_two_nodes_every_device_sees_every_seq_in_order() {
    const EACH: usize = 40;
    let (_db, _nats, a, b) = two_nodes(false).await;
    let mut clients = Vec::new();
    for (i, relay) in [&a, &b, &a, &b].into_iter().enumerate() {
        let (mut client, keys) = relay.register(&format!("user{i}")).await.unwrap();
        client.backlog().await.unwrap();
        clients.push((client, keys));
    }
    let (first, rest) = clients.split_first_mut().unwrap();
    let mut others: Vec<(&mut TestClient, &DeviceKeys)> =
        rest.iter_mut().map(|(c, k)| (c, &*k)).collect();
    let group = group_with(&mut first.0, &mut others).await;
    let joined = Seq(1);
    // The creator is sent its own commit (the others' cursors start after it).
    let commit = crate::read_group_entries(&mut first.0, group, 1).await;
    assert_eq!(commit[0].seq, joined);

    let (poster_a, rest) = clients.split_at_mut(1);
    let (poster_b, readers) = rest.split_at_mut(1);
    tokio::join!(
        post_all(&mut poster_a[0].0, group, "a", EACH),
        post_all(&mut poster_b[0].0, group, "b", EACH)
    );
    let sentinel = poster_a[0]
        .0
        .post_app(group, Epoch(1), b"sentinel")
        .await
        .unwrap();
    assert_eq!(sentinel.0, joined.0 + 2 * EACH as u64 + 1);

    let mut logs = Vec::new();
    for (client, _) in poster_a
        .iter_mut()
        .chain(poster_b.iter_mut())
        .chain(readers.iter_mut())
    {
        let mut applied = start_at(group, joined);
        applied.read_until(client, group, sentinel).await;
        let seqs: Vec<u64> = applied.taken.iter().map(|(_, s, _)| s.0).collect();
        assert_eq!(seqs, (joined.0 + 1..=sentinel.0).collect::<Vec<_>>());
        // A re-read after a gap starts after what the connection already has: nothing
        // is sent to it twice (these devices never ack, so a re-read from the ack cursor
        // would send every entry again).
        assert_eq!(applied.resent, 0, "entries sent twice to one connection");
        logs.push(applied.taken);
    }
    // Every device has the same entries (same seqs, same payloads).
    assert!(logs.windows(2).all(|w| w[0] == w[1]));
    for (client, _) in clients {
        client.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Posts `n` application messages `<tag><i>`, one after the other.
async fn post_all(client: &mut TestClient, group: GroupId, tag: &str, n: usize) {
    for i in 0..n {
        client
            .post_app(group, Epoch(1), format!("{tag}{i}").as_bytes())
            .await
            .unwrap();
    }
}

/// NATS is killed, Alice posts on A meanwhile, NATS comes back: Bob on B takes every
/// entry, in order without a gap (the catch-up after the reconnection re-reads his
/// backlog), then the sentinel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_posted_while_nats_is_down_arrive_once_it_is_back() {
    let (_db, mut nats, a, b) = two_nodes(false).await;
    let (mut alice, _) = a.register("alice").await.unwrap();
    alice.backlog().await.unwrap();
    let (mut bob, bob_keys) = b.register("bob").await.unwrap();
    bob.backlog().await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let first = alice.post_app(group, Epoch(1), b"before").await.unwrap();
    let mut applied = start_at(group, Seq(1));
    applied.read_until(&mut bob, group, first).await;

    nats.stop();
    let mut posted = Vec::new();
    for i in 0..5 {
        let payload = format!("while down {i}");
        posted.push(
            alice
                .post_app(group, Epoch(1), payload.as_bytes())
                .await
                .unwrap(),
        );
    }
    nats.start_again();
    let sentinel = alice.post_app(group, Epoch(1), b"sentinel").await.unwrap();
    applied.read_until(&mut bob, group, sentinel).await;
    let seqs: Vec<Seq> = applied.taken.iter().map(|(_, s, _)| *s).collect();
    let mut expected = vec![first];
    expected.extend(&posted);
    expected.push(sentinel);
    assert_eq!(seqs, expected);
    assert_eq!(applied.taken[3].2, b"while down 2".to_vec());

    bob.close().await;
    alice.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Both nodes start while NATS is down (each waits for it a bounded time, then starts);
/// once NATS is up, an entry posted on A reaches Bob on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_start_while_nats_is_down_and_join_once_it_is_up() {
    let db = PgCluster::shared().database();
    let mut nats = NatsServer::start();
    nats.stop();
    let a = node(db.url(), &nats.url(), "a", false).await;
    let b = node(db.url(), &nats.url(), "b", false).await;
    let (mut alice, _) = a.register("alice").await.unwrap();
    alice.backlog().await.unwrap();
    let (mut bob, bob_keys) = b.register("bob").await.unwrap();
    bob.backlog().await.unwrap();
    nats.start_again();
    // Bob's Welcome reaches him on B through the bus or, if it was posted before the nodes
    // connected, through the catch-up.
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let seq = alice.post_app(group, Epoch(1), b"after").await.unwrap();
    let mut applied = start_at(group, Seq(1));
    applied.read_until(&mut bob, group, seq).await;
    assert_eq!(applied.taken, vec![(group, seq, b"after".to_vec())]);

    bob.close().await;
    alice.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Alice deletes her account through her first device on A: her laptop, connected on B,
/// is closed with `UnknownDevice` (the close reaches B through the bus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_account_on_a_closes_its_devices_on_b() {
    let (_db, _nats, a, b) = two_nodes(false).await;
    let (mut alice, alice_keys) = a.register("alice").await.unwrap();
    alice.backlog().await.unwrap();
    let mut laptop_keys = DeviceKeys::generate("alice");
    crate::device_lists::publish_signed_list(&mut alice, &alice_keys, &[laptop_keys.public_key()])
        .await;
    let mut laptop = b.connect().await.unwrap();
    laptop
        .register_device(&mut laptop_keys, &alice_keys)
        .await
        .unwrap();
    laptop.backlog().await.unwrap();
    register_account(&mut alice, "alice", b"pw").await;
    let (_, answer) = login(&mut alice, "alice", b"pw").await;
    assert!(
        matches!(answer, Ok(Reply::AccountLoggedIn { .. })),
        "{answer:?}"
    );
    assert_eq!(
        alice.request(Request::AccountDelete).await.unwrap(),
        Ok(Reply::AccountDeleted)
    );
    let (_, code) = laptop.read_until_closed().await;
    assert_eq!(code, Some(ErrorCode::UnknownDevice));
    a.shutdown().await;
    b.shutdown().await;
}

/// Bob connected on A connects again on B: A closes his first connection with
/// `Closing { Displaced }`, and his connection on B goes on receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connecting_on_b_displaces_its_connection_on_a() {
    let (_db, _nats, a, b) = two_nodes(false).await;
    let (mut alice, _) = a.register("alice").await.unwrap();
    alice.backlog().await.unwrap();
    let (mut bob_on_a, bob_keys) = a.register("bob").await.unwrap();
    bob_on_a.backlog().await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob_on_a, &bob_keys)]).await;

    let mut bob_on_b = b.login(&bob_keys).await.unwrap();
    bob_on_b.backlog().await.unwrap();
    let (_, code) = bob_on_a.read_until_closed().await;
    assert_eq!(code, Some(ErrorCode::Displaced));

    let seq = alice.post_app(group, Epoch(1), b"to B").await.unwrap();
    match bob_on_b.next_delivery().await.unwrap() {
        Delivery::Group(e) => assert_eq!((e.seq, e.payload.as_bytes()), (seq, &b"to B"[..])),
        Delivery::Inbox(e) => panic!("inbox entry {}", e.seq),
    }

    bob_on_b.close().await;
    alice.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A hostile publisher on the bus sends, on the group's subject: random bytes, a notice
/// of another version, a truncated notice, and a well-formed notice naming Bob whose frame
/// is not the entry it announces (B then reads the store instead, which has nothing new
/// for him). None of it reaches Bob, and the nodes keep working: the next real entry is
/// the first thing Bob receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_notices_on_the_bus_are_ignored() {
    let (_db, nats, a, b) = two_nodes(false).await;
    let (mut alice, _) = a.register("alice").await.unwrap();
    alice.backlog().await.unwrap();
    let (mut bob, bob_keys) = b.register("bob").await.unwrap();
    bob.backlog().await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let first = alice.post_app(group, Epoch(1), b"first").await.unwrap();
    let mut applied = start_at(group, Seq(1));
    applied.read_until(&mut bob, group, first).await;
    // Acked: nothing is re-sent if a notice makes B re-read Bob's backlog.
    bob.ack(Stream::Group(group), first).await.unwrap();

    let hostile = async_nats::connect(nats.url()).await.unwrap();
    let subject = format!(
        "cove.g.{}",
        group
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    // A well-formed version-1 entry notice for Bob's next seq, from node "evil", whose
    // frame is garbage rather than the entry's Deliver frame.
    let mut forged = vec![1u8, 1, 4];
    forged.extend_from_slice(b"evil");
    forged.extend_from_slice(&group.0);
    forged.extend_from_slice(&(first.0 + 1).to_be_bytes());
    forged.extend_from_slice(&1u32.to_be_bytes());
    forged.extend_from_slice(&bob_keys.id().0.to_be_bytes());
    forged.push(1);
    forged.extend_from_slice(&3u32.to_be_bytes());
    forged.extend_from_slice(b"bad");
    let mut truncated = forged.clone();
    truncated.truncate(20);
    let mut other_version = forged.clone();
    other_version[0] = 9;
    for payload in [vec![0xff; 64], other_version, truncated, forged] {
        hostile
            .publish(subject.clone(), payload.into())
            .await
            .unwrap();
    }
    // Once flushed, NATS has routed them to B before anything A publishes next.
    hostile.flush().await.unwrap();

    let next = alice.post_app(group, Epoch(1), b"real").await.unwrap();
    assert_eq!(next.0, first.0 + 1);
    match bob.next_delivery().await.unwrap() {
        Delivery::Group(e) => assert_eq!((e.seq, e.payload.as_bytes()), (next, &b"real"[..])),
        Delivery::Inbox(e) => panic!("inbox entry {}", e.seq),
    }

    bob.close().await;
    alice.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// With handshake validation on: Alice (on A) makes a group and adds Bob (on B); Bob
/// commits the next epoch through B; Alice processes it and commits the epoch after through
/// A, whose cached public state is one epoch behind: A rebuilds it from the store and
/// accepts the commit, and Bob on B processes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_through_a_then_the_next_through_b_then_a_are_accepted() {
    let (_db, _nats, a, b) = two_nodes(true).await;
    let mut alice = Member::new(a.connect().await.unwrap(), "alice").await;
    let mut bob = Member::new(b.connect().await.unwrap(), "bob").await;
    let group = alice.create().await;
    let add = alice.add(&[bob.key_package()]);
    alice
        .post(group, &add, &[bob.keys.id()], &[])
        .await
        .unwrap();
    alice.merge();
    bob.join().await;

    let update = bob.update();
    let by_b = bob.post(group, &update, &[], &[]).await.unwrap();
    bob.merge();
    assert_eq!(alice.apply_next_commit(group).await, by_b);

    let update = alice.update();
    let by_a = alice.post(group, &update, &[], &[]).await.unwrap();
    alice.merge();
    assert_eq!(bob.apply_next_commit(group).await, by_a);

    a.shutdown().await;
    b.shutdown().await;
}
