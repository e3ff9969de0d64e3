//! Integration tests of the wire codec: property round-trips, hostile inputs, an allocation
//! bound for huge declared lengths, frames spliced around a borrowed payload, and the
//! checked-in corpus of `crates/wire/fuzz-corpus/`.

#![allow(clippy::unwrap_used)]
// The counting allocator in `alloc.rs` implements `GlobalAlloc`, which is unsafe by nature.
#![allow(unsafe_code)]

mod alloc;
mod corpus;
mod fuzz_corpus;
mod hostile;
mod roundtrip;
mod splice;
mod strategies;
