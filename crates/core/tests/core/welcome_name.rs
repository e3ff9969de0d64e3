//! The group name never reaches the relay: it travels sealed in the Cove Welcome envelope
//! (`cove_core::welcome_envelope`), not in the group context the relay sees in every
//! GroupInfo.

use cove_core::Event;
use cove_core::cove_store::MemoryStore;
use cove_core::error::{Warning, WelcomeEnvelopeError, WelcomeError};
use cove_core::welcome_envelope::WelcomeEnvelope;
use cove_wire::{Delivery, GroupId, Payload, Seq, ServerFrame};

use super::relay::Net;
use super::{device, op_result, user};

/// A name that appears nowhere else in the test's bytes.
const NAME: &str = "Zebra-Hideout-4417";

/// Every byte string the relay holds for `group`: its public state (GroupInfo and ratchet
/// tree), its log entries, and the inbox entries (Welcomes) of `devices`.
fn relay_bytes(
    net: &Net<MemoryStore>,
    group: GroupId,
    devices: &[cove_wire::DeviceId],
) -> Vec<Vec<u8>> {
    let store = net.relay.store();
    let mut all = Vec::new();
    if let Some(state) = store.public_state(group).unwrap() {
        all.push(state.group_info);
        all.push(state.tree);
    }
    for e in store.read_group(group, Seq(0), 1000, usize::MAX).unwrap() {
        all.push(e.payload.as_bytes().to_vec());
    }
    for d in devices {
        for e in net.relay.inbox_of(*d) {
            all.push(e.payload.as_bytes().to_vec());
        }
    }
    all
}

fn holds_name(bytes: &[Vec<u8>]) -> bool {
    bytes
        .iter()
        .any(|b| b.windows(NAME.len()).any(|w| w == NAME.as_bytes()))
}

/// The relay's public state of a new group and, after an add, its log, public state and the
/// joiner's Welcome never contain the group name, while the joiner's `Joined` event and
/// group list show it.
#[test]
fn the_relay_never_holds_the_group_name_and_the_joiner_reads_it_from_the_welcome() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let bob_device = net.client(bob).device().unwrap();
    let now = net.now_ms;
    let op = net.client(alice).create_group(now, NAME).unwrap();
    op_result(&mut net, alice, op).unwrap();
    let group = net.client(alice).resolve(NAME).unwrap();
    let created = relay_bytes(&net, group, &[]);
    assert_eq!(
        created.len(),
        2,
        "the relay holds the new group's public state"
    );
    assert!(
        !holds_name(&created),
        "the name is in the creation's public state"
    );

    let op = net
        .client(alice)
        .add_users(now, NAME, &[user("bob")])
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let added = relay_bytes(&net, group, &[bob_device]);
    let welcomes = net.relay.inbox_of(bob_device);
    assert_eq!(welcomes.len(), 1, "bob's Welcome is at the relay");
    // The Welcome is an envelope with a sealed name, not the bare MLS Welcome.
    assert!(WelcomeEnvelope::decode(welcomes[0].payload.as_bytes()).is_ok());
    assert!(
        added.len() > 3,
        "state, the add commit and the Welcome: {}",
        added.len()
    );
    assert!(!holds_name(&added), "the name is in bytes the relay holds");

    let events = net.take_events(bob);
    let joined: Vec<(GroupId, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Joined { group, name, .. } => Some((*group, name.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(joined, [(group, NAME.to_string())], "{events:?}");
    let groups = net.client(bob).groups();
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].id, groups[0].name.as_str()), (group, NAME));
    assert!(groups[0].active);
}

/// A Welcome whose sealed name was altered (one flipped bit in its last byte), and one that
/// is the bare MLS Welcome without the envelope, are each skipped with `WelcomeSkipped` and
/// the exact envelope error; neither device joins.
#[test]
fn a_welcome_with_an_altered_sealed_name_or_no_envelope_is_skipped_not_joined() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let now = net.now_ms;
    let op = net.client(alice).create_group(now, NAME).unwrap();
    op_result(&mut net, alice, op).unwrap();
    let group = net.client(alice).resolve(NAME).unwrap();
    net.take_events(bob);
    net.take_events(carol);
    net.nodes[bob].hold = true;
    net.nodes[carol].hold = true;
    let op = net
        .client(alice)
        .add_users(now, NAME, &[user("bob"), user("carol")])
        .unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();
    let mut altered = 0;
    for (slot, strip) in [(bob, false), (carol, true)] {
        for frame in net.nodes[slot].inbound.iter_mut() {
            if let ServerFrame::Deliver(Delivery::Inbox(entry)) = frame {
                let bytes = &mut entry.payload.0;
                if strip {
                    let bare = WelcomeEnvelope::decode(bytes).unwrap().welcome.to_vec();
                    entry.payload = Payload(bare);
                } else {
                    let last = bytes.last_mut().unwrap();
                    *last ^= 0x01;
                }
                altered += 1;
            }
        }
    }
    assert_eq!(altered, 2, "one Welcome each");
    net.nodes[bob].hold = false;
    net.nodes[carol].hold = false;
    net.run();
    for (slot, want) in [(bob, "altered"), (carol, "bare")] {
        let events = net.take_events(slot);
        assert!(
            !events.iter().any(|e| matches!(e, Event::Joined { .. })),
            "{want}: {events:?}"
        );
        let skipped: Vec<&WelcomeError> = events
            .iter()
            .filter_map(|e| match e {
                Event::Warning(Warning::WelcomeSkipped { group: g, reason }) if *g == group => {
                    Some(&**reason)
                }
                _ => None,
            })
            .collect();
        assert_eq!(skipped.len(), 1, "{want}: {events:?}");
        match want {
            "altered" => assert!(
                matches!(
                    skipped[0],
                    WelcomeError::Envelope(WelcomeEnvelopeError::NameNotOpened)
                ),
                "{:?}",
                skipped[0]
            ),
            _ => assert!(
                matches!(
                    skipped[0],
                    WelcomeError::Envelope(WelcomeEnvelopeError::NotAnEnvelope)
                ),
                "{:?}",
                skipped[0]
            ),
        }
        assert!(net.client(slot).groups().is_empty(), "{want}: not joined");
    }
}
