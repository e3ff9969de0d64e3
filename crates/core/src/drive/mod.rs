//! Cove Drive (issue 14): encrypted storage synced across devices, and folders shared with
//! people by handing them keys. Sans-IO, like the rest of the core.
//!
//! - A **drive is an MLS group**. A user's personal drive is a group of their own devices
//!   named [`personal_drive_name`]; a **shared folder** is a group of the people it is
//!   shared with, named [`shared_folder_name`]. Both names start with
//!   [`DRIVE_GROUP_PREFIX`], which chat groups may not use, so every device tells a drive
//!   from a chat from the group's (sealed) name alone.
//! - The **folder tree** is the replay, in the relay's order, of [`op::DriveOp`]s sent as
//!   [`crate::Content::Drive`] application messages ([`tree::Tree`]). MLS authenticates
//!   each operation's sender; the relay sees only application messages and blobs.
//! - **File contents** are split by content-defined chunking (FastCDC) and each chunk is a
//!   blob sealed under a key derived from the file's random secret ([`chunk`]), so a small
//!   edit re-uploads only the chunks it touched, and identical plaintext in two files does
//!   not give itself away.
//! - A member who joins after the tree was started cannot read the earlier operations (MLS
//!   gives no past epochs' keys): a member that has the tree posts a
//!   [`op::DriveOp::Snapshot`] (the sealed tree state, in a blob), and a joiner asks for one
//!   with [`op::DriveOp::SnapshotRequest`].
//!
//! See `PROTOCOL.md`, "Cove Drive", for the formats and the key model.

pub mod chunk;
pub mod op;
pub mod seal;
pub mod tree;

pub use chunk::{ChunkRef, FileSecret, Manifest};
pub use op::{DriveOp, FileVersion, ManifestRef, NodeId, ROOT};
pub use tree::{Entry, NodeKind, Tree, TreeError};

/// Names of drive groups start with this; `create_group` refuses it for chat groups.
pub const DRIVE_GROUP_PREFIX: &str = "drive/";

/// Whether a group of this name is a drive (a personal drive or a shared folder).
pub fn is_drive_group(name: &str) -> bool {
    name.starts_with(DRIVE_GROUP_PREFIX)
}

/// The group name of `user`'s personal drive: `drive/<user>/home-<tag>`, `tag` random (hex).
/// Random because a name is unique per device: anyone can make a group of a fixed name and
/// add the user to it, which would stop the user's device from making its own drive.
pub fn personal_drive_name(user: &cove_wire::UserName, tag: &str) -> String {
    format!("{DRIVE_GROUP_PREFIX}{user}/home-{tag}")
}

/// Whether `name` is the name of a personal drive of `user` (see [`personal_drive_name`]).
/// Anyone can give a group such a name: a device also checks that every member is `user`
/// and that the tree's owner is `user` before it takes one for its drive.
pub fn is_personal_drive(name: &str, user: &cove_wire::UserName) -> bool {
    name.strip_prefix(DRIVE_GROUP_PREFIX)
        .and_then(|rest| rest.strip_prefix(user.as_str()))
        .is_some_and(|rest| rest.starts_with("/home-"))
}

/// The group name of a shared folder owned by `owner`: `tag` is random (hex, never starting
/// with `home-`), so two folders of one name get two groups.
pub fn shared_folder_name(owner: &cove_wire::UserName, tag: &str) -> String {
    format!("{DRIVE_GROUP_PREFIX}{owner}/{tag}")
}
