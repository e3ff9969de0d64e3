//! A call between real audio devices (feature `devices`): a private PulseAudio daemon with
//! null sinks, reached through ALSA PCMs (cpal's ALSA host and the ALSA pulse plugin).
//!
//! Alice's microphone is sink A's monitor, into which `pacat` plays a 440 Hz tone; Bob's
//! speaker is sink B, whose monitor `parec` records; sink C is never used (the control).
//!
//! The fixture is `cove_test_utils::pulse` (see there for what it needs and when it skips).

use std::sync::OnceLock;

use cove_media::call::CallConfig;
use cove_media::source::{AudioInput, AudioOutput, dominant_frequency};

use cove_test_utils::pulse::{PulseFixture, steady_second};

use super::{CANDIDATES, Mesh, first_audio, key};

/// Points alsa-lib at the fixture's PCMs: `ALSA_CONFIG_PATH` is read when alsa-lib first loads
/// its configuration, so it is set once, before any device is opened in this process.
#[allow(unsafe_code)] // std::env::set_var, see SAFETY below
fn install_alsa_config(value: String) {
    static DONE: OnceLock<String> = OnceLock::new();
    let first = DONE.get_or_init(|| {
        // SAFETY: set once, before any ALSA or PulseAudio client code runs in this process;
        // the other tests of this binary read no environment variables from C code.
        unsafe { std::env::set_var("ALSA_CONFIG_PATH", &value) };
        value.clone()
    });
    assert_eq!(
        *first, value,
        "one PulseAudio fixture per test process (alsa-lib keeps its first configuration)"
    );
}

/// A 440 Hz tone played into Alice's input device crosses a real WebRTC call and comes out of
/// Bob's output device at 440 Hz; an unused sink stays silent meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tone_through_real_devices_reaches_bobs_speaker() {
    let Some(pulse) = PulseFixture::start() else {
        return;
    };
    install_alsa_config(pulse.alsa_config_path());
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

    // The control: sink C, recording since before the call, holds at least 1 s, all silent.
    let c = at_c
        .wait_for("1 s recorded on sink C", |s| s.len() >= 48_000)
        .await;
    let peak = c.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
    assert!(c.len() >= 48_000);
    assert!(peak < 64, "sink C (unused) has sound: peak {peak}");

    alice.end().await;
    bob.end().await;
}
