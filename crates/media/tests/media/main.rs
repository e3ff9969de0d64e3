//! cove-media integration tests: SFrame vectors, codecs, and real WebRTC calls over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod calls;
mod codecs;
mod fuzz;
mod sframe;
