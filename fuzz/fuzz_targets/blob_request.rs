//! `cove_server::fuzzing::blob_request`: an HTTP blob request head at the relay.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cove_server::fuzzing::blob_request(data);
});
