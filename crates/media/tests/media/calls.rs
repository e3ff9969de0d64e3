//! Real WebRTC calls over loopback: audio, video, TURN relay-only, TURN credentials against
//! the running TURN server, 3-party mesh, tampered fingerprint, rekey after removal. Signalling
//! is passed directly between in-process calls (the core would carry the same values inside
//! MLS). Nothing here passes or fails on a wall-clock window: tests wait for events or counts,
//! with [`WAIT`] only as the bound that stops a hung test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cove_media::CallSignal;
use cove_media::IceServer;
use cove_media::call::{Call, CallConfig, CallEvent};
use cove_media::session::ControlMessage;
use cove_media::sframe::EpochKey;
use cove_media::source::{
    AudioInput, AudioOutput, VideoInput, dominant_frequency, pattern_bar_match,
};
use cove_turn::{
    REASON_BAD_CREDENTIALS, REASON_EXPIRED, TurnCredentials, TurnStats, start_turn_server,
    turn_credentials,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use turn::client::{Client as TurnClient, ClientConfig as TurnClientConfig};
use webrtc_util::Conn;

const WAIT: Duration = Duration::from_secs(30);

/// Calls between real audio devices (PulseAudio null sinks through ALSA).
#[cfg(feature = "devices")]
mod devices;

fn key(epoch: u64, byte: u8) -> EpochKey {
    EpochKey::new(epoch, &[byte; 32]).unwrap()
}

/// Polls `cond` until it holds. [`WAIT`] only stops a hung test; it is not what is checked.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Tamper = Arc<dyn Fn(&str, &str, &mut CallSignal) + Send + Sync>;

/// In-process signalling between calls, plus a log of every event for assertions.
struct Mesh {
    calls: Arc<Mutex<HashMap<String, (Call, u32)>>>,
    events: mpsc::UnboundedReceiver<(String, CallEvent)>,
    events_tx: mpsc::UnboundedSender<(String, CallEvent)>,
    signals: Arc<Mutex<Vec<(String, String, CallSignal)>>>,
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
    // Bob also plays what he receives into a WAV file (`--audio-out FILE.wav`).
    let bob_out = dir.path().join("bob-out.wav");
    let bob = mesh.add(
        "bob",
        1,
        CallConfig {
            audio_out: Some(AudioOutput::Wav(bob_out.clone())),
            ..audio_config(660.0, Some(dir.path()))
        },
        key(1, 7),
        &[0, 1],
    );
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, first_audio("bob", "alice")).await;
    mesh.wait_for(&mut seen, first_audio("alice", "bob")).await;
    // Three seconds of audio (150 frames of 20 ms) decoded by Bob.
    let from_alice = bob.peer_session("alice").unwrap();
    wait_until("Bob decoded 150 frames from Alice", || {
        from_alice.audio_frames_decoded() >= 150
    })
    .await;
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
    assert!(received >= 150, "bob decoded {received} frames");
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

    // The audio output got the same decoded audio.
    let played = read_wav(&bob_out);
    assert!(
        played.len() as u64 >= received * 960,
        "{} samples played",
        played.len()
    );
    let (f, share) = dominant_frequency(&played[9600..], &CANDIDATES).unwrap();
    assert_eq!(f, 440.0);
    assert!(
        share > 0.9,
        "440 Hz carries only {share} of the played energy"
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
    // Ten decoded frames, two of them recorded (every 5th).
    let from_alice = bob.peer_session("alice").unwrap();
    let recorded = dir.path().join("video-alice");
    wait_until("Bob decoded 10 frames and recorded 2", || {
        from_alice.video_frames_decoded() >= 10
            && std::fs::read_dir(&recorded).map_or(0, |d| d.count()) >= 2
    })
    .await;
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
    let turn = start_turn_server(
        "127.0.0.1:0".parse().unwrap(),
        "cove",
        secret,
        loopback_peers(),
    )
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
        if let CallSignal::Offer { sdp, .. } | CallSignal::Answer { sdp, .. } = s {
            let cands: Vec<_> = sdp
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
}

/// A TURN client on its own UDP socket, talking to `server`.
async fn turn_client(server: SocketAddr, username: &str, password: &str) -> TurnClient {
    let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let client = TurnClient::new(TurnClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: server.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

/// The error a refused `Allocate` ends in, as the TURN client reports the server's answer.
async fn allocate_error(server: SocketAddr, c: &TurnCredentials) -> String {
    let client = turn_client(server, &c.username, &c.password).await;
    let err = match client.allocate().await {
        Ok(relay) => panic!("allocated {:?} for {c:?}", relay.local_addr()),
        Err(turn::Error::Other(text)) => text,
        Err(e) => panic!("unexpected {e:?}"),
    };
    client.close().await.unwrap();
    err
}

/// Sends `payload` from the relay to `peer` and checks it arrives from the relayed address.
async fn relay_to(relay: &impl Conn, peer: &UdpSocket, payload: &[u8]) {
    relay
        .send_to(payload, peer.local_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .expect("nothing arrived through the relay")
        .unwrap();
    assert_eq!(&buf[..n], payload);
    assert_eq!(from, relay.local_addr().unwrap());
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_server_refuses_expired_and_forged_credentials() {
    let secret = b"turn-shared-secret-for-tests";
    let turn = start_turn_server(
        "127.0.0.1:0".parse().unwrap(),
        "cove",
        secret,
        loopback_peers(),
    )
    .await
    .unwrap();
    let server = turn.local_addr();
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);

    // Expired: correctly signed with the server's secret, expired over an hour ago.
    let expired = turn_credentials(
        secret,
        "eve",
        Duration::from_secs(600),
        now - Duration::from_secs(7200),
    )
    .unwrap();
    assert!(expired.expires_at < unix_now());
    assert_eq!(
        allocate_error(server, &expired).await,
        format!("Allocate error response (error 401: {REASON_EXPIRED})")
    );
    let stats = turn.stats();
    assert!(stats.refused_expired >= 1, "{stats:?}");
    assert_eq!(stats.refused_bad_credentials, 0);

    // Forged: signed with another secret.
    let forged = turn_credentials(
        b"wrong-secret-wrong-secret",
        "mallory",
        Duration::from_secs(600),
        now,
    )
    .unwrap();
    assert_eq!(
        allocate_error(server, &forged).await,
        format!("Allocate error response (error 401: {REASON_BAD_CREDENTIALS})")
    );
    // Forged: Eve's expired credential with its expiry moved a day ahead (HMAC no longer
    // matches the username).
    let extended = TurnCredentials {
        username: format!("{}:eve", unix_now() + day.as_secs()),
        ..expired.clone()
    };
    assert_eq!(
        allocate_error(server, &extended).await,
        format!("Allocate error response (error 401: {REASON_BAD_CREDENTIALS})")
    );
    let stats = turn.stats();
    assert!(stats.refused_bad_credentials >= 2, "{stats:?}");
    let refused_expired = stats.refused_expired;

    // Valid: an allocation on the server's IP that relays both ways.
    let valid = turn_credentials(secret, "alice", Duration::from_secs(600), now).unwrap();
    let client = turn_client(server, &valid.username, &valid.password).await;
    let relay = client.allocate().await.unwrap();
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip(), server.ip());
    assert_ne!(relayed, server);
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay_to(&relay, &peer, b"through the relay").await;
    peer.send_to(b"and back", relayed).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(WAIT, relay.recv_from(&mut buf))
        .await
        .expect("nothing came back through the relay")
        .unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"and back"[..], peer.local_addr().unwrap())
    );
    relay.close().await.unwrap();
    client.close().await.unwrap();
    let stats = turn.stats();
    assert_eq!(stats.refused_expired, refused_expired, "{stats:?}");
    turn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_allocation_outlives_its_credential_but_a_new_one_is_refused() {
    let secret = b"turn-shared-secret-for-tests";
    let turn = start_turn_server(
        "127.0.0.1:0".parse().unwrap(),
        "cove",
        secret,
        loopback_peers(),
    )
    .await
    .unwrap();
    let server = turn.local_addr();
    // A short-lived credential: it expires at the next whole second plus two.
    let c = turn_credentials(secret, "carol", Duration::from_secs(3), SystemTime::now()).unwrap();
    let client = turn_client(server, &c.username, &c.password).await;
    let relay = client.allocate().await.unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay_to(&relay, &peer, b"before expiry").await;
    assert_eq!(turn.stats(), TurnStats::default());

    wait_until("the credential expired", || unix_now() > c.expires_at).await;
    // A new allocation with the expired credential is refused...
    assert_eq!(
        allocate_error(server, &c).await,
        format!("Allocate error response (error 401: {REASON_EXPIRED})")
    );
    assert!(turn.stats().refused_expired >= 1);
    let refused = turn.stats().refused_expired;
    // ...while the allocation made with it still gets new permissions (a peer on another
    // loopback IP needs a CreatePermission) and relays to them...
    let other_peer = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    relay_to(&relay, &other_peer, b"after expiry").await;
    relay_to(&relay, &peer, b"old peer too").await;
    let stats = turn.stats();
    assert!(stats.permissions_after_expiry >= 1, "{stats:?}");
    // ...and is refreshed (closing it is a Refresh with lifetime 0).
    relay.close().await.unwrap();
    wait_until("the closing Refresh succeeded", || {
        turn.stats().refreshes_after_expiry >= 1
    })
    .await;
    assert_eq!(turn.stats().refused_expired, refused);
    client.close().await.unwrap();
    turn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_outlives_its_turn_credential() {
    let secret = b"turn-shared-secret-for-tests";
    let turn = start_turn_server(
        "127.0.0.1:0".parse().unwrap(),
        "cove",
        secret,
        loopback_peers(),
    )
    .await
    .unwrap();
    // Credentials valid for a few seconds (the allocations are made when the call is set up,
    // well within them); the clients refresh their allocations every second.
    let creds: Vec<_> = ["alice", "bob"]
        .iter()
        .map(|u| turn_credentials(secret, u, Duration::from_secs(6), SystemTime::now()).unwrap())
        .collect();
    let expires_at = creds.iter().map(|c| c.expires_at).max().unwrap();
    let cfg = |c: &TurnCredentials, tone: f32| CallConfig {
        relay_only: true,
        ice_servers: vec![IceServer {
            urls: vec![turn.url()],
            username: c.username.clone(),
            credential: c.password.clone(),
        }],
        turn_refresh_interval: Some(Duration::from_secs(1)),
        ..audio_config(tone, None)
    };
    let mut mesh = Mesh::new();
    let alice = mesh.add("alice", 0, cfg(&creds[0], 440.0), key(1, 2), &[0, 1]);
    let bob = mesh.add("bob", 1, cfg(&creds[1], 660.0), key(1, 2), &[0, 1]);
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    mesh.wait_for(&mut seen, first_audio("bob", "alice")).await;
    mesh.wait_for(&mut seen, first_audio("alice", "bob")).await;

    wait_until("the credentials expired", || unix_now() > expires_at).await;
    // Both allocations get refreshed after expiry (a refused refresh ends the wait at once).
    wait_until("4 refreshes after expiry", || {
        let s = turn.stats();
        s.refreshes_after_expiry >= 4 || s.refused_expired > 0
    })
    .await;
    let stats = turn.stats();
    assert_eq!(stats.refused_expired, 0, "{stats:?}");
    assert_eq!(stats.refused_bad_credentials, 0, "{stats:?}");
    // Media still flows through the relay: another second of audio each way.
    let (at_bob, at_alice) = (
        bob.peer_session("alice").unwrap(),
        alice.peer_session("bob").unwrap(),
    );
    let (b0, a0) = (
        at_bob.audio_frames_decoded(),
        at_alice.audio_frames_decoded(),
    );
    wait_until("50 more frames each way", || {
        at_bob.audio_frames_decoded() >= b0 + 50 && at_alice.audio_frames_decoded() >= a0 + 50
    })
    .await;
    assert!(at_bob.is_connected() && at_alice.is_connected());
    alice.end().await;
    bob.end().await;
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
    for call in [&a, &b, &c] {
        for s in call.sessions() {
            wait_until(&format!("11 frames from {}", s.peer), || {
                s.audio_frames_decoded() > 10
            })
            .await;
        }
    }
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
    mesh.tamper = Some(Arc::new(|_from, _to, s: &mut CallSignal| {
        if let CallSignal::Offer { sdp, .. } = s {
            *sdp = sdp
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
    // Refused before media: nothing connected or decoded up to the refusal...
    assert!(
        !seen.iter().any(|(_, e)| matches!(
            e,
            CallEvent::Connected { .. } | CallEvent::FirstAudio { .. }
        )),
        "{seen:?}"
    );
    assert!(bob.peer_session("alice").is_none());
    let to_bob = alice.peer_session("bob").unwrap();
    assert!(!to_bob.is_connected());
    assert_eq!(to_bob.audio_frames_decoded(), 0);
    alice.end().await;
    bob.end().await;
    // ...and no answer was ever produced, so Alice's side had nothing to connect to (a
    // connection needs Bob's answer: this, not a quiet period, is why none came later).
    assert!(
        !mesh
            .signals
            .lock()
            .unwrap()
            .iter()
            .any(|(_, _, s)| matches!(s, CallSignal::Answer { .. }))
    );
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
    // B learns the new key first (as the core would install it on the Commit before A sends
    // under it), then A switches: every frame A encrypts from here on is epoch 2.
    b.rekey(key(2, 0x22), [0, 1]).unwrap();
    let at_c = c.peer_session("a").unwrap();
    let at_b = b.peer_session("a").unwrap();
    assert_eq!(at_c.sframe_failures(), 0);
    a.rekey(key(2, 0x22), [0, 1]).unwrap();
    // Frames A encrypted under epoch 1 before the switch may still be in flight. Once C has
    // refused 5 epoch-2 frames (100 ms of audio after them, in order on loopback), those
    // have arrived: C's decoded count is final from here.
    wait_until("C refused 5 frames", || at_c.sframe_failures() >= 5).await;
    let c_decoded = at_c.audio_frames_decoded();
    let c_failed = at_c.sframe_failures();
    let b_decoded = at_b.audio_frames_decoded();
    // Another second of A's audio: B decodes it, C refuses it.
    wait_until("C refused 50 more frames and B decoded 50 more", || {
        at_c.sframe_failures() >= c_failed + 50 && at_b.audio_frames_decoded() >= b_decoded + 50
    })
    .await;
    assert_eq!(
        at_c.audio_frames_decoded(),
        c_decoded,
        "C decoded media after the rekey"
    );
    assert_eq!(at_b.sframe_failures(), 0);
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
    mesh.tamper = Some(Arc::new(move |_from, _to, s: &mut CallSignal| {
        if let CallSignal::Offer {
            sdp, fingerprint, ..
        } = s
        {
            *sdp = sdp
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
            *fingerprint = fake.to_owned();
        }
    }));
    let alice = mesh.add("alice", 0, audio_config(440.0, None), key(1, 1), &[0, 1]);
    let bob = mesh.add("bob", 1, audio_config(440.0, None), key(1, 1), &[0, 1]);
    alice.dial("bob", Some(1)).await.unwrap();
    let mut seen = Vec::new();
    // Bob's DTLS handshake fails (Alice's certificate does not match), so Bob's connection
    // closes; Bob sent no media keys, so none can flow after it.
    mesh.wait_for(&mut seen, |w, e| {
        w == "bob" && matches!(e, CallEvent::Closed { peer } | CallEvent::Failed { peer, .. } if peer == "alice")
    })
    .await;
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
            .filter(|(f, _, s)| f == from && matches!(s, CallSignal::Candidate { .. }))
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
    mesh.wait_for(&mut seen, |w, e| {
        w == "alice" && matches!(e, CallEvent::Connected { .. })
    })
    .await;
    // The control channel is open both ways once a text from Alice reaches Bob.
    let to_bob = alice.peer_session("bob").unwrap();
    let sentinel = ControlMessage::Text {
        text: "channel open".into(),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while to_bob.send_control(&sentinel).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "control channel never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh.wait_for(&mut seen, |w, e| {
        w == "bob" && matches!(e, CallEvent::Control { message, .. } if *message == sentinel)
    })
    .await;
    // Connect-time key frames (session start, Connected) are behind us after two more frames.
    let sent = to_bob.video_frames_sent();
    wait_until("Alice sent 2 more frames", || {
        to_bob.video_frames_sent() >= sent + 2
    })
    .await;
    let before = to_bob.video_keyframes_sent();
    assert!(before >= 1);
    // Periodic key frames are off: 20 more frames, none of them a key frame.
    let sent = to_bob.video_frames_sent();
    wait_until("Alice sent 20 more frames", || {
        to_bob.video_frames_sent() >= sent + 20
    })
    .await;
    assert_eq!(
        to_bob.video_keyframes_sent(),
        before,
        "periodic key frames are off"
    );
    bob.peer_session("alice").unwrap().request_keyframe().await;
    wait_until("a key frame follows the request", || {
        to_bob.video_keyframes_sent() > before
    })
    .await;
    let stats = bob.end().await;
    assert_eq!(stats.peers[0].keyframe_requests_sent, 1);
    alice.end().await;
}

/// The peers of these tests are on this machine: a TURN server that relays to loopback (a
/// real one never does, see `cove_turn::peers`).
fn loopback_peers() -> cove_turn::PeerPolicy {
    cove_turn::PeerPolicy::allowing(["127.0.0.0/8".parse().unwrap()])
}
