//! Calls end to end: real relay (with its TURN server), real clients, signalling inside MLS,
//! real WebRTC over loopback, headless tone sources and recordings.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use cove::Device;
use cove::call::{self, CallError, CallOptions, CallReport};
use cove::config::Home;
use cove::{Event, GroupId, SessionEvent};
use cove_core::Content;
use cove_core::call::{CallAction, CallId, CallMessage, CallSignal, Calls, Peer};
use cove_core::cove_store::{SqliteStore, Store as _};
use cove_media::CallEvent;
use cove_media::sframe::{self, EXPORTER_LABEL, SframeError};
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
    // The peers are on this machine: let the TURN server relay to loopback.
    config.turn_peers = cove_turn::PeerPolicy::allowing(["127.0.0.0/8".parse().unwrap()]);
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

/// A call sending a `tone`, recording into `record`, with no time limit: the calls of these
/// tests end when the test hangs up, once what it waits for has happened.
pub(crate) fn options(tone: f32, record: Option<&Path>) -> CallOptions {
    CallOptions {
        audio: Some(AudioInput::Tone(tone)),
        record: record.map(Path::to_owned),
        duration: None,
        ring_timeout: WAIT,
        ..CallOptions::default()
    }
}

/// Bob answers in the background and alice calls, both with no time limit, until
/// `recorded` holds for the recordings (checked every 50 ms, up to [`WAIT`]); then the
/// test hangs up for bob and for alice (see [`hang_up_as`]) and both drivers finish.
pub(crate) async fn call_and_answer(
    alice: Device,
    bob: Device,
    caller: CallOptions,
    callee: CallOptions,
    recorded: impl Fn() -> bool,
) -> (CallReport, CallReport, Device, Device) {
    let group = group_id(&alice, "talk").await;
    let (alice_session, bob_session) = (alice.session().clone(), bob.session().clone());
    let mut answering = spawn_answer(bob, callee);
    let mut placing = tokio::spawn(async move {
        let mut alice = alice;
        let report = call::place(&mut alice, "talk", &caller).await;
        (report, alice)
    });
    wait_for("the recordings", recorded).await;
    hang_up_as(&bob_session, group).await;
    hang_up_as(&alice_session, group).await;
    let ((placed, alice), (answered, bob)) = tokio::time::timeout(WAIT, async {
        tokio::try_join!(&mut placing, &mut answering)
    })
    .await
    .expect("both calls ended after the hang-ups")
    .unwrap();
    (placed.unwrap(), answered.unwrap(), alice, bob)
}

/// `device` answers the next call of `talk` with `options`, in the background.
fn spawn_answer(
    mut device: Device,
    options: CallOptions,
) -> tokio::task::JoinHandle<(Result<CallReport, CallError>, Device)> {
    tokio::spawn(async move {
        let r = call::answer(&mut device, Some("talk"), &options).await;
        (r, device)
    })
}

/// Waits (up to [`WAIT`]) for a call task to finish.
async fn finished<T>(task: tokio::task::JoinHandle<T>, who: &str) -> T {
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap_or_else(|_| panic!("{who}'s call did not end"))
        .unwrap()
}

/// Polls (every 50 ms, up to [`WAIT`]) until `done` holds.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Audio frames in a recording so far: 20 ms of 48 kHz mono 16-bit PCM is 1920 bytes,
/// after the 44-byte WAV header (the writer buffers, so this trails by a few frames).
pub(crate) fn recorded_frames(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len().saturating_sub(44) / 1920)
}

/// Video frames saved in a recording directory so far.
fn recorded_pictures(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Hangs up the running call of `group` on behalf of `session`'s device: sends the
/// `HangUp` its driver sends when hanging up, to every participant (the others' drivers
/// drop it from the call and end when nobody is left; its own driver ignores its own
/// message, so every participant is hung up for in turn). The call id is the one in the
/// call signalling the device has stored.
async fn hang_up_as(session: &cove::Session<SqliteStore>, group: GroupId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let call_id = loop {
        let stored = session
            .call(move |c| c.store().messages(&group))
            .await
            .unwrap()
            .unwrap();
        let found = stored.iter().rev().find_map(|m| {
            match cove_core::Envelope::decode(&m.content).ok()?.content {
                Content::Call(msg) => Some(msg.call_id),
                _ => None,
            }
        });
        if let Some(id) = found {
            break id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call signalling stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let message = CallMessage {
        call_id,
        to: None,
        signal: CallSignal::HangUp,
    };
    session
        .call(move |c| c.send_content(cove::session::now_ms(), group, Content::Call(message)))
        .await
        .unwrap()
        .unwrap();
}

fn read_wav(path: &Path) -> Vec<i16> {
    let r = hound::WavReader::open(path).unwrap();
    r.into_samples::<i16>().map(|s| s.unwrap()).collect()
}

/// Bob's recording of alice is a 440 Hz tone in at least 95% of its 20 ms frames, and bob
/// decoded at least 95% of the frames alice sent him.
pub(crate) fn assert_tone_received(placed: &CallReport, answered: &CallReport, record: &Path) {
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
/// signalling through the relay inside MLS, media over loopback. It lasts until each side
/// recorded 150 frames (3 s) of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_call_records_the_440_hz_tone() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_turn(dir.path()).await;
    let server = format!("wss://{}", relay.local_addr());
    let (alice, bob) = pair(dir.path(), &server, relay.cert_path()).await;
    let record = dir.path().join("bob-rec");
    let alice_record = dir.path().join("alice-rec");
    let (placed, answered, alice, bob) = call_and_answer(
        alice,
        bob,
        options(440.0, Some(&alice_record)),
        options(660.0, Some(&record)),
        || {
            recorded_frames(&record.join("audio-alice.wav")) >= 150
                && recorded_frames(&alice_record.join("audio-bob.wav")) >= 150
        },
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
/// RUST_LOG=trace) hold SDP, ICE candidates, DTLS fingerprints or the media key. The call
/// lasts until bob recorded 150 frames (3 s) of alice.
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
            // Both clients are on this machine.
            "--turn-allow-peer",
            "127.0.0.0/8",
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
        relay_only(options(440.0, None)),
        relay_only(options(660.0, Some(&record))),
        || recorded_frames(&record.join("audio-alice.wav")) >= 150,
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
        let r = call::answer(&mut bob, Some("talk"), &options(660.0, Some(&record))).await;
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
            signal: CallSignal::Offer {
                sdp, fingerprint, ..
            },
            ..
        }) = events.recv().await
        {
            break cove_media::SessionDescription { sdp, fingerprint };
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

/// A three-party call: alice rings bob and carol, both answer, bob (the lower leaf index of
/// the two) dials carol, and everyone hears both others. Alice also sends video (the test
/// pattern), which both receive. The call lasts until every recording shows that.
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
    let group = group_id(&alice, "talk").await;
    let rec = |who: &str| dir.path().join(format!("{who}-rec"));
    let (bob_session, carol_session) = (bob.session().clone(), carol.session().clone());
    let alice_session = alice.session().clone();
    let bob_task = spawn_answer(bob, options(660.0, Some(&rec("bob"))));
    let carol_task = spawn_answer(carol, options(880.0, Some(&rec("carol"))));
    let caller = CallOptions {
        video: Some("pattern".parse().unwrap()),
        ..options(440.0, Some(&rec("alice")))
    };
    let alice_task = tokio::spawn(async move {
        let r = call::place(&mut alice, "talk", &caller).await;
        (r, alice)
    });
    // Everyone has recorded audio of both others, and bob and carol a picture of alice.
    wait_for("audio from both others, video from alice", || {
        let heard = |who: &str, from: &str| {
            recorded_frames(&rec(who).join(format!("audio-{from}.wav"))) >= 1
        };
        heard("alice", "bob")
            && heard("alice", "carol")
            && heard("bob", "alice")
            && heard("bob", "carol")
            && heard("carol", "alice")
            && heard("carol", "bob")
            && recorded_pictures(&rec("bob").join("video-alice")) >= 1
            && recorded_pictures(&rec("carol").join("video-alice")) >= 1
    })
    .await;
    // bob, carol and alice hang up: everyone's call ends.
    hang_up_as(&bob_session, group).await;
    hang_up_as(&carol_session, group).await;
    hang_up_as(&alice_session, group).await;
    let (placed, alice) = finished(alice_task, "alice").await;
    let placed = placed.unwrap();
    let (bob_report, bob) = finished(bob_task, "bob").await;
    let (carol_report, carol) = finished(carol_task, "carol").await;
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

/// During a four-party call alice removes carol from the group. The SFrame base key the
/// members export for the new epoch differs from the old one (which carol had, and which
/// her client can no longer derive anew after the removal). bob's side is driven by the
/// test (the real signalling state machine and a real media `Call`, but no automatic
/// rekey), so it holds only the old key: once alice has rekeyed, her frames fail to
/// decrypt with it and none decrypts any more; installed with the new epoch's key, the same
/// media session decodes alice's frames again. The old base key does not open a frame
/// sealed for the new epoch's key id either. dave, on the real driver, rekeys by himself
/// and keeps recording alice after her rekey. carol's call ends with her removal.
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
    let mut dave = register(&home("dave"), &server, "dave", &ca).await;
    alice.create_group("talk").await.unwrap();
    alice
        .add_users("talk", &names(&["bob", "carol", "dave"]))
        .await
        .unwrap();
    for d in [&mut bob, &mut carol, &mut dave] {
        joined(d).await;
        d.settle().await.unwrap();
    }
    let group = group_id(&alice, "talk").await;
    let epoch_before = alice.epoch_state(group).await.unwrap().unwrap().0;
    let alice_leaf = alice
        .session()
        .call(move |c| c.own_leaf_index(&group))
        .await
        .unwrap()
        .unwrap();

    // carol answers with the real driver until her removal ends her call, dave with the
    // real driver and a recording; alice calls with no time limit (the test hangs up).
    let dave_record = dir.path().join("dave-rec");
    let dave_session = dave.session().clone();
    let dave_task = spawn_answer(dave, options(550.0, Some(&dave_record)));
    let dave_heard_alice = || recorded_frames(&dave_record.join("audio-alice.wav"));
    let carol_session = carol.session().clone();
    let carol_task = tokio::spawn(async move {
        let r = call::answer(&mut carol, Some("talk"), &options(880.0, None)).await;
        (r, carol)
    });
    let alice_session = alice.session().clone();
    let alice_task = tokio::spawn(async move {
        let r = call::place(&mut alice, "talk", &options(440.0, None)).await;
        (r, alice)
    });
    let mut bob = Observer::new(bob, group);
    bob.wait("audio from alice and carol, dave hearing alice", |b| {
        b.counters("alice").0 >= 25 && b.counters("carol").0 >= 1 && dave_heard_alice() >= 1
    })
    .await;
    let call_id = bob.call_id();
    let export =
        move |c: &mut cove_core::Client<_>| c.export_secret(&group, EXPORTER_LABEL, &call_id.0, 32);
    let old_key = bob.device.session().call(export).await.unwrap().unwrap();
    let carols_key = carol_session.call(export).await.unwrap().unwrap();
    assert_eq!(carols_key, old_key, "carol had the old epoch's key");
    let (_, failures_before) = bob.counters("alice");
    assert_eq!(failures_before, 0, "no SFrame failure before the rekey");

    // alice removes carol while the call runs (her driver sees the commit and rekeys).
    let carol_name = names(&["carol"]);
    alice_session
        .op(WAIT, move |c| {
            c.remove_users(cove::session::now_ms(), "talk", &carol_name)
        })
        .await
        .unwrap()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let new_epoch = loop {
        let epoch = bob.device.epoch_state(group).await.unwrap().unwrap().0;
        if epoch > epoch_before {
            break epoch;
        }
        bob.step(deadline, "bob merging the removal").await;
    };
    assert_eq!(new_epoch, epoch_before + 1);
    let new_key = bob.device.session().call(export).await.unwrap().unwrap();
    assert_ne!(
        new_key, old_key,
        "the SFrame base key changed with the epoch"
    );

    // With only the old key, alice's frames stop decrypting once she has rekeyed ...
    bob.wait("alice's rekeyed frames refused", |b| {
        b.counters("alice").1 >= 25
    })
    .await;
    let (decoded_at, failures_at) = bob.counters("alice");
    let dave_at = dave_heard_alice();
    bob.wait("25 more of alice's frames refused", |b| {
        b.counters("alice").1 >= failures_at + 25
    })
    .await;
    assert_eq!(
        bob.counters("alice").0,
        decoded_at,
        "a frame sent after the rekey decrypted with the old epoch's key"
    );
    // ... and the old base key does not open a frame sealed for the new epoch's key id.
    let kid = sframe::kid_for(alice_leaf, new_epoch);
    let sealed = sframe::encrypt_frame(
        &sframe::derive_key_material(&new_key, kid),
        kid,
        7,
        b"",
        b"a media frame",
    )
    .unwrap();
    assert_eq!(
        sframe::decrypt_frame(&sframe::derive_key_material(&old_key, kid), b"", &sealed)
            .unwrap_err(),
        SframeError::AuthenticationFailed
    );
    assert_eq!(
        sframe::decrypt_frame(&sframe::derive_key_material(&new_key, kid), b"", &sealed)
            .unwrap()
            .1,
        b"a media frame"
    );
    // The same media session with the new epoch's key decodes alice's frames again.
    bob.install(new_epoch, &new_key).await;
    bob.wait("alice's frames decoded with the new key", |b| {
        b.counters("alice").0 >= decoded_at + 25
    })
    .await;
    // dave's driver installed the new key itself: he keeps recording alice.
    bob.wait("dave recording alice after her rekey", |_| {
        dave_heard_alice() >= dave_at + 50
    })
    .await;
    // bob and dave hang up (alice's call then ends), then alice (dave's call ends).
    bob.hang_up().await;
    hang_up_as(&dave_session, group).await;
    hang_up_as(&alice_session, group).await;

    let (placed, alice) = finished(alice_task, "alice").await;
    let placed = placed.unwrap();
    let (carol_report, carol) = finished(carol_task, "carol").await;
    carol_report.unwrap(); // ended by the removal, not an error
    let (dave_report, dave) = finished(dave_task, "dave").await;
    dave_report.unwrap();
    assert!(
        placed.peers.contains(&"bob".to_string()),
        "{:?}",
        placed.peers
    );

    // alice moved to the next epoch; carol's client did not, and exports nothing for it.
    let (alice_epoch, _) = alice.epoch_state(group).await.unwrap().unwrap();
    assert_eq!(alice_epoch, new_epoch);
    let carol_epoch = carol.epoch_state(group).await.unwrap().map(|e| e.0);
    assert!(
        carol_epoch.is_none_or(|e| e == epoch_before),
        "carol reached epoch {carol_epoch:?}"
    );
    assert!(carol.session().call(export).await.unwrap().is_err());
    alice.close().await;
    bob.device.close().await;
    carol.close().await;
    dave.close().await;
    relay.shutdown().await;
}

/// A call participant driven by the test instead of `cove::call`: a device for the
/// signalling (the real `Calls` state machine, inside MLS) and a real media `Call`, whose
/// SFrame keys only the test installs. It answers the first incoming call of its group.
struct Observer {
    device: Device,
    group: GroupId,
    calls: Calls,
    call: Option<(
        CallId,
        cove_media::Call,
        tokio::sync::mpsc::Receiver<CallEvent>,
    )>,
    peers: HashMap<String, Peer>,
}

impl Observer {
    fn new(device: Device, group: GroupId) -> Observer {
        let me = device.device_id().unwrap();
        Observer {
            device,
            group,
            calls: Calls::new(me),
            call: None,
            peers: HashMap::new(),
        }
    }

    fn call_id(&self) -> CallId {
        self.call.as_ref().expect("in a call").0
    }

    /// Audio frames decoded from `peer` and SFrame failures on its session.
    fn counters(&self, peer: &str) -> (u64, u64) {
        self.call
            .as_ref()
            .and_then(|(_, call, _)| call.peer_session(peer))
            .map_or((0, 0), |s| (s.audio_frames_decoded(), s.sframe_failures()))
    }

    /// Runs the call until `done` holds (checked after every event and every 50 ms).
    async fn wait(&mut self, what: &str, done: impl Fn(&Observer) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            self.step(deadline, what).await;
        }
    }

    /// Handles the next session or media event, or returns after 50 ms without one.
    async fn step(&mut self, deadline: tokio::time::Instant, what: &str) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob did not see {what} in time"
        );
        enum Next {
            Session(Option<SessionEvent>),
            Media(Option<CallEvent>),
            Tick,
        }
        let Observer { device, call, .. } = self;
        let media = async {
            match call {
                Some((_, _, events)) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            e = device.next_event() => Next::Session(e),
            e = media => Next::Media(e),
            () = tokio::time::sleep(Duration::from_millis(50)) => Next::Tick,
        };
        let actions = match next {
            Next::Session(None) => panic!("bob's session stopped"),
            Next::Media(None) => panic!("bob's media engine stopped"),
            Next::Tick => Vec::new(),
            Next::Session(Some(SessionEvent::Core(Event::Content(received))))
                if received.group == self.group =>
            {
                let group = self.group;
                let members = self
                    .device
                    .session()
                    .call(move |c| c.group_members(&group))
                    .await
                    .unwrap();
                self.calls
                    .handle(cove::session::now_ms(), &received, &members)
            }
            Next::Session(Some(_)) => Vec::new(),
            Next::Media(Some(CallEvent::LocalSignal { peer, signal })) => {
                match (self.peers.get(&peer), &self.call) {
                    (Some(p), Some((call_id, _, _))) => self
                        .calls
                        .local_signal(*call_id, p, signal)
                        .into_iter()
                        .collect(),
                    _ => Vec::new(),
                }
            }
            Next::Media(Some(_)) => Vec::new(),
        };
        self.run(actions).await;
    }

    async fn run(&mut self, actions: Vec<CallAction>) {
        let mut queue: std::collections::VecDeque<CallAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                CallAction::Incoming { call_id, .. } if self.call.is_none() => {
                    let group = self.group;
                    let (members, leaf, epoch, key) = self
                        .device
                        .session()
                        .call(move |c| {
                            (
                                c.group_members(&group),
                                c.own_leaf_index(&group).unwrap(),
                                c.epoch(&group).unwrap(),
                                c.export_secret(&group, EXPORTER_LABEL, &call_id.0, 32)
                                    .unwrap(),
                            )
                        })
                        .await
                        .unwrap();
                    let config = cove_media::CallConfig {
                        audio: Some(AudioInput::Tone(660.0)),
                        ..cove_media::CallConfig::default()
                    };
                    let (media, events) = cove_media::Call::new(
                        config,
                        leaf,
                        cove_media::EpochKey::new(epoch, &key).unwrap(),
                        members.iter().map(|m| m.leaf),
                    )
                    .unwrap();
                    self.call = Some((call_id, media, events));
                    queue.extend(self.calls.answer(call_id).unwrap());
                }
                CallAction::Send { group, message } => {
                    self.device
                        .session()
                        .call(move |c| {
                            c.send_content(cove::session::now_ms(), group, Content::Call(message))
                        })
                        .await
                        .unwrap()
                        .unwrap();
                }
                CallAction::Dial { peer, .. } => {
                    self.peers.insert(peer.name.clone(), peer.clone());
                    let (_, media, _) = self.call.as_ref().unwrap();
                    media.dial(&peer.name, Some(peer.leaf)).await.unwrap();
                }
                CallAction::Apply { peer, signal, .. } => {
                    self.peers.insert(peer.name.clone(), peer.clone());
                    let (_, media, _) = self.call.as_ref().unwrap();
                    // A refused description shows as CallEvent::Refused (as in the driver).
                    if signal.is_media()
                        && let Err(e) = media
                            .apply_signal(&peer.name, Some(peer.leaf), signal)
                            .await
                    {
                        eprintln!("bob: signal from {} not applied: {e}", peer.name);
                    }
                }
                CallAction::PeerLeft { peer, .. } => {
                    if let Some((_, media, _)) = &self.call {
                        media.hang_up(&peer.name).await;
                    }
                    self.peers.remove(&peer.name);
                }
                _ => {}
            }
        }
    }

    /// Installs the key of `epoch` for sending and receiving (the current members may send).
    async fn install(&mut self, epoch: u64, key: &[u8]) {
        let group = self.group;
        let members = self
            .device
            .session()
            .call(move |c| c.group_members(&group))
            .await
            .unwrap();
        let (_, media, _) = self.call.as_ref().unwrap();
        media
            .rekey(
                cove_media::EpochKey::new(epoch, key).unwrap(),
                members.iter().map(|m| m.leaf),
            )
            .unwrap();
    }

    /// Hangs up (tells the others inside MLS) and ends the media call.
    async fn hang_up(&mut self) {
        let actions = self.calls.hang_up(self.call_id());
        self.run(actions).await;
        let (_, media, _) = self.call.take().unwrap();
        media.end().await;
    }
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
    // `cove answer` runs until the call ends; `cove call` starts once it is waiting (it
    // prints "waiting for a call..." after opening bob's home).
    let (waiting_tx, waiting_rx) = tokio::sync::oneshot::channel();
    let answering = tokio::task::spawn_blocking({
        let cove = cove.clone();
        let home = dir.path().join("bob");
        let record = record.clone();
        move || {
            use std::io::{BufRead, BufReader, Read};
            let mut child = std::process::Command::new(cove)
                .arg("--home")
                .arg(home)
                .args(["answer", "talk", "--wait", "60", "--record"])
                .arg(record)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stderr = child.stderr.take().unwrap();
            let stderr = std::thread::spawn(move || {
                let mut all = Vec::new();
                stderr.read_to_end(&mut all).unwrap();
                all
            });
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut first = String::new();
            stdout.read_line(&mut first).unwrap();
            let _ = waiting_tx.send(first.clone());
            let mut rest = String::new();
            stdout.read_to_string(&mut rest).unwrap();
            std::process::Output {
                status: child.wait().unwrap(),
                stdout: format!("{first}{rest}").into_bytes(),
                stderr: stderr.join().unwrap(),
            }
        }
    });
    let first = waiting_rx.await.expect("cove answer printed nothing");
    assert_eq!(first.trim(), "waiting for a call...");
    // `cove call` stays on until Ctrl-C (no --duration): the test waits until bob's
    // recording holds alice's audio, then interrupts it as a user would, and the call
    // must end cleanly on both sides.
    let calling = std::process::Command::new(&cove)
        .arg("--home")
        .arg(dir.path().join("alice"))
        .args(["call", "talk", "--duration", "0", "--ring-timeout", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let audio = record.join("audio-alice.wav");
    wait_for("bob records alice's audio", || {
        recorded_frames(&audio) >= 25
    })
    .await;
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &calling.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let call = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || calling.wait_with_output().unwrap()),
    )
    .await
    .expect("cove call did not end after Ctrl-C")
    .unwrap();
    let answered = tokio::time::timeout(WAIT, answering)
        .await
        .expect("cove answer did not end after the caller hung up")
        .unwrap();
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(
        call.status.success(),
        "cove call: {:?} {}",
        call.status,
        text(&call)
    );
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
    assert!(stats["peers"][0]["audio_frames_received"].as_u64().unwrap() >= 25);
    assert!(text(&call).contains("hanging up"), "{}", text(&call));
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

/// `cove call` and `cove answer` with real audio devices, through a real relay: a private
/// PulseAudio daemon (`cove_test_utils::pulse`) plays a 440 Hz tone into sink A, whose monitor
/// is alice's `--audio-in`; bob's `--audio-out` is sink B, whose monitor is recorded and holds
/// the tone; sink C, unused, stays silent. Both commands end cleanly after Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cove_call_and_cove_answer_with_real_audio_devices() {
    use cove_test_utils::pulse::{PulseFixture, steady_second};
    let Some(pulse) = PulseFixture::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_turn(dir.path()).await;
    let server = format!("wss://{}", relay.local_addr());
    let (alice, bob) = pair(dir.path(), &server, relay.cert_path()).await;
    alice.close().await;
    bob.close().await;
    let cove = workspace_binary("cove-cli", "cove");
    let _tone = pulse.play_tone("cove_a");
    let at_b = pulse.record("cove_b.monitor");
    let at_c = pulse.record("cove_c.monitor");
    let run = |home: &str, args: &[&str]| {
        std::process::Command::new(&cove)
            .arg("--home")
            .arg(dir.path().join(home))
            .args(args)
            .env("ALSA_CONFIG_PATH", pulse.alsa_config_path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A call placed up to a minute before `cove answer` starts also rings, so no ordering.
    let answering = run(
        "bob",
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
    let calling = run(
        "alice",
        &[
            "call",
            "talk",
            "--duration",
            "0",
            "--ring-timeout",
            "60",
            "--audio-in",
            "cove_a_mon",
        ],
    );
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // Wait (bounded) for a steady second on sink B; if a command ends or the bound passes,
    // fail with what both printed.
    let (mut calling, mut answering) = (calling, answering);
    let deadline = tokio::time::Instant::now() + cove_test_utils::pulse::DEVICE_WAIT;
    let b = loop {
        let b = at_b.snapshot();
        if steady_second(&b).is_some() {
            break b;
        }
        let ended =
            calling.try_wait().unwrap().is_some() || answering.try_wait().unwrap().is_some();
        if ended || tokio::time::Instant::now() > deadline {
            let _ = calling.kill();
            let _ = answering.kill();
            panic!(
                "no steady sound on sink B ({} samples; a command ended: {ended})\n\
                 cove call: {}\ncove answer: {}",
                b.len(),
                text(&calling.wait_with_output().unwrap()),
                text(&answering.wait_with_output().unwrap())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let start = steady_second(&b).unwrap();
    let (f, share) = dominant_frequency(&b[start..start + 48_000], &CANDIDATES).unwrap();
    assert_eq!(f, 440.0, "sink B's dominant frequency");
    assert!(
        share > 0.9,
        "440 Hz carries only {share} of sink B's energy"
    );
    let c = at_c
        .wait_for("1 s recorded on sink C", |s| s.len() >= 48_000)
        .await;
    let peak = c.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
    assert!(peak < 64, "sink C (unused) has sound: peak {peak}");

    // Ctrl-C on the caller ends both commands cleanly.
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &calling.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let wait = |child: std::process::Child| {
        tokio::time::timeout(
            WAIT,
            tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()),
        )
    };
    let call = wait(calling).await.expect("cove call did not end").unwrap();
    let answered = wait(answering)
        .await
        .expect("cove answer did not end")
        .unwrap();
    assert!(call.status.success(), "cove call: {}", text(&call));
    assert!(
        answered.status.success(),
        "cove answer: {}",
        text(&answered)
    );
    assert!(text(&call).contains("bob answered"), "{}", text(&call));
    relay.shutdown().await;
}
