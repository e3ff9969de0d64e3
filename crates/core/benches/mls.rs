//! MLS benchmark (placeholder, see below).

fn main() {}
