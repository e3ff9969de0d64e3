//! `cove-wire`: the protocol between Cove clients and the Cove relay.
//!
//! This crate is the leaf of the workspace. It owns:
//! - the two frame directions, [`ClientFrame`] (device → relay) and [`ServerFrame`]
//!   (relay → device), with request ids and typed error codes;
//! - validated id newtypes ([`UserName`], [`DeviceId`], [`GroupId`], [`Epoch`], [`Seq`], ...);
//! - the protocol [`limits`];
//! - a user's identity values: identity key, signed device list, device certificate
//!   ([`identity`]);
//! - the call-signalling values shared by the client core and the media engine ([`call`]);
//! - the one codec ([`encode`] / [`decode`]): postcard (serde, compact, varint lengths) with
//!   decoding that never allocates more than the input's own size and rejects trailing bytes;
//! - frames encoded around a borrowed, shared payload ([`encode_inbox_delivery`]), byte for
//!   byte what [`encode`] makes of the same frame.
//!
//! A connection runs like this (see `PROTOCOL.md` for every frame):
//!
//! ```text
//! relay  → Challenge { nonce }
//! device → Request { id, Register | RegisterDevice | Authenticate { signature(nonce) } }
//! relay  → Response { id, Ok(Authenticated) }  then Deliver { .. } for every backlog entry
//! device → Request { id, Post | Ack | ClaimKeyPackages | ... }   (any order, pipelined)
//! relay  → Response { id, .. } (exactly one per request)  and Deliver { .. } as entries arrive
//! ```

pub mod call;
mod codec;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
mod ids;
pub mod limits;
mod payload;
pub mod roles;
pub mod sign;
mod splice;

pub use codec::{DecodeError, EncodeError, decode, encode};
pub use frame::*;
pub use ids::*;
pub use payload::{BoundedVec, Payload};
pub use splice::encode_inbox_delivery;

/// The protocol version this crate speaks. It is also the path segment of the WebSocket
/// endpoint (`/v1/ws`). Rules: within a version, frames and enum variants are only ever
/// appended (never reordered or removed); anything else bumps the version.
pub const PROTOCOL_VERSION: u16 = 1;

/// The WebSocket path on the relay for [`PROTOCOL_VERSION`].
pub const WS_PATH: &str = "/v1/ws";
