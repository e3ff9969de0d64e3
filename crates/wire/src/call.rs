//! Call signalling values: the one type ([`CallSignal`]) that the client core carries inside
//! MLS application messages and that the media engine (`cove-media`) produces and consumes.
//!
//! The relay never sees these values (they travel end-to-end encrypted); they live here, in
//! the leaf crate, so that `cove-core` and `cove-media` share one definition without
//! depending on each other. The encoding is postcard (see [`crate::encode`]); **variants are
//! only ever appended**, as for every wire type.

use serde::{Deserialize, Serialize};

/// Largest SDP carried (bytes).
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Largest ICE candidate carried (bytes); also the bound on its `sdp_mid` plus
/// `username_fragment`.
pub const MAX_CANDIDATE_BYTES: usize = 1024;
/// Largest DTLS fingerprint string carried (bytes).
pub const MAX_FINGERPRINT_BYTES: usize = 256;

/// One call-signalling value: a media description or candidate, or a change of call state.
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
    /// A trickled ICE candidate (W3C `RTCIceCandidateInit`).
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

/// Why a [`CallSignal`] was refused by [`CallSignal::check_limits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallSignalError {
    /// The SDP is longer than [`MAX_SDP_BYTES`] or the fingerprint longer than
    /// [`MAX_FINGERPRINT_BYTES`].
    #[error("SDP or fingerprint too long")]
    DescriptionTooLong,
    /// The candidate, or its `sdp_mid` plus `username_fragment`, is longer than
    /// [`MAX_CANDIDATE_BYTES`].
    #[error("ICE candidate too long")]
    CandidateTooLong,
}

impl CallSignal {
    /// Checks the size limits ([`MAX_SDP_BYTES`], [`MAX_FINGERPRINT_BYTES`],
    /// [`MAX_CANDIDATE_BYTES`]).
    pub fn check_limits(&self) -> Result<(), CallSignalError> {
        match self {
            CallSignal::Offer {
                sdp, fingerprint, ..
            }
            | CallSignal::Answer { sdp, fingerprint } => {
                if sdp.len() > MAX_SDP_BYTES || fingerprint.len() > MAX_FINGERPRINT_BYTES {
                    return Err(CallSignalError::DescriptionTooLong);
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
                if candidate.len() > MAX_CANDIDATE_BYTES || extra > MAX_CANDIDATE_BYTES {
                    return Err(CallSignalError::CandidateTooLong);
                }
            }
            CallSignal::HangUp | CallSignal::Busy | CallSignal::Decline => {}
        }
        Ok(())
    }

    /// Whether the media engine consumes this signal (offer, answer or candidate); the
    /// others (hang-up, busy, decline) are call state, handled by the core.
    pub fn is_media(&self) -> bool {
        matches!(
            self,
            CallSignal::Offer { .. } | CallSignal::Answer { .. } | CallSignal::Candidate { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The encoding is the one `cove-core` has carried inside MLS since calls exist (variant
    /// index, then the fields in order): changing it breaks calls with older clients.
    #[test]
    fn encoding_is_stable() {
        let offer = CallSignal::Offer {
            sdp: "v=0".into(),
            fingerprint: "f".into(),
            video: true,
        };
        assert_eq!(
            crate::encode(&offer).unwrap(),
            [0, 3, b'v', b'=', b'0', 1, b'f', 1]
        );
        assert_eq!(crate::encode(&CallSignal::HangUp).unwrap(), [3]);
        assert_eq!(crate::encode(&CallSignal::Decline).unwrap(), [5]);
        let c = CallSignal::Candidate {
            candidate: "c".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: None,
            username_fragment: None,
        };
        let bytes = crate::encode(&c).unwrap();
        assert_eq!(bytes, [2, 1, b'c', 1, 1, b'0', 0, 0]);
        assert_eq!(crate::decode::<CallSignal>(&bytes).unwrap(), c);
    }

    #[test]
    fn limits_are_enforced_at_the_boundary() {
        let sdp = |n| CallSignal::Answer {
            sdp: "x".repeat(n),
            fingerprint: String::new(),
        };
        assert_eq!(sdp(MAX_SDP_BYTES).check_limits(), Ok(()));
        assert_eq!(
            sdp(MAX_SDP_BYTES + 1).check_limits(),
            Err(CallSignalError::DescriptionTooLong)
        );
        let cand = |n, m| CallSignal::Candidate {
            candidate: "c".repeat(n),
            sdp_mid: Some("m".repeat(m)),
            sdp_mline_index: Some(0),
            username_fragment: Some("u".into()),
        };
        assert_eq!(
            cand(MAX_CANDIDATE_BYTES, MAX_CANDIDATE_BYTES - 1).check_limits(),
            Ok(())
        );
        assert_eq!(
            cand(MAX_CANDIDATE_BYTES + 1, 0).check_limits(),
            Err(CallSignalError::CandidateTooLong)
        );
        assert_eq!(
            cand(1, MAX_CANDIDATE_BYTES).check_limits(),
            Err(CallSignalError::CandidateTooLong)
        );
        assert!(CallSignal::HangUp.check_limits().is_ok());
        assert!(!CallSignal::Busy.is_media());
        assert!(sdp(1).is_media());
    }
}
