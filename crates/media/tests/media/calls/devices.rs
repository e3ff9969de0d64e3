//! A call between real audio devices (feature `devices`): a private PulseAudio daemon with
//! null sinks, reached through ALSA PCMs (cpal's ALSA host and the ALSA pulse plugin).
//!
//! Alice's microphone is sink A's monitor, into which `pacat` plays a 440 Hz tone; Bob's
//! speaker is sink B, whose monitor `parec` records; sink C is never used (the control).
//!
//! Needs `pulseaudio`, `pulseaudio-utils` and `libasound2-plugins` (`.ci/install-deps`). Without
//! `pulseaudio` the test fails, unless `COVE_NO_AUDIO=1` is set, in which case it is skipped with
//! a message.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cove_media::call::CallConfig;
use cove_media::source::{AudioInput, AudioOutput, ToneSource, dominant_frequency};

use super::{CANDIDATES, Mesh, first_audio, key};

/// Bound on waiting for device audio (the first samples reach a monitor ~2 s after start).
const DEVICE_WAIT: Duration = Duration::from_secs(90);

/// A private PulseAudio daemon (killed on drop) with null sinks `cove_a`, `cove_b`, `cove_c`,
/// and an ALSA configuration with hinted PCMs `cove_X` (playback) and `cove_X_mon` (capture).
struct PulseFixture {
    daemon: Child,
    server: String,
    _dir: tempfile::TempDir,
}

impl Drop for PulseFixture {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl PulseFixture {
    /// Starts the daemon, or returns `None` (skip) when `pulseaudio` is missing and
    /// `COVE_NO_AUDIO=1`. Panics if it is missing otherwise (CI installs it).
    fn start() -> Option<Self> {
        if !have("pulseaudio") {
            if std::env::var("COVE_NO_AUDIO").as_deref() == Ok("1") {
                eprintln!("SKIPPED: pulseaudio is not installed and COVE_NO_AUDIO=1");
                return None;
            }
            panic!(
                "pulseaudio is not installed: run .ci/install-deps (or set COVE_NO_AUDIO=1 to skip)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let xdg = dir.path().join("xdg");
        std::fs::create_dir(&xdg).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let socket = dir.path().join("native");
        let server = format!("unix:{}", socket.display());
        let mut cmd = Command::new("pulseaudio");
        cmd.args([
            "-n",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--use-pid-file=no",
            "--log-target=stderr",
        ])
        .arg(format!(
            "--load=module-native-protocol-unix auth-anonymous=1 socket={}",
            socket.display()
        ));
        for s in ["cove_a", "cove_b", "cove_c"] {
            cmd.arg(format!("--load=module-null-sink sink_name={s} rate=44100"));
        }
        // Its own runtime dir and home: nothing restored from, or written to, the user's.
        let log = std::fs::File::create(dir.path().join("pulseaudio.log")).unwrap();
        let daemon = cmd
            .env("XDG_RUNTIME_DIR", &xdg)
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pulseaudio");
        let fixture = Self {
            daemon,
            server,
            _dir: dir,
        };
        // Wait (bounded) until the daemon answers.
        let deadline = std::time::Instant::now() + DEVICE_WAIT;
        loop {
            let ok = Command::new("pactl")
                .args(["--server", &fixture.server, "info"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pulseaudio did not come up; log: {}",
                std::fs::read_to_string(fixture._dir.path().join("pulseaudio.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut conf = String::new();
        for s in ["cove_a", "cove_b", "cove_c"] {
            conf.push_str(&format!(
                "pcm.{s} {{ type pulse; device \"{s}\"; server \"{srv}\"; \
                 hint {{ show on; description \"Cove test sink {s}\" }} }}\n\
                 pcm.{s}_mon {{ type pulse; device \"{s}.monitor\"; server \"{srv}\"; \
                 hint {{ show on; description \"Monitor of {s}\" }} }}\n",
                srv = fixture.server
            ));
        }
        let conf_path = fixture._dir.path().join("asound.conf");
        std::fs::write(&conf_path, conf).unwrap();
        install_alsa_config(&conf_path);
        Some(fixture)
    }

    /// Plays a 440 Hz tone (48 kHz mono s16) into `sink` until the returned guard drops.
    fn play_tone(&self, sink: &str) -> ToneWriter {
        let mut child = Command::new("pacat")
            .args([
                "--playback",
                "--server",
                &self.server,
                "--device",
                sink,
                "--format=s16le",
                "--rate=48000",
                "--channels=1",
                "--raw",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start pacat (pulseaudio-utils)");
        let mut stdin = child.stdin.take().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            use cove_media::source::AudioSource;
            let mut tone = ToneSource::new(440.0, 0.5);
            // The pipe paces this loop (pacat reads at the sink's clock).
            while !stop2.load(Ordering::Relaxed) {
                let frame = tone.next_frame();
                let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
                if stdin.write_all(&bytes).is_err() {
                    return;
                }
            }
        });
        ToneWriter {
            child,
            stop,
            thread: Some(thread),
        }
    }

    /// Records `source` (48 kHz mono s16) into a shared buffer until the guard drops.
    fn record(&self, source: &str) -> Recorder {
        let mut child = Command::new("parec")
            .args([
                "--server",
                &self.server,
                "--device",
                source,
                "--format=s16le",
                "--rate=48000",
                "--channels=1",
                "--raw",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start parec (pulseaudio-utils)");
        let mut stdout = child.stdout.take().unwrap();
        let samples = Arc::new(Mutex::new(Vec::<i16>::new()));
        let s2 = samples.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut carry: Option<u8> = None;
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let mut v = s2.lock().unwrap();
                for &b in &buf[..n] {
                    match carry.take() {
                        Some(lo) => v.push(i16::from_le_bytes([lo, b])),
                        None => carry = Some(b),
                    }
                }
            }
        });
        Recorder { child, samples }
    }
}

/// Points alsa-lib at the fixture's PCMs: `ALSA_CONFIG_PATH` is read when alsa-lib first loads
/// its configuration, so it is set once, before any device is opened in this process.
#[allow(unsafe_code)] // std::env::set_var, see SAFETY below
fn install_alsa_config(conf: &Path) {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    let first = DONE.get_or_init(|| {
        let value = format!("/usr/share/alsa/alsa.conf:{}", conf.display());
        // SAFETY: set once, before any ALSA or PulseAudio client code runs in this process;
        // the other tests of this binary read no environment variables from C code.
        unsafe { std::env::set_var("ALSA_CONFIG_PATH", value) };
        conf.to_owned()
    });
    assert_eq!(
        first, conf,
        "one PulseAudio fixture per test process (alsa-lib keeps its first configuration)"
    );
}

struct ToneWriter {
    child: Child,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ToneWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Recorder {
    child: Child,
    samples: Arc<Mutex<Vec<i16>>>,
}

impl Recorder {
    fn snapshot(&self) -> Vec<i16> {
        self.samples.lock().unwrap().clone()
    }

    /// Waits (bounded by [`DEVICE_WAIT`]) until `cond` holds for the samples so far.
    async fn wait_for(&self, what: &str, cond: impl Fn(&[i16]) -> bool) -> Vec<i16> {
        let deadline = tokio::time::Instant::now() + DEVICE_WAIT;
        loop {
            let s = self.snapshot();
            if cond(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what} ({} samples recorded)",
                s.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start of the first second (50 chunks of 20 ms, chunk-aligned) in which every 20 ms
/// peaks above 1000 (of 32767), if any.
fn steady_second(s: &[i16]) -> Option<usize> {
    let loud: Vec<bool> = s
        .chunks_exact(960)
        .map(|c| c.iter().any(|x| x.unsigned_abs() > 1000))
        .collect();
    loud.windows(50)
        .position(|w| w.iter().all(|&l| l))
        .map(|i| i * 960)
}

/// A 440 Hz tone played into Alice's input device crosses a real WebRTC call and comes out of
/// Bob's output device at 440 Hz; an unused sink stays silent meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tone_through_real_devices_reaches_bobs_speaker() {
    let Some(pulse) = PulseFixture::start() else {
        return;
    };
    let _tone = pulse.play_tone("cove_a");
    let at_b = pulse.record("cove_b.monitor");
    let at_c = pulse.record("cove_c.monitor");

    let mut mesh = Mesh::new();
    let alice_cfg = CallConfig {
        audio: Some(AudioInput::Device("cove_a_mon".into())),
        audio_out: Some(AudioOutput::None),
        ..CallConfig::default()
    };
    let bob_cfg = CallConfig {
        audio: Some(AudioInput::Silence),
        audio_out: Some(AudioOutput::Device("cove_b".into())),
        ..CallConfig::default()
    };
    let alice = mesh.add("alice", 0, alice_cfg, key(1, 9), &[0, 1]);
    let bob = mesh.add("bob", 1, bob_cfg, key(1, 9), &[0, 1]);
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, first_audio("bob", "alice")).await;

    // One second of steady sound on Bob's speaker (the start can be a short burst, then a
    // gap while PulseAudio's capture settles).
    let b = at_b
        .wait_for("1 s of steady sound on sink B", |s| {
            steady_second(s).is_some()
        })
        .await;
    let start = steady_second(&b).unwrap();
    let window = &b[start..start + 48_000];
    let (f, share) = dominant_frequency(window, &CANDIDATES).unwrap();
    assert_eq!(
        f,
        440.0,
        "sink B's dominant frequency (share {share}, steady from {start}, per 20 ms: {:?})",
        window
            .chunks_exact(960)
            .map(|c| dominant_frequency(c, &CANDIDATES).map(|(f, _)| f as u32))
            .collect::<Vec<_>>()
    );
    assert!(
        share > 0.9,
        "440 Hz carries only {share} of sink B's energy"
    );
    let rms =
        (window.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / window.len() as f64).sqrt();
    assert!(rms > 1000.0, "sink B too quiet: RMS {rms}");
    eprintln!("sink B: 440 Hz share {share:.3}, RMS {rms:.0}; steady from sample {start}");

    // The control: sink C recorded at least as long, and is silent.
    let c = at_c
        .wait_for("sink C recorded as long as B", |s| s.len() >= b.len())
        .await;
    let peak = c.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
    assert!(c.len() >= 48_000);
    assert!(peak < 64, "sink C (unused) has sound: peak {peak}");

    alice.end().await;
    bob.end().await;
}
