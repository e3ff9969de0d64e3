//! The drive commands over a [`crate::Device`]: `cove drive ls/put/get/mkdir/mv/rm/restore/
//! empty-trash/versions/share/unshare/shared/link/usage`.
