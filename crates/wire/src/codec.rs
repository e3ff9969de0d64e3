//! The one codec: postcard, bounded. Every frame on the wire is exactly one encoded
//! [`crate::ClientFrame`] or [`crate::ServerFrame`] in one binary WebSocket message.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::limits::MAX_FRAME_BYTES;

/// Why a frame could not be decoded. The peer sent something malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is larger than [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// The bytes do not form a frame (bad tag, short input, bad length, invalid id).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame decoded but bytes were left over.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
}

/// Why a frame could not be encoded (a caller bug, e.g. a frame over the size limit).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded frame would exceed [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// Serialization failed.
    #[error("encoding failed: {0}")]
    Serialize(String),
}

/// Encodes a frame. Fails if the frame would exceed [`MAX_FRAME_BYTES`].
pub fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>, EncodeError> {
    let bytes = postcard::to_stdvec(frame).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(EncodeError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes exactly one frame from `bytes`: no trailing bytes, at most [`MAX_FRAME_BYTES`].
/// Never panics, and never allocates more than `bytes.len()` for any length field.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let (frame, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(frame)
}
