//! cove-media (work in progress).
