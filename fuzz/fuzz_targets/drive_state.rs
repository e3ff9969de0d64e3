//! `cove_core::fuzzing::drive_state`: a drive tree state (a snapshot from another member).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cove_core::fuzzing::drive_state(data));
