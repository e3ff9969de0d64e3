//! `cove daemon`: one process per home owns the relay connection, the database and the
//! calls, and serves JSON-RPC 2.0 on `<home>/daemon.sock` (one JSON object per line; see
//! `API.md`) to any number of local clients: the CLI's other commands, `cove tui`, bots.
//!
//! ```text
//! session events --pump--> notifications --fan-out--> each subscribed client's queue
//!                                                      (bounded: a slow client is dropped)
//! client line --parse--> method --> Device / Session / calls --> response --> its queue
//! ```
//!
//! - `server`: the lock, the socket, connections, fan-out, stopping.
//! - `rpc`: JSON-RPC framing and error objects.
//! - `methods`: the methods.
//! - `chat`: issue 13's methods (replies, reactions, edits, deletes, group settings, search).
//! - `events`: session events to notifications.
//! - `backup`: the history backup (its own replies, batches, the timer, at shutdown).
//! - `calls`: calls through the daemon (ringing every client, answer/decline from any).
//! - [`client`]: the client side, for the CLI.

mod backup;
mod calls;
mod chat;
pub mod client;
mod drive;
mod events;
mod methods;
pub mod rpc;
mod server;

pub use backup::BACKUP_EVERY;
pub use methods::API_VERSION;
pub use server::{CLIENT_QUEUE, Daemon, DaemonError, run, socket_path};

/// The socket's file name in the home.
pub const SOCKET_FILE: &str = "daemon.sock";
