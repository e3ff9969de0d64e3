//! cove-server (work in progress).
