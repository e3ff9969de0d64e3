//! End-to-end latency: send on one client, delivery on another, over loopback TLS.
//! (Placeholder until the relay library lands.)

fn main() {}
