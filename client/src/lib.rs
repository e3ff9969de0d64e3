//! `cove`: the Cove client shell. It owns everything `cove-core` does not: the clock, the
//! random number generator, TLS and the WebSocket, the SQLite file, and the user interface.
//!
//! The core is a synchronous state machine; this crate runs it in one task and pumps it:
//!
//! ```text
//! socket frame  -> decode -> client.handle_frame(now_ms, frame)
//! client.poll_output() -> Send(frame)  -> encode -> socket
//!                      -> Event(event) -> completions of waiting commands, and the UI
//! ```
//!
//! [`Device`] is the API the CLI, the demo, the tests and the benchmark use: open a home,
//! run a command, wait for its completion, read messages.

pub mod account;
pub mod backup;
pub mod call;
pub mod config;
pub mod daemon;
mod device;
pub mod drive;
pub mod raw;
pub mod session;
pub mod transfer;
pub mod transport;
mod views;

pub use cove_core::{ChatMessage, Event};
pub use cove_wire::{DeviceId, GroupId, UserName};
pub use device::{
    DEFAULT_TIMEOUT, Device, DeviceError, DeviceListView, Incoming, LinkFailure, LinkProgress,
    ListedDeviceView, RevokedDeviceView, Sent, message_view, remove_deleted_home,
};
pub use session::{Session, SessionError, SessionEvent};
pub use views::{
    GroupInfoView, GroupView, IdentityView, MemberView, MessageView, QuoteView, ReactionView,
    UpdateView, escape, file_line, format_duration, human_size, parse_duration, short_id,
    valid_emoji,
};
