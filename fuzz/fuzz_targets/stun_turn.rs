//! `cove_turn::fuzzing::stun_turn`: a client datagram at the relay's TURN socket.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cove_turn::fuzzing::stun_turn(data));
