//! `cove sync` cost against the length of the history: the real `cove` binary, run as a
//! user runs it, against an in-process relay over loopback TLS (SQLite everywhere), with 10
//! new messages waiting each time. Two homes are measured in the same run: one whose
//! history holds 100 messages and one whose history holds 100,000. The goal (issue 8) is a
//! ratio of at most 1.5: a sync pays for what is new, not for what was shown before.
//!
//! Run: `cargo bench -p cove --bench sync` (COVE_BENCH_ROUNDS=N, COVE_BENCH_HISTORY=N).
//!
//! How the history is made: one real message is sent through MLS and the relay and stored by
//! bob's client; the rest of the history is copies of that stored row (new message ids and
//! log positions) written into bob's `cove.db` while his client is closed, and marked shown.
//! The rows are byte-for-byte what the client stores for a received message, so reading
//! them costs what reading a real history costs; sending 100,000 messages through MLS would
//! only make the set-up slow.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cove::config::Home;
use cove::{Device, Event, SessionEvent, UserName};
use cove_server::{Relay, RelayConfig, StoreKind};
use cove_store::{Kv, Store};
use cove_wire::Stream;
use rand::RngCore;

const NEW_PER_ROUND: usize = 10;

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = env("COVE_BENCH_ROUNDS", 15);
    let long = env("COVE_BENCH_HISTORY", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(rounds, long));
}

async fn run(rounds: usize, long: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = StoreKind::Sqlite;
    let relay = Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_owned();

    let short = 100;
    let mut a = Setup::new(dir.path(), "a", &server, &ca, short).await;
    let mut b = Setup::new(dir.path(), "b", &server, &ca, long).await;

    // Interleaved rounds, so a change in machine load hits both sides alike.
    let (mut short_ms, mut long_ms) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        let s = a.round().await;
        let l = b.round().await;
        if round > 0 {
            // The first round warms the page cache and the binary.
            short_ms.push(s);
            long_ms.push(l);
        }
    }
    let (s, l) = (median(&mut short_ms), median(&mut long_ms));
    println!(
        "cove sync (the binary: open, connect, authenticate, receive {NEW_PER_ROUND} new messages, print, close), median of {rounds} rounds"
    );
    println!("  history {short:>7}: {s:8.1} ms");
    println!("  history {long:>7}: {l:8.1} ms");
    println!(
        "  ratio long/short: {:.2} (goal <= 1.5)",
        l / s.max(f64::MIN_POSITIVE)
    );
    a.close().await;
    b.close().await;
    relay.shutdown().await;
}

/// One pair of users: alice sends, bob's home holds a history of a given length.
struct Setup {
    alice: Device,
    bob_home: Home,
    group: String,
}

impl Setup {
    async fn new(dir: &Path, tag: &str, server: &str, ca: &Path, history: usize) -> Setup {
        let alice_name = format!("alice{tag}");
        let bob_name = format!("bob{tag}");
        let alice = Device::init(
            &Home::new(dir.join(&alice_name)),
            server,
            UserName::new(&alice_name).unwrap(),
            Some(ca),
        )
        .await
        .unwrap();
        let bob_home = Home::new(dir.join(&bob_name));
        let mut bob = Device::init(
            &bob_home,
            server,
            UserName::new(&bob_name).unwrap(),
            Some(ca),
        )
        .await
        .unwrap();
        let archive = format!("archive-{tag}");
        let group = format!("chat-{tag}");
        let bob_user = [UserName::new(&bob_name).unwrap()];
        for g in [&archive, &group] {
            alice.create_group(g).await.unwrap();
            alice.add_users(g, &bob_user).await.unwrap();
            wait(&mut bob, |e| matches!(e, Event::Joined { .. })).await;
        }
        alice.send_text(&archive, &"h".repeat(100)).await.unwrap();
        let first = bob.next_message().await.unwrap();
        bob.close().await; // marks `first` shown
        write_history(&bob_home, &first.group_id, history);
        Setup {
            alice,
            bob_home,
            group,
        }
    }

    /// alice sends 10 messages; bob runs `cove sync`, which must print exactly those.
    async fn round(&mut self) -> f64 {
        for i in 0..NEW_PER_ROUND {
            self.alice
                .send_text(&self.group, &format!("new {i}"))
                .await
                .unwrap();
        }
        let home = self.bob_home.dir().to_owned();
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_cove"))
                .arg("sync")
                .env("COVE_HOME", home)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "cove sync: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(lines, NEW_PER_ROUND, "cove sync printed {lines} messages");
        took.as_secs_f64() * 1000.0
    }

    async fn close(self) {
        self.alice.close().await;
    }
}

/// Copies the one stored message of `group` in the closed home until the group's history
/// holds `total` messages, all marked shown.
fn write_history(home: &Home, group_hex: &str, total: usize) {
    let store = home.open_database().unwrap();
    let record = store
        .groups()
        .unwrap()
        .into_iter()
        .find(|g| g.id.to_hex() == group_hex)
        .expect("the archive group");
    let real = store.messages(&record.id).unwrap();
    assert_eq!(real.len(), 1, "one real message in the archive");
    let template = real[0].clone();
    let cursor = store.cursor(&Stream::Group(record.id)).unwrap();
    assert!(cursor.0 >= template.seq.0);
    store.begin().unwrap();
    let mut last = template.seq;
    for i in 1..total {
        let mut m = template.clone();
        m.seq = cove_wire::Seq(template.seq.0 + i as u64);
        rand::thread_rng().fill_bytes(&mut m.message_id);
        store.put_message(&m).unwrap();
        last = m.seq;
    }
    // What `cove sync` records once it has printed a group up to a position.
    store
        .set_config(&format!("cli.printed.{group_hex}"), &last.0.to_string())
        .unwrap();
    store.commit().unwrap();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn wait(device: &mut Device, done: impl Fn(&Event) -> bool) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), device.next_event())
            .await
            .expect("timed out")
            .expect("session stopped");
        if let SessionEvent::Core(e) = event
            && done(&e)
        {
            return;
        }
    }
}
