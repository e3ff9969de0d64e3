//! A device: the home's configuration and database, and the session that pumps the core.
//!
//! This is the API the CLI, the demo, the end-to-end tests and the benchmark use. The
//! [`Device`] type is defined in `handle`; each other module adds the methods of one job.
//! A module depends only on modules above it in this list (no cycles):
//!
//! - `error`: [`DeviceError`].
//! - `inbox`: what the message stream yields ([`Incoming`]) and the views of core messages.
//! - `handle`: the [`Device`] itself, its start, accessors and waiting for the relay.
//! - `messages`: sending text, `sync`, `next_message`, shown positions, warnings.
//! - `close`: closing a device.
//! - `open`: initialising (registering) and opening a home.
//! - `link`: linking a further device, and probing the relay on a side connection.
//! - `link_code`: linking any machine by a short code (host and joiner).
//! - `login`: a new device of a user, by the user's password (`cove login`).
//! - `queries`: groups, history, safety numbers, epochs.
//! - `groups`: group commands (create, add, remove, leave).
//! - `chat`: replies, reactions, edits, deletes, group settings, admins, muting, search.
//! - `attachments`: the glue for [`crate::transfer`].
//! - `account`: registering the user's password account ([`crate::account`]).

mod account;
mod admins;
mod attachments;
mod chat;
mod close;
mod error;
mod groups;
mod handle;
mod inbox;
mod link;
mod link_code;
mod login;
mod messages;
mod open;
mod queries;

pub use account::remove_deleted_home;
pub use error::DeviceError;
pub use handle::{DEFAULT_TIMEOUT, Device};
pub use inbox::{Incoming, message_view};
pub(crate) use inbox::{PRINTED_KEY, identity_view};
pub use link::{DeviceListView, ListedDeviceView, RevokedDeviceView};
pub use link_code::{LinkFailure, LinkProgress};
pub use messages::Sent;
