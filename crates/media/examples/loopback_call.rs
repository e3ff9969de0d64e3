//! A call between two in-process participants over loopback, headless, with recordings.
//!
//! ```text
//! cargo run -p cove-media --example loopback_call -- [--seconds 5] [--record DIR]
//!     [--audio tone:440|FILE.wav] [--video pattern|FILE.y4m] [--relay-only]
//! ```
//! Alice sends the given audio (and video); Bob sends a 660 Hz tone and records what he
//! receives into DIR (`audio-alice.wav`, `video-alice/frame-N.ppm`, `stats.json`). Signalling
//! values are handed across directly; in Cove they travel inside MLS. `--relay-only` starts a
//! TURN server on 127.0.0.1 and forces both sides through it.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, SystemTime};

use cove_media::IceServer;
use cove_media::call::{Call, CallConfig, CallEvent};
use cove_media::sframe::EpochKey;
use cove_media::source::{AudioInput, VideoInput};
use cove_turn::{start_turn_server, turn_credentials};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut seconds = 5u64;
    let mut record = std::env::temp_dir().join("cove-loopback-call");
    let mut audio: AudioInput = "tone:440".parse()?;
    let mut video: Option<VideoInput> = None;
    let mut relay_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().unwrap_or_default().parse()?,
            "--record" => record = args.next().unwrap_or_default().into(),
            "--audio" => audio = args.next().unwrap_or_default().parse()?,
            "--video" => video = Some(args.next().unwrap_or_default().parse()?),
            "--relay-only" => relay_only = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let secret = b"loopback-example-turn-secret";
    let turn = if relay_only {
        Some(
            start_turn_server(
                "127.0.0.1:0".parse()?,
                "cove",
                secret,
                // The peers are on this machine: allow loopback (never on a real server).
                cove_turn::PeerPolicy::allowing(["127.0.0.0/8".parse()?]),
            )
            .await?,
        )
    } else {
        None
    };
    let ice = |user: &str| -> Vec<IceServer> {
        turn.as_ref()
            .map(|t| {
                let c = turn_credentials(secret, user, Duration::from_secs(600), SystemTime::now())
                    .unwrap();
                vec![IceServer {
                    urls: vec![t.url()],
                    username: c.username,
                    credential: c.password,
                }]
            })
            .unwrap_or_default()
    };
    let key = || EpochKey::new(1, &[7; 32]).unwrap();
    let alice_cfg = CallConfig {
        audio: Some(audio),
        video,
        relay_only,
        ice_servers: ice("alice"),
        ..CallConfig::default()
    };
    let bob_cfg = CallConfig {
        audio: Some(AudioInput::Tone(660.0)),
        relay_only,
        ice_servers: ice("bob"),
        record_dir: Some(record.clone()),
        ..CallConfig::default()
    };
    let (alice, mut alice_events) = Call::new(alice_cfg, 0, key(), [0, 1])?;
    let (bob, mut bob_events) = Call::new(bob_cfg, 1, key(), [0, 1])?;
    let t0 = std::time::Instant::now();
    alice.dial("bob", Some(1)).await?;
    let deadline = tokio::time::sleep(Duration::from_secs(seconds));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(ev) = alice_events.recv() => match ev {
                CallEvent::LocalSignal { signal, .. } => {
                    println!("{:>8.1?} alice -> bob: {}", t0.elapsed(), signal_name(&signal));
                    bob.apply_signal("alice", Some(0), signal).await?
                }
                other => println!("{:>8.1?} alice: {other:?}", t0.elapsed()),
            },
            Some(ev) = bob_events.recv() => match ev {
                CallEvent::LocalSignal { signal, .. } => {
                    println!("{:>8.1?} bob -> alice: {}", t0.elapsed(), signal_name(&signal));
                    alice.apply_signal("bob", Some(1), signal).await?
                }
                other => println!("{:>8.1?} bob:   {other:?}", t0.elapsed()),
            },
        }
    }
    alice.end().await;
    let stats = bob.end().await;
    if let Some(t) = turn {
        t.close().await?;
    }
    println!("{}", serde_json::to_string_pretty(&stats)?);
    println!("recorded into {}", record.display());
    Ok(())
}

fn signal_name(s: &cove_media::CallSignal) -> &'static str {
    match s {
        cove_media::CallSignal::Offer { .. } => "offer",
        cove_media::CallSignal::Answer { .. } => "answer",
        cove_media::CallSignal::Candidate { .. } => "candidate",
        cove_media::CallSignal::HangUp => "hang-up",
        cove_media::CallSignal::Busy => "busy",
        cove_media::CallSignal::Decline => "decline",
    }
}
