//! Validated id newtypes. Decoding validates, so a value of these types is always well formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::limits::USER_NAME_LEN;

/// Why a textual id could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// A user name outside 1..=32 bytes of `[a-z0-9_.-]` starting with a letter or digit.
    #[error(
        "invalid user name {0:?}: use 1-32 characters a-z, 0-9, '_', '.', '-', starting with a letter or digit"
    )]
    UserName(String),
    /// Not the expected number of hex digits.
    #[error("invalid {kind}: expected {len} hex digits")]
    Hex {
        /// What was being parsed.
        kind: &'static str,
        /// Expected number of hex digits.
        len: usize,
    },
}

/// A user name, unique on a relay: 1–32 bytes of `[a-z0-9_.-]`, starting with `[a-z0-9]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct UserName(String);

impl UserName {
    /// Parses and validates a user name.
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        let ok = USER_NAME_LEN.contains(&name.len())
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            })
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(UserName(name))
        } else {
            Err(IdError::UserName(name))
        }
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserName({})", self.0)
    }
}

impl FromStr for UserName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        UserName::new(s)
    }
}

impl<'de> Deserialize<'de> for UserName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: &str = <&str>::deserialize(d)?;
        UserName::new(s).map_err(serde::de::Error::custom)
    }
}

macro_rules! int_id {
    ($(#[$m:meta])* $name:ident($t:ty)) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        pub struct $name(pub $t);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

int_id!(
    /// A device, assigned by the relay at registration. Unique on the relay, never reused.
    DeviceId(u64)
);
int_id!(
    /// An MLS epoch as the relay sees it in clear on every post.
    Epoch(u64)
);
int_id!(
    /// A position in an append-only log (a group log or a device inbox). Starts at 1;
    /// a cursor of 0 means "nothing acknowledged yet".
    Seq(u64)
);
int_id!(
    /// A request id chosen by the device; the reply carries the same id.
    RequestId(u32)
);

macro_rules! bytes_id {
    ($(#[$m:meta])* $name:ident, $len:expr, $kind:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);
        impl $name {
            /// Parses the lowercase or uppercase hex form.
            pub fn from_hex(s: &str) -> Result<Self, IdError> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out)
                    .map_err(|_| IdError::Hex { kind: $kind, len: 2 * $len })?;
                Ok($name(out))
            }
            /// The lowercase hex form.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::from_hex(s)
            }
        }
    };
}

bytes_id!(
    /// A group, chosen at random by its creator; equal to the MLS group id.
    GroupId,
    16,
    "group id"
);
bytes_id!(
    /// A stored blob (encrypted attachment), chosen at random by the uploader.
    BlobId,
    16,
    "blob id"
);
bytes_id!(
    /// A device's Ed25519 public key.
    DeviceKey,
    32,
    "device key"
);

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..4]))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = crate::Payload::deserialize(d)?;
        let arr: [u8; 64] =
            p.0.as_slice()
                .try_into()
                .map_err(|_| serde::de::Error::custom("signature must be 64 bytes"))?;
        Ok(Signature(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_validated() {
        assert!(UserName::new("alice").is_ok());
        assert!(UserName::new("bob_2.x-y").is_ok());
        assert!(UserName::new("").is_err());
        assert!(UserName::new("Alice").is_err());
        assert!(UserName::new("-alice").is_err());
        assert!(UserName::new("a".repeat(33)).is_err());
        assert!(UserName::new("al ice").is_err());
    }

    #[test]
    fn hex_ids_round_trip() {
        let g = GroupId([7; 16]);
        assert_eq!(GroupId::from_hex(&g.to_hex()), Ok(g));
        assert!(GroupId::from_hex("abc").is_err());
    }
}
