//! The notices relay nodes exchange on the bus, and their binary encoding.
//!
//! Version 1, all integers big-endian:
//!
//! ```text
//! version u8 = 1 | kind u8 | node: len u8 (1..=64), bytes | body
//! kind 1, entry:   group [16] | seq u64 | recipients: count u32 (<= 6000), u64 each | frame
//! kind 2, welcome: device u64 | seq u64 | frame
//! kind 3, close:   device u64 | opened_before_ms u64 | code: len u8 (1..=16), the wire
//!                  encoding of an ErrorCode
//! frame: 0 (absent: read the entry from the store) | 1, len u32 (<= 64 KiB), bytes
//! ```
//!
//! Decoding bounds every length before reading and refuses trailing bytes; a notice that
//! does not decode is dropped by the receiver (with a warning), never trusted in part.

use bytes::Bytes;
use cove_wire::{DeviceId, ErrorCode, GroupId, Seq};

/// The encoding's version (the first byte).
pub const VERSION: u8 = 1;

/// The largest frame a notice carries; a larger entry is announced without it.
pub const MAX_NOTICE_FRAME: usize = 64 * 1024;

/// Most recipients one notice names (a group's devices plus the ones a commit removes).
pub const MAX_RECIPIENTS: usize =
    cove_wire::limits::MAX_GROUP_DEVICES + cove_wire::limits::MAX_MEMBERSHIP_CHANGE;

/// Longest node name.
pub const MAX_NODE_NAME: usize = 64;

const KIND_ENTRY: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_CLOSE: u8 = 3;
const MAX_CODE_BYTES: usize = 16;

/// One notice: which node sent it, and what happened there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The node that published it.
    pub node: String,
    /// What it says.
    pub body: Body,
}

/// What a notice says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// An entry was appended to a group log.
    Entry {
        /// The group.
        group: GroupId,
        /// The entry's seq.
        seq: Seq,
        /// The devices to deliver it to.
        recipients: Vec<DeviceId>,
        /// Its encoded `Deliver` frame, when small enough.
        frame: Option<Bytes>,
    },
    /// A Welcome was put in a device's inbox.
    Welcome {
        /// The device.
        device: DeviceId,
        /// The inbox entry's seq.
        seq: Seq,
        /// Its encoded `Deliver` frame, when small enough.
        frame: Option<Bytes>,
    },
    /// A device's connection is to be closed on every node.
    Close {
        /// The device.
        device: DeviceId,
        /// Only a connection opened at or before this time (ms since the Unix epoch) is
        /// closed: a device's new connection displaces older ones, never a newer one on
        /// another node (`u64::MAX`: any connection).
        opened_before_ms: u64,
        /// The code to close it with.
        code: ErrorCode,
    },
}

/// Why a notice does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoticeError {
    /// Another version of the encoding.
    #[error("unknown notice version {0}")]
    Version(u8),
    /// An unknown kind of notice.
    #[error("unknown notice kind {0}")]
    Kind(u8),
    /// The bytes end too early.
    #[error("notice truncated")]
    Truncated,
    /// A length or value out of its bounds.
    #[error("notice field out of bounds: {0}")]
    Bounds(&'static str),
    /// Bytes after the notice.
    #[error("trailing bytes after the notice")]
    Trailing,
}

impl Notice {
    /// The encoding (see the module docs). A frame over [`MAX_NOTICE_FRAME`] is left out,
    /// and a node name over [`MAX_NODE_NAME`] bytes is cut (callers validate names).
    pub fn encode(&self) -> Vec<u8> {
        let node = self.node.as_bytes();
        let node = node.get(..MAX_NODE_NAME).unwrap_or(node);
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        let kind = match &self.body {
            Body::Entry { .. } => KIND_ENTRY,
            Body::Welcome { .. } => KIND_WELCOME,
            Body::Close { .. } => KIND_CLOSE,
        };
        out.push(kind);
        // Bounded by the cut above.
        out.push(u8::try_from(node.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(node);
        match &self.body {
            Body::Entry {
                group,
                seq,
                recipients,
                frame,
            } => {
                out.extend_from_slice(&group.0);
                out.extend_from_slice(&seq.0.to_be_bytes());
                let count = recipients.len().min(MAX_RECIPIENTS);
                out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
                for device in recipients.iter().take(count) {
                    out.extend_from_slice(&device.0.to_be_bytes());
                }
                put_frame(&mut out, frame.as_ref());
            }
            Body::Welcome { device, seq, frame } => {
                out.extend_from_slice(&device.0.to_be_bytes());
                out.extend_from_slice(&seq.0.to_be_bytes());
                put_frame(&mut out, frame.as_ref());
            }
            Body::Close {
                device,
                opened_before_ms,
                code,
            } => {
                out.extend_from_slice(&device.0.to_be_bytes());
                out.extend_from_slice(&opened_before_ms.to_be_bytes());
                let code = cove_wire::encode(code).unwrap_or_default();
                out.push(u8::try_from(code.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(&code);
            }
        }
        out
    }

    /// Decodes a notice, bounding every length and refusing trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Notice, NoticeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(NoticeError::Version(version));
        }
        let kind = r.u8()?;
        let node_len = usize::from(r.u8()?);
        if node_len == 0 || node_len > MAX_NODE_NAME {
            return Err(NoticeError::Bounds("node name length"));
        }
        let node = std::str::from_utf8(r.take(node_len)?)
            .map_err(|_| NoticeError::Bounds("node name is not UTF-8"))?
            .to_string();
        let body = match kind {
            KIND_ENTRY => {
                let group = GroupId(r.array()?);
                let seq = Seq(r.u64()?);
                let count = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
                if count > MAX_RECIPIENTS {
                    return Err(NoticeError::Bounds("recipients"));
                }
                // Each takes 8 bytes: a count the bytes cannot hold is refused before any
                // allocation.
                if count.saturating_mul(8) > r.0.len() {
                    return Err(NoticeError::Truncated);
                }
                let mut recipients = Vec::with_capacity(count);
                for _ in 0..count {
                    recipients.push(DeviceId(r.u64()?));
                }
                let frame = r.frame()?;
                Body::Entry {
                    group,
                    seq,
                    recipients,
                    frame,
                }
            }
            KIND_WELCOME => Body::Welcome {
                device: DeviceId(r.u64()?),
                seq: Seq(r.u64()?),
                frame: r.frame()?,
            },
            KIND_CLOSE => {
                let device = DeviceId(r.u64()?);
                let opened_before_ms = r.u64()?;
                let len = usize::from(r.u8()?);
                if len == 0 || len > MAX_CODE_BYTES {
                    return Err(NoticeError::Bounds("close code length"));
                }
                let code = cove_wire::decode::<ErrorCode>(r.take(len)?)
                    .map_err(|_| NoticeError::Bounds("close code"))?;
                Body::Close {
                    device,
                    opened_before_ms,
                    code,
                }
            }
            other => return Err(NoticeError::Kind(other)),
        };
        if !r.0.is_empty() {
            return Err(NoticeError::Trailing);
        }
        Ok(Notice { node, body })
    }
}

fn put_frame(out: &mut Vec<u8>, frame: Option<&Bytes>) {
    match frame.filter(|f| f.len() <= MAX_NOTICE_FRAME) {
        Some(frame) => {
            out.push(1);
            // At most MAX_NOTICE_FRAME (checked above).
            out.extend_from_slice(&u32::try_from(frame.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(frame);
        }
        None => out.push(0),
    }
}

/// A cursor over a notice's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], NoticeError> {
        if n > self.0.len() {
            return Err(NoticeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], NoticeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, NoticeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, NoticeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, NoticeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn frame(&mut self) -> Result<Option<Bytes>, NoticeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
                if len > MAX_NOTICE_FRAME {
                    return Err(NoticeError::Bounds("frame length"));
                }
                Ok(Some(Bytes::copy_from_slice(self.take(len)?)))
            }
            _ => Err(NoticeError::Bounds("frame flag")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn samples() -> Vec<Notice> {
        vec![
            Notice {
                node: "a".into(),
                body: Body::Entry {
                    group: GroupId([7; 16]),
                    seq: Seq(42),
                    recipients: vec![DeviceId(1), DeviceId(u64::MAX)],
                    frame: Some(Bytes::from_static(b"frame")),
                },
            },
            Notice {
                node: "node-b".into(),
                body: Body::Entry {
                    group: GroupId([1; 16]),
                    seq: Seq(1),
                    recipients: vec![],
                    frame: None,
                },
            },
            Notice {
                node: "c".into(),
                body: Body::Welcome {
                    device: DeviceId(3),
                    seq: Seq(9),
                    frame: Some(Bytes::from(vec![0xab; MAX_NOTICE_FRAME])),
                },
            },
            Notice {
                node: "d".into(),
                body: Body::Close {
                    device: DeviceId(5),
                    opened_before_ms: 1_700_000_000_000,
                    code: ErrorCode::Displaced,
                },
            },
        ]
    }

    #[test]
    fn notices_round_trip() {
        for notice in samples() {
            assert_eq!(Notice::decode(&notice.encode()), Ok(notice));
        }
    }

    /// A frame over the limit is announced without it.
    #[test]
    fn a_large_frame_is_left_out() {
        let notice = Notice {
            node: "a".into(),
            body: Body::Welcome {
                device: DeviceId(3),
                seq: Seq(9),
                frame: Some(Bytes::from(vec![0; MAX_NOTICE_FRAME + 1])),
            },
        };
        let decoded = Notice::decode(&notice.encode()).unwrap();
        assert!(matches!(decoded.body, Body::Welcome { frame: None, .. }));
    }

    /// Every truncation, a trailing byte, another version, an unknown kind and an absurd
    /// recipient count are refused with their own error, never a panic.
    #[test]
    fn malformed_notices_are_refused() {
        for notice in samples() {
            let bytes = notice.encode();
            for cut in 0..bytes.len() {
                assert!(Notice::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(Notice::decode(&long), Err(NoticeError::Trailing));
            let mut v2 = bytes.clone();
            v2[0] = 2;
            assert_eq!(Notice::decode(&v2), Err(NoticeError::Version(2)));
            let mut kind = bytes;
            kind[1] = 9;
            assert_eq!(Notice::decode(&kind), Err(NoticeError::Kind(9)));
        }
        let mut huge = vec![VERSION, KIND_ENTRY, 1, b'a'];
        huge.extend_from_slice(&[0; 24]);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Notice::decode(&huge),
            Err(NoticeError::Bounds("recipients"))
        );
        let mut many = vec![VERSION, KIND_ENTRY, 1, b'a'];
        many.extend_from_slice(&[0; 24]);
        many.extend_from_slice(&5000u32.to_be_bytes());
        assert_eq!(Notice::decode(&many), Err(NoticeError::Truncated));
    }
}
