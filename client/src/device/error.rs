//! Why a device operation failed.

use cove_core::{CommandError, OpenError, QueryError};
use cove_store::StoreError;

use crate::config::ConfigError;
use crate::raw::RawError;
use crate::session::SessionError;
use crate::transport::TransportError;

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The home or configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS or URL setup failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The database could not be opened or used.
    #[error("client database: {0}")]
    Store(#[from] StoreError),
    /// The device state could not be loaded.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The command was refused locally (unknown group, bad argument, ...).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Verifying a user's identity was refused (unknown, or it changed meanwhile).
    #[error(transparent)]
    Verify(#[from] cove_core::identity::VerifyError),
    /// A direct relay exchange failed.
    #[error(transparent)]
    Raw(#[from] RawError),
    /// No listed device key of this user starts with these hex digits.
    #[error("no device of this user has a key starting with {0:?} (see `cove device list`)")]
    UnknownDeviceKey(String),
    /// Several listed device keys start with these hex digits.
    #[error("several devices have a key starting with {0:?}: give more digits")]
    AmbiguousDeviceKey(String),
    /// The device has no identity or is not registered yet.
    #[error("this device is not registered with the relay yet")]
    NotRegistered,
    /// The relay did not complete the command, or refused it.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Linking a machine by a code failed.
    #[error(transparent)]
    Link(#[from] super::link_code::LinkFailure),
    /// A password-account operation failed: a wrong password (`LoginFailed`, also for a
    /// user without an account), a mistyped recovery key, a bundle that does not open.
    #[error(transparent)]
    Account(#[from] cove_account::AccountError),
    /// The password login failed: a wrong user name or password (the relay does not tell
    /// them apart, and neither does this).
    #[error("login failed: wrong user name or password")]
    LoginFailed,
    /// The user's identity or device list could not be taken over (e.g. the list is signed
    /// by another identity key than the account's).
    #[error(transparent)]
    OwnIdentity(#[from] cove_core::error::OwnIdentityError),
    /// A bad argument caught before the core (e.g. a reaction that is not an emoji).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The core could not record the relay's answer (storage).
    #[error(transparent)]
    Handle(#[from] cove_core::HandleError),
}
