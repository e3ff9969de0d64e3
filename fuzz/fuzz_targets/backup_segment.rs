//! `cove_core::fuzzing::backup_segment`: a history-backup index entry and sealed segment
//! under a fixed backup key.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cove_core::fuzzing::backup_segment(data));
