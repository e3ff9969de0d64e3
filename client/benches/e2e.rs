//! End-to-end latency: `send_text` on alice's device until the message is delivered
//! (decrypted and stored) on bob's device, through an in-process relay over loopback TLS
//! with the SQLite stores on both sides (relay and clients), as shipped.
//!
//! Run: `cargo bench -p cove --bench e2e` (COVE_BENCH_MESSAGES=N to change the count).
//! One message in flight at a time, so this is latency, not throughput.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use cove::config::Home;
use cove::{Device, Event, SessionEvent, UserName};
use cove_server::{Relay, RelayConfig, StoreKind};

const WARMUP: usize = 20;

fn main() {
    let n: usize = std::env::var("COVE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(n));
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = StoreKind::Sqlite;
    let relay = Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_owned();
    let home = |u: &str| Home::new(dir.path().join(u));
    let alice = Device::init(
        &home("alice"),
        &server,
        UserName::new("alice").unwrap(),
        Some(&ca),
    )
    .await
    .unwrap();
    let mut bob = Device::init(
        &home("bob"),
        &server,
        UserName::new("bob").unwrap(),
        Some(&ca),
    )
    .await
    .unwrap();
    alice.create_group("bench").await.unwrap();
    alice
        .add_users("bench", &[UserName::new("bob").unwrap()])
        .await
        .unwrap();
    wait(&mut bob, |e| matches!(e, Event::Joined { .. })).await;

    let text = "x".repeat(100);
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let started = Instant::now();
        let (sent, ()) = tokio::join!(
            alice.send_text("bench", &text),
            wait(&mut bob, |e| matches!(e, Event::Message(_)))
        );
        sent.unwrap();
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    let pct = |p: f64| {
        let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[idx.min(samples.len() - 1)]
    };
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "e2e send -> delivery, loopback TLS, SQLite relay and clients, 100-byte text, {n} messages (after {WARMUP} warm-up)"
    );
    println!(
        "  p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   mean {:.2} ms   min {:.2} ms   max {:.2} ms",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(mean),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
    alice.close().await;
    bob.close().await;
    relay.shutdown().await;
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
