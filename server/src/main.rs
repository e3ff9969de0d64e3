//! The `cove-server` binary (work in progress).

fn main() {}
