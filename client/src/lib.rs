//! cove (work in progress).
