//! Call benchmarks (run with `cargo bench -p cove-media --bench calls`):
//!
//! - call setup: dial to first decoded audio frame, p50/p90 over 20 loopback calls, beside the
//!   bare webrtc-rs connect time (two peer connections with a data channel, in-process);
//! - Opus encode and decode real-time factors;
//! - CPU per audio call and per video call (process CPU time over a 10 s call, both ends in
//!   this process, from /proc/self/stat).
//!
//! `COVE_BENCH_QUICK=1` shortens everything (5 calls, 3 s calls) for smoke runs.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cove_media::call::{Call, CallConfig, CallEvent};
use cove_media::codec::{OpusDecoder, OpusEncoder};
use cove_media::sframe::EpochKey;
use cove_media::source::{AudioInput, AudioSource, ToneSource, VideoInput};
use tokio::sync::mpsc;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCPeerConnectionState, SettingEngineBuilder,
};

fn quick() -> bool {
    std::env::var("COVE_BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let calls = if quick() { 5 } else { 20 };
    let call_secs = if quick() { 3 } else { 10 };

    opus_rtf();

    let mut setup = Vec::new();
    let mut caller_side = Vec::new();
    for _ in 0..calls {
        let (callee, caller) = rt.block_on(one_call_setup());
        setup.push(callee);
        caller_side.push(caller);
    }
    let mut relay = Vec::new();
    let turn_secret = b"bench-turn-secret-0123456789";
    let turn = rt
        .block_on(cove_turn::start_turn_server(
            "127.0.0.1:0".parse().unwrap(),
            "cove",
            turn_secret,
            cove_turn::PeerPolicy::allowing(["127.0.0.0/8".parse().unwrap()]),
        ))
        .unwrap();
    for _ in 0..(calls / 4).max(3) {
        let c = cove_turn::turn_credentials(
            turn_secret,
            "bench",
            Duration::from_secs(600),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let cfg = CallConfig {
            audio: Some(AudioInput::Tone(440.0)),
            relay_only: true,
            ice_servers: vec![cove_media::IceServer {
                urls: vec![turn.url()],
                username: c.username,
                credential: c.password,
            }],
            ..CallConfig::default()
        };
        relay.push(rt.block_on(one_call_setup_with(cfg)).0);
    }
    rt.block_on(turn.close()).unwrap();
    let mut bare = Vec::new();
    let mut bare_fast = Vec::new();
    for _ in 0..calls {
        bare.push(rt.block_on(bare_connect(None)));
        bare_fast.push(rt.block_on(bare_connect(Some(Duration::from_millis(50)))));
    }
    report(
        "call setup: dial -> first decoded audio at callee",
        &mut setup,
    );
    report(
        "call setup: dial -> first decoded audio at caller",
        &mut caller_side,
    );
    report(
        "relay-only call setup through local TURN: dial -> first audio at callee",
        &mut relay,
    );
    report(
        "bare webrtc-rs connect, default 200 ms ICE checks (offer -> both Connected)",
        &mut bare,
    );
    report(
        "bare webrtc-rs connect, 50 ms ICE checks like cove (offer -> both Connected)",
        &mut bare_fast,
    );

    let audio = rt.block_on(cpu_of_call(false, call_secs));
    println!(
        "cpu per audio call (both endpoints, {call_secs} s): {:.1} % of one core ({:.1} % per endpoint)",
        audio * 100.0,
        audio * 50.0
    );
    let video = rt.block_on(cpu_of_call(true, call_secs));
    println!(
        "cpu per audio+video call (320x240 VP8 15 fps, both endpoints, {call_secs} s): {:.1} % of one core ({:.1} % per endpoint)",
        video * 100.0,
        video * 50.0
    );
}

fn report(name: &str, v: &mut [Duration]) {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    println!(
        "{name}: p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms (n={})",
        p(0.5),
        p(0.9),
        p(0.0),
        p(1.0),
        v.len()
    );
}

fn opus_rtf() {
    let seconds = if quick() { 2 } else { 20 };
    let frames = seconds * 50;
    let mut tone = ToneSource::new(440.0, 0.5);
    let pcm: Vec<_> = (0..frames).map(|_| tone.next_frame()).collect();
    let mut enc = OpusEncoder::new(32_000).unwrap();
    let t = Instant::now();
    let packets: Vec<_> = pcm.iter().map(|f| enc.encode(f).unwrap()).collect();
    let enc_time = t.elapsed();
    let mut dec = OpusDecoder::new().unwrap();
    let t = Instant::now();
    for p in &packets {
        dec.decode(p).unwrap();
    }
    let dec_time = t.elapsed();
    let audio = seconds as f64;
    println!(
        "opus encode: {:.0}x real time ({:.3} ms per 20 ms frame); decode: {:.0}x real time ({:.3} ms per frame)",
        audio / enc_time.as_secs_f64(),
        enc_time.as_secs_f64() * 1000.0 / frames as f64,
        audio / dec_time.as_secs_f64(),
        dec_time.as_secs_f64() * 1000.0 / frames as f64
    );
}

fn key() -> EpochKey {
    EpochKey::new(1, &[42; 32]).unwrap()
}

/// Two calls wired together in-process; returns them and the event streams.
async fn pair(cfg: CallConfig) -> (Call, Call, mpsc::UnboundedReceiver<(u8, CallEvent)>) {
    let (a, mut arx) = Call::new(cfg.clone(), 0, key(), [0, 1]).unwrap();
    let (b, mut brx) = Call::new(cfg, 1, key(), [0, 1]).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (a2, b2, tx2) = (a.clone(), b.clone(), tx.clone());
    tokio::spawn(async move {
        while let Some(ev) = arx.recv().await {
            match ev {
                CallEvent::LocalSignal { signal, .. } => {
                    let b2 = b2.clone();
                    tokio::spawn(async move { b2.apply_signal("a", Some(0), signal).await });
                }
                ev => {
                    let _ = tx2.send((0, ev));
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(ev) = brx.recv().await {
            match ev {
                CallEvent::LocalSignal { signal, .. } => {
                    let a2 = a2.clone();
                    tokio::spawn(async move { a2.apply_signal("b", Some(1), signal).await });
                }
                ev => {
                    let _ = tx.send((1, ev));
                }
            }
        }
    });
    (a, b, rx)
}

async fn one_call_setup() -> (Duration, Duration) {
    let cfg = CallConfig {
        audio: Some(AudioInput::Tone(440.0)),
        ..CallConfig::default()
    };
    one_call_setup_with(cfg).await
}

async fn one_call_setup_with(cfg: CallConfig) -> (Duration, Duration) {
    let (a, b, mut rx) = pair(cfg).await;
    let t0 = Instant::now();
    a.dial("b", Some(1)).await.unwrap();
    let (mut callee, mut caller) = (None, None);
    while callee.is_none() || caller.is_none() {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            (1, CallEvent::FirstAudio { .. }) => callee = Some(t0.elapsed()),
            (0, CallEvent::FirstAudio { since_dial, .. }) => caller = Some(since_dial),
            _ => {}
        }
    }
    a.end().await;
    b.end().await;
    (callee.unwrap(), caller.unwrap())
}

async fn cpu_of_call(video: bool, secs: u64) -> f64 {
    let cfg = CallConfig {
        audio: Some(AudioInput::Tone(440.0)),
        video: video.then_some(VideoInput::Pattern {
            width: 320,
            height: 240,
        }),
        ..CallConfig::default()
    };
    let (a, b, mut rx) = pair(cfg).await;
    a.dial("b", Some(1)).await.unwrap();
    loop {
        if let (1, CallEvent::FirstAudio { .. }) = rx.recv().await.unwrap() {
            break;
        }
    }
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu = process_cpu() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let sa = a.stats().await;
    let sb = b.stats().await;
    println!(
        "  ({} call: a sent {} audio / {} video frames, b decoded {} audio / {} video)",
        if video { "video" } else { "audio" },
        sa.peers[0].audio_frames_sent,
        sa.peers[0].video_frames_sent,
        sb.peers[0].audio_frames_received,
        sb.peers[0].video_frames_received
    );
    a.end().await;
    b.end().await;
    cpu / wall
}

/// User + system CPU seconds of this process.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ')' (state is field 3).
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

struct BareHandler {
    tx: mpsc::UnboundedSender<&'static str>,
    name: &'static str,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for BareHandler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            let _ = self.tx.send(if self.name == "a" {
                "a-gathered"
            } else {
                "b-gathered"
            });
        }
    }
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        if s == RTCPeerConnectionState::Connected {
            let _ = self.tx.send(self.name);
        }
    }
    async fn on_data_channel(&self, _dc: Arc<dyn DataChannel>) {}
}

async fn wait(rx: &mut mpsc::UnboundedReceiver<&'static str>, what: &str) {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if got == what {
            return;
        }
    }
}

/// Bare webrtc-rs: two peer connections with a data channel; offer -> both Connected.
async fn bare_connect(check_interval: Option<Duration>) -> Duration {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let build = |name: &'static str, tx: mpsc::UnboundedSender<&'static str>| async move {
        let mut me = MediaEngine::default();
        me.register_default_codecs().unwrap();
        let settings = SettingEngineBuilder::new()
            .with_ice_connection_attempts(check_interval, check_interval.map(|_| 28))
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(me)
            .with_setting_engine(settings)
            .with_handler(Arc::new(BareHandler { tx, name }))
            .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
            .build()
            .await
            .unwrap();
        Arc::new(pc) as Arc<dyn PeerConnection>
    };
    let a = build("a", tx.clone()).await;
    let b = build("b", tx).await;
    let t0 = Instant::now();
    let _dc = a.create_data_channel("bench", None).await.unwrap();
    let offer = a.create_offer(None).await.unwrap();
    a.set_local_description(offer).await.unwrap();
    wait(&mut rx, "a-gathered").await;
    b.set_remote_description(a.local_description().await.unwrap())
        .await
        .unwrap();
    let answer = b.create_answer(None).await.unwrap();
    b.set_local_description(answer).await.unwrap();
    wait(&mut rx, "b-gathered").await;
    a.set_remote_description(b.local_description().await.unwrap())
        .await
        .unwrap();
    let mut connected = 0;
    while connected < 2 {
        let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if got == "a" || got == "b" {
            connected += 1;
        }
    }
    let d = t0.elapsed();
    let _ = a.close().await;
    let _ = b.close().await;
    d
}
