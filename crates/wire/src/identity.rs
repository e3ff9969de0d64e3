//! A user's identity on the wire: the identity key, the signed append-only device list and
//! the device certificate (an `Add` entry of that list, carried in the device's MLS leaf).
//!
//! Like [`crate::sign`], this module only fixes the values and the bytes that are signed
//! and hashed; the rules (signatures, the hash chain, rollback and fork detection) live in
//! `cove-identity`, which both the relay and the client core link.
//!
//! ```text
//! entry 0  Create { identity }          signed by the identity key (self-signed)
//! entry 1  Add { device key, name }     prev = hash(entry 0)
//! entry 2  Add { device key, name }     prev = hash(entry 1)
//! entry 3  Revoke { device key }        prev = hash(entry 2)
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::limits::DEVICE_NAME_LEN;
use crate::{DeviceKey, EncodeError, Signature, UserName};

/// Label of the bytes the identity key signs for a device-list entry.
pub const LIST_ENTRY_LABEL: &[u8] = b"cove/v1/device-list-entry\0";
/// Label of the bytes hashed into an entry's [`EntryHash`].
pub const ENTRY_HASH_LABEL: &[u8] = b"cove/v1/device-list-hash\0";

/// A user's long-term identity public key (Ed25519). Pinned by the user's contacts; safety
/// numbers are computed over it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdentityKey(pub [u8; 32]);

impl IdentityKey {
    /// The lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.to_hex())
    }
}

/// The SHA-256 of a signed entry (see [`entry_hash_input`]): what the next entry's `prev`
/// and a client's pinned [`ListHead`] hold.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryHash(pub [u8; 32]);

impl fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryHash({}..)", hex::encode(&self.0[..6]))
    }
}

/// A device's display name in its user's list ("laptop", "phone"): 1–64 bytes of UTF-8
/// without control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DeviceName(String);

/// A device name that is empty, too long or contains control characters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid device name: use 1-64 bytes of text without control characters")]
pub struct DeviceNameError;

impl DeviceName {
    /// Validates a device name.
    pub fn new(name: impl Into<String>) -> Result<Self, DeviceNameError> {
        let name = name.into();
        if DEVICE_NAME_LEN.contains(&name.len()) && !name.chars().any(char::is_control) {
            Ok(DeviceName(name))
        } else {
            Err(DeviceNameError)
        }
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceName({:?})", self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: &str = <&str>::deserialize(d)?;
        DeviceName::new(s).map_err(serde::de::Error::custom)
    }
}

/// What one entry of a device list does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListOp {
    /// Entry 0 only: the list belongs to this identity key (which signs this entry too).
    Create {
        /// The user's identity key.
        identity: IdentityKey,
    },
    /// A device joins the user's devices.
    Add {
        /// The new device's Ed25519 key (also its MLS signature key).
        device: DeviceKey,
        /// Its display name.
        name: DeviceName,
    },
    /// A device leaves for good: it is removed from every group and never added again.
    Revoke {
        /// The revoked device's key.
        device: DeviceKey,
    },
}

/// The signed part of a device-list entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    /// Whose list this is.
    pub user: UserName,
    /// Position in the list, from 0 (the `Create` entry).
    pub index: u64,
    /// The hash of entry `index - 1`; `None` only for entry 0.
    pub prev: Option<EntryHash>,
    /// When the entry was made (ms since the Unix epoch, by the signer's clock).
    pub time_ms: u64,
    /// What it does.
    pub op: ListOp,
}

/// One entry of a user's device list: the body and the identity key's signature over
/// [`list_entry_message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// The signed part.
    pub body: EntryBody,
    /// The identity key's signature.
    pub signature: Signature,
}

/// A device's certificate: the user's identity key and the signed `Add` entry of the device.
/// It travels in the device's MLS leaf, so a member checks a leaf without asking the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertificate {
    /// The identity key that signed `entry`.
    pub identity: IdentityKey,
    /// The `Add` entry of the device in its user's list.
    pub entry: ListEntry,
}

/// The newest entry of a list a client has verified: it refuses a later list that does not
/// contain this exact entry at this index (a rollback or a fork).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListHead {
    /// Index of the newest entry.
    pub index: u64,
    /// Its hash.
    pub hash: EntryHash,
}

/// The bytes the identity key signs for `body`: label, then the body's postcard encoding.
pub fn list_entry_message(body: &EntryBody) -> Result<Vec<u8>, EncodeError> {
    let mut m = LIST_ENTRY_LABEL.to_vec();
    m.extend_from_slice(&crate::encode(body)?);
    Ok(m)
}

/// The bytes hashed into an entry's [`EntryHash`]: label, then the whole signed entry's
/// postcard encoding (so the hash commits to the signature as well).
pub fn entry_hash_input(entry: &ListEntry) -> Result<Vec<u8>, EncodeError> {
    let mut m = ENTRY_HASH_LABEL.to_vec();
    m.extend_from_slice(&crate::encode(entry)?);
    Ok(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn device_names_are_bounded_text() {
        assert!(DeviceName::new("laptop").is_ok());
        assert!(DeviceName::new("téléphone de Zoé").is_ok());
        assert_eq!(DeviceName::new(""), Err(DeviceNameError));
        assert_eq!(DeviceName::new("a".repeat(65)), Err(DeviceNameError));
        assert!(DeviceName::new("a".repeat(64)).is_ok());
        assert_eq!(DeviceName::new("two\nlines"), Err(DeviceNameError));
        assert_eq!(DeviceName::new("bell\u{7}"), Err(DeviceNameError));
    }

    #[test]
    fn a_decoded_device_name_is_validated() {
        let bad = crate::encode(&"x\u{1b}[2J").unwrap();
        assert!(crate::decode::<DeviceName>(&bad).is_err());
        let long = crate::encode(&"n".repeat(65)).unwrap();
        assert!(crate::decode::<DeviceName>(&long).is_err());
    }

    #[test]
    fn signed_and_hashed_bytes_are_domain_separated() {
        let body = EntryBody {
            user: UserName::new("alice").unwrap(),
            index: 0,
            prev: None,
            time_ms: 1,
            op: ListOp::Create {
                identity: IdentityKey([7; 32]),
            },
        };
        let m = list_entry_message(&body).unwrap();
        assert!(m.starts_with(LIST_ENTRY_LABEL));
        let entry = ListEntry {
            body,
            signature: Signature([1; 64]),
        };
        let h = entry_hash_input(&entry).unwrap();
        assert!(h.starts_with(ENTRY_HASH_LABEL));
        assert_ne!(m, h);
        assert!(!crate::sign::AUTH_LABEL.starts_with(LIST_ENTRY_LABEL));
    }
}
