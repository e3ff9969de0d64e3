//! cove-test-utils (work in progress).
