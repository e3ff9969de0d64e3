//! The values a call and its peer sessions share: the call's configuration, the events it
//! reports, the ICE servers and the control messages of the data channel.
//!
//! A leaf of the crate: `call` (which owns the sessions) and `session` (which reports to the
//! call through its `CallHost` trait) both use it, and it uses neither.

use std::path::PathBuf;
use std::time::Duration;

use cove_wire::call::CallSignal;
use serde::{Deserialize, Serialize};

use crate::source::{AudioInput, AudioOutput, VideoInput};

/// How a call is set up. Plain data: the CLI fills it from its flags and the relay's TURN
/// credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallConfig {
    /// Local UDP addresses to bind (default `["127.0.0.1:0"]`; `0.0.0.0:0` skips loopback in
    /// webrtc-rs 0.21, so list concrete interface addresses for real networks).
    pub bind_addrs: Vec<String>,
    /// STUN/TURN servers.
    pub ice_servers: Vec<IceServer>,
    /// Use only relayed (TURN) candidates: hides the local addresses from peers.
    ///
    /// Known limit of webrtc-rs 0.21: its driver hands a datagram to the TURN relayer after the
    /// relayer's write queue was drained for that loop iteration, so while a connection is idle
    /// each relayed DTLS flight waits for the next wake-up (~200 ms). A relay-only call
    /// therefore takes about 1.5-2 s to connect even on loopback (media then flows normally).
    pub relay_only: bool,
    /// Trickle ICE: emit candidates as separate signals instead of waiting for gathering.
    pub trickle_ice: bool,
    /// Outgoing audio (`None`: no audio track unless `receive_only`).
    pub audio: Option<AudioInput>,
    /// Outgoing video (`None`: no video track unless `receive_only`).
    pub video: Option<VideoInput>,
    /// Where received audio is played (`None`: nowhere; `--record` still records it).
    #[serde(default)]
    pub audio_out: Option<AudioOutput>,
    /// Negotiate audio and video tracks even when sending nothing.
    pub receive_only: bool,
    /// Video frame rate.
    pub video_fps: u32,
    /// Video target bitrate (kbit/s).
    pub video_kbps: u32,
    /// A key frame at least every this many frames (also on connect and on request).
    pub video_keyframe_interval: u32,
    /// Directory for `audio-<peer>.wav`, `video-<peer>/frame-N.ppm` and `stats.json`.
    pub record_dir: Option<PathBuf>,
    /// Save every Nth received video frame as PPM.
    pub record_every_nth_frame: u64,
    /// How long the previous epoch's key stays valid for decryption after a rekey.
    pub sframe_grace: Duration,
    /// Interval between ICE connectivity checks (webrtc-rs default 200 ms; we use 50 ms with
    /// proportionally more attempts, so the first check round does not wait 200 ms).
    pub ice_check_interval: Duration,
    /// Longest interval between TURN allocation refreshes (`None`: webrtc-rs refreshes at half
    /// the allocation lifetime the server granted, 5 minutes by default). Shorter intervals
    /// keep NAT mappings warm; tests use them to watch refreshes happen.
    #[serde(default)]
    pub turn_refresh_interval: Option<Duration>,
    /// When a capture or playback DEVICE fails to open, go on without it (silence as input,
    /// no playback) and report [`CallEvent::DeviceFallback`] instead of failing the call.
    /// Files and tones still fail. Off by default: a device the user named must work.
    #[serde(default)]
    pub device_fallback: bool,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            bind_addrs: vec!["127.0.0.1:0".into()],
            ice_servers: Vec::new(),
            relay_only: false,
            trickle_ice: false,
            audio: Some(AudioInput::Tone(440.0)),
            video: None,
            audio_out: None,
            receive_only: true,
            video_fps: 15,
            video_kbps: 500,
            video_keyframe_interval: 30,
            record_dir: None,
            record_every_nth_frame: 15,
            sframe_grace: crate::sframe::DEFAULT_GRACE,
            ice_check_interval: Duration::from_millis(50),
            turn_refresh_interval: None,
            device_fallback: false,
        }
    }
}

/// What a call reports to its driver (the CLI).
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// Send this signal to `peer` inside MLS.
    LocalSignal {
        /// The remote participant.
        peer: String,
        /// The value to carry.
        signal: CallSignal,
    },
    /// DTLS and ICE are up with `peer`.
    Connected {
        /// The remote participant.
        peer: String,
    },
    /// The first audio frame from `peer` was decrypted and decoded.
    FirstAudio {
        /// The remote participant.
        peer: String,
        /// Time since `dial`/`answer` for this peer.
        since_dial: Duration,
    },
    /// The first video frame from `peer` was decrypted and decoded.
    FirstVideo {
        /// The remote participant.
        peer: String,
    },
    /// A control message arrived on the data channel.
    Control {
        /// The remote participant.
        peer: String,
        /// The message.
        message: ControlMessage,
    },
    /// A remote signal was refused (e.g. fingerprint mismatch); the session was closed.
    Refused {
        /// The remote participant.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The connection with `peer` failed.
    Failed {
        /// The remote participant.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The connection with `peer` closed.
    Closed {
        /// The remote participant.
        peer: String,
    },
    /// An audio device failed to open and the call goes on without it
    /// ([`CallConfig::device_fallback`]): `input` (silence is sent) or `output` (nothing is
    /// played).
    DeviceFallback {
        /// `input` or `output`.
        direction: &'static str,
        /// The device's name as configured.
        device: String,
        /// Why it could not be opened.
        reason: String,
    },
}

/// A STUN/TURN server for ICE (e.g. from the relay's TURN credentials).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// URLs such as `turn:127.0.0.1:3478?transport=udp`.
    pub urls: Vec<String>,
    /// TURN username (`expiry:user` for TURN REST credentials).
    pub username: String,
    /// TURN password.
    pub credential: String,
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

/// A call-control message on the data channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// The peer hangs up.
    Hangup,
    /// The peer muted or unmuted a medium.
    Mute {
        /// Audio muted.
        audio: bool,
        /// Video muted.
        video: bool,
    },
    /// Free text (chat during the call, diagnostics).
    Text {
        /// The text.
        text: String,
    },
    /// The receiver lost video frames: send a key frame (handled inside the call; not
    /// reported as an event).
    KeyframeRequest,
}
