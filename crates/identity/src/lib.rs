//! `cove-identity`: the rules of a user's identity, in one place for the relay and the
//! client core.
//!
//! A user owns an Ed25519 **identity key**. Its **device list** (the values are in
//! [`cove_wire::identity`]) is append-only: entry 0 (`Create`) names the identity key and
//! is signed by it, every later entry adds or revokes a device, carries the hash of the
//! entry before it and is signed by the identity key. A device's **certificate** is its
//! `Add` entry together with the identity key, carried in its MLS leaf.
//!
//! - [`DeviceList::verify`] checks a whole list (the relay before storing an append, a
//!   client before believing a list the relay served) and [`DeviceList::append`] one more
//!   entry; a revoked device can never be added again.
//! - [`DeviceList::extends`] is the client's defence against the relay: a list that does
//!   not contain the head the client pinned earlier is a rollback or a fork.
//! - [`verify_certificate`] checks a leaf's certificate without the list;
//!   [`DeviceList::certifies`] checks it against the list (still listed, not revoked).
//! - [`IdentitySigner`] makes entries and certificates (it holds the identity secret).
//!
//! Nothing here does I/O or reads a clock: times are passed in.

mod list;
mod signer;

pub use list::{DeviceList, ListError, ListedDevice, entry_hash, revokes};
pub use signer::IdentitySigner;

use cove_wire::identity::{DeviceCertificate, ListOp};
use cove_wire::{DeviceKey, UserName};
use ed25519_dalek::{Signature, VerifyingKey};

/// Why a device certificate was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    /// The certificate's entry does not add a device.
    #[error("the certificate is not a device's Add entry")]
    NotAnAdd,
    /// It certifies a device of another user.
    #[error("the certificate is for user {0}")]
    WrongUser(UserName),
    /// It certifies another device key than the leaf's.
    #[error("the certificate is for another device key")]
    WrongDevice,
    /// The identity key is not a valid Ed25519 key or did not sign the entry.
    #[error("the certificate's signature does not verify under its identity key")]
    BadSignature,
    /// The entry could not be encoded to check it.
    #[error("the certificate could not be encoded: {0}")]
    Encode(#[from] cove_wire::EncodeError),
}

/// Checks that `cert` certifies `device` as a device of `user`, signed by the identity key
/// it names. Whether that identity key is the one pinned for `user`, and whether the device
/// was revoked since, is for the caller (with its pins and [`DeviceList::certifies`]).
pub fn verify_certificate(
    cert: &DeviceCertificate,
    user: &UserName,
    device: &DeviceKey,
) -> Result<(), CertificateError> {
    let ListOp::Add { device: listed, .. } = &cert.entry.body.op else {
        return Err(CertificateError::NotAnAdd);
    };
    if &cert.entry.body.user != user {
        return Err(CertificateError::WrongUser(cert.entry.body.user.clone()));
    }
    if listed != device {
        return Err(CertificateError::WrongDevice);
    }
    let message = cove_wire::identity::list_entry_message(&cert.entry.body)?;
    if verify(&cert.identity.0, &message, &cert.entry.signature.0) {
        Ok(())
    } else {
        Err(CertificateError::BadSignature)
    }
}

/// Strict Ed25519 verification (no malleable or small-order keys).
fn verify(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(key).is_ok_and(|k| {
        k.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    })
}
