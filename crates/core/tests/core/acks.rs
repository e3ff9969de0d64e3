//! Acknowledgements: one cumulative `QuietAck` per stream once enough entries are unacked
//! at the end of a burst, else when the device is idle or on a per-device stretched timer,
//! at once at `BacklogDone` and for a group the device left; answered now and then to bound
//! what a connection keeps; an entry processed and not acked yet when the connection drops
//! comes again and is only acked again.

use cove_core::error::Warning;
use cove_core::{
    ACK_BATCH, ACK_DELAY_MS, ACK_IDLE_MS, ACK_INTERVAL_MS, MAX_UNCONFIRMED_QUIET_ACKS, Output,
};
use cove_wire::{ErrorCode, Seq, Stream};

use super::*;

/// The seq of the last entry of `group` at the relay.
fn last_seq(net: &Net<MemoryStore>, group: GroupId) -> Seq {
    net.relay
        .store()
        .read_group(group, Seq(0), 1000, usize::MAX)
        .unwrap()
        .last()
        .map(|e| e.seq)
        .unwrap()
}

/// Sends `text` from `slot` to the group named `group`.
fn send_to(net: &mut Net<MemoryStore>, slot: usize, group: &str, text: &str) {
    let now = net.now_ms;
    net.client(slot).send_text(now, group, text).unwrap();
}

/// The acks among `slot`'s outputs, taken now (events are kept as the network would).
fn take_acks(net: &mut Net<MemoryStore>, slot: usize) -> Vec<(RequestId, Request)> {
    let mut acks = Vec::new();
    while let Some(output) = net.client(slot).poll_output() {
        match output {
            Output::Send(ClientFrame::Request { id, body }) => {
                assert!(
                    matches!(body, Request::Ack { .. } | Request::QuietAck { .. }),
                    "only acks go out here: {body:?}"
                );
                acks.push((id, body));
            }
            Output::Event(e) => net.nodes[slot].events.push(e),
        }
    }
    acks
}

/// Five entries handed to bob in one burst are acknowledged with one `QuietAck` of the last
/// one (no answered `Ack`), and that moves bob's cursor at the relay to the end of the log.
#[test]
fn a_burst_of_entries_is_acked_once_quietly_and_moves_the_cursor() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    let before = net.relay.group_acks_of(bob);
    net.nodes[bob].hold = true;
    let sent: Vec<String> = (1..=5).map(|i| format!("m{i}")).collect();
    for text in &sent {
        send(&mut net, alice, text);
    }
    net.run();
    net.nodes[bob].hold = false;
    net.run();
    let events = net.take_events(bob);
    assert_eq!(texts(&events), sent);
    assert_eq!(warnings(&events), Vec::<String>::new());
    let after = net.relay.group_acks_of(bob);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 0),
        "one quiet ack, no answered one"
    );
    let bob_id = net.client(bob).device().unwrap();
    assert_eq!(
        net.relay.cursor(bob_id, Stream::Group(group)),
        last_seq(&net, group)
    );
}

/// bob processes two entries (stored, shown) but his connection drops before the end of
/// the burst, so no ack leaves: the relay's cursor stays behind, the next connection's
/// backlog delivers both again, and bob drops them as seen (no event, no warning, each once
/// in the history) and acks them.
#[test]
fn entries_processed_but_not_acked_before_a_disconnect_come_again_and_are_dropped() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    let bob_id = net.client(bob).device().unwrap();
    let cursor_before = net.relay.cursor(bob_id, Stream::Group(group));

    net.nodes[bob].hold = true;
    send(&mut net, alice, "m1");
    send(&mut net, alice, "m2");
    net.run();
    let frames: Vec<ServerFrame> = net.nodes[bob].inbound.drain(..).collect();
    assert_eq!(frames.len(), 2, "{frames:?}");
    let now = net.now_ms;
    for frame in frames {
        net.client(bob).handle_frame(now, frame).unwrap();
    }
    assert_eq!(
        take_acks(&mut net, bob),
        Vec::new(),
        "no ack before the burst ends"
    );
    assert_eq!(texts(&net.take_events(bob)), vec!["m1", "m2"]);
    net.disconnect(bob);
    assert_eq!(
        net.relay.cursor(bob_id, Stream::Group(group)),
        cursor_before,
        "nothing was acked"
    );

    net.nodes[bob].hold = false;
    net.connect(bob);
    net.run();
    let events = net.take_events(bob);
    assert_eq!(texts(&events), Vec::<String>::new(), "nothing shown twice");
    assert_eq!(warnings(&events), Vec::<String>::new());
    let history: Vec<String> = net
        .client(bob)
        .history("friends")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(history, vec!["m1", "m2"]);
    assert_eq!(
        net.relay.cursor(bob_id, Stream::Group(group)),
        last_seq(&net, group),
        "acked again after the redelivery"
    );
}

/// Without a reported burst end, bob's ack is due at the latest [`ACK_DELAY_MS`] after he
/// processed the entry (here: idle for his stretch of [`ACK_IDLE_MS`]): `poll_timeout` says when, a timeout before it sends nothing, the one at it sends
/// the `QuietAck`, and nothing is due after.
#[test]
fn an_ack_without_a_burst_end_goes_out_on_the_timer() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    assert_eq!(net.client(bob).poll_timeout(), None);
    net.nodes[bob].hold_acks = true;
    let before = net.relay.group_acks_of(bob);
    send(&mut net, alice, "m1");
    let sent_at = net.now_ms;
    net.run();
    assert_eq!(texts(&net.take_events(bob)), vec!["m1"]);
    assert_eq!(net.relay.group_acks_of(bob), before, "not acked yet");

    let due = net
        .client(bob)
        .poll_timeout()
        .expect("the ack is scheduled");
    assert!(
        due > sent_at && due <= net.now_ms + ACK_DELAY_MS,
        "due at {due}, processed after {sent_at}, now {}",
        net.now_ms
    );
    net.client(bob).handle_timeout(due - 1).unwrap();
    assert_eq!(take_acks(&mut net, bob), Vec::new(), "not due yet");
    net.client(bob).handle_timeout(due).unwrap();
    let last = last_seq(&net, group);
    let acks = take_acks(&mut net, bob);
    assert!(
        matches!(
            acks.as_slice(),
            [(_, Request::QuietAck { stream: Stream::Group(g), seq })] if *g == group && *seq == last
        ),
        "{acks:?}"
    );
    assert_eq!(net.client(bob).poll_timeout(), None);
    let (id, body) = acks.into_iter().next().unwrap();
    let now = net.now_ms;
    let answer = net
        .relay
        .handle(bob, ClientFrame::Request { id, body }, now);
    assert!(answer.is_empty(), "a quiet ack is not answered: {answer:?}");
    let bob_id = net.client(bob).device().unwrap();
    assert_eq!(net.relay.cursor(bob_id, Stream::Group(group)), last);
}

/// The relay refuses two of bob's quiet acks (altered on their way: one past the end of the
/// log, answered `InvalidRequest`; one for a group bob is not in, `NotMember`): bob
/// recognises both by their ids, reports the first as [`Warning::AckRefused`] and takes the
/// second silently, as for an answered `Ack`. A second answer under an id already answered
/// is an unknown response.
#[test]
fn a_refused_quiet_ack_is_recognised_by_its_id() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let now = net.now_ms;
    let op = net.client(alice).create_group(now, "alone").unwrap();
    op_result(&mut net, alice, op).unwrap();
    let alone = net.client(alice).resolve("alone").unwrap();
    net.take_events(bob);
    net.nodes[bob].hold_acks = true;

    let refuse = |net: &mut Net<MemoryStore>, text: &str, stream: Stream, seq: Seq| {
        send_to(net, alice, "friends", text);
        net.run();
        net.client(bob).flush_acks();
        let acks = take_acks(net, bob);
        let [(id, Request::QuietAck { stream: s, .. })] = acks.as_slice() else {
            panic!("one quiet ack: {acks:?}");
        };
        assert_eq!(*s, Stream::Group(group));
        let now = net.now_ms;
        let body = Request::QuietAck { stream, seq };
        let frames = net
            .relay
            .handle(bob, ClientFrame::Request { id: *id, body }, now);
        let code = match frames.as_slice() {
            [
                (
                    _,
                    ServerFrame::Response {
                        id: r,
                        result: Err(e),
                    },
                ),
            ] if r == id => e.code,
            other => panic!("one refusal: {other:?}"),
        };
        net.deliver(frames.clone());
        net.run();
        (code, frames)
    };

    let (code, frames) = refuse(&mut net, "m1", Stream::Group(group), Seq(1000));
    assert_eq!(code, ErrorCode::InvalidRequest);
    let events = net.take_events(bob);
    let refused: Vec<ErrorCode> = events
        .iter()
        .filter_map(|e| match e {
            Event::Warning(Warning::AckRefused(e)) => Some(e.code),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![ErrorCode::InvalidRequest]);
    assert_eq!(warnings(&events).len(), 1, "{:?}", warnings(&events));

    let (code, _) = refuse(&mut net, "m2", Stream::Group(alone), Seq(1));
    assert_eq!(code, ErrorCode::NotMember);
    let events = net.take_events(bob);
    assert_eq!(warnings(&events), Vec::<String>::new());

    // The first refusal again: its id is forgotten.
    net.deliver(frames);
    net.run();
    let events = net.take_events(bob);
    assert!(
        matches!(
            events.as_slice(),
            [Event::Warning(Warning::UnknownResponse(_))]
        ),
        "{events:?}"
    );
}

/// Quiet acks whose refusal could still come are bounded: after
/// [`MAX_UNCONFIRMED_QUIET_ACKS`] of them, bob's next group ack is an answered `Ack` (its
/// answer settles them), so over `2 × MAX + 2` bursts exactly `MAX` quiet acks separate
/// the two answered ones.
#[test]
fn an_answered_ack_follows_every_max_unconfirmed_quiet_acks() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    let skip = net.relay.group_acks.len();
    let bursts = 2 * MAX_UNCONFIRMED_QUIET_ACKS + 2;
    for i in 0..bursts {
        send(&mut net, alice, &format!("m{i}"));
        net.run();
    }
    let kinds: Vec<bool> = net.relay.group_acks[skip..]
        .iter()
        .filter(|(slot, _)| *slot == bob)
        .map(|(_, quiet)| *quiet)
        .collect();
    assert_eq!(kinds.len(), bursts, "one ack per burst");
    let answered: Vec<usize> = kinds
        .iter()
        .enumerate()
        .filter_map(|(i, quiet)| (!quiet).then_some(i))
        .collect();
    assert!(
        answered.len() == 2
            && answered[0] <= MAX_UNCONFIRMED_QUIET_ACKS
            && answered[1] == answered[0] + MAX_UNCONFIRMED_QUIET_ACKS + 1,
        "answered acks at {answered:?}"
    );
    assert_eq!(warnings(&net.take_events(bob)), Vec::<String>::new());
}

/// `frames` held for `slot`, taken from its inbound queue.
fn held_frames(net: &mut Net<MemoryStore>, slot: usize) -> Vec<ServerFrame> {
    net.nodes[slot].inbound.drain(..).collect()
}

/// The one `QuietAck` among `acks`: its stream and seq.
fn one_quiet_ack(acks: &[(RequestId, Request)]) -> (Stream, Seq) {
    match acks {
        [(_, Request::QuietAck { stream, seq })] => (*stream, *seq),
        other => panic!("one quiet ack: {other:?}"),
    }
}

/// bob is handed [`ACK_BATCH`] − 1 entries and told each time that his burst ended: no ack
/// leaves (the count is not reached); the next entry's burst end sends one `QuietAck` of
/// the last seq, which moves his cursor at the relay there.
#[test]
fn a_burst_end_acks_only_once_ack_batch_entries_are_unacked() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    net.nodes[bob].hold = true;
    for i in 0..ACK_BATCH {
        send(&mut net, alice, &format!("m{i}"));
    }
    net.run();
    let frames = held_frames(&mut net, bob);
    assert_eq!(frames.len(), ACK_BATCH, "one frame per message");
    let mut frames = frames.into_iter();
    for frame in frames.by_ref().take(ACK_BATCH - 1) {
        let now = net.now_ms;
        net.client(bob).handle_frame(now, frame).unwrap();
        net.client(bob).end_of_burst();
        assert_eq!(take_acks(&mut net, bob), Vec::new(), "below the count");
    }
    let last = frames.next().unwrap();
    let now = net.now_ms;
    net.client(bob).handle_frame(now, last).unwrap();
    net.client(bob).end_of_burst();
    let acks = take_acks(&mut net, bob);
    let expected = last_seq(&net, group);
    assert_eq!(one_quiet_ack(&acks), (Stream::Group(group), expected));
    assert_eq!(net.client(bob).poll_timeout(), None, "nothing left to ack");
    let (id, body) = acks.into_iter().next().unwrap();
    let answer = net
        .relay
        .handle(bob, ClientFrame::Request { id, body }, now);
    assert!(answer.is_empty(), "a quiet ack is not answered: {answer:?}");
    let bob_id = net.client(bob).device().unwrap();
    assert_eq!(net.relay.cursor(bob_id, Stream::Group(group)), expected);
    assert_eq!(texts(&net.take_events(bob)).len(), ACK_BATCH);
}

/// alice and bob in a group, bob holding his frames: alice sends `count` messages. Returns
/// bob's slot, the group, his held frames (one per message) and their seqs.
fn bob_holding(
    net: &mut Net<MemoryStore>,
    count: u64,
) -> (usize, GroupId, Vec<ServerFrame>, Vec<Seq>) {
    let alice = device(net, "alice");
    let bob = device(net, "bob");
    let group = group_of(net, alice, &["bob"]);
    net.take_events(bob);
    net.nodes[bob].hold = true;
    for i in 0..count {
        send(net, alice, &format!("m{i}"));
    }
    net.run();
    let frames = held_frames(net, bob);
    assert_eq!(frames.len() as u64, count, "one frame per message");
    let seqs = frames
        .iter()
        .map(|f| match f {
            ServerFrame::Deliver(cove_wire::Delivery::Group(e)) => e.seq,
            other => panic!("a group entry: {other:?}"),
        })
        .collect();
    (bob, group, frames, seqs)
}

/// Under a steady stream the acks are paced by time, not only by count: bob acks a first
/// burst of [`ACK_BATCH`] entries at once, but a second full batch at the same moment waits
/// (its burst end sends nothing); the first burst end at least twice [`ACK_INTERVAL_MS`]
/// later (beyond any device's stretch) sends one `QuietAck` covering all of them.
#[test]
fn a_busy_stream_is_acked_at_most_once_per_interval() {
    let mut net = Net::new();
    let (bob, group, frames, seqs) = bob_holding(&mut net, 2 * ACK_BATCH as u64 + 1);
    let mut frames = frames.into_iter();
    let start = net.now_ms;
    for frame in frames.by_ref().take(ACK_BATCH) {
        net.client(bob).handle_frame(start, frame).unwrap();
    }
    net.client(bob).end_of_burst();
    let first = take_acks(&mut net, bob);
    assert_eq!(
        one_quiet_ack(&first),
        (Stream::Group(group), seqs[ACK_BATCH - 1]),
        "the first full batch is acked at its burst end"
    );
    for frame in frames.by_ref().take(ACK_BATCH) {
        net.client(bob).handle_frame(start, frame).unwrap();
    }
    net.client(bob).end_of_burst();
    assert_eq!(
        take_acks(&mut net, bob),
        Vec::new(),
        "a second full batch within the interval waits"
    );
    let later = start + 2 * ACK_INTERVAL_MS;
    let last = frames.next().unwrap();
    net.client(bob).handle_frame(later, last).unwrap();
    net.client(bob).end_of_burst();
    let acks = take_acks(&mut net, bob);
    assert_eq!(
        one_quiet_ack(&acks),
        (Stream::Group(group), seqs[2 * ACK_BATCH]),
        "the burst end after the interval acks everything processed"
    );
    assert_eq!(texts(&net.take_events(bob)).len(), 2 * ACK_BATCH + 1);
}

/// Entries that keep coming faster than the idle time (every `ACK_IDLE_MS / 2`) do not
/// postpone bob's ack for ever: it is due between [`ACK_DELAY_MS`] and twice that after the
/// first of them, not before, and covers every entry processed by then.
#[test]
fn under_steady_traffic_an_ack_waits_at_most_the_stretched_delay() {
    let mut net = Net::new();
    let count = 2 * ACK_DELAY_MS / (ACK_IDLE_MS / 2) + 2;
    let (bob, group, frames, seqs) = bob_holding(&mut net, count);
    let first_at = net.now_ms;
    let mut acked = None;
    for (i, frame) in frames.into_iter().enumerate() {
        let at = first_at + i as u64 * (ACK_IDLE_MS / 2);
        if let Some(due) = net.client(bob).poll_timeout()
            && due <= at
        {
            net.client(bob).handle_timeout(due).unwrap();
            let acks = take_acks(&mut net, bob);
            acked = Some((due, one_quiet_ack(&acks), seqs[i - 1]));
            break;
        }
        net.client(bob).handle_frame(at, frame).unwrap();
        net.client(bob).end_of_burst();
        assert_eq!(take_acks(&mut net, bob), Vec::new(), "below the count");
    }
    let (due, ack, processed) = acked.expect("the ack went out on the timer");
    assert!(
        due >= first_at + ACK_DELAY_MS && due < first_at + 2 * ACK_DELAY_MS,
        "due {} ms after the first entry",
        due - first_at
    );
    assert_eq!(ack, (Stream::Group(group), processed));
}

/// Four receivers of one group get the same entry at the same moment: their acks are due
/// at four different times, each between [`ACK_IDLE_MS`] and twice that later (a stretch per
/// device), so a large group's receivers do not all ack at once.
#[test]
fn the_receivers_of_one_entry_are_due_to_ack_at_different_times() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let names = ["bob", "carol", "dave", "erin"];
    let slots: Vec<usize> = names.iter().map(|n| device(&mut net, n)).collect();
    group_of(&mut net, alice, &names);
    for &slot in &slots {
        net.take_events(slot);
        net.nodes[slot].hold = true;
    }
    send(&mut net, alice, "to all");
    net.run();
    let at = net.now_ms;
    let mut dues = Vec::new();
    for &slot in &slots {
        let frames = held_frames(&mut net, slot);
        assert_eq!(frames.len(), 1);
        for frame in frames {
            net.client(slot).handle_frame(at, frame).unwrap();
        }
        net.client(slot).end_of_burst();
        assert_eq!(take_acks(&mut net, slot), Vec::new());
        let due = net
            .client(slot)
            .poll_timeout()
            .expect("an ack is scheduled");
        assert!(
            due >= at + ACK_IDLE_MS && due < at + 2 * ACK_IDLE_MS,
            "due {} ms after the entry",
            due - at
        );
        dues.push(due);
    }
    let distinct: std::collections::BTreeSet<u64> = dues.iter().copied().collect();
    assert_eq!(distinct.len(), slots.len(), "due at {dues:?}");
}

/// bob holds his acks back (no burst end, no idle reported): what he processed live is not
/// acked, and after a reconnection its backlog is acked at `BacklogDone` although it is far
/// below [`ACK_BATCH`] entries, moving his cursor to the end of the log.
#[test]
fn a_backlog_is_acked_at_backlog_done_whatever_its_size() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    net.nodes[bob].hold_acks = true;
    let bob_id = net.client(bob).device().unwrap();
    let before = net.relay.cursor(bob_id, Stream::Group(group));
    send(&mut net, alice, "m1");
    send(&mut net, alice, "m2");
    net.run();
    assert_eq!(texts(&net.take_events(bob)), vec!["m1", "m2"]);
    assert_eq!(net.relay.cursor(bob_id, Stream::Group(group)), before);
    net.disconnect(bob);
    net.connect(bob);
    net.run();
    let events = net.take_events(bob);
    assert!(events.iter().any(|e| matches!(e, Event::BacklogDone)));
    assert_eq!(texts(&events), Vec::<String>::new(), "nothing shown twice");
    assert_eq!(
        net.relay.cursor(bob_id, Stream::Group(group)),
        last_seq(&net, group)
    );
}

/// carol is removed: the removal commit is her group's last entry, and its ack goes out at
/// the end of that burst although it is one entry (the relay redelivers everything up to a
/// removal until it is acked), and the relay takes it: her departure record is closed.
#[test]
fn a_removal_is_acked_at_the_end_of_its_burst() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["carol"]);
    net.take_events(carol);
    net.nodes[carol].hold = true;
    let now = net.now_ms;
    let op = net
        .client(alice)
        .remove_users(now, "friends", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    let frames = held_frames(&mut net, carol);
    assert_eq!(frames.len(), 1, "{frames:?}");
    let now = net.now_ms;
    for frame in frames {
        net.client(carol).handle_frame(now, frame).unwrap();
    }
    net.client(carol).end_of_burst();
    let acks = take_acks(&mut net, carol);
    let removal = last_seq(&net, group);
    assert_eq!(one_quiet_ack(&acks), (Stream::Group(group), removal));
    let carol_id = net.client(carol).device().unwrap();
    assert_eq!(
        net.relay.store().departures(carol_id).unwrap(),
        vec![(group, removal)],
        "the relay keeps her departure until she acks it"
    );
    let (id, body) = acks.into_iter().next().unwrap();
    let answer = net
        .relay
        .handle(carol, ClientFrame::Request { id, body }, now);
    assert!(answer.is_empty(), "accepted: {answer:?}");
    assert_eq!(
        net.relay.store().departures(carol_id).unwrap(),
        Vec::new(),
        "the departure is closed"
    );
    assert!(
        net.take_events(carol)
            .iter()
            .any(|e| matches!(e, Event::RemovedFromGroup { group: g } if *g == group))
    );
}
