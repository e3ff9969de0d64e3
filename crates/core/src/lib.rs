//! cove-core (work in progress).

pub mod attachment;
