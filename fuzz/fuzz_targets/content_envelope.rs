//! `cove_core::fuzzing::content_envelope`: the application-message envelope decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cove_core::fuzzing::content_envelope(data));
