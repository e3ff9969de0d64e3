//! A call's mouth-to-ear latency through real audio devices (issue 12): a private PulseAudio
//! daemon with null sinks (`cove_test_utils::pulse`), the real `cove` binary for both sides,
//! an in-process relay (SQLite, loopback TLS), media over loopback UDP.
//!
//! - mouth: a 1 kHz tone burst (100 ms after silence, one every 2 s) played into sink A;
//!   alice's `--audio-in` is sink A's monitor, which is also recorded (the burst's time);
//! - ear: bob's `--audio-out` is sink B, whose monitor is recorded;
//! - baseline in the same run: PulseAudio alone loops sink A's monitor into sink C
//!   (`module-loopback`, lowest latency it accepts), whose monitor is recorded.
//!
//! Each recorder (`parec`, 10 ms latency) stamps every read with the time; a sample's time is
//! its read's stamp minus the samples after it, so the recorders' own buffering cancels in a
//! difference. A burst's onset is the first 1 ms block peaking above 2000 (of 32767) after
//! 300 ms below it. The first two bursts after connection are not counted (warm-up). At the
//! end, PulseAudio's own view of every stream's buffer (`pactl list`) shows where the device
//! part of the time goes.
//!
//! Run: `cargo bench -p cove-cli --bench latency` (`COVE_BENCH_BURSTS=10`). Skips, saying so,
//! when `pulseaudio` is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use support::cove;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cove_server::{Relay, RelayConfig, StoreKind};
use cove_test_utils::pulse::PulseFixture;

const RATE: usize = 48_000;
/// Bursts start this far apart.
const PERIOD_MS: usize = 2_000;
/// Burst length.
const BURST_MS: usize = 100;
/// Onset threshold (of 32767) and the quiet time before an onset.
const THRESHOLD: u16 = 2_000;
const QUIET_MS: usize = 300;
/// Bursts ignored after the call connects.
const WARM_UP: usize = 2;
/// Only stops a hung run.
const DEADLINE: Duration = Duration::from_secs(180);

fn main() {
    let bursts: usize = std::env::var("COVE_BENCH_BURSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let have_pulse = Command::new("sh")
        .args([
            "-c",
            "command -v pulseaudio && command -v pactl && command -v parec",
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_pulse {
        println!(
            "SKIPPED: the mouth-to-ear benchmark needs PulseAudio (pulseaudio, pulseaudio-utils, \
             libasound2-plugins: .ci/install-deps)"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(bursts));
}

/// Samples recorded so far, and (samples so far, time) after every read.
type Recording = Arc<Mutex<(Vec<i16>, Vec<(usize, Instant)>)>>;

struct Recorder {
    child: Child,
    data: Recording,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn record(server: &str, source: &str) -> Recorder {
    let mut child = Command::new("parec")
        .args([
            "--server",
            server,
            "--device",
            source,
            "--format=s16le",
            "--rate=48000",
            "--channels=1",
            "--raw",
            "--latency-msec=10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start parec");
    let mut out = child.stdout.take().unwrap();
    let data: Recording = Arc::default();
    let d2 = data.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 960];
        let mut carry: Option<u8> = None;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                return;
            }
            let now = Instant::now();
            let mut d = d2.lock().unwrap();
            for &b in &buf[..n] {
                match carry.take() {
                    Some(lo) => d.0.push(i16::from_le_bytes([lo, b])),
                    None => carry = Some(b),
                }
            }
            let len = d.0.len();
            d.1.push((len, now));
        }
    });
    Recorder { child, data }
}

impl Recorder {
    /// The times of the bursts' onsets so far.
    fn onsets(&self) -> Vec<Instant> {
        let d = self.data.lock().unwrap();
        let (samples, marks) = (&d.0, &d.1);
        let block = RATE / 1000;
        let mut quiet = 0usize;
        let mut out = Vec::new();
        for (i, c) in samples.chunks_exact(block).enumerate() {
            match c.iter().position(|x| x.unsigned_abs() > THRESHOLD) {
                Some(j) => {
                    if quiet >= QUIET_MS {
                        let at = i * block + j;
                        let Some(&(count, t)) = marks.iter().find(|m| m.0 > at) else {
                            break;
                        };
                        let after = (count - at) as f64 / RATE as f64;
                        out.push(t - Duration::from_secs_f64(after));
                    }
                    quiet = 0;
                }
                None => quiet += 1,
            }
        }
        out
    }
}

/// Plays a 100 ms 1 kHz burst every 2 s (silence between) into `sink` until dropped.
struct Bursts {
    child: Child,
    stop: Arc<AtomicBool>,
}

impl Drop for Bursts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn play_bursts(server: &str, sink: &str) -> Bursts {
    let mut child = Command::new("pacat")
        .args([
            "--playback",
            "--server",
            server,
            "--device",
            sink,
            "--format=s16le",
            "--rate=48000",
            "--channels=1",
            "--raw",
            "--latency-msec=10",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start pacat");
    let mut stdin = child.stdin.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || {
        let period = RATE * PERIOD_MS / 1000;
        let burst = RATE * BURST_MS / 1000;
        let mut n = 0usize;
        // 10 ms per write; the pipe paces this loop at the sink's clock.
        while !s2.load(Ordering::Relaxed) {
            let bytes: Vec<u8> = (n..n + RATE / 100)
                .flat_map(|i| {
                    let v = if i % period < burst {
                        (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / RATE as f64).sin() * 0.5
                    } else {
                        0.0
                    };
                    ((v * f64::from(i16::MAX)) as i16).to_le_bytes()
                })
                .collect();
            n += RATE / 100;
            if stdin.write_all(&bytes).is_err() {
                return;
            }
        }
    });
    Bursts { child, stop }
}

/// For every onset in `from`, the delay to the first onset in `to` within 1.5 s (ms).
fn delays(from: &[Instant], to: &[Instant]) -> Vec<f64> {
    from.iter()
        .filter_map(|a| {
            to.iter()
                .find(|b| **b >= *a && b.duration_since(*a) < Duration::from_millis(1_500))
                .map(|b| b.duration_since(*a).as_secs_f64() * 1000.0)
        })
        .collect()
}

fn summary(label: &str, v: &[f64]) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{label}: {} bursts, median {:.0} ms, p95 {:.0} ms, min {:.0} ms, max {:.0} ms",
        v.len(),
        pct(0.5),
        pct(0.95),
        v[0],
        v[v.len() - 1]
    );
}

fn pactl(server: &str, args: &[&str]) -> String {
    let out = Command::new("pactl")
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .expect("pactl");
    assert!(
        out.status.success(),
        "pactl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn run(bursts: usize) {
    let pulse = PulseFixture::start().expect("pulseaudio is installed");
    let server = pulse.server().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = StoreKind::Sqlite;
    let relay = Relay::start(config).await.unwrap();
    let relay_url = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_str().unwrap().to_owned();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let (a, b) = (alice.clone(), bob.clone());
    tokio::task::spawn_blocking(move || {
        for (home, user) in [(&a, "alice"), (&b, "bob")] {
            cove(
                home,
                &[
                    "init",
                    "--server",
                    &relay_url,
                    "--user",
                    user,
                    "--ca",
                    &ca,
                    "--no-account",
                ],
            );
        }
        cove(&a, &["group", "create", "talk"]);
        cove(&a, &["group", "add", "talk", "bob"]);
    })
    .await
    .unwrap();

    // PulseAudio alone: sink A's monitor looped into sink C.
    pactl(
        &server,
        &[
            "load-module",
            "module-loopback",
            "source=cove_a.monitor",
            "sink=cove_c",
            "latency_msec=1",
        ],
    );
    let at_a = record(&server, "cove_a.monitor");
    let at_b = record(&server, "cove_b.monitor");
    let at_c = record(&server, "cove_c.monitor");
    let bursts_player = play_bursts(&server, "cove_a");

    let spawn = |home: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(home)
            .args(args)
            .env_remove("COVE_HOME")
            .env("ALSA_CONFIG_PATH", pulse.alsa_config_path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut answering = spawn(
        &bob,
        &[
            "answer",
            "talk",
            "--wait",
            "60",
            "--duration",
            "0",
            "--audio-in",
            "silence",
            "--audio-out",
            "cove_b",
        ],
    );
    let mut calling = spawn(
        &alice,
        &[
            "call",
            "talk",
            "--duration",
            "0",
            "--ring-timeout",
            "60",
            "--audio-in",
            "cove_a_mon",
            "--audio-out",
            "none",
        ],
    );

    let deadline = Instant::now() + DEADLINE;
    let (cove_ms, pulse_ms) = loop {
        let (a, b, c) = (at_a.onsets(), at_b.onsets(), at_c.onsets());
        // Bursts sent after bob first heard one (the call carries audio), minus warm-up.
        let first_heard = b.first().copied();
        let sent: Vec<Instant> = a
            .iter()
            .copied()
            .filter(|t| first_heard.is_some_and(|f| *t > f))
            .skip(WARM_UP)
            .collect();
        // Only bursts old enough to have arrived on both paths.
        let settled: Vec<Instant> = sent
            .into_iter()
            .filter(|t| t.elapsed() > Duration::from_millis(1_500))
            .collect();
        if settled.len() >= bursts {
            let settled = &settled[..bursts];
            break (delays(settled, &b), delays(settled, &c));
        }
        assert!(
            Instant::now() < deadline,
            "no {bursts} bursts through the call in time: {} sent, {} at bob, {} via loopback",
            a.len(),
            b.len(),
            c.len()
        );
        assert!(
            calling.try_wait().unwrap().is_none() && answering.try_wait().unwrap().is_none(),
            "a cove command ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Where the device time goes: PulseAudio's view of every stream's buffering.
    let streams = [
        pactl(&server, &["list", "sink-inputs"]),
        pactl(&server, &["list", "source-outputs"]),
    ];
    let _ = calling.kill();
    let _ = answering.kill();
    let _ = calling.wait();
    let _ = answering.wait();

    println!(
        "call mouth-to-ear latency through PulseAudio null sinks (sink A monitor -> cove call -> sink B monitor):"
    );
    assert_eq!(cove_ms.len(), bursts, "some bursts were lost in the call");
    summary("  cove call (alice cove_a_mon -> bob cove_b)", &cove_ms);
    assert_eq!(
        pulse_ms.len(),
        bursts,
        "some bursts were lost in the loopback"
    );
    summary(
        "  PulseAudio alone (module-loopback cove_a.monitor -> cove_c)",
        &pulse_ms,
    );
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "  cove adds {:.0} ms over PulseAudio alone (medians)",
        median(&cove_ms) - median(&pulse_ms)
    );
    println!("PulseAudio streams at the end (buffer = the stream's queue, sink/source = device):");
    for list in &streams {
        for block in list.split("\n\n") {
            let field = |key: &str| {
                block
                    .lines()
                    .map(str::trim)
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().trim_matches('"').to_owned())
                    .unwrap_or_default()
            };
            let kind = if block.contains("Sink Input #") {
                "playback"
            } else {
                "capture"
            };
            println!(
                "  {kind} {} / {}: buffer {}, device {}{}",
                field("application.name = "),
                field("media.name = "),
                field("Buffer Latency:"),
                field("Sink Latency:"),
                field("Source Latency:"),
            );
        }
    }
    println!(
        "configured in cove: Opus frames of {frame} ms (capture waits for a whole frame), the \
         send pump's {frame} ms tick, a jitter buffer that starts playing at {target} frames \
         ({jb} ms), a playback mixer that renders whole {frame} ms periods, capture backlog cap \
         {backlog} ms",
        frame = cove_media::codec::AUDIO_FRAME_DURATION.as_millis(),
        target = cove_media::audio::JITTER_TARGET_FRAMES,
        jb = cove_media::audio::JITTER_TARGET_FRAMES as u128
            * cove_media::codec::AUDIO_FRAME_DURATION.as_millis(),
        backlog = cove_media::device::MAX_CAPTURE_BACKLOG / (RATE / 1000),
    );
    // Stop the players and recorders before their sound server.
    drop(bursts_player);
    drop((at_a, at_b, at_c));
    drop(pulse);
    relay.shutdown().await;
}
