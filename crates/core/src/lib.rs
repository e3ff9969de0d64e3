//! cove-core (work in progress).
