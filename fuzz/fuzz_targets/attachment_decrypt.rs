//! `cove_core::fuzzing::attachment_decrypt`: the attachment decryptor under a fixed key.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cove_core::fuzzing::attachment_decrypt(data));
