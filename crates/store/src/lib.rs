//! cove-store (work in progress).
