//! cove-media: the media half of Cove calls.
//!
//! It owns everything that touches media and the network for a call, and nothing about MLS:
//! the client core hands in signalling *values* (SDP, ICE candidates) that it carried inside
//! MLS, and SFrame base keys it exported from the group's epoch; this crate hands signalling
//! values back out as events.
//!
//! - [`sframe`]: RFC 9605 SFrame encryption of encoded frames (AES_128_GCM_SHA256_128).
//! - [`codec`]: Opus (48 kHz mono, 20 ms) and VP8 (libvpx) encoders and decoders.
//! - [`source`]: headless media sources and sinks: WAV files, tones, a test pattern, Y4M.
//! - [`audio`]: resampler, jitter buffer and down-mixing for real devices; `device` (feature
//!   `devices`): microphone and speaker through cpal/ALSA.
//! - [`session`]: one webrtc-rs peer connection with SFrame-protected audio/video tracks, a
//!   control data channel, DTLS fingerprint pinning, relay-only mode and stats.
//! - [`call`]: a call of up to 6 participants as a full mesh of sessions sharing one SFrame
//!   sender and one encoder per medium.
//!
//! The main loop of a call, as the CLI drives it (signalling travels inside MLS):
//! ```text
//! let key = EpochKey::new(epoch, &mls.export_secret("SFrame 1.0 Base Key", call_id, 32))?;
//! let (call, mut events) = Call::new(config, my_leaf_index, key, member_leaf_indexes)?;
//! call.dial("bob/phone", Some(bob_leaf)).await?;             // caller; callee waits for offer
//! loop { select! {
//!     ev = events.recv() => match ev {
//!         CallEvent::LocalSignal { peer, signal } => core.send_call_signal(peer, signal),
//!         CallEvent::FirstAudio { .. } | Connected | Control | Refused | Failed | ..
//!     },
//!     (peer, leaf, signal) = core.next_call_signal() => call.apply_signal(&peer, leaf, signal).await?,
//!     epoch_changed(key, members) => call.rekey(key, members)?,
//! }}
//! let stats = call.end().await;                              // writes stats.json if recording
//! ```
#![deny(missing_docs)]

pub mod audio;
pub mod call;
pub mod codec;
#[cfg(feature = "devices")]
pub mod device;
pub mod session;
pub mod sframe;
pub mod source;
mod types;

pub use call::{Call, CallConfig, CallEvent, CallStats, PeerStats};
/// The one call-signalling type, shared with the client core (which carries it inside MLS).
pub use cove_wire::call::CallSignal;
pub use session::{
    ControlMessage, IceCandidate, IceServer, PeerSession, SessionDescription, SessionError,
};
pub use sframe::EpochKey;

/// Codec errors (Opus, VP8).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// libopus reported an error.
    #[error("opus: {0}")]
    Opus(String),
    /// libvpx reported an error.
    #[error("vpx: {0}")]
    Vpx(String),
    /// A frame of the wrong size or shape was passed in or received.
    #[error("bad media frame")]
    BadFrame,
    /// Video dimensions are zero, odd, too large, or do not match the encoder.
    #[error("bad video dimensions")]
    BadDimensions,
}

/// Errors reading or writing media files and devices.
#[derive(Debug, thiserror::Error)]
pub enum MediaIoError {
    /// File system error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// WAV encoding or decoding error.
    #[error("WAV: {0}")]
    Wav(String),
    /// Unsupported or malformed file or argument.
    #[error("format: {0}")]
    Format(&'static str),
    /// Real devices need the `devices` cargo feature (off by default).
    #[error("microphone/camera support is not built in (enable the `devices` feature)")]
    DevicesUnavailable,
    /// The `devices` feature is on, but camera capture is not implemented.
    #[error("camera capture is not implemented; use the test pattern or a Y4M file")]
    DeviceNotImplemented,
    /// No audio device of that name.
    #[error("no audio {kind} device `{name}`; available: {available}")]
    UnknownDevice {
        /// `input` or `output`.
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The names that exist, comma-separated.
        available: String,
    },
    /// The audio device failed (opening, configuring or starting its stream).
    #[error("audio device: {0}")]
    Device(String),
}
