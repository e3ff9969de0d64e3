//! End-to-end tests live in `tests/e2e/` (one test binary, `cargo test -p cove-e2e`).
