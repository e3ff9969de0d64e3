//! A private PulseAudio daemon with null sinks, reached through ALSA PCMs, for call tests
//! through real audio devices (cove-media's `calls::devices` and the e2e binaries test).
//!
//! Needs `pulseaudio`, `pulseaudio-utils` and `libasound2-plugins` (`.ci/install-deps`).
//! Without `pulseaudio`, [`PulseFixture::start`] panics unless `COVE_NO_AUDIO=1` is set, in
//! which case it returns `None` and the test skips with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound on waiting for device audio (the first samples reach a monitor ~2 s after start).
pub const DEVICE_WAIT: Duration = Duration::from_secs(90);

/// A private PulseAudio daemon (killed on drop) with null sinks `cove_a`, `cove_b`, `cove_c`,
/// and an ALSA configuration with hinted PCMs `cove_X` (playback) and `cove_X_mon` (capture).
pub struct PulseFixture {
    daemon: Child,
    server: String,
    alsa_config: std::path::PathBuf,
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
    pub fn start() -> Option<Self> {
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
        let mut fixture = Self {
            daemon,
            server,
            alsa_config: std::path::PathBuf::new(),
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
        fixture.alsa_config = conf_path;
        Some(fixture)
    }

    /// The daemon's address, for `pactl`/`pacat`/`parec --server`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The value for `ALSA_CONFIG_PATH` that makes the PCMs `cove_a`, `cove_a_mon`, `cove_b`,
    /// `cove_b_mon`, `cove_c`, `cove_c_mon` exist (alsa-lib reads it once per process).
    pub fn alsa_config_path(&self) -> String {
        format!("/usr/share/alsa/alsa.conf:{}", self.alsa_config.display())
    }

    /// Plays a 440 Hz tone (48 kHz mono s16) into `sink` until the returned guard drops.
    pub fn play_tone(&self, sink: &str) -> ToneWriter {
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
            let mut n: u64 = 0;
            // The pipe paces this loop (pacat reads at the sink's clock).
            while !stop2.load(Ordering::Relaxed) {
                // 20 ms of a 440 Hz sine at half scale.
                let bytes: Vec<u8> = (0..960u64)
                    .flat_map(|i| {
                        let t = (n + i) as f64 / 48_000.0;
                        let v = (2.0 * std::f64::consts::PI * 440.0 * t).sin() * 0.5;
                        ((v * f64::from(i16::MAX)) as i16).to_le_bytes()
                    })
                    .collect();
                n += 960;
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
    pub fn record(&self, source: &str) -> Recorder {
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

/// Plays a tone until dropped.
pub struct ToneWriter {
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

/// Records a source until dropped.
pub struct Recorder {
    child: Child,
    samples: Arc<Mutex<Vec<i16>>>,
}

impl Recorder {
    /// The samples recorded so far.
    pub fn snapshot(&self) -> Vec<i16> {
        self.samples.lock().unwrap().clone()
    }

    /// Waits (bounded by [`DEVICE_WAIT`]) until `cond` holds for the samples so far.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&[i16]) -> bool) -> Vec<i16> {
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

/// Start of the first second (50 chunks of 20 ms, chunk-aligned) in which at least 45 of the
/// 20 ms chunks peak above 1000 (of 32767), if any: sound that has settled (the start can be a
/// short burst and a gap), tolerating a few dropouts on a loaded machine.
pub fn steady_second(s: &[i16]) -> Option<usize> {
    let loud: Vec<bool> = s
        .chunks_exact(960)
        .map(|c| c.iter().any(|x| x.unsigned_abs() > 1000))
        .collect();
    loud.windows(50)
        .position(|w| w.iter().filter(|&&l| l).count() >= 45)
        .map(|i| i * 960)
}
