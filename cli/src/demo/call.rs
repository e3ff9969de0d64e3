//! The call step of the demo (issue 5): alice calls the group, bob answers; a 440 Hz tone
//! one way and 660 Hz the other for two seconds, signalling inside MLS, media SFrame-encrypted
//! with keys exported from the group's epoch.

use std::time::Duration;

use anyhow::Context as _;

use cove::call::{self, CallOptions, CallReport};
use cove_media::source::AudioInput;

use super::{Demo, StepFuture, WAIT};

const GROUP: &str = "friends";

pub fn call(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let mut alice = d.users.remove("alice").context("alice is not online")?;
        let mut bob = d.users.remove("bob").context("bob is not online")?;
        let caller = CallOptions {
            audio: Some(AudioInput::Tone(440.0)),
            duration: Some(Duration::from_secs(2)),
            ring_timeout: WAIT,
            verbose: false,
            ..CallOptions::default()
        };
        let callee = CallOptions {
            audio: Some(AudioInput::Tone(660.0)),
            duration: None,
            ring_timeout: WAIT,
            verbose: false,
            ..CallOptions::default()
        };
        println!("[alice] calling {GROUP} (offer inside MLS; 440 Hz tone for 2 s)");
        let (placed, answered) = tokio::join!(
            call::place(&mut alice, GROUP, &caller),
            call::answer(&mut bob, Some(GROUP), &callee)
        );
        d.users.insert("alice", alice);
        d.users.insert("bob", bob);
        let placed = placed.context("alice's call")?;
        let answered = answered.context("bob answering")?;
        show("alice", &placed);
        show("bob", &answered);
        let first = placed
            .first_audio_ms
            .first()
            .map_or("-".into(), |(_, ms)| format!("{ms:.0} ms"));
        d.summary.push(format!(
            "alice called bob: first audio after {first} (dial to first decoded frame), \
             signalling inside MLS, media SFrame-encrypted"
        ));
        Ok(())
    })
}

fn show(user: &str, report: &CallReport) {
    for p in &report.stats.peers {
        println!(
            "[{user}] call with {}: first audio {} ms, audio frames sent {} / received {}, \
             packets sent {} / received {} / lost {}, jitter {:.1} ms, rtt {}",
            p.peer,
            p.dial_to_first_audio_ms
                .map_or("-".into(), |v| format!("{v:.0}")),
            p.audio_frames_sent,
            p.audio_frames_received,
            p.packets_sent,
            p.packets_received,
            p.packets_lost,
            p.jitter_ms,
            p.rtt_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
        );
    }
}
