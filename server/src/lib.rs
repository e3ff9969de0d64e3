//! cove-server: the Cove relay (work in progress).

pub mod blob;
pub mod store;
