//! Cove accounts: what lets a user own a name with a password and reach their keys from any
//! machine, while the relay learns nothing it could use to check a password guess.
//!
//! - [`opaque`]: OPAQUE (RFC 9807) registration and login, both sides, as byte messages;
//! - [`bundle`]: the account bundle (identity key, history backup key), wrapped with an AEAD
//!   under the OPAQUE export key or the recovery key;
//! - [`recovery`]: the recovery key, its written form and the key that signs a reset;
//! - [`home_key`]: the database key of a home locked with a password.
//!
//! Sans-IO, like `cove-identity`: the relay links the server half, the client the client
//! half; neither needs MLS.

pub mod bundle;
pub mod home_key;
pub mod opaque;
pub mod recovery;

pub use bundle::{AccountBundle, WrapKind};
pub use opaque::{ExportKey, KSF_PARAMS, KSF_VERSION, KsfParams, ServerSecrets};
pub use recovery::RecoveryKey;

/// Why an account operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccountError {
    /// Wrong user name or password (OPAQUE cannot tell which, and neither does Cove).
    #[error("wrong user name or password")]
    LoginFailed,
    /// The password does not unlock this (the locked home key).
    #[error("wrong password")]
    WrongPassword,
    /// A wrapped bundle did not open: wrong secret, another user's or kind's bundle, or
    /// changed bytes.
    #[error("the account bundle did not open (wrong key or tampered)")]
    BundleRefused,
    /// A recovery key with a wrong length, character or checksum.
    #[error("that is not a recovery key (check for a typo: 11 groups of 5 characters)")]
    RecoveryKeyMistyped,
    /// A format or parameter version this build does not know.
    #[error("unsupported account format version {0}")]
    UnsupportedVersion(u8),
    /// Bytes that do not parse as the named message.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A failure that is not the input's fault.
    #[error("internal error: {0}")]
    Internal(&'static str),
}
