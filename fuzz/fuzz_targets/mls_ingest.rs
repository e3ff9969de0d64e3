//! `cove_core::fuzzing::MlsIngest::ingest`: a group-log entry or an inbox Welcome fed to a
//! client that is a member of a group (the fixture is built once, on the relay core of
//! cove-server; every input starts from the same snapshot of the member).
#![no_main]

use std::sync::LazyLock;

use cove_core::fuzzing::{FixtureRelay, MlsIngest};
use cove_test_utils::sim;
use cove_wire::sign::ChannelBinding;
use cove_wire::{ClientFrame, ServerFrame};

struct Sim(sim::Relay);

impl FixtureRelay for Sim {
    fn connect(&mut self, slot: usize) -> ServerFrame {
        self.0.connect(slot)
    }
    fn channel(&self, slot: usize) -> Option<ChannelBinding> {
        self.0.channel(slot)
    }
    fn handle(
        &mut self,
        slot: usize,
        frame: ClientFrame,
        now_ms: u64,
    ) -> Vec<(usize, ServerFrame)> {
        self.0.handle(slot, frame, now_ms)
    }
}

static FIXTURE: LazyLock<MlsIngest> = LazyLock::new(|| {
    MlsIngest::build(&mut Sim(sim::Relay::new())).unwrap_or_else(|e| panic!("fixture: {e}"))
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    FIXTURE.ingest(data);
});
