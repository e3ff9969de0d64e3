//! End-to-end tests: a real relay (in-process on 127.0.0.1:0, or the real `cove-server`
//! binary), real clients driven through the `cove` library (and the `cove` binary), real TLS
//! and real SQLite files in temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod admins;
mod backup;
mod calls;
mod chaos;
mod chat;
mod cluster;
mod disappearing;
mod drive;
mod drive_sync;
mod durability;
mod groups;
mod login;
mod messaging;
mod outbox;
mod privacy;
mod support;
