//! One webrtc-rs peer connection of a call, and the signalling values it exchanges.
//!
//! A [`PeerSession`] carries SFrame-protected Opus and VP8 tracks and a `control` data channel.
//! It never touches keys' origin or the signalling transport: [`CallSignal`] values go out as
//! [`CallEvent::LocalSignal`] and come back in through
//! `Call::apply_signal`; the client core carries them inside MLS.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cove_wire::call::CallSignal;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde::{Deserialize, Serialize};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer,
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, StatsSelector,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::codec::{AUDIO_FRAME_DURATION, OpusDecoder, Vp8Decoder};
use crate::types::{CallConfig, CallEvent};

/// Largest SDP accepted from a peer (the signalling limit of [`cove_wire::call`]).
pub const MAX_SDP_LEN: usize = cove_wire::call::MAX_SDP_BYTES;
/// Largest ICE candidate string accepted from a peer (the signalling limit of
/// [`cove_wire::call`]).
pub const MAX_CANDIDATE_LEN: usize = cove_wire::call::MAX_CANDIDATE_BYTES;
/// Largest reassembled (encrypted) video frame.
pub const MAX_VIDEO_FRAME: usize = 1 << 20;
/// Largest control message on the data channel.
pub const MAX_CONTROL_LEN: usize = 4096;
/// The label of the call-control data channel.
pub const CONTROL_CHANNEL: &str = "cove-control";

/// An SDP offer or answer with the DTLS fingerprint it commits to (the media side of
/// [`CallSignal::Offer`] and [`CallSignal::Answer`]).
///
/// The whole value travels inside one MLS application message, so `fingerprint` is
/// authenticated by the sender's MLS signature. `Call::apply_signal` refuses the
/// description if any `a=fingerprint` line in `sdp` differs from `fingerprint`, before media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// The SDP text.
    pub sdp: String,
    /// The sender's DTLS certificate fingerprint, `"sha-256 AB:CD:..."`.
    pub fingerprint: String,
}

/// A trickled ICE candidate (W3C `RTCIceCandidateInit`; the media side of
/// [`CallSignal::Candidate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    /// The `candidate:` attribute.
    pub candidate: String,
    /// The media section id.
    pub sdp_mid: Option<String>,
    /// The media section index.
    pub sdp_mline_index: Option<u16>,
    /// The ICE username fragment.
    pub username_fragment: Option<String>,
}

pub use crate::types::{ControlMessage, IceServer};

/// What a peer session needs from the call that owns it (implemented by the call's shared
/// state). Sessions hold it weakly: a session never keeps its call alive.
pub(crate) trait CallHost: Send + Sync {
    /// The call's configuration.
    fn config(&self) -> &CallConfig;
    /// Reports an event to the call's driver.
    fn emit(&self, ev: CallEvent);
    /// The session with `peer`, if any.
    fn session(&self, peer: &str) -> Option<Arc<PeerSession>>;
    /// SFrame-decrypts a frame received from `session`'s peer (`None`: refused).
    fn open_frame(&self, session: &PeerSession, ct: &[u8]) -> Option<Vec<u8>>;
    /// Records decoded audio from `peer` (if recording).
    fn record_audio(&self, peer: &str, pcm: &[i16]);
    /// Plays decoded audio from `peer` (RTP sequence number `seq`) on the call's audio output.
    fn play_audio(&self, peer: &str, seq: u16, pcm: &[i16]);
    /// Records the `n`th decoded video frame from `peer` (if recording).
    fn record_video(&self, peer: &str, n: u64, picture: &crate::codec::I420Frame);
}

/// Errors of peer sessions.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The remote SDP's DTLS fingerprint differs from the signed one (possible MITM).
    #[error("DTLS fingerprint in the SDP does not match the signed fingerprint")]
    FingerprintMismatch,
    /// The signal is malformed, too large, or unexpected in this state (peer misbehaved).
    #[error("bad signal: {0}")]
    BadSignal(&'static str),
    /// The signal is call state (hang-up, busy, decline), which the core handles, not media
    /// (caller misuse; see [`CallSignal::is_media`]).
    #[error("not a media signal")]
    NotMedia,
    /// No session with that peer (caller misuse).
    #[error("unknown peer")]
    UnknownPeer,
    /// A session with that peer exists already, or the mesh is full (caller misuse).
    #[error("peer already in call or call full")]
    PeerExists,
    /// webrtc-rs reported an error.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// ICE gathering did not complete in time (retryable).
    #[error("ICE gathering timed out")]
    GatheringTimeout,
    /// Media codec setup failed.
    #[error(transparent)]
    Codec(#[from] crate::CodecError),
    /// Recording files could not be created.
    #[error(transparent)]
    Io(#[from] crate::MediaIoError),
}

fn rtc_err(e: impl std::fmt::Display) -> SessionError {
    SessionError::WebRtc(e.to_string())
}

/// Counters of one session (see `PeerStats` for the exported form).
#[derive(Default)]
pub(crate) struct Counters {
    pub audio_frames_sent: AtomicU64,
    pub video_frames_sent: AtomicU64,
    pub video_keyframes_sent: AtomicU64,
    pub keyframe_requests_sent: AtomicU64,
    pub audio_frames_decoded: AtomicU64,
    pub video_frames_decoded: AtomicU64,
    pub sframe_failures: AtomicU64,
    pub decode_failures: AtomicU64,
}

struct LocalTrack {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    payload_type: OnceLock<u8>,
}

impl LocalTrack {
    async fn write(&self, data: Bytes, duration: Duration) -> Result<(), SessionError> {
        let pt = match self.payload_type.get() {
            Some(pt) => *pt,
            None => {
                let params = self.sender.get_parameters().await.map_err(rtc_err)?;
                let pt = params
                    .rtp_parameters
                    .codecs
                    .first()
                    .map(|c| c.payload_type)
                    .ok_or(SessionError::BadSignal("no negotiated codec"))?;
                *self.payload_type.get_or_init(|| pt)
            }
        };
        let sample = Sample {
            data,
            duration,
            ..Sample::new(Instant::now())
        };
        self.track
            .sample_writer(self.ssrc, pt)
            .write_sample(&sample)
            .await
            .map_err(rtc_err)
    }
}

/// One peer connection of a call.
pub struct PeerSession {
    /// The remote participant's id (as the core names it, e.g. `user/device`).
    pub peer: String,
    /// The remote participant's MLS member index, if known: frames whose SFrame KID names
    /// another member are dropped.
    pub member_index: Option<u32>,
    pub(crate) pc: Arc<dyn PeerConnection>,
    audio: Option<LocalTrack>,
    video: Option<LocalTrack>,
    control: OnceLock<Arc<dyn DataChannel>>,
    pub(crate) connected: AtomicBool,
    /// Set (under the call's pending-candidates lock) once the remote description is applied.
    pub(crate) remote_set: AtomicBool,
    pub(crate) closed: AtomicBool,
    pub(crate) counters: Counters,
    /// When the local side dialled or started answering.
    pub(crate) started: Instant,
    pub(crate) connected_at: OnceLock<Instant>,
    pub(crate) first_audio_at: OnceLock<Instant>,
    pub(crate) first_video_at: OnceLock<Instant>,
    /// The last decoded video frame (for checks and previews).
    pub(crate) last_video: Mutex<Option<crate::codec::I420Frame>>,
    pub(crate) want_keyframe: AtomicBool,
    last_keyframe_request: Mutex<Option<Instant>>,
    gathered: tokio::sync::Notify,
    gathering_done: AtomicBool,
    trickle: bool,
}

impl PeerSession {
    /// Builds the peer connection, its tracks and (for the caller) the control channel.
    pub(crate) async fn new(
        call: &Arc<dyn CallHost>,
        peer: String,
        member_index: Option<u32>,
        caller: bool,
    ) -> Result<Arc<Self>, SessionError> {
        let cfg = call.config();
        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs().map_err(rtc_err)?;
        let registry =
            register_default_interceptors(Registry::new(), &mut media_engine).map_err(rtc_err)?;
        let ice_servers = cfg
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect();
        let policy = if cfg.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        };
        let configuration = RTCConfigurationBuilder::default()
            .with_ice_servers(ice_servers)
            .with_ice_transport_policy(policy)
            .build();
        // Keep the total connection-attempt time at webrtc-rs's default (7 x 200 ms).
        let interval = cfg
            .ice_check_interval
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let attempts = u16::try_from(1400 / interval.as_millis().max(1))
            .unwrap_or(7)
            .max(7);
        let mut settings = SettingEngineBuilder::new()
            .with_ice_connection_attempts(Some(interval), Some(attempts))
            // webrtc-rs waits 2 s before nominating a relayed pair, hoping for a direct one;
            // in relay-only mode none can come.
            .with_relay_acceptance_min_wait(cfg.relay_only.then_some(Duration::ZERO));
        if let Some(cap) = cfg.turn_refresh_interval {
            settings = settings.with_turn_allocation_refresh_interval_cap(cap);
        }
        let settings = settings.build();
        let (pc_tx, pc_rx) = tokio::sync::oneshot::channel::<Weak<PeerSession>>();
        let handler = Arc::new(SessionHandler {
            call: Arc::downgrade(call),
            peer: peer.clone(),
            session: tokio::sync::OnceCell::new(),
            session_rx: Mutex::new(Some(pc_rx)),
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media_engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(handler.clone())
            .with_udp_addrs(cfg.bind_addrs.clone())
            .build()
            .await
            .map_err(rtc_err)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let audio = if cfg.audio.is_some() || cfg.receive_only {
            Some(add_track(&pc, RtpCodecKind::Audio).await?)
        } else {
            None
        };
        let video = if cfg.video.is_some() || cfg.receive_only {
            Some(add_track(&pc, RtpCodecKind::Video).await?)
        } else {
            None
        };
        let session = Arc::new(PeerSession {
            peer,
            member_index,
            pc,
            audio,
            video,
            control: OnceLock::new(),
            connected: AtomicBool::new(false),
            remote_set: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            started: Instant::now(),
            connected_at: OnceLock::new(),
            first_audio_at: OnceLock::new(),
            first_video_at: OnceLock::new(),
            last_video: Mutex::new(None),
            want_keyframe: AtomicBool::new(true),
            last_keyframe_request: Mutex::new(None),
            gathered: tokio::sync::Notify::new(),
            gathering_done: AtomicBool::new(false),
            trickle: cfg.trickle_ice,
        });
        let _ = pc_tx.send(Arc::downgrade(&session));
        if caller {
            let dc = session
                .pc
                .create_data_channel(CONTROL_CHANNEL, None)
                .await
                .map_err(rtc_err)?;
            session.attach_control(call, dc.clone());
        }
        Ok(session)
    }

    fn attach_control(self: &Arc<Self>, call: &Arc<dyn CallHost>, dc: Arc<dyn DataChannel>) {
        if self.control.set(dc.clone()).is_err() {
            return;
        }
        let call = Arc::downgrade(call);
        let peer = self.peer.clone();
        tokio::spawn(async move {
            while let Some(ev) = dc.poll().await {
                match ev {
                    DataChannelEvent::OnMessage(m) => {
                        if m.data.len() > MAX_CONTROL_LEN {
                            continue;
                        }
                        let Ok(msg) = serde_json::from_slice::<ControlMessage>(&m.data) else {
                            continue;
                        };
                        if msg == ControlMessage::KeyframeRequest {
                            if let Some(s) = call.upgrade().and_then(|c| c.session(&peer)) {
                                s.want_keyframe.store(true, Ordering::Release);
                            }
                            continue;
                        }
                        if let Some(call) = call.upgrade() {
                            call.emit(CallEvent::Control {
                                peer: peer.clone(),
                                message: msg,
                            });
                        }
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
        });
    }

    /// Sends a control message on the data channel (if it is open).
    pub async fn send_control(&self, msg: &ControlMessage) -> Result<(), SessionError> {
        let dc = self
            .control
            .get()
            .ok_or(SessionError::BadSignal("control channel not open"))?;
        let text = serde_json::to_string(msg).map_err(|_| SessionError::BadSignal("encode"))?;
        dc.send_text(&text).await.map_err(rtc_err)
    }

    /// Creates the offer (waiting for ICE gathering unless trickle ICE is on).
    pub(crate) async fn create_offer(&self) -> Result<SessionDescription, SessionError> {
        let offer = self.pc.create_offer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_err)?;
        self.local_description().await
    }

    /// Applies the caller's offer and creates the answer.
    pub(crate) async fn accept_offer(
        &self,
        offer: &SessionDescription,
    ) -> Result<SessionDescription, SessionError> {
        let sdp = checked_sdp(offer)?;
        let desc = RTCSessionDescription::offer(sdp).map_err(rtc_err)?;
        self.pc
            .set_remote_description(desc)
            .await
            .map_err(rtc_err)?;
        let answer = self.pc.create_answer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(rtc_err)?;
        self.local_description().await
    }

    /// Applies the callee's answer.
    pub(crate) async fn accept_answer(
        &self,
        answer: &SessionDescription,
    ) -> Result<(), SessionError> {
        let sdp = checked_sdp(answer)?;
        let desc = RTCSessionDescription::answer(sdp).map_err(rtc_err)?;
        self.pc.set_remote_description(desc).await.map_err(rtc_err)
    }

    /// Adds a trickled remote candidate.
    pub(crate) async fn add_candidate(&self, c: &IceCandidate) -> Result<(), SessionError> {
        if c.candidate.len() > MAX_CANDIDATE_LEN {
            return Err(SessionError::BadSignal("candidate too long"));
        }
        let init = RTCIceCandidateInit {
            candidate: c.candidate.clone(),
            sdp_mid: c.sdp_mid.clone(),
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment.clone(),
            ..Default::default()
        };
        self.pc.add_ice_candidate(init).await.map_err(rtc_err)
    }

    async fn local_description(&self) -> Result<SessionDescription, SessionError> {
        if !self.trickle {
            let wait = async {
                while !self.gathering_done.load(Ordering::Acquire) {
                    let notified = self.gathered.notified();
                    if self.gathering_done.load(Ordering::Acquire) {
                        break;
                    }
                    notified.await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .map_err(|_| SessionError::GatheringTimeout)?;
        }
        let desc = self
            .pc
            .local_description()
            .await
            .ok_or(SessionError::BadSignal("no local description"))?;
        let fingerprint = sdp_fingerprints(&desc.sdp)
            .into_iter()
            .next()
            .ok_or(SessionError::BadSignal("local SDP has no fingerprint"))?;
        Ok(SessionDescription {
            sdp: desc.sdp,
            fingerprint,
        })
    }

    /// Writes one SFrame-encrypted Opus frame.
    pub(crate) async fn write_audio(&self, frame: Bytes) -> Result<(), SessionError> {
        if let Some(t) = &self.audio {
            t.write(frame, AUDIO_FRAME_DURATION).await?;
            self.counters
                .audio_frames_sent
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes one SFrame-encrypted VP8 frame.
    pub(crate) async fn write_video(
        &self,
        frame: Bytes,
        duration: Duration,
        keyframe: bool,
    ) -> Result<(), SessionError> {
        if let Some(t) = &self.video {
            t.write(frame, duration).await?;
            self.counters
                .video_frames_sent
                .fetch_add(1, Ordering::Relaxed);
            if keyframe {
                self.counters
                    .video_keyframes_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Asks the peer for a key frame on the control channel (at most one per 500 ms).
    pub async fn request_keyframe(&self) {
        let now = Instant::now();
        {
            let Ok(mut last) = self.last_keyframe_request.lock() else {
                return;
            };
            if last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(500)) {
                return;
            }
            *last = Some(now);
        }
        if self
            .send_control(&ControlMessage::KeyframeRequest)
            .await
            .is_ok()
        {
            self.counters
                .keyframe_requests_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Key frames sent to this peer so far.
    pub fn video_keyframes_sent(&self) -> u64 {
        self.counters.video_keyframes_sent.load(Ordering::Relaxed)
    }

    /// webrtc-rs statistics for this connection.
    pub(crate) async fn rtc_stats(&self) -> webrtc::peer_connection::RTCStatsReport {
        self.pc.get_stats(Instant::now(), StatsSelector::None).await
    }

    /// Sends a hang-up on the control channel, waits (at most 500 ms) until the peer has
    /// acknowledged it, then closes.
    pub(crate) async fn hang_up(&self) {
        if self.send_control(&ControlMessage::Hangup).await.is_ok()
            && let Some(dc) = self.control.get()
        {
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline && dc.outstanding_bytes().await.unwrap_or(0) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.close().await;
    }

    /// Closes the connection.
    pub(crate) async fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.pc.close().await;
        }
    }

    /// Audio frames sent to this peer so far.
    pub fn audio_frames_sent(&self) -> u64 {
        self.counters.audio_frames_sent.load(Ordering::Relaxed)
    }

    /// Video frames sent to this peer so far.
    pub fn video_frames_sent(&self) -> u64 {
        self.counters.video_frames_sent.load(Ordering::Relaxed)
    }

    /// Audio frames received from this peer, decrypted and decoded so far.
    pub fn audio_frames_decoded(&self) -> u64 {
        self.counters.audio_frames_decoded.load(Ordering::Relaxed)
    }

    /// Video frames received from this peer, decrypted and decoded so far.
    pub fn video_frames_decoded(&self) -> u64 {
        self.counters.video_frames_decoded.load(Ordering::Relaxed)
    }

    /// Frames from this peer refused by SFrame (unknown KID, failed tag, replay).
    pub fn sframe_failures(&self) -> u64 {
        self.counters.sframe_failures.load(Ordering::Relaxed)
    }

    /// Whether ICE/DTLS is connected.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The last decoded video frame from this peer.
    pub fn last_video_frame(&self) -> Option<crate::codec::I420Frame> {
        self.last_video.lock().ok().and_then(|g| g.clone())
    }
}

async fn add_track(
    pc: &Arc<dyn PeerConnection>,
    kind: RtpCodecKind,
) -> Result<LocalTrack, SessionError> {
    let ssrc = rand_u32();
    let (codec, id) = match kind {
        RtpCodecKind::Video => (
            RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
            "video",
        ),
        _ => (
            RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.into(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
            "audio",
        ),
    };
    let track = MediaStreamTrack::new(
        "cove".into(),
        id.into(),
        id.into(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    );
    let track = Arc::new(TrackLocalStaticSample::new(Instant::now(), track).map_err(rtc_err)?);
    let sender = pc
        .add_track(track.clone() as Arc<dyn TrackLocal>)
        .await
        .map_err(rtc_err)?;
    Ok(LocalTrack {
        track,
        sender,
        ssrc,
        payload_type: OnceLock::new(),
    })
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // ring's SystemRandom only fails if the OS RNG is unavailable; then a fixed SSRC still works.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_be_bytes(b)
}

/// The `a=fingerprint:` values of an SDP, normalised to `"sha-256 AB:CD:.."`.
pub fn sdp_fingerprints(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=fingerprint:"))
        .map(normalise_fingerprint)
        .collect()
}

fn normalise_fingerprint(fp: &str) -> String {
    let mut parts = fp.split_whitespace();
    let alg = parts.next().unwrap_or_default().to_ascii_lowercase();
    let value = parts.next().unwrap_or_default().to_ascii_uppercase();
    format!("{alg} {value}")
}

/// Checks size and the fingerprint binding of a remote description; returns the SDP.
fn checked_sdp(desc: &SessionDescription) -> Result<String, SessionError> {
    if desc.sdp.len() > MAX_SDP_LEN {
        return Err(SessionError::BadSignal("SDP too large"));
    }
    let signed = normalise_fingerprint(&desc.fingerprint);
    let found = sdp_fingerprints(&desc.sdp);
    if found.is_empty() || found.iter().any(|f| *f != signed) {
        return Err(SessionError::FingerprintMismatch);
    }
    Ok(desc.sdp.clone())
}

struct SessionHandler {
    call: Weak<dyn CallHost>,
    peer: String,
    session: tokio::sync::OnceCell<Weak<PeerSession>>,
    session_rx: Mutex<Option<tokio::sync::oneshot::Receiver<Weak<PeerSession>>>>,
}

impl SessionHandler {
    async fn session(&self) -> Option<Arc<PeerSession>> {
        let weak = self
            .session
            .get_or_init(|| async {
                let rx = self.session_rx.lock().ok().and_then(|mut g| g.take());
                match rx {
                    Some(rx) => rx.await.unwrap_or_default(),
                    None => Weak::new(),
                }
            })
            .await;
        weak.upgrade()
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for SessionHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Some(session) = self.session().await else {
            return;
        };
        if !session.trickle {
            return;
        }
        let Ok(init) = event.candidate.to_json() else {
            return;
        };
        if let Some(call) = self.call.upgrade() {
            call.emit(CallEvent::LocalSignal {
                peer: self.peer.clone(),
                signal: CallSignal::Candidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index,
                    username_fragment: init.username_fragment,
                },
            });
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete
            && let Some(session) = self.session().await
        {
            session.gathering_done.store(true, Ordering::Release);
            session.gathered.notify_waiters();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let Some(call) = self.call.upgrade() else {
            return;
        };
        let Some(session) = self.session().await else {
            return;
        };
        match state {
            RTCPeerConnectionState::Connected => {
                session.connected.store(true, Ordering::Release);
                session.want_keyframe.store(true, Ordering::Release);
                let _ = session.connected_at.set(Instant::now());
                call.emit(CallEvent::Connected {
                    peer: self.peer.clone(),
                });
            }
            RTCPeerConnectionState::Failed => {
                session.connected.store(false, Ordering::Release);
                call.emit(CallEvent::Failed {
                    peer: self.peer.clone(),
                    reason: "connection failed".into(),
                });
            }
            RTCPeerConnectionState::Closed | RTCPeerConnectionState::Disconnected => {
                session.connected.store(false, Ordering::Release);
                call.emit(CallEvent::Closed {
                    peer: self.peer.clone(),
                });
            }
            _ => {}
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let (Some(call), Some(session)) = (self.call.upgrade(), self.session().await) else {
            return;
        };
        if dc.label().await.ok().as_deref() == Some(CONTROL_CHANNEL) {
            session.attach_control(&call, dc);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let (Some(call), Some(session)) = (self.call.upgrade(), self.session().await) else {
            return;
        };
        let kind = track.kind().await;
        let call = Arc::downgrade(&call);
        let session = Arc::downgrade(&session);
        match kind {
            RtpCodecKind::Audio => {
                tokio::spawn(receive_audio(call, session, track));
            }
            RtpCodecKind::Video => {
                tokio::spawn(receive_video(call, session, track));
            }
            _ => {}
        }
    }
}

async fn receive_audio(
    call: Weak<dyn CallHost>,
    session: Weak<PeerSession>,
    track: Arc<dyn TrackRemote>,
) {
    let Ok(mut decoder) = OpusDecoder::new() else {
        return;
    };
    while let Some(ev) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(pkt) = ev else {
            continue;
        };
        let (Some(call), Some(session)) = (call.upgrade(), session.upgrade()) else {
            return;
        };
        let Some(opus) = call.open_frame(&session, &pkt.payload) else {
            continue;
        };
        match decoder.decode(&opus) {
            Ok(pcm) => {
                let n = session
                    .counters
                    .audio_frames_decoded
                    .fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    let now = Instant::now();
                    let _ = session.first_audio_at.set(now);
                    call.emit(CallEvent::FirstAudio {
                        peer: session.peer.clone(),
                        since_dial: now.saturating_duration_since(session.started),
                    });
                }
                call.record_audio(&session.peer, pcm);
                call.play_audio(&session.peer, pkt.header.sequence_number, pcm);
            }
            Err(_) => {
                session
                    .counters
                    .decode_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn receive_video(
    call: Weak<dyn CallHost>,
    session: Weak<PeerSession>,
    track: Arc<dyn TrackRemote>,
) {
    let Ok(mut decoder) = Vp8Decoder::new() else {
        return;
    };
    let mut assembler = Vp8Assembler::default();
    while let Some(ev) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(pkt) = ev else {
            continue;
        };
        let dropped_before = assembler.dropped_frames();
        let frame = assembler.push(
            pkt.header.sequence_number,
            pkt.header.timestamp,
            pkt.header.marker,
            &pkt.payload,
        );
        let (Some(call), Some(session)) = (call.upgrade(), session.upgrade()) else {
            return;
        };
        // A lost frame breaks every following inter frame: ask for a key frame.
        if assembler.dropped_frames() > dropped_before {
            session.request_keyframe().await;
        }
        let Some(frame) = frame else {
            continue;
        };
        let Some(vp8) = call.open_frame(&session, &frame) else {
            continue;
        };
        match decoder.decode(&vp8) {
            Ok(pictures) => {
                for picture in pictures {
                    let n = session
                        .counters
                        .video_frames_decoded
                        .fetch_add(1, Ordering::Relaxed);
                    if n == 0 {
                        let now = Instant::now();
                        let _ = session.first_video_at.set(now);
                        call.emit(CallEvent::FirstVideo {
                            peer: session.peer.clone(),
                        });
                    }
                    call.record_video(&session.peer, n, &picture);
                    if let Ok(mut g) = session.last_video.lock() {
                        *g = Some(picture);
                    }
                }
            }
            Err(_) => {
                session
                    .counters
                    .decode_failures
                    .fetch_add(1, Ordering::Relaxed);
                session.request_keyframe().await;
            }
        }
    }
}

/// Reassembles VP8 RTP payloads (RFC 7741) into whole (SFrame-encrypted) frames.
#[derive(Default)]
pub struct Vp8Assembler {
    dropped: u64,
    buf: Vec<u8>,
    timestamp: Option<u32>,
    next_seq: Option<u16>,
    broken: bool,
}

impl Vp8Assembler {
    /// Frames dropped so far because a packet was missing.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped
    }

    /// Adds one RTP packet; returns a complete frame when the marker packet arrives and no
    /// packet of the frame was lost.
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let (start, body) = parse_vp8_descriptor(payload)?;
        if start || self.timestamp != Some(timestamp) {
            // New frame: anything unfinished is dropped.
            self.buf.clear();
            self.broken = !start;
            self.timestamp = Some(timestamp);
        } else if self.next_seq != Some(seq) {
            self.broken = true;
        }
        self.next_seq = Some(seq.wrapping_add(1));
        if self.buf.len() + body.len() > MAX_VIDEO_FRAME {
            self.broken = true;
        }
        if !self.broken {
            self.buf.extend_from_slice(body);
        }
        if marker {
            let done = !self.broken && !self.buf.is_empty();
            if !done {
                self.dropped += 1;
            }
            self.timestamp = None;
            self.broken = false;
            let frame = std::mem::take(&mut self.buf);
            return done.then_some(frame);
        }
        None
    }
}

/// Parses the VP8 payload descriptor; returns (start of frame, payload body).
fn parse_vp8_descriptor(p: &[u8]) -> Option<(bool, &[u8])> {
    let (&b0, mut rest) = p.split_first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    if b0 & 0x80 != 0 {
        let (&x, r) = rest.split_first()?;
        rest = r;
        if x & 0x80 != 0 {
            let (&pid, r) = rest.split_first()?;
            rest = if pid & 0x80 != 0 { r.get(1..)? } else { r };
        }
        if x & 0x40 != 0 {
            rest = rest.get(1..)?;
        }
        if x & 0x30 != 0 {
            rest = rest.get(1..)?;
        }
    }
    Some((start, rest))
}
