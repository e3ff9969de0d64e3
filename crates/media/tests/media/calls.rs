//! Real WebRTC calls over loopback: audio, video, TURN relay-only, 3-party mesh, tampered
//! fingerprint, rekey after removal. Signalling is passed directly between in-process calls
//! (the core would carry the same values inside MLS).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cove_media::IceServer;
use cove_media::call::{Call, CallConfig, CallEvent};
use cove_media::session::{ControlMessage, SessionError, Signal};
use cove_media::sframe::EpochKey;
use cove_media::source::{AudioInput, VideoInput, dominant_frequency, pattern_bar_match};
use cove_media::turn_server::{start_turn_server, turn_credentials};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

fn key(epoch: u64, byte: u8) -> EpochKey {
    EpochKey::new(epoch, &[byte; 32]).unwrap()
}

type Tamper = Arc<dyn Fn(&str, &str, &mut Signal) + Send + Sync>;

/// In-process signalling between calls, plus a log of every event for assertions.
struct Mesh {
    calls: Arc<Mutex<HashMap<String, (Call, u32)>>>,
    events: mpsc::UnboundedReceiver<(String, CallEvent)>,
    events_tx: mpsc::UnboundedSender<(String, CallEvent)>,
    signals: Arc<Mutex<Vec<(String, String, Signal)>>>,
    tamper: Option<Tamper>,
}

impl Mesh {
    fn new() -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            calls: Arc::default(),
            events,
            events_tx,
            signals: Arc::default(),
            tamper: None,
        }
    }

    fn add(
        &self,
        name: &str,
        index: u32,
        config: CallConfig,
        epoch_key: EpochKey,
        members: &[u32],
    ) -> Call {
        let (call, mut rx) = Call::new(config, index, epoch_key, members.iter().copied()).unwrap();
        self.calls
            .lock()
            .unwrap()
            .insert(name.to_owned(), (call.clone(), index));
        let calls = self.calls.clone();
        let events = self.events_tx.clone();
        let signals = self.signals.clone();
        let tamper = self.tamper.clone();
        let me = name.to_owned();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let CallEvent::LocalSignal { peer, signal } = ev {
                    let mut signal = signal;
                    if let Some(t) = &tamper {
                        t(&me, &peer, &mut signal);
                    }
                    signals
                        .lock()
                        .unwrap()
                        .push((me.clone(), peer.clone(), signal.clone()));
                    let target = calls.lock().unwrap().get(&peer).cloned();
                    let my_index = calls.lock().unwrap().get(&me).map(|c| c.1);
                    if let Some((target, _)) = target {
                        let me = me.clone();
                        tokio::spawn(async move {
                            let _ = target.apply_signal(&me, my_index, signal).await;
                        });
                    }
                } else {
                    let _ = events.send((me.clone(), ev));
                }
            }
        });
        call
    }

    /// Waits until `pred` matches an event (all events seen are kept in `seen`).
    async fn wait_for(
        &mut self,
        seen: &mut Vec<(String, CallEvent)>,
        pred: impl Fn(&str, &CallEvent) -> bool,
    ) {
        if seen.iter().any(|(w, e)| pred(w, e)) {
            return;
        }
        tokio::time::timeout(WAIT, async {
            while let Some((who, ev)) = self.events.recv().await {
                let hit = pred(&who, &ev);
                seen.push((who, ev));
                if hit {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out; events so far: {seen:?}"));
    }

    /// Collects events for `d`.
    async fn drain_for(&mut self, seen: &mut Vec<(String, CallEvent)>, d: Duration) {
        let _ = tokio::time::timeout(d, async {
            while let Some(x) = self.events.recv().await {
                seen.push(x);
            }
        })
        .await;
    }
}

fn first_audio(at: &'static str, from: &'static str) -> impl Fn(&str, &CallEvent) -> bool {
    move |who, ev| who == at && matches!(ev, CallEvent::FirstAudio { peer, .. } if peer == from)
}

fn audio_config(tone: f32, record: Option<&std::path::Path>) -> CallConfig {
    CallConfig {
        audio: Some(AudioInput::Tone(tone)),
        record_dir: record.map(|p| p.to_owned()),
        ..CallConfig::default()
    }
}

fn read_wav(path: &std::path::Path) -> Vec<i16> {
    let r = hound::WavReader::open(path).unwrap();
    r.into_samples::<i16>().map(|s| s.unwrap()).collect()
}

const CANDIDATES: [f64; 8] = [220.0, 330.0, 440.0, 550.0, 660.0, 880.0, 1000.0, 1320.0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_call_records_the_440_hz_tone() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new();
    let alice = mesh.add("alice", 0, audio_config(440.0, None), key(1, 7), &[0, 1]);
    let bob = mesh.add(
        "bob",
        1,
        audio_config(660.0, Some(dir.path())),
        key(1, 7),
        &[0, 1],
    );
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, first_audio("bob", "alice")).await;
    mesh.wait_for(&mut seen, first_audio("alice", "bob")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alice_stats = alice.end().await;
    // Alice's hang-up reaches Bob on the control channel.
    mesh.wait_for(&mut seen, |w, e| {
        w == "bob"
            && matches!(e, CallEvent::Control { peer, message: ControlMessage::Hangup } if peer == "alice")
    })
    .await;
    let bob_stats = bob.end().await;

    let sent = alice_stats.peers[0].audio_frames_sent;
    let received = bob_stats.peers[0].audio_frames_received;
    assert!(sent >= 100, "alice sent {sent} frames");
    assert!(
        received * 100 >= sent * 95,
        "bob decoded {received} of {sent} frames"
    );
    assert_eq!(bob_stats.peers[0].sframe_failures, 0);

    let pcm = read_wav(&dir.path().join("audio-alice.wav"));
    assert!(pcm.len() as u64 >= received * 960);
    // Skip the first 200 ms (codec start-up), analyse the rest.
    let (f, share) = dominant_frequency(&pcm[9600..], &CANDIDATES).unwrap();
    assert_eq!(f, 440.0);
    assert!(share > 0.9, "440 Hz carries only {share} of the energy");
    // Every 20 ms frame of the recording is dominated by 440 Hz (>= 95% of frames).
    let frames: Vec<_> = pcm.chunks_exact(960).skip(10).collect();
    let good = frames
        .iter()
        .filter(|c| dominant_frequency(c, &CANDIDATES).map(|(f, _)| f) == Some(440.0))
        .count();
    assert!(
        good * 100 >= frames.len() * 95,
        "{good} of {} frames at 440 Hz",
        frames.len()
    );

    let text = std::fs::read_to_string(dir.path().join("stats.json")).unwrap();
    println!("bob's stats.json: {text}");
    let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        stats["peers"][0]["dial_to_first_audio_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(stats["peers"][0]["packets_received"].as_u64().unwrap() > 0);
    // Loopback jitter is a few milliseconds, not seconds (unit conversion check).
    assert!(stats["peers"][0]["jitter_ms"].as_f64().unwrap() < 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_shows_the_sent_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new();
    let sender_cfg = CallConfig {
        audio: Some(AudioInput::Silence),
        video: Some(VideoInput::Pattern {
            width: 320,
            height: 240,
        }),
        ..CallConfig::default()
    };
    let receiver_cfg = CallConfig {
        audio: None,
        record_dir: Some(dir.path().to_owned()),
        record_every_nth_frame: 5,
        ..CallConfig::default()
    };
    let alice = mesh.add("alice", 0, sender_cfg, key(3, 1), &[0, 1]);
    let bob = mesh.add("bob", 1, receiver_cfg, key(3, 1), &[0, 1]);
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, |w, e| {
        w == "bob" && matches!(e, CallEvent::FirstVideo { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frame = bob
        .peer_session("alice")
        .unwrap()
        .last_video_frame()
        .unwrap();
    assert_eq!((frame.width, frame.height), (320, 240));
    let score = pattern_bar_match(&frame, 24);
    assert!(score >= 0.875, "only {score} of the colour bars match");
    let stats = bob.end().await;
    alice.end().await;
    assert!(stats.peers[0].video_frames_received >= 10);
    let ppm = std::fs::read_dir(dir.path().join("video-alice"))
        .unwrap()
        .count();
    assert!(ppm >= 2, "{ppm} frames recorded");
    // A garbage frame does not look like the pattern (the check can fail).
    let black = cove_media::codec::I420Frame::new(320, 240).unwrap();
    assert!(pattern_bar_match(&black, 24) < 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_through_turn() {
    let secret = b"turn-shared-secret-for-tests";
    let turn = start_turn_server("127.0.0.1:0".parse().unwrap(), "cove", secret)
        .await
        .unwrap();
    let ice = |user: &str| {
        let c =
            turn_credentials(secret, user, Duration::from_secs(600), SystemTime::now()).unwrap();
        vec![IceServer {
            urls: vec![turn.url()],
            username: c.username,
            credential: c.password,
        }]
    };
    let mut mesh = Mesh::new();
    let cfg = |user: &str, tone: f32| CallConfig {
        relay_only: true,
        ice_servers: ice(user),
        ..audio_config(tone, None)
    };
    let alice = mesh.add("alice", 0, cfg("alice", 440.0), key(1, 2), &[0, 1]);
    let bob = mesh.add("bob", 1, cfg("bob", 660.0), key(1, 2), &[0, 1]);
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, first_audio("bob", "alice")).await;
    mesh.wait_for(&mut seen, first_audio("alice", "bob")).await;
    // Only relayed candidates were offered, on the TURN server's address.
    let signals = mesh.signals.lock().unwrap().clone();
    for (_, _, s) in &signals {
        if let Signal::Offer(d) | Signal::Answer(d) = s {
            let cands: Vec<_> = d
                .sdp
                .lines()
                .filter(|l| l.starts_with("a=candidate"))
                .collect();
            assert!(!cands.is_empty());
            assert!(cands.iter().all(|c| c.contains("typ relay")), "{cands:?}");
        }
    }
    alice.end().await;
    bob.end().await;
    turn.close().await.unwrap();

    // Expired or forged credentials are refused by the server (no relay, no call).
    let c = turn_credentials(
        b"wrong-secret-wrong-secret",
        "eve",
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap();
    let turn = start_turn_server("127.0.0.1:0".parse().unwrap(), "cove", secret)
        .await
        .unwrap();
    let eve_cfg = CallConfig {
        relay_only: true,
        ice_servers: vec![IceServer {
            urls: vec![turn.url()],
            username: c.username,
            credential: c.password,
        }],
        ..audio_config(440.0, None)
    };
    let mesh = Mesh::new();
    let eve = mesh.add("eve", 0, eve_cfg, key(1, 2), &[0, 1]);
    let _bob = mesh.add("bob", 1, audio_config(440.0, None), key(1, 2), &[0, 1]);
    let offer = eve.dial("bob", Some(1)).await;
    // Either gathering yields no relay candidate (the offer has none) or it times out.
    match offer {
        Err(SessionError::GatheringTimeout) => {}
        Ok(()) => {
            let signals = mesh.signals.lock().unwrap().clone();
            for (_, _, s) in &signals {
                if let Signal::Offer(d) = s {
                    assert!(!d.sdp.contains("typ relay"));
                }
            }
        }
        Err(e) => panic!("unexpected {e}"),
    }
    eve.end().await;
    turn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_party_mesh() {
    let mut mesh = Mesh::new();
    let members = [0, 1, 2];
    let a = mesh.add("a", 0, audio_config(440.0, None), key(5, 9), &members);
    let b = mesh.add("b", 1, audio_config(660.0, None), key(5, 9), &members);
    let c = mesh.add("c", 2, audio_config(880.0, None), key(5, 9), &members);
    a.dial("b", Some(1)).await.unwrap();
    a.dial("c", Some(2)).await.unwrap();
    b.dial("c", Some(2)).await.unwrap();
    let mut seen = Vec::new();
    for (at, from) in [
        ("a", "b"),
        ("a", "c"),
        ("b", "a"),
        ("b", "c"),
        ("c", "a"),
        ("c", "b"),
    ] {
        mesh.wait_for(&mut seen, first_audio(at, from)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for call in [&a, &b, &c] {
        let stats = call.stats().await;
        assert_eq!(stats.peers.len(), 2);
        for p in &stats.peers {
            assert!(p.audio_frames_received > 10, "{p:?}");
            assert_eq!(p.sframe_failures, 0);
        }
    }
    for call in [a, b, c] {
        call.end().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_fingerprint_is_refused_before_media() {
    let mut mesh = Mesh::new();
    // The relay (or anyone on the signalling path) swaps the DTLS fingerprint inside the SDP;
    // the signed fingerprint next to it is unchanged.
    mesh.tamper = Some(Arc::new(|_from, _to, s: &mut Signal| {
        if let Signal::Offer(d) = s {
            d.sdp = d
                .sdp
                .lines()
                .map(|l| {
                    if let Some(fp) = l.strip_prefix("a=fingerprint:sha-256 ") {
                        let flipped = if fp.starts_with("00") { "11" } else { "00" };
                        format!("a=fingerprint:sha-256 {flipped}{}", &fp[2..])
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\r\n");
        }
    }));
    let alice = mesh.add("alice", 0, audio_config(440.0, None), key(1, 1), &[0, 1]);
    let bob = mesh.add("bob", 1, audio_config(440.0, None), key(1, 1), &[0, 1]);
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, |w, e| {
        w == "bob" && matches!(e, CallEvent::Refused { .. })
    })
    .await;
    mesh.drain_for(&mut seen, Duration::from_secs(2)).await;
    assert!(
        !seen.iter().any(|(_, e)| matches!(
            e,
            CallEvent::Connected { .. } | CallEvent::FirstAudio { .. }
        )),
        "{seen:?}"
    );
    assert!(bob.peer_session("alice").is_none());
    // No answer was ever produced.
    assert!(
        !mesh
            .signals
            .lock()
            .unwrap()
            .iter()
            .any(|(_, _, s)| matches!(s, Signal::Answer(_)))
    );
    alice.end().await;
    bob.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_cannot_decrypt_after_rekey() {
    let mut mesh = Mesh::new();
    let members = [0, 1, 2];
    let silent = || CallConfig {
        audio: Some(AudioInput::Silence),
        ..CallConfig::default()
    };
    let a = mesh.add("a", 0, audio_config(440.0, None), key(1, 0x11), &members);
    let b = mesh.add("b", 1, silent(), key(1, 0x11), &members);
    let c = mesh.add("c", 2, silent(), key(1, 0x11), &members);
    a.dial("b", Some(1)).await.unwrap();
    a.dial("c", Some(2)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, first_audio("b", "a")).await;
    mesh.wait_for(&mut seen, first_audio("c", "a")).await;

    // C is removed: the group moves to epoch 2; A and B get the new key, C does not. The
    // connection A-C stays up (as a media relay or SFU would keep forwarding).
    a.rekey(key(2, 0x22), [0, 1]).unwrap();
    b.rekey(key(2, 0x22), [0, 1]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = |call: &Call, peer: &str| {
        let s = call.peer_session(peer).unwrap();
        (s.audio_frames_decoded(), s.sframe_failures())
    };
    let (c_before, c_fail_before) = count(&c, "a");
    let (b_before, _) = count(&b, "a");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (c_after, c_fail_after) = count(&c, "a");
    let (b_after, b_fail) = count(&b, "a");
    assert_eq!(c_after, c_before, "C decoded media after the rekey");
    assert!(
        c_fail_after >= c_fail_before + 50,
        "C saw {c_fail_after} failures"
    );
    assert!(
        b_after >= b_before + 50,
        "B stopped decoding: {b_before} -> {b_after}"
    );
    assert_eq!(b_fail, 0);
    for call in [a, b, c] {
        call.end().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_but_foreign_fingerprint_fails_dtls() {
    // A signer who commits to a fingerprint that is not its DTLS certificate's (or a
    // man in the middle whose certificate does not match the signed fingerprint): the SDP and
    // the signed value agree, but the DTLS handshake must fail, so no media is decoded.
    let mut mesh = Mesh::new();
    let fake = "sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
    mesh.tamper = Some(Arc::new(move |_from, _to, s: &mut Signal| {
        if let Signal::Offer(d) = s {
            d.sdp = d
                .sdp
                .lines()
                .map(|l| {
                    if l.starts_with("a=fingerprint:") {
                        format!("a=fingerprint:{fake}")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\r\n")
                + "\r\n";
            d.fingerprint = fake.to_owned();
        }
    }));
    let alice = mesh.add("alice", 0, audio_config(440.0, None), key(1, 1), &[0, 1]);
    let bob = mesh.add("bob", 1, audio_config(440.0, None), key(1, 1), &[0, 1]);
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.drain_for(&mut seen, Duration::from_secs(6)).await;
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, CallEvent::FirstAudio { .. })),
        "{seen:?}"
    );
    for call in [&alice, &bob] {
        for s in call.sessions() {
            assert_eq!(s.audio_frames_decoded(), 0);
        }
    }
    alice.end().await;
    bob.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_ice_call() {
    let mut mesh = Mesh::new();
    let cfg = |tone| CallConfig {
        trickle_ice: true,
        ..audio_config(tone, None)
    };
    let alice = mesh.add("alice", 0, cfg(440.0), key(1, 3), &[0, 1]);
    let bob = mesh.add("bob", 1, cfg(660.0), key(1, 3), &[0, 1]);
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, first_audio("bob", "alice")).await;
    mesh.wait_for(&mut seen, first_audio("alice", "bob")).await;
    let signals = mesh.signals.lock().unwrap().clone();
    let trickled = |from: &str| {
        signals
            .iter()
            .filter(|(f, _, s)| f == from && matches!(s, Signal::Candidate(_)))
            .count()
    };
    assert!(
        trickled("alice") >= 1 && trickled("bob") >= 1,
        "{signals:?}"
    );
    alice.end().await;
    bob.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframe_request_over_the_control_channel() {
    let mut mesh = Mesh::new();
    let sender_cfg = CallConfig {
        audio: None,
        video: Some(VideoInput::Pattern {
            width: 160,
            height: 120,
        }),
        // No periodic key frames: only the one on connect and requested ones.
        video_keyframe_interval: 100_000,
        ..CallConfig::default()
    };
    let receiver_cfg = CallConfig {
        audio: None,
        ..CallConfig::default()
    };
    let alice = mesh.add("alice", 0, sender_cfg, key(2, 4), &[0, 1]);
    let bob = mesh.add("bob", 1, receiver_cfg, key(2, 4), &[0, 1]);
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, |w, e| {
        w == "bob" && matches!(e, CallEvent::FirstVideo { .. })
    })
    .await;
    // Let the data channel open and any connect-time key frames settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to_bob = alice.peer_session("bob").unwrap();
    let before = to_bob.video_keyframes_sent();
    assert!(before >= 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        to_bob.video_keyframes_sent(),
        before,
        "periodic key frames are off"
    );
    bob.peer_session("alice").unwrap().request_keyframe().await;
    tokio::time::timeout(WAIT, async {
        while to_bob.video_keyframes_sent() == before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no key frame after the request");
    let stats = bob.end().await;
    assert_eq!(stats.peers[0].keyframe_requests_sent, 1);
    alice.end().await;
}
