//! Entries parked for groups this device never joined: bounded in bytes, and dropped (and
//! acknowledged) after a while.

use cove_core::error::Warning;
use cove_core::{MAX_PARKED_BYTES, UNJOINED_PARK_MS};
use cove_wire::{BoundedVec, DeviceId, DeviceKey, Seq, Stream, limits::MAX_PAYLOAD_BYTES};

use super::*;

/// mallory, a raw device, creates `group` at the relay and adds `victim` with a commit
/// of garbage and a Welcome of garbage: the victim is a member at the relay but never
/// joins.
fn add_without_welcome(
    net: &mut Net<MemoryStore>,
    group: GroupId,
    mallory: DeviceId,
    victim: DeviceId,
) {
    net.relay.create_group_raw(group, mallory);
    let kind = PostKind::Commit {
        added: BoundedVec(vec![victim]),
        removed: BoundedVec(Vec::new()),
        welcome: Some(cove_wire::Payload(vec![0x77; 64])),
        group_info: cove_wire::Payload::default(),
    };
    let now = net.now_ms;
    let frames = net
        .relay
        .post_raw(group, mallory, kind, vec![0x5a; 64], now);
    // The Welcome is lost on its way (acknowledged at the relay as if the victim had seen
    // it): the victim is a member at the relay and never learns why.
    let mut kept = Vec::new();
    for (slot, frame) in frames {
        match frame {
            cove_wire::ServerFrame::Deliver(cove_wire::Delivery::Inbox(entry)) => {
                net.relay
                    .store()
                    .ack(victim, Stream::Inbox, entry.seq)
                    .unwrap();
            }
            other => kept.push((slot, other)),
        }
    }
    net.deliver(kept);
    net.run();
}

/// mallory posts `count` distinct entries of `size` (at least 8) bytes to `group`; the victim receives them live.
fn flood(net: &mut Net<MemoryStore>, group: GroupId, mallory: DeviceId, count: usize, size: usize) {
    for i in 0..count {
        let now = net.now_ms;
        // Distinct payloads (the relay drops a resent post).
        let mut payload = vec![0xab; size];
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let frames = net.relay.inject(group, mallory, payload, now);
        net.deliver(frames);
        net.run();
    }
}

fn mallory(net: &mut Net<MemoryStore>) -> DeviceId {
    net.relay
        .register_raw(user("mallory"), DeviceKey([0x6d; 32]))
}

/// The warnings of `slot` that are of the parking area.
fn parking_warnings(net: &mut Net<MemoryStore>, slot: usize) -> Vec<Warning> {
    net.take_events(slot)
        .into_iter()
        .filter_map(|e| match e {
            Event::Warning(
                w @ (Warning::ParkedBytesOverflow { .. } | Warning::UnjoinedDropped { .. }),
            ) => Some(w),
            _ => None,
        })
        .collect()
}

#[test]
fn a_flood_to_groups_never_joined_stays_under_the_parked_bytes_cap_and_the_victim_keeps_chatting() {
    let mut net: Net<MemoryStore> = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let bob_device = net.client(bob).device().unwrap();
    let mallory = mallory(&mut net);
    let floods = [GroupId([0xf1; 16]), GroupId([0xf2; 16])];
    for g in floods {
        add_without_welcome(&mut net, g, mallory, bob_device);
    }
    net.take_events(bob);

    // Well past the cap, spread over two groups.
    let size = MAX_PAYLOAD_BYTES;
    let per_group = (MAX_PARKED_BYTES as usize / size) / 2 + 8;
    for g in floods {
        flood(&mut net, g, mallory, per_group, size);
    }

    let parked = net.client(bob).store().pending_bytes().unwrap();
    assert!(parked <= MAX_PARKED_BYTES, "{parked} bytes parked");
    assert!(
        parked > MAX_PARKED_BYTES / 2,
        "entries are still parked: {parked}"
    );
    let warned = parking_warnings(&mut net, bob);
    assert!(!warned.is_empty(), "the drops are told");
    for w in &warned {
        let Warning::ParkedBytesOverflow { group: g, seq } = w else {
            panic!("unexpected warning {w:?}");
        };
        assert!(floods.contains(g), "{w:?}");
        // Acknowledged: the relay does not send it again.
        assert!(net.relay.cursor(bob_device, Stream::Group(*g)) >= *seq);
    }

    // The victim keeps working: the real group still delivers.
    let op = send(&mut net, alice, "sentinel");
    op_result(&mut net, alice, op).unwrap();
    net.run();
    assert_eq!(texts(&net.take_events(bob)), ["sentinel"]);
    assert!(net.client(bob).epoch(&group).is_some());
}

#[test]
fn entries_of_a_group_never_joined_are_dropped_and_acknowledged_and_the_group_left_after_the_wait()
{
    let mut net: Net<MemoryStore> = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    let bob_device = net.client(bob).device().unwrap();
    let mallory = mallory(&mut net);
    let stray = GroupId([0xf3; 16]);
    add_without_welcome(&mut net, stray, mallory, bob_device);
    flood(&mut net, stray, mallory, 3, 1000);
    let parked = net.client(bob).store().pending(&stray).unwrap();
    assert!(
        !parked.is_empty(),
        "parked while the Welcome may still come"
    );
    let last: Seq = parked.last().unwrap().0;

    // A backlog end before the wait is over keeps them.
    net.disconnect(bob);
    net.connect(bob);
    net.run();
    assert_eq!(
        net.client(bob).store().pending(&stray).unwrap().len(),
        parked.len()
    );
    assert!(net.relay.cursor(bob_device, Stream::Group(stray)) < last);
    net.take_events(bob);

    // After it, the next backlog end drops and acknowledges them.
    net.now_ms += UNJOINED_PARK_MS;
    net.disconnect(bob);
    net.connect(bob);
    net.run();
    assert!(net.client(bob).store().pending(&stray).unwrap().is_empty());
    let warned = parking_warnings(&mut net, bob);
    assert_eq!(
        warned,
        vec![Warning::UnjoinedDropped {
            group: stray,
            count: parked.len()
        }]
    );
    assert_eq!(net.client(bob).store().pending_bytes().unwrap(), 0);
    // bob left the group at the relay (its cursor there went with the membership): the
    // dropped entries are not sent again, and more of mallory's traffic no longer reaches him.
    assert!(!net.relay.store().is_member(stray, bob_device).unwrap());
    flood(&mut net, stray, mallory, 3, 1000);
    net.disconnect(bob);
    net.connect(bob);
    net.run();
    assert!(net.client(bob).store().pending(&stray).unwrap().is_empty());
    assert_eq!(net.client(bob).store().pending_bytes().unwrap(), 0);
    assert!(parking_warnings(&mut net, bob).is_empty());
}
