//! Calls end to end: real relay (with its TURN server), real clients, signalling inside MLS,
//! real WebRTC over loopback, headless tone sources and recordings.

use std::path::Path;
use std::time::Duration;

use cove::Device;
use cove::call::{self, CallError, CallOptions, CallReport};
use cove::config::Home;
use cove_core::Content;
use cove_core::call::{CallId, CallMessage, CallSignal};
use cove_media::sframe::EXPORTER_LABEL;
use cove_media::source::{AudioInput, dominant_frequency};
use cove_server::{Relay, RelayConfig, RelayHandle, StoreKind};

use crate::support::*;

const CANDIDATES: [f64; 8] = [220.0, 330.0, 440.0, 550.0, 660.0, 880.0, 1000.0, 1320.0];

/// A relay with a TURN server on 127.0.0.1, in a data directory that outlives it.
async fn relay_with_turn(dir: &Path) -> RelayHandle {
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("relay"));
    config.store = StoreKind::Sqlite;
    config.limits = cove_test_utils::test_limits();
    config.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    Relay::start(config).await.unwrap()
}

/// alice and bob in group `talk`.
async fn pair(dir: &Path, server: &str, ca: &Path) -> (Device, Device) {
    let home = |n: &str| Home::new(dir.join(n));
    let alice = register(&home("alice"), server, "alice", ca).await;
    let mut bob = register(&home("bob"), server, "bob", ca).await;
    alice.create_group("talk").await.unwrap();
    alice.add_users("talk", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;
    (alice, bob)
}

fn options(tone: f32, record: Option<&Path>, duration: Option<u64>) -> CallOptions {
    CallOptions {
        audio: Some(AudioInput::Tone(tone)),
        record: record.map(Path::to_owned),
        duration: duration.map(Duration::from_secs),
        ring_timeout: WAIT,
        ..CallOptions::default()
    }
}

/// Bob answers in the background (until alice hangs up); alice calls for `secs` seconds.
async fn call_and_answer(
    mut alice: Device,
    mut bob: Device,
    caller: CallOptions,
    callee: CallOptions,
) -> (CallReport, CallReport, Device, Device) {
    let answering = tokio::spawn(async move {
        let report = call::answer(&mut bob, Some("talk"), &callee).await;
        (report, bob)
    });
    let placed = call::place(&mut alice, "talk", &caller).await.unwrap();
    let (answered, bob) = answering.await.unwrap();
    (placed, answered.unwrap(), alice, bob)
}

fn read_wav(path: &Path) -> Vec<i16> {
    let r = hound::WavReader::open(path).unwrap();
    r.into_samples::<i16>().map(|s| s.unwrap()).collect()
}

/// Bob's recording of alice is a 440 Hz tone in at least 95% of its 20 ms frames, and bob
/// decoded at least 95% of the frames alice sent him.
fn assert_tone_received(placed: &CallReport, answered: &CallReport, record: &Path) {
    let sent = placed.stats.peers[0].audio_frames_sent;
    let received = answered.stats.peers[0].audio_frames_received;
    assert!(sent >= 50, "alice sent only {sent} frames");
    assert!(
        received * 100 >= sent * 95,
        "bob decoded {received} of the {sent} frames alice sent"
    );
    assert_eq!(answered.stats.peers[0].sframe_failures, 0);
    let pcm = read_wav(&record.join("audio-alice.wav"));
    let frames: Vec<_> = pcm.chunks_exact(960).skip(10).collect();
    assert!(frames.len() >= 40, "only {} frames recorded", frames.len());
    let good = frames
        .iter()
        .filter(|c| dominant_frequency(c, &CANDIDATES).map(|(f, _)| f) == Some(440.0))
        .count();
    assert!(
        good * 100 >= frames.len() * 95,
        "{good} of {} recorded frames at 440 Hz",
        frames.len()
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record.join("stats.json")).unwrap()).unwrap();
    assert!(
        stats["peers"][0]["dial_to_first_audio_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(stats["peers"][0]["packets_received"].as_u64().unwrap() > 0);
}

/// A 1:1 audio call placed with `cove call`'s driver and answered with `cove answer`'s:
/// signalling through the relay inside MLS, media over loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_call_records_the_440_hz_tone() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_turn(dir.path()).await;
    let server = format!("wss://{}", relay.local_addr());
    let (alice, bob) = pair(dir.path(), &server, relay.cert_path()).await;
    let record = dir.path().join("bob-rec");
    let (placed, answered, alice, bob) = call_and_answer(
        alice,
        bob,
        options(440.0, None, Some(3)),
        options(660.0, Some(&record), None),
    )
    .await;
    assert_eq!(placed.peers, vec!["bob".to_string()]);
    assert_eq!(answered.peers, vec!["alice".to_string()]);
    assert!(placed.used_turn, "the relay handed out TURN credentials");
    assert_tone_received(&placed, &answered, &record);
    // The caller heard the callee too.
    assert!(placed.stats.peers[0].audio_frames_received > 0);
    alice.close().await;
    bob.close().await;
    relay.shutdown().await;
}

/// Both sides forced to relayed candidates: media flows through the relay's TURN server.
/// Afterwards, neither the relay's data directory nor its logs (the real binary at
/// RUST_LOG=trace) hold SDP, ICE candidates, DTLS fingerprints or the media key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_through_the_relays_turn_server_leaves_no_secrets_on_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    std::fs::create_dir_all(&data).unwrap();
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let binary = workspace_binary("cove-server", "cove-server");
    let child = std::process::Command::new(binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(&data)
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed on drop if the test fails before its clean SIGTERM below.
    let mut child = KillOnDrop(child);
    let addr = {
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("relay exited").unwrap();
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        addr
    };
    let server = format!("wss://{addr}");
    let ca = data.join("tls").join("cert.pem");
    let (alice, bob) = pair(dir.path(), &server, &ca).await;
    let record = dir.path().join("bob-rec");
    let relay_only = |o: CallOptions| CallOptions {
        relay_only: true,
        ..o
    };
    let (placed, answered, alice, bob) = call_and_answer(
        alice,
        bob,
        relay_only(options(440.0, None, Some(3))),
        relay_only(options(660.0, Some(&record), None)),
    )
    .await;
    assert!(placed.used_turn && answered.used_turn);
    assert_tone_received(&placed, &answered, &record);

    // The media key of this call, as both members export it.
    let group = group_id(&alice, "talk").await;
    let call_id = CallId(hex::decode(&placed.call_id).unwrap().try_into().unwrap());
    let key = alice
        .session()
        .call(move |c| c.export_secret(&group, EXPORTER_LABEL, &call_id.0, 32))
        .await
        .unwrap()
        .unwrap();
    alice.close().await;
    bob.close().await;
    // SIGTERM: the relay flushes and exits.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();

    let mut haystack = std::fs::read(&log_path).unwrap();
    assert!(
        contains(&haystack, b"cove_server"),
        "scan sanity check: the relay logged nothing"
    );
    for f in files(&data) {
        haystack.extend(std::fs::read(f).unwrap());
    }
    assert!(contains(&haystack, b"alice"), "scan sanity check");
    let needles: Vec<Vec<u8>> = vec![
        b"a=fingerprint".to_vec(),
        b"a=ice-ufrag".to_vec(),
        b"a=candidate".to_vec(),
        b"typ relay".to_vec(),
        b"typ host".to_vec(),
        b"sha-256 ".to_vec(),
        b"v=0\r\n".to_vec(),
        key.clone(),
        hex::encode(&key).into_bytes(),
    ];
    for needle in &needles {
        assert!(
            !contains(&haystack, needle),
            "{:?} found on the relay",
            String::from_utf8_lossy(needle)
        );
    }
}

/// An offer whose SDP carries a different DTLS fingerprint than the one signed in the same
/// MLS message is refused by the callee before any media flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_fingerprint_in_the_offer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_turn(dir.path()).await;
    let server = format!("wss://{}", relay.local_addr());
    let (alice, mut bob) = pair(dir.path(), &server, relay.cert_path()).await;
    let record = dir.path().join("bob-rec");
    let answering = tokio::spawn(async move {
        let r = call::answer(&mut bob, Some("talk"), &options(660.0, Some(&record), None)).await;
        (r, bob, record)
    });

    // A real offer from a real media session, with one hex digit of the SDP's fingerprint
    // line changed; the signed `fingerprint` field keeps the true value.
    let (media, mut events) = cove_media::Call::new(
        cove_media::CallConfig::default(),
        0,
        cove_media::EpochKey::new(1, &[1; 32]).unwrap(),
        [0, 1],
    )
    .unwrap();
    media.dial("bob", Some(1)).await.unwrap();
    let offer = loop {
        if let Some(cove_media::CallEvent::LocalSignal {
            signal: cove_media::Signal::Offer(d),
            ..
        }) = events.recv().await
        {
            break d;
        }
    };
    let line = offer
        .sdp
        .lines()
        .find(|l| l.starts_with("a=fingerprint:"))
        .unwrap()
        .to_owned();
    let last = line.chars().last().unwrap();
    let swapped = format!(
        "{}{}",
        &line[..line.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let tampered = offer.sdp.replace(&line, &swapped);
    assert_ne!(tampered, offer.sdp);
    let bob_device = {
        let group = group_id(&alice, "talk").await;
        let members = alice
            .session()
            .call(move |c| c.group_members(&group))
            .await
            .unwrap();
        members
            .iter()
            .find(|m| m.user.as_str() == "bob")
            .unwrap()
            .device
    };
    let group = group_id(&alice, "talk").await;
    let message = CallMessage {
        call_id: CallId([5; 16]),
        to: Some(bob_device),
        signal: CallSignal::Offer {
            sdp: tampered,
            fingerprint: offer.fingerprint.clone(),
            video: false,
        },
    };
    alice
        .session()
        .op(WAIT, move |c| {
            c.send_content(cove::session::now_ms(), group, Content::Call(message))
        })
        .await
        .unwrap()
        .unwrap();

    let (result, bob, record) = answering.await.unwrap();
    match result {
        Err(CallError::Refused { peer, reason }) => {
            assert_eq!(peer, "alice");
            assert!(reason.contains("fingerprint"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // No media was received.
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record.join("stats.json")).unwrap())
            .unwrap_or(serde_json::Value::Null);
    let frames = stats["peers"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|s| s["audio_frames_received"].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .unwrap_or(0);
    assert_eq!(frames, 0);
    media.end().await;
    alice.close().await;
    bob.close().await;
    relay.shutdown().await;
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A three-party call: alice rings bob and carol, both answer, bob (the lower leaf index of
/// the two) dials carol, and everyone hears both others. Alice also sends video (the test
/// pattern), which both receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_party_mesh_call_with_video() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_turn(dir.path()).await;
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_owned();
    let home = |n: &str| Home::new(dir.path().join(n));
    let mut alice = register(&home("alice"), &server, "alice", &ca).await;
    let mut bob = register(&home("bob"), &server, "bob", &ca).await;
    let mut carol = register(&home("carol"), &server, "carol", &ca).await;
    alice.create_group("talk").await.unwrap();
    alice
        .add_users("talk", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    let answer = |mut device: Device, tone: f32| {
        let options = options(tone, None, Some(4));
        tokio::spawn(async move {
            let r = call::answer(&mut device, Some("talk"), &options).await;
            (r, device)
        })
    };
    let bob_task = answer(bob, 660.0);
    let carol_task = answer(carol, 880.0);
    let caller = CallOptions {
        video: Some("pattern".parse().unwrap()),
        ..options(440.0, None, Some(4))
    };
    let placed = call::place(&mut alice, "talk", &caller).await.unwrap();
    let (bob_report, bob) = bob_task.await.unwrap();
    let (carol_report, carol) = carol_task.await.unwrap();
    let (bob_report, carol_report) = (bob_report.unwrap(), carol_report.unwrap());
    for (who, report, others) in [
        ("alice", &placed, ["bob", "carol"]),
        ("bob", &bob_report, ["alice", "carol"]),
        ("carol", &carol_report, ["alice", "bob"]),
    ] {
        let heard: Vec<&str> = report
            .stats
            .peers
            .iter()
            .filter(|p| p.audio_frames_received > 0)
            .map(|p| p.peer.as_str())
            .collect();
        assert_eq!(heard, others, "{who} heard {heard:?}: {:?}", report.stats);
    }
    for report in [&bob_report, &carol_report] {
        let from_alice = report
            .stats
            .peers
            .iter()
            .find(|p| p.peer == "alice")
            .unwrap();
        assert!(from_alice.video_frames_received > 0, "{:?}", report.stats);
        assert_eq!(from_alice.sframe_failures, 0);
    }
    alice.close().await;
    bob.close().await;
    carol.close().await;
    relay.shutdown().await;
}

/// During a three-party call alice removes carol from the group: alice and bob export the
/// next epoch's key and rekey, hang up carol's sessions and keep talking; carol's call ends
/// with her removal and her client never gets the new epoch (so it cannot derive the media
/// key used after the rekey).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_removed_during_a_call_is_cut_off_by_the_rekey() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_turn(dir.path()).await;
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_owned();
    let home = |n: &str| Home::new(dir.path().join(n));
    let mut alice = register(&home("alice"), &server, "alice", &ca).await;
    let mut bob = register(&home("bob"), &server, "bob", &ca).await;
    let mut carol = register(&home("carol"), &server, "carol", &ca).await;
    alice.create_group("talk").await.unwrap();
    alice
        .add_users("talk", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    let group = group_id(&alice, "talk").await;
    let epoch_before = alice.epoch_state(group).await.unwrap().unwrap().0;
    let answer = |mut device: Device, tone: f32| {
        let options = options(tone, None, Some(5));
        tokio::spawn(async move {
            let r = call::answer(&mut device, Some("talk"), &options).await;
            (r, device)
        })
    };
    let bob_task = answer(bob, 660.0);
    let carol_task = answer(carol, 880.0);
    // Alice's session handle, to remove carol while her device runs the call.
    let session = alice.session().clone();
    let remover = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let carol = names(&["carol"]);
        session
            .op(WAIT, move |c| {
                c.remove_users(cove::session::now_ms(), "talk", &carol)
            })
            .await
            .unwrap()
            .unwrap();
    });
    let placed = call::place(&mut alice, "talk", &options(440.0, None, Some(5)))
        .await
        .unwrap();
    remover.await.unwrap();
    let (bob_report, bob) = bob_task.await.unwrap();
    let (carol_report, carol) = carol_task.await.unwrap();
    let bob_report = bob_report.unwrap();
    carol_report.unwrap(); // ended by the removal, not an error

    // Alice and bob moved to the next epoch; carol's client did not.
    let (alice_epoch, _) = alice.epoch_state(group).await.unwrap().unwrap();
    assert!(alice_epoch > epoch_before);
    let carol_epoch = carol.epoch_state(group).await.unwrap().map(|e| e.0);
    assert!(
        carol_epoch.is_none_or(|e| e == epoch_before),
        "carol reached epoch {carol_epoch:?}"
    );
    // Alice and bob kept hearing each other for the whole call, carol only until removed.
    let frames = |r: &CallReport, peer: &str| {
        r.stats
            .peers
            .iter()
            .find(|p| p.peer == peer)
            .map_or(0, |p| p.audio_frames_received)
    };
    let alice_from_bob = frames(&placed, "bob");
    let bob_from_alice = frames(&bob_report, "alice");
    let alice_from_carol = frames(&placed, "carol");
    assert!(
        bob_from_alice > 150 && alice_from_bob > 150,
        "alice/bob frames after the rekey: {alice_from_bob}/{bob_from_alice}"
    );
    assert!(
        alice_from_carol < alice_from_bob,
        "carol's media stopped at her removal ({alice_from_carol} vs {alice_from_bob})"
    );
    alice.close().await;
    bob.close().await;
    carol.close().await;
    relay.shutdown().await;
}

/// The commands as a user runs them in two terminals: `cove answer` waits, `cove call`
/// dials; the answering side records audio and stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cove_call_and_cove_answer_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_turn(dir.path()).await;
    let server = format!("wss://{}", relay.local_addr());
    let (alice, bob) = pair(dir.path(), &server, relay.cert_path()).await;
    alice.close().await;
    bob.close().await;
    let cove = workspace_binary("cove-cli", "cove");
    let record = dir.path().join("rec");
    let answering = tokio::task::spawn_blocking({
        let cove = cove.clone();
        let home = dir.path().join("bob");
        let record = record.clone();
        move || {
            std::process::Command::new(cove)
                .arg("--home")
                .arg(home)
                .args(["answer", "talk", "--wait", "60", "--record"])
                .arg(record)
                .output()
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let call = tokio::task::spawn_blocking({
        let cove = cove.clone();
        let home = dir.path().join("alice");
        move || {
            std::process::Command::new(cove)
                .arg("--home")
                .arg(home)
                .args(["call", "talk", "--duration", "2", "--ring-timeout", "60"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let answered = answering.await.unwrap();
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(call.status.success(), "cove call: {}", text(&call));
    assert!(
        answered.status.success(),
        "cove answer: {}",
        text(&answered)
    );
    assert!(text(&call).contains("bob answered"), "{}", text(&call));
    assert!(text(&answered).contains("incoming call from alice"));
    assert!(record.join("audio-alice.wav").exists());
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record.join("stats.json")).unwrap()).unwrap();
    assert!(stats["peers"][0]["audio_frames_received"].as_u64().unwrap() > 0);
    // A group that does not exist is a clear error.
    let bad = std::process::Command::new(&cove)
        .arg("--home")
        .arg(dir.path().join("alice"))
        .args(["call", "no-such-group"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).contains("no group named"), "{}", text(&bad));
    relay.shutdown().await;
}
