//! The call-signalling messages carried inside MLS ([`CallMessage`]), in a leaf module so
//! that [`crate::content`] (which carries them) and [`crate::call`] (the state machine that
//! consumes them) do not import each other. Re-exported from [`crate::call`].

use cove_wire::DeviceId;
use serde::{Deserialize, Serialize};

/// Largest SDP carried (bytes).
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Largest ICE candidate carried (bytes).
pub const MAX_CANDIDATE_BYTES: usize = 1024;
/// Largest DTLS fingerprint string carried (bytes).
pub const MAX_FINGERPRINT_BYTES: usize = 256;

/// A random call id chosen by the caller; also the context of the SFrame key export.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CallId(pub [u8; 16]);

impl CallId {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallId({})", self.to_hex())
    }
}

/// One call-signalling message (the content of [`crate::content::Content::Call`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMessage {
    /// The call.
    pub call_id: CallId,
    /// The device it is for (`None`: every member, e.g. a hang-up).
    pub to: Option<DeviceId>,
    /// What it says.
    pub signal: CallSignal,
}

/// The signalling values (mirroring `cove_media::Signal`, plus call state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallSignal {
    /// An SDP offer and the DTLS fingerprint it commits to (signed with the message).
    Offer {
        /// The SDP.
        sdp: String,
        /// `"sha-256 AB:CD:..."`.
        fingerprint: String,
        /// Whether the caller sends video.
        video: bool,
    },
    /// An SDP answer and its DTLS fingerprint.
    Answer {
        /// The SDP.
        sdp: String,
        /// `"sha-256 AB:CD:..."`.
        fingerprint: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The `candidate:` attribute.
        candidate: String,
        /// Media section id.
        sdp_mid: Option<String>,
        /// Media section index.
        sdp_mline_index: Option<u16>,
        /// ICE username fragment.
        username_fragment: Option<String>,
    },
    /// The sender left the call.
    HangUp,
    /// The sender is in another call.
    Busy,
    /// The sender declined the call.
    Decline,
}

impl CallMessage {
    /// Checks the size limits.
    pub fn validate(&self) -> Result<(), CallMessageError> {
        let too_long = |s: &str, max: usize| s.len() > max;
        match &self.signal {
            CallSignal::Offer {
                sdp, fingerprint, ..
            }
            | CallSignal::Answer { sdp, fingerprint } => {
                if too_long(sdp, MAX_SDP_BYTES) || too_long(fingerprint, MAX_FINGERPRINT_BYTES) {
                    return Err(CallMessageError::SdpTooLong);
                }
            }
            CallSignal::Candidate {
                candidate,
                sdp_mid,
                username_fragment,
                ..
            } => {
                let extra = sdp_mid.as_deref().map_or(0, str::len)
                    + username_fragment.as_deref().map_or(0, str::len);
                if too_long(candidate, MAX_CANDIDATE_BYTES) || extra > MAX_CANDIDATE_BYTES {
                    return Err(CallMessageError::CandidateTooLong);
                }
            }
            CallSignal::HangUp | CallSignal::Busy | CallSignal::Decline => {}
        }
        Ok(())
    }
}

/// Why a received [`CallMessage`] is refused (the peer sent it: the message is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallMessageError {
    /// The SDP or the DTLS fingerprint of an offer or answer is over its limit.
    #[error("SDP or fingerprint too long")]
    SdpTooLong,
    /// An ICE candidate (with its mid and username fragment) is over its limit.
    #[error("ICE candidate too long")]
    CandidateTooLong,
}
