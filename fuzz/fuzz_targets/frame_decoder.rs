//! `cove_wire::fuzzing::frame_decoder`: client and server frame decoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cove_wire::fuzzing::frame_decoder(data));
