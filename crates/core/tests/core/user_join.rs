//! Joining the user's groups by external commits (`Client::join_user_groups`, issue 11
//! item 3), when another device of the user adds this one meanwhile.

use cove_core::cove_store::MemoryStore;
use cove_core::{Client, Event};
use cove_wire::{Delivery, ServerFrame};

use super::relay::Net;
use super::{device, group_of, op_result, seed, texts, user};

/// alice's laptop (authorised by her first device, in no group yet) starts joining her
/// groups while her first device adds it to "friends" with a Welcome that the laptop does
/// not get (lost until its next connection). The relay now counts the laptop a member, so
/// a join naming it in `added` is refused; the laptop then joins as a member's rejoin: the
/// command completes (`Joined` reported), the laptop holds the group under its placeholder
/// name, and messages flow between it and bob.
#[test]
fn a_join_overtaken_by_another_devices_add_ends_as_a_rejoin() {
    let mut net = Net::<MemoryStore>::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let mut second = Client::init(MemoryStore::new(), user("alice"), seed(42)).unwrap();
    let now = net.now_ms;
    let (authorizer, authorization) = net
        .client(alice)
        .authorize_device(now, &second.device_key())
        .unwrap()
        .unwrap();
    second
        .set_device_authorization(authorizer, authorization)
        .unwrap();
    let laptop = net.add(second);
    net.run();
    assert!(net.client(laptop).groups().is_empty());

    // The laptop asks for its user's groups, then for the group's state (at epoch 1), and
    // is held before it handles that answer.
    let op = net.client(laptop).join_user_groups(now).unwrap();
    net.step(); // UserGroups out, its reply queued
    net.step(); // the reply handled, FetchGroupState out, its reply queued
    net.nodes[laptop].hold = true;
    // Meanwhile alice's first device adds the laptop (epoch 2); its Welcome is lost.
    let op_add = net.client(alice).add_own_devices_everywhere(now).unwrap();
    assert_eq!(op_add.len(), 1);
    op_result(&mut net, alice, op_add[0]).unwrap();
    let lost = net.nodes[laptop]
        .inbound
        .iter()
        .filter(|f| matches!(f, ServerFrame::Deliver(Delivery::Inbox(_))))
        .count();
    assert_eq!(lost, 1, "the Welcome is waiting");
    net.nodes[laptop]
        .inbound
        .retain(|f| !matches!(f, ServerFrame::Deliver(Delivery::Inbox(_))));
    net.nodes[laptop].hold = false;
    op_result(&mut net, laptop, op).unwrap();

    let groups = net.client(laptop).groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].id, group);
    assert_eq!(groups[0].name, cove_core::placeholder_name(&group));
    let events = net.take_events(laptop);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Joined { group: g, .. } if *g == group)),
        "{events:?}"
    );
    net.take_events(bob);
    let now = net.now_ms;
    let op = net
        .client(bob)
        .send_text(now, "friends", "to alice's laptop")
        .unwrap();
    op_result(&mut net, bob, op).unwrap();
    assert_eq!(texts(&net.take_events(laptop)), ["to alice's laptop"]);
    net.take_events(bob);
    let op = net
        .client(laptop)
        .send_text(now, &group.to_hex(), "from the laptop")
        .unwrap();
    op_result(&mut net, laptop, op).unwrap();
    assert_eq!(texts(&net.take_events(bob)), ["from the laptop"]);
}
