//! `cove-core`: the sans-IO Cove client. One [`Client`] per device drives the whole relay
//! protocol and the MLS groups; it performs no I/O, reads no clock and draws no randomness
//! of its own: the shell (the `cove` crate) feeds it frames, the current time and a seed,
//! and carries out what it asks.
//!
//! It owns: the device identity (an Ed25519 key, also the MLS signature key); registration
//! (first device, or a further device authorised by an existing one) and challenge
//! authentication; KeyPackage generation and top-up; groups (create, add and remove users with
//! directory checks and trust-on-first-use key pinning, key updates, leave); sending and
//! receiving messages with duplicate dropping, future-epoch buffering and commit-race
//! retries; safety numbers. The wire format of what travels inside MLS is in [`content`] and
//! `PROTOCOL.md` ("Messages inside MLS"). State lives in a [`cove_store::Store`], which is also openmls's
//! storage, so every inbound message is applied in one transaction with its plaintext and
//! cursor.
//!
//! The main loop of a shell:
//!
//! ```text
//! let mut client = Client::open(store, seed_from_os_rng)?;
//! loop {
//!     let channel = connect();                      client.handle_connected(now_ms(), channel);
//!     while let Some(frame) = receive() {           client.handle_frame(now_ms(), frame)?;
//!         if nothing_more_ready() {                 client.end_of_burst(); // acks, by count
//!         }
//!         // and at client.poll_timeout():          client.handle_timeout(now_ms())?;
//!         while let Some(out) = client.poll_output() {
//!             match out { Output::Send(f) => send(f), Output::Event(e) => show(e) }
//!         }
//!     }
//!     // a polite close:                            client.flush_acks(); then send, close
//!     client.handle_disconnected();                 // requests in flight are retried later
//! }
//! // Commands (create_group, add_users, send_text, ...) may be called at any time; they
//! // return an OpId and complete with Event::OpDone { op, result }.
//! ```

#![deny(missing_docs)]

pub mod attachment;
pub mod backup;
pub mod call;
mod call_signal;
mod client;
pub mod content;
pub mod drive;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod link;
pub mod provider;
mod types;
pub mod welcome_envelope;

pub use client::{
    ACK_BATCH, ACK_DELAY_MS, ACK_IDLE_MS, ACK_INTERVAL_MS, CIPHERSUITE, Client,
    DEVICE_CERTIFICATE_EXTENSION, KEY_PACKAGE_BATCH, KEY_PACKAGE_LOW_WATER, MAX_COMMIT_RETRIES,
    MAX_GROUP_NAME, MAX_PARKED_BYTES, MAX_PAST_EPOCHS, MAX_PENDING_PER_GROUP, MAX_REJOIN_ATTEMPTS,
    MAX_RETRY_DELAY_MS, MAX_UNCONFIRMED_QUIET_ACKS, MIN_RETRY_DELAY_MS, PADDING_BUCKET,
    UNJOINED_PARK_MS, credential_identity, placeholder_name, safety_number,
};
pub use client::{MAX_DISAPPEARING_SECS, RECEIPT_INTERVAL_MS, TYPING_FRESH_MS};
pub use content::{Content, Envelope};
pub use cove_identity;
pub use cove_store;
pub use cove_wire;
pub use types::*;
