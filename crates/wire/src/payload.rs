//! Byte payloads and vectors whose decoding is bounded by the input's own size.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::limits::MAX_VEC_ITEMS;

/// Opaque bytes (MLS ciphertext, KeyPackages, Welcomes). Encoded as one length-prefixed byte
/// string. The decoder checks the declared length against the bytes actually left in the
/// frame before it copies, so a length field cannot make it allocate more than the frame.
#[derive(Clone, PartialEq, Eq, Default, Hash)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Takes the bytes out.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload(v)
    }
}

impl From<&[u8]> for Payload {
    fn from(v: &[u8]) -> Self {
        Payload(v.to_vec())
    }
}

/// Payloads may be ciphertext of secrets: print only the length.
impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A vector whose decoder ignores the declared length for preallocation (it grows only as
/// items actually decode, so allocation is bounded by the input) and refuses more than
/// [`MAX_VEC_ITEMS`] items.
#[derive(Clone, PartialEq, Eq, Default, Debug, Hash)]
pub struct BoundedVec<T>(pub Vec<T>);

impl<T> From<Vec<T>> for BoundedVec<T> {
    fn from(v: Vec<T>) -> Self {
        BoundedVec(v)
    }
}

impl<T> std::ops::Deref for BoundedVec<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T> IntoIterator for BoundedVec<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<T: Serialize> Serialize for BoundedVec<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for BoundedVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = BoundedVec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                if seq.size_hint().is_some_and(|n| n > MAX_VEC_ITEMS) {
                    return Err(de::Error::custom("too many items"));
                }
                // Never trust the declared length for allocation.
                let mut out = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if out.len() == MAX_VEC_ITEMS {
                        return Err(de::Error::custom("too many items"));
                    }
                    out.push(item);
                }
                Ok(BoundedVec(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}
