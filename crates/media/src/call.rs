//! A call: a full mesh of [`PeerSession`]s (up to [`MAX_PARTICIPANTS`]) that share one audio
//! encoder, one video encoder, one SFrame sender and one SFrame keyring.
//!
//! Each outgoing frame is encoded once, SFrame-encrypted once (so `(KID, CTR)` is unique across
//! all peers), and written to every connected peer. Incoming frames are SFrame-decrypted with
//! the keyring, then decoded, recorded and counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cove_wire::call::CallSignal;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::codec::{I420Frame, OpusEncoder, Vp8Encoder};
use crate::session::{
    CallHost, ControlMessage, IceCandidate, PeerSession, SessionDescription, SessionError,
};
use crate::sframe::{EpochKey, SframeError, SframeKeyring, SframeSender};
use crate::source::{AudioInput, AudioOutput, WavSink, write_ppm};

/// Most participants in one mesh call (including the local one).
pub const MAX_PARTICIPANTS: usize = 6;
/// Capacity of the event queue returned by [`Call::new`]; events beyond it are dropped.
pub const EVENT_QUEUE: usize = 1024;
/// Most trickled candidates buffered per peer before its description arrives.
pub const MAX_PENDING_CANDIDATES: usize = 64;
/// Most peers with buffered candidates.
pub const MAX_PENDING_PEERS: usize = 16;

pub use crate::types::{CallConfig, CallEvent};

/// Per-peer statistics, written to `stats.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerStats {
    /// The remote participant.
    pub peer: String,
    /// Dial (or answer) to connected, milliseconds.
    pub connect_ms: Option<f64>,
    /// Dial (or answer) to the first decoded audio frame, milliseconds.
    pub dial_to_first_audio_ms: Option<f64>,
    /// Audio frames sent / decoded.
    pub audio_frames_sent: u64,
    /// Audio frames received, decrypted and decoded.
    pub audio_frames_received: u64,
    /// Video frames sent.
    pub video_frames_sent: u64,
    /// Video key frames sent.
    pub video_keyframes_sent: u64,
    /// Key frame requests sent to the peer (after lost or undecodable frames).
    pub keyframe_requests_sent: u64,
    /// Video frames received, decrypted and decoded.
    pub video_frames_received: u64,
    /// Frames refused by SFrame (unknown KID, bad tag, replay).
    pub sframe_failures: u64,
    /// Frames that failed to decode.
    pub decode_failures: u64,
    /// RTP packets sent (all streams).
    pub packets_sent: u64,
    /// RTP packets received (all streams).
    pub packets_received: u64,
    /// RTP packets lost (all inbound streams, from sequence numbers).
    pub packets_lost: i64,
    /// Largest inbound interarrival jitter, milliseconds.
    pub jitter_ms: f64,
    /// Round-trip time (ICE candidate pair or RTCP), milliseconds.
    pub rtt_ms: Option<f64>,
}

/// Statistics of a whole call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallStats {
    /// One entry per peer.
    pub peers: Vec<PeerStats>,
}

/// A call (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Call {
    inner: Arc<CallInner>,
}

pub(crate) struct CallInner {
    pub(crate) config: CallConfig,
    events: mpsc::Sender<CallEvent>,
    sessions: Mutex<HashMap<String, Arc<PeerSession>>>,
    sender: Mutex<SframeSender>,
    keyring: Mutex<SframeKeyring>,
    recorders: Mutex<HashMap<String, Recorder>>,
    /// Trickled candidates that arrived before their session's remote description.
    pending: Mutex<HashMap<String, Vec<IceCandidate>>>,
    pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where received audio is played (`CallConfig::audio_out`).
    player: Mutex<Option<Player>>,
    /// A small number per peer for the playback mixer (assigned on first audio).
    #[cfg_attr(not(feature = "devices"), allow(dead_code))]
    player_slots: Mutex<HashMap<String, u8>>,
}

/// The open audio output of a call.
enum Player {
    Wav(WavSink),
    #[cfg(feature = "devices")]
    Device(crate::device::DevicePlayback),
}

impl Player {
    fn open(out: Option<&AudioOutput>) -> Result<Option<Self>, crate::MediaIoError> {
        Ok(match out {
            None | Some(AudioOutput::None) => None,
            Some(AudioOutput::Wav(path)) => Some(Self::Wav(WavSink::create(path)?)),
            #[cfg(feature = "devices")]
            Some(AudioOutput::Device(name)) => {
                Some(Self::Device(crate::device::open_output(name)?))
            }
            #[cfg(not(feature = "devices"))]
            Some(AudioOutput::Device(_)) => return Err(crate::MediaIoError::DevicesUnavailable),
        })
    }
}

struct Recorder {
    audio: Option<WavSink>,
    video_dir: Option<PathBuf>,
}

impl Call {
    /// Creates a call for the local member `member_index` with the current epoch's key.
    ///
    /// Its SFrame sender draws a fresh random context, so a second call with the same key and
    /// member index (a re-dial or re-answer) never reuses a key and nonce (see [`crate::sframe`]).
    /// `members` are the member indexes allowed to send in that epoch. Returns the call and
    /// its event stream (bounded by [`EVENT_QUEUE`]: keep reading it). Media pumps start at
    /// once (frames go to peers once connected). Must be called within a Tokio runtime.
    pub fn new(
        config: CallConfig,
        member_index: u32,
        key: EpochKey,
        members: impl IntoIterator<Item = u32>,
    ) -> Result<(Self, mpsc::Receiver<CallEvent>), SessionError> {
        let mut sender = SframeSender::new(member_index).map_err(sframe_err)?;
        sender.install(&key).map_err(sframe_err)?;
        let mut keyring = SframeKeyring::new(config.sframe_grace);
        keyring
            .install(key, members, Instant::now())
            .map_err(sframe_err)?;
        if let Some(dir) = &config.record_dir {
            std::fs::create_dir_all(dir).map_err(|e| SessionError::Io(e.into()))?;
        }
        let mut fallbacks = Vec::new();
        let player = match Player::open(config.audio_out.as_ref()) {
            Ok(p) => p,
            Err(e) => match (&config.audio_out, config.device_fallback) {
                (Some(AudioOutput::Device(name)), true) => {
                    fallbacks.push(CallEvent::DeviceFallback {
                        direction: "output",
                        device: name.clone(),
                        reason: e.to_string(),
                    });
                    None
                }
                _ => return Err(e.into()),
            },
        };
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        for event in fallbacks {
            // The queue is new and far larger than two events.
            let _ = tx.try_send(event);
        }
        let inner = Arc::new(CallInner {
            config,
            events: tx,
            sessions: Mutex::new(HashMap::new()),
            sender: Mutex::new(sender),
            keyring: Mutex::new(keyring),
            recorders: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            pumps: Mutex::new(Vec::new()),
            player: Mutex::new(player),
            player_slots: Mutex::new(HashMap::new()),
        });
        let call = Self { inner };
        call.start_pumps()?;
        Ok((call, rx))
    }

    /// Dials `peer`: creates its session and emits the offer as a [`CallEvent::LocalSignal`].
    pub async fn dial(&self, peer: &str, member_index: Option<u32>) -> Result<(), SessionError> {
        let session = self.new_session(peer, member_index, true).await?;
        let offer = session.create_offer().await?;
        self.inner.emit(CallEvent::LocalSignal {
            peer: peer.into(),
            signal: CallSignal::Offer {
                sdp: offer.sdp,
                fingerprint: offer.fingerprint,
                video: self.inner.config.video.is_some(),
            },
        });
        Ok(())
    }

    /// Applies a signal from `peer` that the core received (and authenticated) inside MLS.
    ///
    /// An offer from an unknown peer creates its session and emits the answer. A description
    /// whose SDP fingerprint differs from its signed fingerprint is refused: the session is
    /// closed, [`CallEvent::Refused`] is emitted and [`SessionError::FingerprintMismatch`]
    /// returned, before any media flows. Call-state signals (hang-up, busy, decline) are not
    /// media: they return [`SessionError::NotMedia`] and change nothing.
    pub async fn apply_signal(
        &self,
        peer: &str,
        member_index: Option<u32>,
        signal: CallSignal,
    ) -> Result<(), SessionError> {
        let result = self.apply_signal_inner(peer, member_index, signal).await;
        if let Err(e @ (SessionError::FingerprintMismatch | SessionError::BadSignal(_))) = &result {
            let reason = e.to_string();
            if let Some(s) = self.remove_session(peer) {
                s.close().await;
            }
            self.inner.emit(CallEvent::Refused {
                peer: peer.into(),
                reason,
            });
        }
        result
    }

    async fn apply_signal_inner(
        &self,
        peer: &str,
        member_index: Option<u32>,
        signal: CallSignal,
    ) -> Result<(), SessionError> {
        match signal {
            CallSignal::Offer {
                sdp, fingerprint, ..
            } => {
                let offer = SessionDescription { sdp, fingerprint };
                let session = self.new_session(peer, member_index, false).await?;
                let answer = session.accept_offer(&offer).await?;
                self.flush_candidates(&session).await;
                self.inner.emit(CallEvent::LocalSignal {
                    peer: peer.into(),
                    signal: CallSignal::Answer {
                        sdp: answer.sdp,
                        fingerprint: answer.fingerprint,
                    },
                });
                Ok(())
            }
            CallSignal::Answer { sdp, fingerprint } => {
                let answer = SessionDescription { sdp, fingerprint };
                let session = self.session(peer)?;
                session.accept_answer(&answer).await?;
                self.flush_candidates(&session).await;
                Ok(())
            }
            CallSignal::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
                username_fragment,
            } => {
                let c = IceCandidate {
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                    username_fragment,
                };
                let ready = {
                    let mut pending = self
                        .inner
                        .pending
                        .lock()
                        .map_err(|_| SessionError::UnknownPeer)?;
                    match self.peer_session(peer) {
                        Some(s) if s.remote_set.load(Ordering::Acquire) => Some(s),
                        _ => {
                            if pending.len() >= MAX_PENDING_PEERS && !pending.contains_key(peer) {
                                return Err(SessionError::BadSignal("too many pending peers"));
                            }
                            let list = pending.entry(peer.to_owned()).or_default();
                            if list.len() >= MAX_PENDING_CANDIDATES {
                                return Err(SessionError::BadSignal("too many candidates"));
                            }
                            list.push(c.clone());
                            None
                        }
                    }
                };
                match ready {
                    Some(s) => s.add_candidate(&c).await,
                    None => Ok(()),
                }
            }
            CallSignal::HangUp | CallSignal::Busy | CallSignal::Decline => {
                Err(SessionError::NotMedia)
            }
        }
    }

    /// Marks the remote description applied and adds candidates that arrived before it.
    async fn flush_candidates(&self, session: &PeerSession) {
        let queued = match self.inner.pending.lock() {
            Ok(mut pending) => {
                session.remote_set.store(true, Ordering::Release);
                pending.remove(&session.peer).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        };
        for c in queued {
            let _ = session.add_candidate(&c).await;
        }
    }

    /// Installs the key of a new MLS epoch (after a commit): the local sender switches to it
    /// at once; the previous epoch stays decryptable for the grace period. Call it as soon as
    /// the commit is merged; a peer that has not merged it yet drops the frames it cannot
    /// decrypt (counted in `sframe_failures`) until it does. To drop a removed member from a
    /// mesh call, also [`Call::hang_up`] its session.
    pub fn rekey(
        &self,
        key: EpochKey,
        members: impl IntoIterator<Item = u32>,
    ) -> Result<(), SframeError> {
        self.inner
            .sender
            .lock()
            .map_err(|_| SframeError::NoSendingKey)?
            .install(&key)?;
        self.inner
            .keyring
            .lock()
            .map_err(|_| SframeError::NoSendingKey)?
            .install(key, members, Instant::now())
    }

    /// Stops accepting media from a removed member at once (before the rekey arrives).
    pub fn remove_member(&self, member_index: u32) {
        if let Ok(mut k) = self.inner.keyring.lock() {
            k.remove_member(member_index);
        }
    }

    /// Sends a control message to `peer`.
    pub async fn send_control(&self, peer: &str, msg: &ControlMessage) -> Result<(), SessionError> {
        self.session(peer)?.send_control(msg).await
    }

    /// Hangs up with `peer` (tells it on the control channel, then closes).
    pub async fn hang_up(&self, peer: &str) {
        if let Some(s) = self.remove_session(peer) {
            s.hang_up().await;
        }
    }

    /// Ends the call: stops the media pumps, closes every session, finishes recordings and
    /// writes `stats.json` (if recording). Returns the final statistics.
    pub async fn end(&self) -> CallStats {
        let pumps: Vec<_> = self
            .inner
            .pumps
            .lock()
            .map(|mut p| p.drain(..).collect())
            .unwrap_or_default();
        for p in pumps {
            p.abort();
        }
        let stats = self.stats().await;
        let sessions: Vec<_> = self
            .inner
            .sessions
            .lock()
            .map(|mut s| s.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for s in sessions {
            s.hang_up().await;
        }
        let recorders: Vec<_> = self
            .inner
            .recorders
            .lock()
            .map(|mut r| r.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for r in recorders {
            if let Some(a) = r.audio {
                let _ = a.finish();
            }
        }
        let player = self.inner.player.lock().ok().and_then(|mut p| p.take());
        if let Some(Player::Wav(w)) = player {
            let _ = w.finish();
        }
        if let Some(dir) = &self.inner.config.record_dir {
            let _ = write_stats(dir, &stats);
        }
        stats
    }

    /// Current statistics of every session.
    pub async fn stats(&self) -> CallStats {
        let sessions: Vec<_> = self.sessions();
        let mut peers = Vec::new();
        for s in sessions {
            peers.push(peer_stats(&s).await);
        }
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        CallStats { peers }
    }

    /// The session with `peer`, if any.
    pub fn peer_session(&self, peer: &str) -> Option<Arc<PeerSession>> {
        self.inner
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(peer).cloned())
    }

    /// All sessions.
    pub fn sessions(&self) -> Vec<Arc<PeerSession>> {
        self.inner
            .sessions
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    fn session(&self, peer: &str) -> Result<Arc<PeerSession>, SessionError> {
        self.peer_session(peer).ok_or(SessionError::UnknownPeer)
    }

    fn remove_session(&self, peer: &str) -> Option<Arc<PeerSession>> {
        if let Ok(mut p) = self.inner.pending.lock() {
            p.remove(peer);
        }
        self.inner
            .sessions
            .lock()
            .ok()
            .and_then(|mut s| s.remove(peer))
    }

    async fn new_session(
        &self,
        peer: &str,
        member_index: Option<u32>,
        caller: bool,
    ) -> Result<Arc<PeerSession>, SessionError> {
        if peer.is_empty() || peer.len() > 256 {
            return Err(SessionError::BadSignal("bad peer id"));
        }
        {
            let sessions = self
                .inner
                .sessions
                .lock()
                .map_err(|_| SessionError::PeerExists)?;
            if sessions.contains_key(peer) || sessions.len() + 1 >= MAX_PARTICIPANTS {
                return Err(SessionError::PeerExists);
            }
        }
        let host: Arc<dyn CallHost> = self.inner.clone();
        let session = PeerSession::new(&host, peer.to_owned(), member_index, caller).await?;
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .map_err(|_| SessionError::PeerExists)?;
        if sessions.contains_key(peer) {
            return Err(SessionError::PeerExists);
        }
        sessions.insert(peer.to_owned(), session.clone());
        drop(sessions);
        self.inner.open_recorder(peer)?;
        Ok(session)
    }

    fn start_pumps(&self) -> Result<(), SessionError> {
        let mut handles = Vec::new();
        if let Some(input) = &self.inner.config.audio {
            let mut source = match (input.open(), input) {
                (Ok(s), _) => s,
                (Err(e), AudioInput::Device(name)) if self.inner.config.device_fallback => {
                    self.inner.emit(CallEvent::DeviceFallback {
                        direction: "input",
                        device: name.clone(),
                        reason: e.to_string(),
                    });
                    AudioInput::Silence.open()?
                }
                (Err(e), _) => return Err(e.into()),
            };
            let mut encoder = OpusEncoder::new(32_000)?;
            let weak = Arc::downgrade(&self.inner);
            handles.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::codec::AUDIO_FRAME_DURATION);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let targets = inner.connected_sessions();
                    // Keep the source running so the timeline is continuous.
                    let pcm = source.next_frame();
                    if targets.is_empty() {
                        continue;
                    }
                    let Ok(packet) = encoder.encode(&pcm) else {
                        continue;
                    };
                    let Some(ct) = inner.seal(&packet) else {
                        continue;
                    };
                    let ct = Bytes::from(ct);
                    for s in targets {
                        let _ = s.write_audio(ct.clone()).await;
                    }
                }
            }));
        }
        if let Some(input) = &self.inner.config.video {
            let mut source = input.open()?;
            let (w, h) = source.dimensions();
            let fps = self.inner.config.video_fps.clamp(1, 60);
            let kf = self.inner.config.video_keyframe_interval.max(1);
            let mut encoder =
                Vp8Encoder::with_keyframe_interval(w, h, fps, self.inner.config.video_kbps, kf)?;
            let weak = Arc::downgrade(&self.inner);
            let period = Duration::from_secs(1) / fps;
            handles.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let targets = inner.connected_sessions();
                    let picture = source.next_frame();
                    if targets.is_empty() {
                        continue;
                    }
                    let keyframe = targets
                        .iter()
                        .any(|s| s.want_keyframe.swap(false, Ordering::AcqRel));
                    let Ok(frames) = encoder.encode(&picture, keyframe) else {
                        continue;
                    };
                    for f in frames {
                        let Some(ct) = inner.seal(&f.data) else {
                            continue;
                        };
                        let ct = Bytes::from(ct);
                        for s in &targets {
                            let _ = s.write_video(ct.clone(), period, f.keyframe).await;
                        }
                    }
                }
            }));
        }
        if let Ok(mut p) = self.inner.pumps.lock() {
            p.extend(handles);
        }
        Ok(())
    }
}

impl CallInner {
    pub(crate) fn emit(&self, ev: CallEvent) {
        // A driver that stops reading loses events rather than letting a peer (e.g. flooding
        // control messages) grow memory without bound.
        let _ = self.events.try_send(ev);
    }

    pub(crate) fn session(&self, peer: &str) -> Option<Arc<PeerSession>> {
        self.sessions.lock().ok().and_then(|s| s.get(peer).cloned())
    }

    fn connected_sessions(&self) -> Vec<Arc<PeerSession>> {
        self.sessions
            .lock()
            .map(|s| {
                s.values()
                    .filter(|s| s.connected.load(Ordering::Acquire))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn seal(&self, frame: &[u8]) -> Option<Vec<u8>> {
        self.sender.lock().ok()?.encrypt(b"", frame).ok()
    }

    /// SFrame-decrypts a frame from `session`; counts and drops failures.
    pub(crate) fn open_frame(&self, session: &PeerSession, ct: &[u8]) -> Option<Vec<u8>> {
        let result = self.keyring.lock().ok()?.decrypt(b"", ct, Instant::now());
        match result {
            Ok(f) if session.member_index.is_none_or(|i| i == f.member_index) => Some(f.payload),
            _ => {
                session
                    .counters
                    .sframe_failures
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn open_recorder(&self, peer: &str) -> Result<(), SessionError> {
        let Some(dir) = &self.config.record_dir else {
            return Ok(());
        };
        let name = file_safe(peer);
        let audio = WavSink::create(&dir.join(format!("audio-{name}.wav")))?;
        let video_dir = dir.join(format!("video-{name}"));
        std::fs::create_dir_all(&video_dir).map_err(|e| SessionError::Io(e.into()))?;
        if let Ok(mut r) = self.recorders.lock() {
            r.insert(
                peer.to_owned(),
                Recorder {
                    audio: Some(audio),
                    video_dir: Some(video_dir),
                },
            );
        }
        Ok(())
    }

    pub(crate) fn record_audio(&self, peer: &str, pcm: &[i16]) {
        if let Ok(mut r) = self.recorders.lock()
            && let Some(a) = r.get_mut(peer).and_then(|r| r.audio.as_mut())
        {
            let _ = a.write(pcm);
        }
    }

    pub(crate) fn play_audio(&self, peer: &str, seq: u16, pcm: &[i16]) {
        let Ok(mut player) = self.player.lock() else {
            return;
        };
        match player.as_mut() {
            None => {}
            Some(Player::Wav(w)) => {
                let _ = w.write(pcm);
            }
            #[cfg(feature = "devices")]
            Some(Player::Device(d)) => {
                let slot = match self.player_slots.lock() {
                    Ok(mut slots) => {
                        let n = slots.len();
                        match slots.get(peer) {
                            Some(s) => *s,
                            None if n < usize::from(u8::MAX) => {
                                let s = n as u8;
                                slots.insert(peer.to_owned(), s);
                                s
                            }
                            None => return,
                        }
                    }
                    Err(_) => return,
                };
                // Never blocks: a full queue (device not pulling) drops the frame.
                d.push(slot, seq, pcm);
            }
        }
        #[cfg(not(feature = "devices"))]
        let _ = (peer, seq);
    }

    pub(crate) fn record_video(&self, peer: &str, n: u64, picture: &I420Frame) {
        let every = self.config.record_every_nth_frame.max(1);
        if !n.is_multiple_of(every) {
            return;
        }
        let dir = self
            .recorders
            .lock()
            .ok()
            .and_then(|r| r.get(peer).and_then(|r| r.video_dir.clone()));
        if let Some(dir) = dir {
            let _ = write_ppm(&dir.join(format!("frame-{n:06}.ppm")), picture);
        }
    }
}

impl CallHost for CallInner {
    fn config(&self) -> &CallConfig {
        &self.config
    }

    fn emit(&self, ev: CallEvent) {
        CallInner::emit(self, ev);
    }

    fn session(&self, peer: &str) -> Option<Arc<PeerSession>> {
        CallInner::session(self, peer)
    }

    fn open_frame(&self, session: &PeerSession, ct: &[u8]) -> Option<Vec<u8>> {
        CallInner::open_frame(self, session, ct)
    }

    fn record_audio(&self, peer: &str, pcm: &[i16]) {
        CallInner::record_audio(self, peer, pcm);
    }

    fn play_audio(&self, peer: &str, seq: u16, pcm: &[i16]) {
        CallInner::play_audio(self, peer, seq, pcm);
    }

    fn record_video(&self, peer: &str, n: u64, picture: &I420Frame) {
        CallInner::record_video(self, peer, n, picture);
    }
}

fn sframe_err(e: SframeError) -> SessionError {
    SessionError::WebRtc(format!("sframe: {e}"))
}

/// Keeps `[A-Za-z0-9._-]`, replaces the rest with `_` (peer ids become file names).
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `stats.json` into `dir`.
pub fn write_stats(dir: &Path, stats: &CallStats) -> Result<(), crate::MediaIoError> {
    let text =
        serde_json::to_string_pretty(stats).map_err(|_| crate::MediaIoError::Format("stats"))?;
    std::fs::write(dir.join("stats.json"), text)?;
    Ok(())
}

async fn peer_stats(s: &PeerSession) -> PeerStats {
    let ms = |t: Option<&Instant>| {
        t.map(|t| t.saturating_duration_since(s.started).as_secs_f64() * 1000.0)
    };
    let mut st = PeerStats {
        peer: s.peer.clone(),
        connect_ms: ms(s.connected_at.get()),
        dial_to_first_audio_ms: ms(s.first_audio_at.get()),
        audio_frames_sent: s.counters.audio_frames_sent.load(Ordering::Relaxed),
        audio_frames_received: s.counters.audio_frames_decoded.load(Ordering::Relaxed),
        video_frames_sent: s.counters.video_frames_sent.load(Ordering::Relaxed),
        video_keyframes_sent: s.counters.video_keyframes_sent.load(Ordering::Relaxed),
        keyframe_requests_sent: s.counters.keyframe_requests_sent.load(Ordering::Relaxed),
        video_frames_received: s.counters.video_frames_decoded.load(Ordering::Relaxed),
        sframe_failures: s.counters.sframe_failures.load(Ordering::Relaxed),
        decode_failures: s.counters.decode_failures.load(Ordering::Relaxed),
        ..Default::default()
    };
    if s.closed.load(Ordering::Acquire) {
        return st;
    }
    let report = s.rtc_stats().await;
    for o in report.outbound_rtp_streams() {
        st.packets_sent += o.sent_rtp_stream_stats.packets_sent;
    }
    for i in report.inbound_rtp_streams() {
        let r = &i.received_rtp_stream_stats;
        st.packets_received += r.packets_received;
        st.packets_lost += r.packets_lost;
        // rtc 0.21 fills `jitter` with the raw RTCP value (RTP timestamp units), not the
        // seconds its docs promise: convert with the codec clock rate.
        let clock = match r.rtp_stream_stats.kind {
            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video => 90_000.0,
            _ => 48_000.0,
        };
        st.jitter_ms = st.jitter_ms.max(r.jitter / clock * 1000.0);
    }
    for p in report.candidate_pairs() {
        if p.current_round_trip_time > 0.0 {
            st.rtt_ms = Some(p.current_round_trip_time * 1000.0);
        }
    }
    st
}
