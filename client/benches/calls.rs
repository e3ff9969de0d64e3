//! Call setup through the relay: `cove call`'s driver dials, `cove answer`'s driver answers,
//! signalling inside MLS through an in-process relay (SQLite, loopback TLS), media over
//! loopback UDP. Measures dial -> first decoded audio frame on the caller (which includes the
//! MLS offer/answer round trip through the relay), p50 over N calls, direct (host candidates)
//! and relay-only (through the relay's TURN server).
//!
//! Run: `cargo bench -p cove --bench calls` (COVE_BENCH_CALLS=N, default 20).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use cove::call::{self, CallOptions};
use cove::config::Home;
use cove::{Device, Event, SessionEvent, UserName};
use cove_media::source::AudioInput;
use cove_server::{Relay, RelayConfig, StoreKind};

fn main() {
    let n: usize = std::env::var("COVE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
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
    config.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    let relay = Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_owned();
    let home = |u: &str| Home::new(dir.path().join(u));
    let mut alice = Device::init(
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
    loop {
        if let Some(SessionEvent::Core(Event::Joined { .. })) = bob.next_event().await {
            break;
        }
    }
    for (label, relay_only, calls) in [("direct", false, n), ("relay-only (TURN)", true, n.min(5))]
    {
        let mut setup = Vec::new();
        let mut total = Vec::new();
        for _ in 0..calls {
            let options = |tone: f32, duration: Option<Duration>| CallOptions {
                audio: Some(AudioInput::Tone(tone)),
                duration,
                relay_only,
                ring_timeout: Duration::from_secs(30),
                verbose: false,
                ..CallOptions::default()
            };
            let callee = options(660.0, None);
            let answering = tokio::spawn(async move {
                let r = call::answer(&mut bob, Some("bench"), &callee).await;
                (r, bob)
            });
            let t0 = Instant::now();
            let placed = call::place(
                &mut alice,
                "bench",
                &options(440.0, Some(Duration::from_millis(200))),
            )
            .await
            .unwrap();
            let elapsed = t0.elapsed();
            let (answered, b) = answering.await.unwrap();
            answered.unwrap();
            bob = b;
            let (_, ms) = placed.first_audio_ms.first().cloned().expect("first audio");
            setup.push(ms);
            total.push(elapsed.as_secs_f64() * 1000.0);
        }
        setup.sort_by(f64::total_cmp);
        total.sort_by(f64::total_cmp);
        let pct = |v: &[f64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "{label}: {calls} calls, dial -> first decoded audio (caller, MLS signalling via the relay): \
             p50 {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
            pct(&setup, 0.5),
            pct(&setup, 0.9),
            setup[0],
            setup[setup.len() - 1]
        );
        println!(
            "{label}: whole `call` command incl. TURN credentials, 200 ms of media and hang-up: p50 {:.0} ms",
            pct(&total, 0.5)
        );
    }
    alice.close().await;
    bob.close().await;
    relay.shutdown().await;
}
