//! Relays that scale out (issue 15), end to end: real `cove-server` processes on one
//! PostgreSQL database and one NATS server, blobs in S3 (`s3s-fs`), behind a TCP load
//! balancer (`cove_test_utils::cluster`), with real `cove` devices connected through the
//! balancer or pinned to given nodes.
//!
//! The nodes run the built `cove-server` binary: after changing the relay, run
//! `cargo build -p cove-server` before `cargo test -p cove-e2e --test e2e cluster`.

use std::path::{Path, PathBuf};

use cove::Device;
use cove::config::Home;
use cove_core::cove_wire::{EntryKind, GroupEntry, Reply, Request, Seq};
use cove_test_utils::cluster::{BUCKET, Cluster, ClusterOptions};
use cove_test_utils::{
    DeviceKeys, TestClient, blob_signature_headers, connect_tls, read_response_head, ws_url,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Homes of the test's users, and the cluster's certificate they trust.
struct Users {
    dir: tempfile::TempDir,
    ca: PathBuf,
}

impl Users {
    fn of(cluster: &Cluster) -> Users {
        Users {
            dir: tempfile::tempdir().unwrap(),
            ca: cluster.cert_path().to_owned(),
        }
    }

    fn home(&self, name: &str) -> Home {
        Home::new(self.dir.path().join(name))
    }

    /// Registers `name` against `server` (the balancer's URL or a node's).
    async fn user(&self, name: &str, server: &str) -> Device {
        register(&self.home(name), server, name, &self.ca).await
    }
}

/// The harness itself, with PostgreSQL only (no bus, no S3): the balancer hands new
/// connections to the nodes in turn, a user registered through one node authenticates
/// through another (one store), a killed node is skipped, and a restarted node is back on
/// its address and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_spreads_connections_skips_a_killed_node_and_uses_it_again_after_restart() {
    let mut cluster = Cluster::start_with(
        2,
        ClusterOptions {
            bus: false,
            s3: false,
            turn: false,
            ..ClusterOptions::default()
        },
    );
    let tls = cluster.tls();
    let mut keys = DeviceKeys::generate("alice");
    let mut first = TestClient::connect(&ws_url(cluster.balancer_addr()), tls.clone())
        .await
        .unwrap();
    first.register(&mut keys).await.unwrap();
    first.close().await;
    let mut second = TestClient::connect(&ws_url(cluster.balancer_addr()), tls.clone())
        .await
        .unwrap();
    second.authenticate(&keys).await.unwrap();
    assert_eq!(
        cluster.balanced(),
        vec![1, 1],
        "one connection to each node"
    );
    second.close().await;

    cluster.kill9(0);
    for _ in 0..2 {
        let mut c = TestClient::connect(&ws_url(cluster.balancer_addr()), tls.clone())
            .await
            .unwrap();
        c.authenticate(&keys).await.unwrap();
        c.close().await;
    }
    assert_eq!(
        cluster.balanced(),
        vec![1, 3],
        "the killed node was skipped"
    );

    cluster.restart(0);
    let mut on_first = TestClient::connect(&ws_url(cluster.node_addr(0)), tls.clone())
        .await
        .unwrap();
    on_first.authenticate(&keys).await.unwrap();
    on_first.close().await;
    let mut c = TestClient::connect(&ws_url(cluster.balancer_addr()), tls)
        .await
        .unwrap();
    c.authenticate(&keys).await.unwrap();
    c.close().await;
    assert_eq!(
        cluster.balanced(),
        vec![2, 3],
        "the restarted node is used again"
    );
}

/// Closes `device` and opens its home again: a reconnection, which reads the backlog from
/// the store (how a node without the bus learns what other nodes took).
async fn reopen(device: Device) -> Device {
    let home = device.home().clone();
    device.close().await;
    Device::open(&home).await.unwrap()
}

/// alice (on node 1) and bob (on node 2) rotate their keys at the same moment, each commit
/// built for the same epoch: the database takes exactly one commit at that epoch, the other
/// is refused as stale through its node and rebuilt for the next epoch (the log holds one
/// commit per epoch, one from each of them), and every member ends in the same epoch with
/// equal epoch authenticators and the same members. Repeated until the two commits collided
/// (at most five times). With `live` the nodes deliver each other's entries (the bus);
/// without, members reconnect to read them (before each attempt and at the end).
async fn epoch_race_across_two_nodes(cluster: &Cluster, live: bool) {
    let users = Users::of(cluster);
    let mut alice = users.user("alice", &cluster.node_url(0)).await;
    let mut bob = users.user("bob", &cluster.node_url(1)).await;
    let mut carol = users.user("carol", &cluster.node_url(1)).await;
    alice.create_group("g").await.unwrap();
    alice
        .add_users("g", &names(&["bob", "carol"]))
        .await
        .unwrap();
    if !live {
        bob = reopen(bob).await;
        carol = reopen(carol).await;
    }
    joined(&mut bob).await;
    joined(&mut carol).await;
    carol.settle().await.unwrap();
    let group = group_id(&alice, "g").await;
    let devices = [alice.device_id().unwrap(), bob.device_id().unwrap()];
    // carol reads the log with probes from her home opened offline: no session of hers
    // competes with (and displaces) the probe's connection.
    let carol_home = carol.home().clone();
    carol.close().await;
    let prober = Device::open_offline(&carol_home).await.unwrap();

    /// Starts a key update and returns the epoch its commit was built for.
    async fn update(device: &Device, group: cove::GroupId) -> u64 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        device
            .session()
            .op(WAIT, move |c| {
                assert!(
                    c.is_ready() && !c.has_pending_ops(),
                    "the commit would not be built at once (ready {}, pending ops {})",
                    c.is_ready(),
                    c.has_pending_ops()
                );
                let _ = tx.send(c.epoch(&group).unwrap());
                c.update_keys(cove::session::now_ms(), "g")
            })
            .await
            .unwrap()
            .unwrap();
        rx.await.unwrap()
    }
    async fn log_after(prober: &Device, group: cove::GroupId, after: Seq) -> Vec<GroupEntry> {
        match prober
            .probe(Request::Fetch {
                group,
                after,
                limit: 500,
            })
            .await
            .unwrap()
            .unwrap()
        {
            Reply::Entries { entries } => entries.0,
            other => panic!("unexpected {other:?}"),
        }
    }

    let mut raced = false;
    for _attempt in 0..5 {
        let after = log_after(&prober, group, Seq(0))
            .await
            .last()
            .map_or(Seq(0), |e| e.seq);
        if !live {
            alice = reopen(alice).await;
            bob = reopen(bob).await;
        }
        for d in [&mut alice, &mut bob] {
            d.settle().await.unwrap();
        }
        let (built_a, built_b) = tokio::join!(update(&alice, group), update(&bob, group));
        let entries = log_after(&prober, group, after).await;
        let commits: Vec<_> = entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Commit { .. }))
            .map(|e| (e.sender, e.epoch.0))
            .collect();
        assert_eq!(commits.len(), 2, "one accepted commit each: {commits:?}");
        let mut senders: Vec<_> = commits.iter().map(|c| c.0).collect();
        senders.sort();
        let mut expected = devices.to_vec();
        expected.sort();
        assert_eq!(senders, expected);
        let start = built_a.min(built_b);
        assert_eq!(
            commits.iter().map(|c| c.1).collect::<Vec<_>>(),
            [start, start + 1],
            "one commit per epoch"
        );
        if built_a == built_b {
            // Both built for `start` on different nodes, yet one sits at `start + 1`.
            raced = true;
            break;
        }
    }
    assert!(raced, "the two commits never collided in five attempts");

    prober.close().await;
    let carol = Device::open(&carol_home).await.unwrap();
    if !live {
        alice = reopen(alice).await;
        bob = reopen(bob).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut states = Vec::new();
        for d in [&alice, &bob, &carol] {
            d.session().settled(WAIT).await.unwrap();
            states.push(d.epoch_state(group).await.unwrap().unwrap());
        }
        if states.iter().all(|s| s == &states[0]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "members differ: {:?}",
            states.iter().map(|s| s.0).collect::<Vec<_>>()
        );
        // Poll interval only: the condition above decides.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for d in [&alice, &bob, &carol] {
        let info = d.groups().await.unwrap();
        assert_eq!(info[0].members, ["alice", "bob", "carol"]);
    }
    for d in [alice, bob, carol] {
        d.close().await;
    }
}

/// [`epoch_race_across_two_nodes`] on two nodes sharing only PostgreSQL (no bus): the
/// database alone decides which commit wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_race_on_one_epoch_exactly_one_commit_wins_and_members_converge()
{
    let cluster = Cluster::start_with(
        2,
        ClusterOptions {
            bus: false,
            s3: false,
            ..ClusterOptions::default()
        },
    );
    epoch_race_across_two_nodes(&cluster, false).await;
}

/// One HTTPS request to `addr` (the request head without `host` and `connection`, and a
/// body); returns the response head (lower case) and body.
async fn https(
    cluster: &Cluster,
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> (String, Vec<u8>) {
    let mut tls = connect_tls(addr, cluster.tls()).await.unwrap();
    let request = format!("{head}host: {addr}\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.flush().await.unwrap();
    let head = read_response_head(&mut tls)
        .await
        .unwrap()
        .to_ascii_lowercase();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut rest))
        .await
        .expect("the response body")
        .unwrap();
    (head, rest)
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.strip_prefix(&format!("{name}: "))
            .map(|v| v.trim().to_owned())
    })
}

/// A resumable upload across nodes: created and partly written through node 1, its
/// offset read and the rest written through node 2, then downloaded through node 3 (whole
/// and as a range) with exactly the bytes written, and node 1 reports it complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_started_on_one_node_resumes_on_a_second_and_downloads_from_a_third() {
    // Blobs in S3; no bus: nothing here is delivered.
    let cluster = Cluster::start_with(
        3,
        ClusterOptions {
            bus: false,
            ..ClusterOptions::default()
        },
    );
    let (one, two, three) = (
        cluster.node_addr(0),
        cluster.node_addr(1),
        cluster.node_addr(2),
    );
    let mut keys = DeviceKeys::generate("alice");
    let mut client = TestClient::connect(&ws_url(one), cluster.tls())
        .await
        .unwrap();
    client.register(&mut keys).await.unwrap();

    // Stands for ciphertext: the relay stores bytes as they come. More than one S3 part.
    let data: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    let total = data.len() as u64;
    let (head, _) = https(
        &cluster,
        one,
        &format!(
            "POST /v1/blobs HTTP/1.1\r\nupload-length: {total}\r\ncontent-length: 0\r\n{}",
            blob_signature_headers(&keys, "POST", "/v1/blobs", total)
        ),
        &[],
    )
    .await;
    assert!(head.starts_with("http/1.1 201"), "{head}");
    let path = header(&head, "location").expect("a location");

    // The first part through node 1.
    let part = 7usize << 20;
    let (head, _) = https(
        &cluster,
        one,
        &format!(
            "PATCH {path} HTTP/1.1\r\nupload-offset: 0\r\ncontent-length: {part}\r\n{}",
            blob_signature_headers(&keys, "PATCH", &path, 0)
        ),
        &data[..part],
    )
    .await;
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert_eq!(header(&head, "upload-offset"), Some(part.to_string()));

    // Node 2 knows where it stopped, and takes the rest.
    let (head, _) = https(
        &cluster,
        two,
        &format!(
            "HEAD {path} HTTP/1.1\r\n{}",
            blob_signature_headers(&keys, "HEAD", &path, 0)
        ),
        &[],
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(header(&head, "upload-offset"), Some(part.to_string()));
    assert_eq!(header(&head, "upload-length"), Some(total.to_string()));
    let rest = data.len() - part;
    let (head, _) = https(
        &cluster,
        two,
        &format!(
            "PATCH {path} HTTP/1.1\r\nupload-offset: {part}\r\ncontent-length: {rest}\r\n{}",
            blob_signature_headers(&keys, "PATCH", &path, part as u64)
        ),
        &data[part..],
    )
    .await;
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert_eq!(header(&head, "upload-offset"), Some(total.to_string()));

    // Node 3 serves it, whole and in part.
    let (head, body) = https(&cluster, three, &format!("GET {path} HTTP/1.1\r\n"), &[]).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        body == data,
        "node 3 served other bytes ({} bytes)",
        body.len()
    );
    let (from, to) = (part - 10, part + 9);
    let (head, body) = https(
        &cluster,
        three,
        &format!("GET {path} HTTP/1.1\r\nrange: bytes={from}-{to}\r\n"),
        &[],
    )
    .await;
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(body, &data[from..=to]);
    // And node 1, where it started, sees it complete.
    let (head, _) = https(
        &cluster,
        one,
        &format!(
            "HEAD {path} HTTP/1.1\r\n{}",
            blob_signature_headers(&keys, "HEAD", &path, 0)
        ),
        &[],
    )
    .await;
    assert_eq!(header(&head, "upload-offset"), Some(total.to_string()));
    client.close().await;
}

/// The cluster without S3 (blobs stay in each node's data directory): for the tests that
/// move no file.
fn without_s3(n: usize) -> Cluster {
    Cluster::start_with(
        n,
        ClusterOptions {
            s3: false,
            ..ClusterOptions::default()
        },
    )
}

/// Three users on three nodes (one each, pinned) in one group: every message sent on any
/// node reaches the members on the two others, each exactly once (nothing but the sentinel
/// follows), others' messages in log order, and the stored histories (in log order) agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_three_nodes_chat_in_a_group_each_message_once_in_log_order() {
    let cluster = without_s3(3);
    let users = Users::of(&cluster);
    let mut alice = users.user("alice", &cluster.node_url(0)).await;
    let mut bob = users.user("bob", &cluster.node_url(1)).await;
    let mut carol = users.user("carol", &cluster.node_url(2)).await;
    alice.create_group("trio").await.unwrap();
    alice
        .add_users("trio", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;

    const PER_USER: usize = 5;
    async fn send(d: &Device, who: &str) {
        for i in 0..PER_USER {
            d.send_text("trio", &format!("{who} #{i}")).await.unwrap();
        }
    }
    tokio::join!(
        send(&alice, "alice"),
        send(&bob, "bob"),
        send(&carol, "carol")
    );
    // Sent after every other send completed: last in the log.
    carol.send_text("trio", SENTINEL).await.unwrap();

    let mut seen = Vec::new();
    for device in [&mut alice, &mut bob, &mut carol] {
        let got = before_sentinel(device).await;
        let who = device.user().to_string();
        assert_eq!(got.len(), 3 * PER_USER, "{who} saw {:?}", texts(&got));
        assert_unique(&who, &got);
        for sender in ["alice", "bob", "carol"] {
            let mine: Vec<String> = got
                .iter()
                .filter(|m| m.from.as_str() == sender)
                .map(|m| m.text.clone())
                .collect();
            let expected: Vec<String> = (0..PER_USER).map(|i| format!("{sender} #{i}")).collect();
            assert_eq!(mine, expected, "{who}'s view of {sender}'s messages");
        }
        // What the others sent arrives in log order. (A device's own message shows when its
        // node acknowledged it, which may be before an earlier entry from another node
        // reached it.)
        let others: Vec<Seq> = got
            .iter()
            .filter(|m| m.from.as_str() != who)
            .map(|m| m.seq)
            .collect();
        assert!(
            others.is_sorted(),
            "{who} got others' messages out of order: {others:?}"
        );
        let mut all: Vec<_> = got.iter().map(|m| (m.seq, m.id)).collect();
        all.sort();
        seen.push(all);
    }
    assert_eq!(seen[0], seen[1], "alice and bob disagree on the log");
    assert_eq!(seen[0], seen[2], "alice and carol disagree on the log");
    let history = alice.history("trio").await.unwrap();
    assert_eq!(history.len(), 3 * PER_USER + 1);
    assert_eq!(history, bob.history("trio").await.unwrap());
    assert_eq!(history, carol.history("trio").await.unwrap());
    for d in [alice, bob, carol] {
        d.close().await;
    }
}

/// [`epoch_race_across_two_nodes`] with the bus: the loser's rebuilt commit and every
/// other entry reach the members on the other node live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_the_bus_race_on_one_epoch_exactly_one_commit_wins_and_members_converge() {
    epoch_race_across_two_nodes(&without_s3(2), true).await;
}

/// The node of the connection `connect` opens through the balancer: the one node whose
/// count of open balanced connections went up (waiting, up to [`WAIT`], until exactly one
/// did and the others are back where they were).
async fn node_of<T>(
    cluster: &Cluster,
    connect: impl std::future::Future<Output = T>,
) -> (usize, T) {
    let before = cluster.open_through_balancer();
    let out = connect.await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = cluster.open_through_balancer();
        let up: Vec<usize> = (0..now.len()).filter(|&i| now[i] > before[i]).collect();
        let settled = (0..now.len()).all(|i| up.contains(&i) || now[i] == before[i]);
        if let ([i], true) = (up.as_slice(), settled)
            && now[*i] == before[*i] + 1
        {
            return (*i, out);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no single node took the connection: {before:?} -> {now:?}"
        );
        // Poll interval only: the condition above decides.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// alice and bob use the balancer's one address. While alice sends, her node is killed
/// with `kill -9`: her session reconnects through the balancer to a live node and her
/// sends complete; bob gets every message exactly once, in order (nothing but the sentinel
/// follows), and so does the stored history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_while_its_user_sends_loses_and_duplicates_nothing() {
    let mut cluster = without_s3(3);
    let users = Users::of(&cluster);
    let url = cluster.url();
    let mut bob = users.user("bob", &url).await;
    bob.settle().await.unwrap();
    let (alice_node, alice) = node_of(&cluster, async {
        let mut alice = users.user("alice", &url).await;
        alice.settle().await.unwrap();
        alice
    })
    .await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;

    const TOTAL: usize = 30;
    let sent: Vec<String> = (0..TOTAL)
        .map(|i| format!("through the crash {i}"))
        .collect();
    let to_send = sent.clone();
    let sending = tokio::spawn(async move {
        for text in &to_send {
            alice.send_text("g", text).await.unwrap();
        }
        alice
    });
    // Kill alice's node once bob has some of her messages: the rest are in flight or unsent.
    let early = messages(&mut bob, 5).await;
    let balanced_before = cluster.balanced();
    cluster.kill9(alice_node);
    let alice = tokio::time::timeout(WAIT, sending)
        .await
        .expect("alice's sends completed after her node died")
        .unwrap();
    assert_eq!(cluster.pid(alice_node), None, "her node is still down");
    assert_eq!(cluster.open_through_balancer()[alice_node], 0);
    let balanced_after = cluster.balanced();
    assert_eq!(balanced_after[alice_node], balanced_before[alice_node]);
    assert!(
        balanced_after.iter().sum::<usize>() > balanced_before.iter().sum::<usize>(),
        "nobody reconnected through the balancer: {balanced_before:?} -> {balanced_after:?}"
    );
    alice.send_text("g", SENTINEL).await.unwrap();

    let mut got = early;
    got.extend(before_sentinel(&mut bob).await);
    assert_unique("bob", &got);
    assert_eq!(texts(&got), sent, "bob across the crash");
    let history: Vec<String> = bob
        .history("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .filter(|t| t != SENTINEL)
        .collect();
    assert_eq!(history, sent);
    alice.close().await;
    bob.close().await;
}

/// alice on node 1 sends to bob on node 2 before, while and after NATS is down (killed,
/// then started again on its port): bob gets every message exactly once, in order
/// (nothing but the sentinel follows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_test_delivery_resumes_nothing_lost_nothing_twice() {
    let mut cluster = without_s3(2);
    let users = Users::of(&cluster);
    let alice = users.user("alice", &cluster.node_url(0)).await;
    let mut bob = users.user("bob", &cluster.node_url(1)).await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;

    let batch = |name: &str| (0..5).map(|i| format!("{name} {i}")).collect::<Vec<_>>();
    let (before, during, after) = (batch("before"), batch("during"), batch("after"));
    for text in &before {
        alice.send_text("g", text).await.unwrap();
    }
    assert_eq!(texts(&messages(&mut bob, 5).await), before);

    cluster.nats_mut().stop();
    for text in &during {
        alice.send_text("g", text).await.unwrap();
    }
    cluster.nats_mut().start_again();
    for text in &after {
        alice.send_text("g", text).await.unwrap();
    }
    alice.send_text("g", SENTINEL).await.unwrap();

    let got = before_sentinel(&mut bob).await;
    assert_unique("bob", &got);
    let expected: Vec<String> = during.iter().chain(&after).cloned().collect();
    assert_eq!(texts(&got), expected, "bob across the NATS restart");
    alice.close().await;
    bob.close().await;
}

/// Every file under `dir`, concatenated.
fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for f in files_under(dir) {
        out.extend(std::fs::read(f).unwrap_or_default());
    }
    out
}

/// A file shared across nodes: alice on node 1 uploads an attachment (to S3) and sends it
/// to the group; bob on node 2 downloads it through his node and gets the same bytes. Then
/// the relay's data (a `pg_dump` of the database and the S3 directory) holds neither the
/// file's nor any message's plaintext, while the scan finds what is there in the clear
/// (user names) and the blob's ciphertext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_through_one_node_downloads_through_another_and_the_relay_holds_no_plaintext()
 {
    let cluster = Cluster::start(3);
    let users = Users::of(&cluster);
    let alice = users.user("alice", &cluster.node_url(0)).await;
    let mut bob = users.user("bob", &cluster.node_url(1)).await;
    let mut carol = users.user("carol", &cluster.node_url(2)).await;
    alice.create_group("g").await.unwrap();
    alice
        .add_users("g", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;

    let secret_text = "the plaintext no relay may hold 4f1d";
    alice.send_text("g", secret_text).await.unwrap();
    let marker = b"FILE PLAINTEXT MARKER 93be ";
    let content: Vec<u8> = marker.iter().copied().cycle().take(3 << 20).collect();
    let path = users.dir.path().join("report.bin");
    std::fs::write(&path, &content).unwrap();
    let pointer = cove::transfer::send_file(&alice, "g", &path, false)
        .await
        .unwrap();
    until(
        &mut bob,
        "the file message",
        |e| matches!(e, cove::Event::Message(m) if m.attachment.is_some()),
    )
    .await;
    let out = users.dir.path().join("bob-report.bin");
    cove::transfer::download(&bob, "g", &pointer.blob_id.to_hex(), &out, false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content, "bob's download");
    // carol reads the text on the third node.
    until(
        &mut carol,
        "the text",
        |e| matches!(e, cove::Event::Message(m) if m.text == secret_text),
    )
    .await;

    // The relay's data: the whole database, and every object in S3.
    let dump = pg_dump(cluster.database_url());
    let objects = bytes_under(&cluster.s3_dir().join(BUCKET));
    assert!(contains(&dump, b"alice"), "scan sanity check: the dump");
    assert!(
        objects.len() as u64 >= pointer.size,
        "scan sanity check: the blob is in S3 ({} bytes there)",
        objects.len()
    );
    for (what, haystack) in [("the database", &dump), ("S3", &objects)] {
        assert!(
            !contains(haystack, secret_text.as_bytes()),
            "{what} holds the message"
        );
        assert!(!contains(haystack, marker), "{what} holds the file");
    }
    for d in [alice, bob, carol] {
        d.close().await;
    }
}

/// The output of `pg_dump` of the database at `url` (data and schema, as SQL text).
fn pg_dump(url: &str) -> Vec<u8> {
    let bin = cove_test_utils::postgres::require_pg_bin(cove_test_utils::postgres::pg_bin());
    let out = std::process::Command::new(bin.join("pg_dump"))
        .arg("--dbname")
        .arg(url)
        .output()
        .expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// alice on node 1 calls bob on node 2, both forced to relayed candidates: each takes
/// TURN credentials from its own node (the nodes share the TURN secret), the call
/// signalling crosses the nodes inside MLS, and bob records alice's 440 Hz tone (150 frames,
/// 3 s) with at least 95% of her frames decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_nodes_call_each_other_through_turn() {
    use crate::calls::{assert_tone_received, call_and_answer, options, recorded_frames};
    let cluster = without_s3(2);
    let users = Users::of(&cluster);
    let alice = users.user("alice", &cluster.node_url(0)).await;
    let mut bob = users.user("bob", &cluster.node_url(1)).await;
    alice.create_group("talk").await.unwrap();
    alice.add_users("talk", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;

    let record = users.dir.path().join("bob-rec");
    let relay_only = |o: cove::call::CallOptions| cove::call::CallOptions {
        relay_only: true,
        ..o
    };
    let (placed, answered, alice, bob) = call_and_answer(
        alice,
        bob,
        relay_only(options(440.0, None)),
        relay_only(options(660.0, Some(&record))),
        || recorded_frames(&record.join("audio-alice.wav")) >= 150,
    )
    .await;
    assert_eq!(placed.peers, vec!["bob".to_string()]);
    assert_eq!(answered.peers, vec!["alice".to_string()]);
    assert!(placed.used_turn && answered.used_turn);
    assert_tone_received(&placed, &answered, &record);
    alice.close().await;
    bob.close().await;
}
