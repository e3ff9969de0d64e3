//! The call-signalling messages carried inside MLS ([`CallMessage`]), in a leaf module so
//! that [`crate::content`] (which carries them) and [`crate::call`] (the state machine that
//! consumes them) do not import each other. Re-exported from [`crate::call`]. The signal
//! values themselves ([`CallSignal`]) are cove-wire's, shared with cove-media.

use cove_wire::DeviceId;
use cove_wire::call::{CallSignal, CallSignalError};
use serde::{Deserialize, Serialize};

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

impl CallMessage {
    /// Checks the size limits (see [`CallSignal::check_limits`]).
    pub fn validate(&self) -> Result<(), CallSignalError> {
        self.signal.check_limits()
    }
}
