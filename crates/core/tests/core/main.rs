//! cove-core protocol tests: several clients and the relay core of cove-server (through
//! `cove_test_utils::sim`), no sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod acks;
mod admins;
mod backup;
mod chat;
mod drive_chunk;
mod fuzz_corpus;
mod link_history;
mod outbox;
mod parked;
mod rejoin;
mod relay;
mod search;
mod settings;
mod user_join;
mod welcome_name;

use cove_core::cove_store::{MemoryStore, SqliteStore, Store};
use cove_core::error::OwnIdentityError;
use cove_core::identity::{LeafRefusal, Verification, VerifyError};
use cove_core::{Client, CommandError, Event, IdentityEvent, OpError, OpId};
use cove_wire::{
    ClientFrame, Delivery, GroupId, PostKind, Request, RequestId, ServerFrame, UserName,
};
use relay::Net;

fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

/// Creates a device for `name` with a memory store and registers it.
fn device(net: &mut Net<MemoryStore>, name: &str) -> usize {
    let n = net.nodes.len() as u8 + 1;
    let c = Client::init(MemoryStore::new(), user(name), seed(n)).unwrap();
    let slot = net.add(c);
    net.run();
    slot
}

fn op_result<S: Store>(net: &mut Net<S>, slot: usize, op: OpId) -> Result<(), OpError> {
    net.run();
    let found = net.nodes[slot].events.iter().find_map(|e| match e {
        Event::OpDone { op: o, result } if *o == op => Some(result.clone()),
        _ => None,
    });
    found.unwrap_or_else(|| {
        panic!(
            "op {op:?} of slot {slot} did not complete: {:?}",
            net.nodes[slot].events
        )
    })
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

fn warnings(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Warning(w) => Some(w.to_string()),
            _ => None,
        })
        .collect()
}

/// alice creates "friends" and adds the others.
fn group_of<S: Store>(net: &mut Net<S>, creator: usize, others: &[&str]) -> GroupId {
    let now = net.now_ms;
    let op = net.client(creator).create_group(now, "friends").unwrap();
    op_result(net, creator, op).unwrap();
    if !others.is_empty() {
        let users: Vec<UserName> = others.iter().map(|u| user(u)).collect();
        let op = net
            .client(creator)
            .add_users(now, "friends", &users)
            .unwrap();
        op_result(net, creator, op).unwrap();
    }
    net.run();
    net.client(creator).resolve("friends").unwrap()
}

fn send<S: Store>(net: &mut Net<S>, slot: usize, text: &str) -> OpId {
    let now = net.now_ms;
    let group = net.client(slot).groups()[0].id.to_hex();
    net.client(slot).send_text(now, &group, text).unwrap()
}

#[test]
fn three_clients_chat_and_see_the_same_messages_once_in_the_same_order() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);

    let joined = net.take_events(bob);
    assert!(
        joined.iter().any(|e| matches!(e, Event::Joined { group: g, name, by } if *g == group && name == "friends" && by.as_str() == "alice")),
        "bob sees the creator's group name: {joined:?}"
    );
    net.take_events(alice);
    net.take_events(carol);

    // Interleaved sends: every client queues before the relay orders them.
    for round in 0..3 {
        for (slot, who) in [(alice, "alice"), (bob, "bob"), (carol, "carol")] {
            send(&mut net, slot, &format!("{who} {round}"));
        }
        net.step();
    }
    net.run();

    let mut orders = Vec::new();
    for slot in [alice, bob, carol] {
        let events = net.take_events(slot);
        let got = texts(&events);
        assert_eq!(
            got.len(),
            9,
            "slot {slot} saw every message exactly once: {got:?}"
        );
        let mut dedup = got.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 9);
        assert!(
            warnings(&events).is_empty(),
            "no warnings: {:?}",
            warnings(&events)
        );
        let history: Vec<(String, String, u64)> = net
            .client(slot)
            .history("friends")
            .unwrap()
            .into_iter()
            .map(|m| (m.from.to_string(), m.text, m.seq.0))
            .collect();
        assert_eq!(history.len(), 9);
        orders.push(history);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);
    let auth: Vec<_> = [alice, bob, carol]
        .iter()
        .map(|s| net.client(*s).epoch_authenticator(&group))
        .collect();
    assert!(auth[0].is_some());
    assert_eq!(auth[0], auth[1]);
    assert_eq!(auth[1], auth[2]);
}

#[test]
fn concurrent_commits_one_wins_the_other_retries_and_everyone_agrees() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let dave = device(&mut net, "dave");
    let erin = device(&mut net, "erin");
    let group = group_of(&mut net, alice, &["bob", "carol", "dave"]);
    // bob and dave commit removals and adds below: only admins may (issue 13).
    admins::promote(&mut net, alice, "friends", &["bob", "dave"]);
    let start = net.client(alice).epoch(&group).unwrap();

    // Three commits at the same epoch before the relay sees any of them.
    let now = net.now_ms;
    let op_a = net
        .client(alice)
        .remove_users(now, "friends", &[user("carol")])
        .unwrap();
    let op_b = net
        .client(bob)
        .remove_users(now, "friends", &[user("dave")])
        .unwrap();
    let op_d = net
        .client(dave)
        .remove_users(now, "friends", &[user("carol")])
        .unwrap();
    net.run();
    assert!(net.relay.stale_rejections >= 2, "the commits raced");
    assert_eq!(op_result(&mut net, alice, op_a), Ok(()));
    assert_eq!(op_result(&mut net, bob, op_b), Ok(()));
    // dave lost and was then removed by bob (or found nothing left to do).
    let d = op_result(&mut net, dave, op_d);
    assert!(
        matches!(d, Ok(()) | Err(OpError::NotApplicable(_))),
        "{d:?}"
    );
    assert!(
        net.take_events(carol)
            .iter()
            .any(|e| matches!(e, Event::RemovedFromGroup { .. }))
    );
    assert!(
        net.take_events(dave)
            .iter()
            .any(|e| matches!(e, Event::RemovedFromGroup { .. }))
    );

    // An add racing a message and another add.
    let op_b = net
        .client(bob)
        .add_users(now, "friends", &[user("erin")])
        .unwrap();
    let op_a = net
        .client(alice)
        .add_users(now, "friends", &[user("dave")])
        .unwrap();
    assert_eq!(op_result(&mut net, bob, op_b), Ok(()));
    assert_eq!(op_result(&mut net, alice, op_a), Ok(()));

    let members = [alice, bob, dave, erin];
    let epochs: Vec<_> = members
        .iter()
        .map(|s| net.client(*s).epoch(&group))
        .collect();
    let auths: Vec<_> = members
        .iter()
        .map(|s| net.client(*s).epoch_authenticator(&group))
        .collect();
    assert_eq!(epochs[0], Some(start + 4), "two removals and two adds");
    assert!(
        epochs.windows(2).all(|w| w[0] == w[1]),
        "same epoch: {epochs:?}"
    );
    assert!(
        auths.windows(2).all(|w| w[0] == w[1]),
        "same epoch authenticator"
    );

    // And they can still talk.
    send(&mut net, erin, "hello from erin");
    net.run();
    for s in [alice, bob, dave] {
        assert!(texts(&net.take_events(s)).contains(&"hello from erin".to_string()));
    }
}

#[test]
fn a_removed_member_cannot_read_later_messages_and_the_relay_refuses_it() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    let now = net.now_ms;
    let op = net
        .client(alice)
        .remove_users(now, "friends", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    send(&mut net, alice, "after carol left");
    net.run();
    let carol_events = net.take_events(carol);
    assert!(
        carol_events
            .iter()
            .any(|e| matches!(e, Event::RemovedFromGroup { group: g } if *g == group))
    );
    assert!(!texts(&carol_events).contains(&"after carol left".to_string()));
    assert!(texts(&net.take_events(bob)).contains(&"after carol left".to_string()));
    assert!(
        net.client(carol)
            .send_text(now, "friends", "still here?")
            .is_err()
    );
    assert!(!net.client(carol).groups()[0].active);
    // The relay refuses a post from carol's device.
    let frames = net.relay.handle(
        carol,
        ClientFrame::Request {
            id: RequestId(999),
            body: Request::Post {
                group,
                epoch: cove_wire::Epoch(0),
                kind: PostKind::Application,
                payload: vec![1, 2, 3].into(),
            },
        },
        now,
    );
    assert!(matches!(
        &frames[0].1,
        ServerFrame::Response { result: Err(e), .. } if e.code == cove_wire::ErrorCode::NotMember
    ));
}

/// The relay names the sender of a Welcome, but MLS authenticates the member that signed it:
/// a relay that names carol as the sender of alice's Welcome to bob does not make bob's
/// `Joined` say that carol added him.
#[test]
fn a_joined_names_the_member_that_signed_the_welcome_not_the_relays_sender() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["carol"]);
    net.take_events(bob);
    net.nodes[bob].hold = true;
    let now = net.now_ms;
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    let carol_device = net.client(carol).device().unwrap();
    let mut rewritten = 0;
    for frame in net.nodes[bob].inbound.iter_mut() {
        if let ServerFrame::Deliver(Delivery::Inbox(cove_wire::InboxEntry {
            kind: cove_wire::InboxKind::Welcome { sender, .. },
            ..
        })) = frame
        {
            *sender = carol_device;
            rewritten += 1;
        }
    }
    assert_eq!(rewritten, 1);
    net.nodes[bob].hold = false;
    net.run();
    let events = net.take_events(bob);
    let joined: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Joined { group: g, by, .. } if *g == group => Some(by.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(joined, ["alice"], "{events:?}");
}

#[test]
fn a_future_epoch_message_is_buffered_then_applied_in_order() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let _carol = device(&mut net, "carol");
    let _group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    net.nodes[bob].hold = true;
    let now = net.now_ms;
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    send(&mut net, alice, "in the new epoch");
    net.run();
    // Reverse the order of the group entries bob is about to receive.
    let frames: Vec<ServerFrame> = net.nodes[bob].inbound.drain(..).collect();
    let (group_frames, other): (Vec<_>, Vec<_>) = frames
        .into_iter()
        .partition(|f| matches!(f, ServerFrame::Deliver(Delivery::Group(_))));
    assert_eq!(group_frames.len(), 2, "a commit and a message");
    net.nodes[bob].inbound.extend(other);
    net.nodes[bob]
        .inbound
        .extend(group_frames.into_iter().rev());
    net.nodes[bob].hold = false;
    net.run();
    let events = net.take_events(bob);
    assert_eq!(texts(&events), vec!["in the new epoch".to_string()]);
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    assert!(events.iter().any(
        |e| matches!(e, Event::MembersChanged { added, .. } if added == &vec![user("carol")])
    ));
    assert_eq!(
        net.client(bob).epoch(&_group),
        net.client(alice).epoch(&_group)
    );
}

#[test]
fn duplicate_deliveries_are_dropped() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    net.nodes[bob].hold = true;
    send(&mut net, alice, "once");
    net.run();
    let frames: Vec<ServerFrame> = net.nodes[bob].inbound.drain(..).collect();
    for f in frames {
        net.nodes[bob].inbound.push_back(f.clone());
        net.nodes[bob].inbound.push_back(f);
    }
    net.nodes[bob].hold = false;
    net.run();
    // And again after a reconnect (the relay resends nothing: it was acked; a replay of
    // old frames is dropped too).
    let events = net.take_events(bob);
    assert_eq!(texts(&events), vec!["once".to_string()]);
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    assert_eq!(net.client(bob).history("friends").unwrap().len(), 1);
}

#[test]
fn a_changed_device_key_is_surfaced_and_not_accepted() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    let bob_device = net.client(bob).device().unwrap();
    net.relay
        .tampered_keys
        .insert(bob_device, cove_wire::DeviceKey([9; 32]));
    let now = net.now_ms;
    let op = net.client(alice).create_group(now, "second").unwrap();
    op_result(&mut net, alice, op).unwrap();
    let op = net
        .client(alice)
        .add_users(now, "second", &[user("bob")])
        .unwrap();
    assert_eq!(
        op_result(&mut net, alice, op),
        Err(OpError::KeyChanged(user("bob")))
    );
    let events = net.take_events(alice);
    assert!(events.iter().any(|e| matches!(e, Event::KeyChanged { user: u, device, .. } if u.as_str() == "bob" && *device == bob_device)));
    // The safety number still uses the pinned key, and both sides agree on it.
    let a = net.client(alice).safety_number(&user("bob")).unwrap();
    let b = net.client(bob).safety_number(&user("alice")).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.split(' ').count(), 12);
    assert!(
        a.split(' ')
            .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit()))
    );
}

#[test]
fn a_client_dropped_before_its_ack_left_resumes_without_loss_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bob.db");
    let mut net: Net<SqliteStore> = Net::new();
    let alice = net.add(
        Client::init(
            SqliteStore::open(dir.path().join("alice.db")).unwrap(),
            user("alice"),
            seed(1),
        )
        .unwrap(),
    );
    net.run();
    let bob =
        net.add(Client::init(SqliteStore::open(&path).unwrap(), user("bob"), seed(2)).unwrap());
    net.run();
    group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);

    net.nodes[bob].hold = true;
    send(&mut net, alice, "m1");
    send(&mut net, alice, "m2");
    net.run();
    // bob processes m1, then his client is dropped before its ack leaves (its outputs are
    // lost; the process is not killed); m2 is never processed.
    let m1 = net.nodes[bob].inbound.pop_front().unwrap();
    let now = net.now_ms;
    net.client(bob).handle_frame(now, m1).unwrap();
    net.nodes[bob].client = None; // dropped: outputs (the ack, the event) are lost
    net.disconnect(bob);
    let device = net.nodes[bob].events.len();
    assert_eq!(device, 0);

    let reopened = Client::open(SqliteStore::open(&path).unwrap(), seed(3)).unwrap();
    net.nodes[bob].client = Some(reopened);
    net.nodes[bob].hold = false;
    net.connect(bob);
    net.run();
    let events = net.take_events(bob);
    // m1 was processed before the drop (its event was lost with the client, the history
    // has it); m2 arrives now. Nothing twice.
    assert_eq!(texts(&events), vec!["m2".to_string()]);
    let history: Vec<String> = net
        .client(bob)
        .history("friends")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(history, vec!["m1".to_string(), "m2".to_string()]);
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    let bob_device = net.client(bob).device().unwrap();
    let group = net.client(bob).resolve("friends").unwrap();
    assert_eq!(
        net.relay
            .cursor(bob_device, cove_wire::Stream::Group(group))
            .0,
        3,
        "acked through m2 (seq 1 is the commit that added bob)"
    );
}

#[test]
fn hostile_payloads_produce_warnings_not_panics() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    let alice_device = net.client(alice).device().unwrap();
    let now = net.now_ms;
    for payload in [
        vec![],
        vec![0xff; 10],
        vec![0x00, 0x01, 0x00, 0x02, 0x41],
        vec![7u8; 900_000],
    ] {
        let frames = net.relay.inject(group, alice_device, payload, now);
        net.deliver(frames);
    }
    net.run();
    let events = net.take_events(bob);
    assert_eq!(warnings(&events).len(), 4, "{events:?}");
    assert!(texts(&events).is_empty());
    // A hostile frame that claims an unknown request id is a warning too.
    let now = net.now_ms;
    net.client(bob)
        .handle_frame(
            now,
            ServerFrame::Response {
                id: RequestId(77_777),
                result: Ok(cove_wire::Reply::Pong),
            },
        )
        .unwrap();
    // Still working.
    send(&mut net, alice, "still fine");
    net.run();
    assert!(texts(&net.take_events(bob)).contains(&"still fine".to_string()));
}

#[test]
fn leaving_a_group_gets_the_device_removed() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let now = net.now_ms;
    let op = net.client(bob).leave(now, "friends").unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    net.run();
    assert!(!net.client(bob).groups()[0].active);
    let info = net
        .client(alice)
        .groups()
        .into_iter()
        .find(|g| g.id == group)
        .unwrap();
    assert_eq!(info.members, vec![user("alice")]);
}

#[test]
fn key_packages_are_uploaded_and_topped_up() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let _bob = device(&mut net, "bob");
    // Each group with bob consumes one of bob's KeyPackages; the stock is refilled.
    for i in 0..(cove_core::KEY_PACKAGE_BATCH as u32 - cove_core::KEY_PACKAGE_LOW_WATER + 2) {
        let now = net.now_ms;
        let name = format!("g{i}");
        let op = net.client(alice).create_group(now, &name).unwrap();
        op_result(&mut net, alice, op).unwrap();
        let op = net
            .client(alice)
            .add_users(now, &name, &[user("bob")])
            .unwrap();
        assert_eq!(op_result(&mut net, alice, op), Ok(()));
    }
    net.run();
    assert_eq!(net.client(_bob).groups().len(), 42);
    let bob_device = net.client(_bob).device().unwrap();
    assert!(
        net.relay.stock(bob_device) >= cove_core::KEY_PACKAGE_BATCH,
        "topped up"
    );
}

/// The user's first device creates the user's identity key and signed device list before it
/// registers, and publishes the list once the relay knows the user: the relay's copy
/// verifies, names the same identity key and lists this device. A reconnection publishes
/// nothing again; a further device authorised by the first makes no identity of its own and
/// is added to the list by the first, which publishes that entry.
#[test]
fn a_first_device_publishes_its_users_signed_device_list() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    assert!(warnings(&net.take_events(alice)).is_empty());
    let own = net.client(alice).own_device_list().unwrap().unwrap();
    let stored = net.relay.device_list_of(&user("alice"));
    let verified = cove_core::cove_identity::DeviceList::verify(&user("alice"), &stored).unwrap();
    assert_eq!(verified.head(), own.head());
    assert_eq!(verified.identity(), own.identity());
    assert_eq!(verified.head().index, 1, "Create, then Add of this device");
    let key = net.client(alice).device_key();
    assert!(verified.is_listed(&key));
    assert_eq!(net.relay.device_list_appends(), 1);

    net.disconnect(alice);
    net.connect(alice);
    net.run();
    assert!(warnings(&net.take_events(alice)).is_empty());
    assert_eq!(
        net.relay.device_list_appends(),
        1,
        "nothing published again"
    );
    assert_eq!(net.relay.device_list_of(&user("alice")), stored);

    let mut second = Client::init(MemoryStore::new(), user("alice"), seed(77)).unwrap();
    let now = net.now_ms;
    let (authorizer, authorization) = net
        .client(alice)
        .authorize_device(now, &second.device_key())
        .unwrap()
        .unwrap();
    second
        .set_device_authorization(authorizer, authorization)
        .unwrap();
    let alice2 = net.add(second);
    net.run();
    assert!(net.client(alice2).device().is_some());
    assert!(net.client(alice2).own_device_list().unwrap().is_none());
    // The authorising device added it to the list and published that entry alone.
    assert_eq!(net.relay.device_list_appends(), 2);
    let stored = net.relay.device_list_of(&user("alice"));
    let verified = cove_core::cove_identity::DeviceList::verify(&user("alice"), &stored).unwrap();
    assert_eq!(verified.head().index, 2);
    let key2 = net.client(alice2).device_key();
    assert!(verified.is_listed(&key2));
    assert_eq!(
        net.client(alice).own_device_list().unwrap().unwrap().head(),
        verified.head()
    );
    assert!(warnings(&net.take_events(alice)).is_empty());
}

/// A relay that adds a device of its own to bob's account (in its directory, with a
/// KeyPackage whose credential says bob) cannot get it into a group: bob's signed device list
/// does not name its key, so alice adds only bob's real device, is told about the other one,
/// and no Welcome goes to it.
#[test]
fn a_device_the_relay_adds_to_a_user_is_not_added_to_groups() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let ghost = mallory::Mallory::ghost_of(&mut net.relay, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let warned = warnings(&net.take_events(alice));
    assert_eq!(
        warned,
        [format!(
            "device {} of bob is not in bob's signed device list: not added",
            ghost.device
        )]
    );
    assert!(
        net.relay.inbox_of(ghost.device).is_empty(),
        "no Welcome for the relay's device"
    );
    assert!(
        net.take_events(bob)
            .iter()
            .any(|e| matches!(e, Event::Joined { group: g, .. } if *g == group))
    );
    send(&mut net, alice, "only bob");
    net.run();
    assert_eq!(texts(&net.take_events(bob)), ["only bob"]);
    let members = net.client(alice).groups()[0].members.clone();
    assert_eq!(members, vec![user("alice"), user("bob")]);
}

/// Safety numbers are over identity keys once both users' signed device lists are pinned:
/// both sides compute the same number, it is not the device-key number, and bob adding a
/// second device to his list (and to the group) changes it for nobody, the new device
/// included.
#[test]
fn safety_numbers_are_over_identity_keys_and_a_new_device_does_not_change_them() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    let number = net.client(alice).safety_number(&user("bob")).unwrap();
    assert_eq!(
        net.client(bob).safety_number(&user("alice")).unwrap(),
        number
    );
    let (alice_key, bob_key) = (net.client(alice).device_key(), net.client(bob).device_key());
    assert_ne!(
        number,
        cove_core::safety_number(&user("alice"), &[alice_key], &user("bob"), &[bob_key])
    );

    let bob2 = linked_device(&mut net, bob, "bob", 50);
    let now = net.now_ms;
    let op = net
        .client(bob)
        .add_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    net.run();
    assert!(
        net.take_events(bob2)
            .iter()
            .any(|e| matches!(e, Event::Joined { .. }))
    );
    assert_eq!(
        net.client(alice).safety_number(&user("bob")).unwrap(),
        number
    );
    assert_eq!(
        net.client(bob).safety_number(&user("alice")).unwrap(),
        number
    );
    assert_eq!(
        net.client(bob2).safety_number(&user("alice")).unwrap(),
        number
    );
    // alice is told about bob's new device once, as a device his signed list added (the
    // number stays the same), and not warned about it as an unknown one.
    let bob2_key = net.client(bob2).device_key();
    let events = net.take_events(alice);
    assert_eq!(devices_added(&events), [("bob".to_string(), bob2_key)]);
    assert!(warnings(&events).is_empty(), "{events:?}");
    for slot in [bob, bob2] {
        let w = warnings(&net.take_events(slot));
        assert!(w.is_empty(), "slot {slot}: {w:?}");
    }
}

/// A list of `name`'s signed by a new identity key (made of byte `k`) that names `device`:
/// what other clients see when the user starts over with a new identity (or when the relay
/// lies about it).
fn new_identity_list(
    name: &str,
    k: u8,
    device: cove_wire::DeviceKey,
) -> (
    cove_wire::identity::IdentityKey,
    Vec<cove_wire::identity::ListEntry>,
) {
    let signer = cove_core::cove_identity::IdentitySigner::new(user(name), &[k; 32]);
    let list = signer
        .create(
            device,
            cove_wire::identity::DeviceName::new("reinstalled").unwrap(),
            1,
        )
        .unwrap();
    (signer.identity(), list.entries().to_vec())
}

/// Safety numbers stay the same when bob revokes a device (as when he adds one, above), for
/// both sides, and change when the relay serves a list of bob's signed by another identity
/// key: alice is told, and the number `cove verify` shows her is over the new key.
#[test]
fn safety_numbers_are_unchanged_by_a_revoke_and_changed_by_a_new_identity_key() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let bob2 = linked_device(&mut net, bob, "bob", 51);
    group_of(&mut net, alice, &["bob"]);
    let number = net.client(alice).safety_number(&user("bob")).unwrap();
    let now = net.now_ms;
    let key2 = net.client(bob2).device_key();
    net.client(bob).revoke_device(now, &key2).unwrap();
    net.run();
    assert!(net.client(alice).refresh_identity(&user("bob")));
    net.run();
    let list = net
        .client(alice)
        .device_list_of(&user("bob"))
        .unwrap()
        .unwrap();
    assert!(list.is_revoked(&key2), "alice saw the revoke");
    assert_eq!(
        net.client(alice).safety_number(&user("bob")).unwrap(),
        number
    );
    assert_eq!(
        net.client(bob).safety_number(&user("alice")).unwrap(),
        number
    );
    let state = net
        .client(alice)
        .identity_state(&user("bob"))
        .unwrap()
        .unwrap();
    assert_eq!(state.safety_number.as_deref(), Some(number.as_str()));
    assert_eq!(state.verification, Verification::Unverified);

    let bob_key = net.client(bob).device_key();
    let (identity, entries) = new_identity_list("bob", 99, bob_key);
    net.relay.served_lists.insert(user("bob"), entries);
    net.take_events(alice);
    assert!(net.client(alice).refresh_identity(&user("bob")));
    net.run();
    let announced: Vec<Event> = net
        .take_events(alice)
        .into_iter()
        .filter(|e| matches!(e, Event::Identity(_)))
        .collect();
    assert_eq!(
        announced,
        [Event::Identity(IdentityEvent::IdentityChanged {
            user: user("bob"),
            verified: false
        })]
    );
    let changed = net
        .client(alice)
        .identity_state(&user("bob"))
        .unwrap()
        .unwrap();
    assert_eq!(changed.identity, identity);
    assert_eq!(
        changed.verification,
        Verification::Changed { blocking: false }
    );
    let new_number = changed.safety_number.unwrap();
    assert_ne!(new_number, number);
    assert_eq!(
        net.client(alice).safety_number(&user("bob")).unwrap(),
        new_number,
        "an unverified user's new key is pinned at once"
    );
}

/// alice verified bob; then bob's list names a new identity key: alice is told (verified:
/// true), her sends to the group with bob fail with `IdentityNotVerified([bob])` and queue
/// nothing, until she verifies the new key (verifying the old one is refused as stale); then
/// her message reaches bob. carol, never verified, changes too: announced, not blocking.
#[test]
fn a_verified_contacts_new_identity_blocks_sending_until_verified_again() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    group_of(&mut net, alice, &["bob", "carol"]);
    let now = net.now_ms;
    let before = net
        .client(alice)
        .identity_state(&user("bob"))
        .unwrap()
        .unwrap();
    net.client(alice)
        .verify_user(now, &user("bob"), &before.identity)
        .unwrap();
    let verified = net
        .client(alice)
        .identity_state(&user("bob"))
        .unwrap()
        .unwrap();
    assert_eq!(verified.verification, Verification::Verified);
    assert_eq!(verified.safety_number, before.safety_number);

    let (bob_identity, bob_list) = new_identity_list("bob", 98, net.client(bob).device_key());
    let (_, carol_list) = new_identity_list("carol", 97, net.client(carol).device_key());
    net.relay.served_lists.insert(user("bob"), bob_list);
    net.relay.served_lists.insert(user("carol"), carol_list);
    for slot in [alice, bob, carol] {
        net.take_events(slot);
    }
    assert!(net.client(alice).refresh_identity(&user("bob")));
    assert!(net.client(alice).refresh_identity(&user("carol")));
    net.run();
    let announced: Vec<Event> = net
        .take_events(alice)
        .into_iter()
        .filter(|e| matches!(e, Event::Identity(_)))
        .collect();
    assert_eq!(
        announced,
        [
            Event::Identity(IdentityEvent::IdentityChanged {
                user: user("bob"),
                verified: true
            }),
            Event::Identity(IdentityEvent::IdentityChanged {
                user: user("carol"),
                verified: false
            }),
        ]
    );
    let err = net
        .client(alice)
        .send_text(now, "friends", "blocked")
        .unwrap_err();
    assert!(
        matches!(&err, CommandError::IdentityNotVerified(users) if users == &[user("bob")]),
        "{err}"
    );
    let group = net.client(alice).resolve("friends").unwrap();
    assert_eq!(
        net.client(alice).unverified_changes_in(&group).unwrap(),
        [user("bob")]
    );
    let changed = net
        .client(alice)
        .identity_state(&user("bob"))
        .unwrap()
        .unwrap();
    assert_eq!(changed.identity, bob_identity);
    assert_eq!(
        changed.verification,
        Verification::Changed { blocking: true }
    );
    assert_ne!(changed.safety_number, before.safety_number);
    assert_eq!(
        net.client(alice)
            .identity_state(&user("carol"))
            .unwrap()
            .unwrap()
            .verification,
        Verification::Changed { blocking: false }
    );
    // Still blocked after a reconnect (the change is stored).
    net.disconnect(alice);
    net.connect(alice);
    net.run();
    assert!(matches!(
        net.client(alice).send_text(now, "friends", "blocked"),
        Err(CommandError::IdentityNotVerified(_))
    ));
    // The old key is not the one to verify any more.
    assert!(matches!(
        net.client(alice)
            .verify_user(now, &user("bob"), &before.identity),
        Err(VerifyError::Stale(_))
    ));
    net.client(alice)
        .verify_user(now, &user("bob"), &changed.identity)
        .unwrap();
    let after = net
        .client(alice)
        .identity_state(&user("bob"))
        .unwrap()
        .unwrap();
    assert_eq!(after.verification, Verification::Verified);
    assert_eq!(after.identity, bob_identity);
    assert_eq!(after.safety_number, changed.safety_number);
    let op = net
        .client(alice)
        .send_text(now, "friends", "after verifying")
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    assert_eq!(texts(&net.take_events(bob)), ["after verifying"]);
    assert_eq!(texts(&net.take_events(carol)), ["after verifying"]);
    assert!(
        net.client(alice)
            .identity_states()
            .unwrap()
            .iter()
            .all(|s| s.user != user("alice"))
    );
}

/// A user's first device revokes a linked device: the signed entry is published, the relay
/// refuses the revoked device's next login, and adding that user to a group leaves it out.
/// Only the holder of the identity key can revoke (and authorise devices), and not itself.
#[test]
fn a_revoked_device_cannot_log_in_and_is_not_added_again() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let alice2 = linked_device(&mut net, alice, "alice", 60);
    let (key1, key2) = (
        net.client(alice).device_key(),
        net.client(alice2).device_key(),
    );
    let device2 = net.client(alice2).device().unwrap();
    let now = net.now_ms;
    assert!(matches!(
        net.client(alice2).revoke_device(now, &key1),
        Err(CommandError::OwnIdentity(
            OwnIdentityError::NotIdentityHolder
        ))
    ));
    // Nor can it authorise (link) a device: it could not add it to the signed list.
    assert!(!net.client(alice2).holds_user_identity().unwrap());
    assert!(net.client(alice).holds_user_identity().unwrap());
    let stranger = Client::init(MemoryStore::new(), user("alice"), seed(64)).unwrap();
    assert!(matches!(
        net.client(alice2)
            .authorize_device(now, &stranger.device_key()),
        Err(CommandError::OwnIdentity(
            OwnIdentityError::NotIdentityHolder
        ))
    ));
    assert!(matches!(
        net.client(alice).revoke_device(now, &key1),
        Err(CommandError::OwnIdentity(OwnIdentityError::RevokeSelf))
    ));
    net.client(alice).revoke_device(now, &key2).unwrap();
    net.run();
    let stored = net.relay.device_list_of(&user("alice"));
    let list = cove_core::cove_identity::DeviceList::verify(&user("alice"), &stored).unwrap();
    assert!(list.is_revoked(&key2));
    assert!(list.is_listed(&key1));

    net.nodes[alice2].expect_handle_errors = true;
    net.disconnect(alice2);
    net.connect(alice2);
    net.run();
    assert_eq!(
        net.nodes[alice2].handle_errors,
        ["authentication refused: UnknownDevice: this device was revoked by its user"]
    );

    group_of(&mut net, bob, &["alice"]);
    assert!(
        net.relay.inbox_of(device2).is_empty(),
        "no Welcome for the revoked device"
    );
    assert!(
        net.take_events(alice)
            .iter()
            .any(|e| matches!(e, Event::Joined { .. }))
    );
    // The relay's directory no longer names it either, so nothing was even offered.
    let w = warnings(&net.take_events(bob));
    assert!(w.is_empty(), "{w:?}");
    let directory = net
        .relay
        .store()
        .devices(&user("alice"))
        .unwrap()
        .into_iter()
        .map(|d| d.device)
        .collect::<Vec<_>>();
    assert!(
        directory.contains(&device2),
        "still registered at the relay"
    );
}

#[test]
fn a_user_with_two_devices_receives_on_both() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    // bob's second device: created offline, authorised by the first, then connected.
    let mut second = Client::init(MemoryStore::new(), user("bob"), seed(42)).unwrap();
    let now = net.now_ms;
    let (authorizer, authorization) = net
        .client(bob)
        .authorize_device(now, &second.device_key())
        .unwrap()
        .unwrap();
    second
        .set_device_authorization(authorizer, authorization)
        .unwrap();
    let bob2 = net.add(second);
    net.run();
    assert!(
        net.client(bob2)
            .device()
            .is_some_and(|d| Some(d) != net.nodes[bob].client.as_ref().unwrap().device())
    );
    group_of(&mut net, alice, &["bob"]);
    send(&mut net, alice, "to both");
    net.run();
    for slot in [bob, bob2] {
        assert_eq!(
            texts(&net.take_events(slot)),
            vec!["to both".to_string()],
            "slot {slot}"
        );
    }
    let members = net.client(alice).groups()[0].members.clone();
    assert_eq!(members, vec![user("alice"), user("bob")]);
    // A forged authorisation is refused.
    let mut forged = Client::init(MemoryStore::new(), user("bob"), seed(43)).unwrap();
    forged
        .set_device_authorization(authorizer, cove_wire::Signature([1; 64]))
        .unwrap();
    let f = net.add(forged);
    net.nodes[f].expect_handle_errors = true;
    net.run();
    assert!(net.client(f).device().is_none());
    assert_eq!(
        net.nodes[f].handle_errors,
        [
            "authentication refused: AuthenticationFailed: signature did not verify",
            "the relay is closing the connection: AuthenticationFailed",
        ]
    );
}

#[test]
fn a_commit_whose_reply_was_lost_is_merged_from_its_echo_after_reconnecting() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    net.take_events(alice);
    let now = net.now_ms;
    let op = net
        .client(alice)
        .remove_users(now, "friends", &[user("carol")])
        .unwrap();
    // The commit reaches the relay, but the connection drops before alice reads the reply.
    net.nodes[alice].hold = true;
    net.step();
    net.disconnect(alice);
    net.nodes[alice].hold = false;
    net.run();
    net.connect(alice);
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    let events = net.take_events(alice);
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    assert_eq!(
        net.client(alice).epoch(&group),
        net.client(bob).epoch(&group)
    );
    assert_eq!(
        net.client(alice).epoch_authenticator(&group),
        net.client(bob).epoch_authenticator(&group)
    );
    assert!(
        net.take_events(carol)
            .iter()
            .any(|e| matches!(e, Event::RemovedFromGroup { .. }))
    );
    send(&mut net, alice, "after");
    net.run();
    assert_eq!(
        texts(&net.take_events(bob)).last(),
        Some(&"after".to_string())
    );
}

#[test]
fn a_message_whose_reply_was_lost_is_resent_and_shown_once() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    net.take_events(alice);
    net.take_events(bob);
    let op = send(&mut net, alice, "exactly once");
    net.nodes[alice].hold = true;
    net.step();
    net.disconnect(alice);
    net.nodes[alice].hold = false;
    net.run();
    net.connect(alice);
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    let events = net.take_events(bob);
    assert_eq!(texts(&events), vec!["exactly once".to_string()]);
    assert!(
        warnings(&events).is_empty(),
        "not even posted twice: {:?}",
        warnings(&events)
    );
    let a: Vec<String> = net
        .client(alice)
        .history("friends")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    let b: Vec<String> = net
        .client(bob)
        .history("friends")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(a, vec!["exactly once".to_string()]);
    assert_eq!(a, b);
}

#[test]
fn mutated_ciphertexts_never_panic_and_are_skipped() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    net.nodes[bob].hold = true;
    send(&mut net, alice, &"m".repeat(1024));
    net.run();
    let original = net.nodes[bob].inbound.pop_front().unwrap();
    let ServerFrame::Deliver(Delivery::Group(entry)) = &original else {
        panic!("{original:?}")
    };
    let payload = entry.payload.0.clone();
    net.nodes[bob].inbound.push_back(original.clone());
    let mut mutants = Vec::new();
    for i in (0..payload.len()).step_by(37) {
        let mut m = payload.clone();
        m[i] ^= 0x40;
        mutants.push(m);
    }
    for cut in [1, 5, 20, payload.len() / 2, payload.len() - 1] {
        mutants.push(payload[..cut].to_vec());
    }
    let mut longer = payload.clone();
    longer.extend_from_slice(&[0; 9]);
    mutants.push(longer);
    let alice_device = net.client(alice).device().unwrap();
    let now = net.now_ms;
    for m in &mutants {
        let frames = net.relay.inject(group, alice_device, m.clone(), now);
        net.deliver(frames);
    }
    // The original again (a replayed frame), after the mutants.
    net.nodes[bob].inbound.push_back(original);
    net.nodes[bob].hold = false;
    net.run();
    let events = net.take_events(bob);
    assert_eq!(texts(&events).len(), 1, "only the original is shown");
    assert_eq!(
        warnings(&events).len(),
        mutants.len(),
        "every mutant is skipped with a warning"
    );
    send(&mut net, alice, "after the storm");
    net.run();
    assert_eq!(
        texts(&net.take_events(bob)),
        vec!["after the storm".to_string()]
    );
}

/// MLS padding (`PADDING_BUCKET`): the relay stores a 1-byte and a 200-byte text as
/// application payloads of the same length, and one well past the bucket as a longer payload
/// that is a whole number of buckets longer; the texts still arrive intact.
#[test]
fn texts_of_different_lengths_reach_the_relay_padded_to_one_bucket() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    let long = "l".repeat(cove_core::PADDING_BUCKET + 100);
    for text in ["a", &"b".repeat(200), &long] {
        send(&mut net, alice, text);
        net.run();
    }
    let lengths: Vec<usize> = net
        .relay
        .store()
        .read_group(group, cove_wire::Seq(0), 100, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == cove_wire::EntryKind::Application)
        .map(|e| e.payload.0.len())
        .collect();
    assert_eq!(lengths.len(), 3, "three application posts: {lengths:?}");
    assert_eq!(
        lengths[0], lengths[1],
        "1 and 200 bytes look alike: {lengths:?}"
    );
    assert!(lengths[2] > lengths[1], "{lengths:?}");
    assert_eq!(
        (lengths[2] - lengths[1]) % cove_core::PADDING_BUCKET,
        0,
        "lengths differ by whole buckets: {lengths:?}"
    );
    assert_eq!(
        texts(&net.take_events(bob)),
        vec!["a".to_string(), "b".repeat(200), long]
    );
}

#[test]
fn a_key_update_keeps_everyone_in_step() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let before = net.client(bob).epoch(&group).unwrap();
    let now = net.now_ms;
    let op = net.client(bob).update_keys(now, "friends").unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    net.run();
    assert_eq!(net.client(alice).epoch(&group), Some(before + 1));
    assert_eq!(
        net.client(alice).epoch_authenticator(&group),
        net.client(bob).epoch_authenticator(&group)
    );
    send(&mut net, alice, "new keys");
    net.run();
    assert_eq!(
        texts(&net.take_events(bob)).last(),
        Some(&"new keys".to_string())
    );
    // bob's new leaf kept his device certificate: alice refuses nothing and reads him.
    let events = net.take_events(alice);
    assert!(refusals(&events).is_empty(), "{events:?}");
    send(&mut net, bob, "same bob");
    net.run();
    let events = net.take_events(alice);
    assert!(refusals(&events).is_empty(), "{events:?}");
    assert_eq!(texts(&events), ["same bob"]);
}

/// The relay keeps the commit that removed an offline device until the device acks it: at
/// reconnection the backlog delivers it, the device learns of its removal before it tries
/// anything, and the relay refuses its posts.
#[test]
fn a_device_removed_while_offline_learns_it_from_the_relay() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.disconnect(bob);
    let now = net.now_ms;
    let op = net
        .client(alice)
        .remove_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.connect(bob);
    net.run();
    let events = net.take_events(bob);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::RemovedFromGroup { group: g } if *g == group)),
        "{events:?}"
    );
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    assert!(!net.client(bob).groups()[0].active);
    // The core refuses to send to a group it was removed from...
    let now = net.now_ms;
    let refused = net.client(bob).send_text(now, &group.to_hex(), "anyone?");
    assert!(
        matches!(&refused, Err(CommandError::NotMember(_))),
        "{refused:?}"
    );
    // ... and so does the relay, for a post made anyway.
    let frames = net.relay.handle(
        bob,
        ClientFrame::Request {
            id: RequestId(999),
            body: Request::Post {
                group,
                epoch: cove_wire::Epoch(1),
                kind: PostKind::Application,
                payload: vec![1, 2, 3].into(),
            },
        },
        now,
    );
    assert!(matches!(
        &frames[0].1,
        ServerFrame::Response { result: Err(e), .. } if e.code == cove_wire::ErrorCode::NotMember
    ));
    assert_eq!(frames.len(), 1, "nothing is delivered: {frames:?}");
    assert!(texts(&net.take_events(alice)).is_empty());
}

/// When the commit that removed it never reaches the device (a relay that lost its
/// departure record), the device learns of its removal from the relay's `NotMember`
/// refusal of its next post.
#[test]
fn a_device_whose_removal_commit_is_lost_learns_it_from_the_relays_refusal() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let bob_device = net.client(bob).device().unwrap();
    net.disconnect(bob);
    let now = net.now_ms;
    let op = net
        .client(alice)
        .remove_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    assert_eq!(net.relay.forget_departures(bob_device), 1);
    net.connect(bob);
    net.run();
    net.take_events(bob);
    let op = send(&mut net, bob, "anyone?");
    let result = op_result(&mut net, bob, op);
    assert!(
        matches!(&result, Err(OpError::Relay(r)) if r.code == cove_wire::ErrorCode::NotMember),
        "{result:?}"
    );
    let events = net.take_events(bob);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::RemovedFromGroup { group: g } if *g == group))
    );
    assert!(!net.client(bob).groups()[0].active);
    assert!(texts(&net.take_events(alice)).is_empty());
}

#[test]
fn keys_first_seen_in_a_welcome_are_checked_against_the_directory() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    // The directory lies about alice's key to carol only after alice registered.
    let alice_device = net.client(alice).device().unwrap();
    net.relay
        .tampered_keys
        .insert(alice_device, cove_wire::DeviceKey([7; 32]));
    group_of(&mut net, alice, &["bob"]);
    net.run();
    // bob saw alice's real key in the Welcome, the directory disagrees: surfaced.
    let events = net.take_events(bob);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::KeyChanged { user, .. } if user.as_str() == "alice")),
        "{events:?}"
    );
    net.relay.tampered_keys.clear();
    let now = net.now_ms;
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    let events = net.take_events(carol);
    assert!(
        !events.iter().any(|e| matches!(e, Event::KeyChanged { .. })),
        "{events:?}"
    );
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
}

/// A member driven by bare openmls, which can send whatever it likes inside MLS.
mod mallory {
    use cove_core::cove_identity::IdentitySigner;
    use cove_core::welcome_envelope::{
        GROUP_NAME_KEY_LEN, GROUP_NAME_LABEL, WelcomeEnvelope, seal_name,
    };
    use cove_core::{CIPHERSUITE, DEVICE_CERTIFICATE_EXTENSION, credential_identity};
    use cove_wire::identity::{DeviceCertificate, DeviceName};
    use cove_wire::{BoundedVec, DeviceId, DeviceKey, GroupId, Payload, PostKind, UserName};
    use openmls::prelude::tls_codec::Deserialize as _;
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;

    use super::relay::{Net, Relay};

    pub struct Mallory {
        pub provider: OpenMlsRustCrypto,
        pub signer: SignatureKeyPair,
        pub device: DeviceId,
        pub group: Option<MlsGroup>,
        /// The name of her group, sealed into the Welcomes she sends.
        pub group_name: String,
        /// The certificate of her own device in her own (published) list, if she has one.
        pub certificate: Option<DeviceCertificate>,
    }

    /// The leaf capabilities of a Cove device (the certificate extension included).
    fn capabilities() -> Capabilities {
        Capabilities::new(
            None,
            Some(&[CIPHERSUITE]),
            Some(&[
                ExtensionType::Unknown(DEVICE_CERTIFICATE_EXTENSION),
                ExtensionType::Unknown(cove_wire::roles::ROLES_EXTENSION),
            ]),
            None,
            None,
        )
    }

    /// The leaf extensions carrying `cert` (none without one).
    pub fn leaf_extensions(cert: Option<&DeviceCertificate>) -> Extensions<LeafNode> {
        match cert {
            Some(c) => Extensions::single(Extension::Unknown(
                DEVICE_CERTIFICATE_EXTENSION,
                UnknownExtension(cove_wire::encode(c).unwrap()),
            ))
            .unwrap(),
            None => Extensions::default(),
        }
    }

    impl Mallory {
        /// A new user `name` registered at the relay, with a signed device list of her own
        /// published there and one KeyPackage carrying her certificate.
        pub fn register(relay: &mut Relay, name: &str) -> Self {
            let mut m = Self::with_device(relay, name, Relay::register_raw);
            let user = UserName::new(name).unwrap();
            let identity = IdentitySigner::new(user.clone(), &[0x6d; 32]);
            let key = DeviceKey(m.signer.public().try_into().unwrap());
            let list = identity
                .create(key, DeviceName::new("mallory's").unwrap(), 1)
                .unwrap();
            relay.publish_list_raw(&user, list.entries().to_vec());
            m.certificate = list.certificate(&key);
            m.upload_key_package(relay, &user);
            m
        }

        /// A device the relay itself adds to the existing user `name` (a ghost), with one
        /// KeyPackage whose credential names that user (and no certificate).
        pub fn ghost_of(relay: &mut Relay, name: &str) -> Self {
            let m = Self::with_device(relay, name, Relay::add_device_raw);
            m.upload_key_package(relay, &UserName::new(name).unwrap());
            m
        }

        fn with_device(
            relay: &mut Relay,
            name: &str,
            make: fn(&mut Relay, UserName, DeviceKey) -> DeviceId,
        ) -> Self {
            let provider = OpenMlsRustCrypto::default();
            let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
            signer.store(provider.storage()).unwrap();
            let user = UserName::new(name).unwrap();
            let device = make(
                relay,
                user.clone(),
                DeviceKey(signer.public().try_into().unwrap()),
            );
            Mallory {
                provider,
                signer,
                device,
                group: None,
                group_name: String::new(),
                certificate: None,
            }
        }

        /// Her credential claiming to be a device of `user` (with her own device id and key).
        fn credential(&self, user: &UserName) -> CredentialWithKey {
            CredentialWithKey {
                credential: BasicCredential::new(credential_identity(user, self.device)).into(),
                signature_key: self.signer.to_public_vec().into(),
            }
        }

        fn upload_key_package(&self, relay: &mut Relay, user: &UserName) {
            let kp = KeyPackage::builder()
                .leaf_node_capabilities(capabilities())
                .leaf_node_extensions(leaf_extensions(self.certificate.as_ref()))
                .build(
                    CIPHERSUITE,
                    &self.provider,
                    &self.signer,
                    self.credential(user),
                )
                .unwrap();
            relay.upload_raw(
                self.device,
                MlsMessageOut::from(kp.key_package().clone())
                    .to_bytes()
                    .unwrap()
                    .into(),
            );
        }

        pub fn join(&mut self, relay: &Relay) {
            let entry = relay.inbox_of(self.device).pop().unwrap();
            let envelope = WelcomeEnvelope::decode(entry.payload.as_bytes()).unwrap();
            let MlsMessageBodyIn::Welcome(w) =
                MlsMessageIn::tls_deserialize_exact(envelope.welcome)
                    .unwrap()
                    .extract()
            else {
                panic!("not a Welcome")
            };
            let cfg = MlsGroupJoinConfig::builder()
                // Handshakes as PublicMessage, as Cove clients send them: the relay validates
                // her commits like anyone's (and takes the ghost add: its leaf is a registered
                // device of alice with its own key; only the members' certificate check stops it).
                .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
                .use_ratchet_tree_extension(true)
                .build();
            let g = StagedWelcome::new_from_welcome(&self.provider, &cfg, w, None)
                .unwrap()
                .into_group(&self.provider)
                .unwrap();
            self.group = Some(g);
        }

        /// Creates a group named `name` at the relay whose only leaf, hers, claims to be a
        /// device of `as_user`, carrying `cert` (or no certificate), then adds every device
        /// of `users` with KeyPackages claimed from the relay; returns the group and what
        /// the online members receive.
        pub fn create_group_as(
            &mut self,
            net: &mut Net<cove_core::cove_store::MemoryStore>,
            name: &str,
            as_user: &str,
            cert: Option<&DeviceCertificate>,
            users: &[&str],
        ) -> GroupId {
            let group = GroupId([0x6d; 16]);
            let config = MlsGroupCreateConfig::builder()
                .ciphersuite(CIPHERSUITE)
                .use_ratchet_tree_extension(true)
                .capabilities(capabilities())
                .with_leaf_node_extensions(leaf_extensions(cert))
                .unwrap()
                .build();
            let mut mls = MlsGroup::new_with_group_id(
                &self.provider,
                &self.signer,
                &config,
                openmls::group::GroupId::from_slice(&group.0),
                self.credential(&UserName::new(as_user).unwrap()),
            )
            .unwrap();
            net.relay.create_group_raw(group, self.device);
            let mut added = Vec::new();
            let mut kps = Vec::new();
            for user in users {
                let claimed = net
                    .relay
                    .store()
                    .claim_key_packages(&UserName::new(*user).unwrap())
                    .unwrap();
                for c in claimed {
                    let MlsMessageBodyIn::KeyPackage(kp) =
                        MlsMessageIn::tls_deserialize_exact(c.key_package.as_bytes())
                            .unwrap()
                            .extract()
                    else {
                        panic!("not a KeyPackage")
                    };
                    kps.push(
                        kp.validate(self.provider.crypto(), ProtocolVersion::Mls10)
                            .unwrap(),
                    );
                    added.push(c.device);
                }
            }
            let (commit, welcome, _) = mls.add_members(&self.provider, &self.signer, &kps).unwrap();
            self.group_name = name.to_string();
            let welcome = self.envelope(&mls, group, &welcome);
            mls.merge_pending_commit(&self.provider).unwrap();
            let kind = PostKind::Commit {
                added: BoundedVec(added),
                removed: BoundedVec(Vec::new()),
                welcome: Some(Payload(welcome)),
                group_info: Payload::default(),
            };
            let now = net.now_ms;
            let frames =
                net.relay
                    .post_raw(group, self.device, kind, commit.to_bytes().unwrap(), now);
            net.deliver(frames);
            self.group = Some(mls);
            group
        }

        /// Processes and merges the commits of her group's log she has not merged yet (by
        /// their epoch), as a Cove member would.
        pub fn apply_commits(&mut self, relay: &Relay) {
            let mls = self.group.as_mut().unwrap();
            let group = GroupId(mls.group_id().as_slice().try_into().unwrap());
            let entries = relay
                .store()
                .fetch(group, self.device, cove_wire::Seq(0), 1000, usize::MAX)
                .unwrap();
            for e in entries {
                if !matches!(e.kind, cove_wire::EntryKind::Commit { .. })
                    || e.epoch.0 != mls.epoch().as_u64()
                    || e.sender == self.device
                {
                    continue;
                }
                let message = MlsMessageIn::tls_deserialize_exact(e.payload.as_bytes()).unwrap();
                let processed = mls
                    .process_message(&self.provider, message.try_into_protocol_message().unwrap())
                    .unwrap();
                let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content()
                else {
                    panic!("not a commit");
                };
                mls.merge_staged_commit(&self.provider, *staged).unwrap();
            }
        }

        /// Commits, in her group, the add of `devices` of `user` (their KeyPackages claimed
        /// from the relay) and posts it with its Welcome; the online members receive it.
        pub fn add_devices(
            &mut self,
            net: &mut Net<cove_core::cove_store::MemoryStore>,
            user: &str,
            devices: &[DeviceId],
        ) {
            let mut kps = Vec::new();
            for c in net
                .relay
                .store()
                .claim_key_packages(&UserName::new(user).unwrap())
                .unwrap()
                .into_iter()
                .filter(|c| devices.contains(&c.device))
            {
                let MlsMessageBodyIn::KeyPackage(kp) =
                    MlsMessageIn::tls_deserialize_exact(c.key_package.as_bytes())
                        .unwrap()
                        .extract()
                else {
                    panic!("not a KeyPackage")
                };
                kps.push(
                    kp.validate(self.provider.crypto(), ProtocolVersion::Mls10)
                        .unwrap(),
                );
            }
            assert_eq!(kps.len(), devices.len(), "a KeyPackage for every device");
            let mls = self.group.as_mut().unwrap();
            let group = GroupId(mls.group_id().as_slice().try_into().unwrap());
            let (commit, welcome, gi) =
                mls.add_members(&self.provider, &self.signer, &kps).unwrap();
            let mut mls = self.group.take().unwrap();
            let welcome = self.envelope(&mls, group, &welcome);
            mls.merge_pending_commit(&self.provider).unwrap();
            self.group = Some(mls);
            let kind = PostKind::Commit {
                added: BoundedVec(devices.to_vec()),
                removed: BoundedVec(Vec::new()),
                welcome: Some(Payload(welcome)),
                group_info: Payload(MlsMessageOut::from(gi.unwrap()).to_bytes().unwrap()),
            };
            let now = net.now_ms;
            let frames =
                net.relay
                    .post_raw(group, self.device, kind, commit.to_bytes().unwrap(), now);
            net.deliver(frames);
        }

        /// The Cove Welcome envelope of `welcome`: her group's name sealed under the
        /// group-name key of the epoch her pending commit in `mls` creates.
        fn envelope(&self, mls: &MlsGroup, group: GroupId, welcome: &MlsMessageOut) -> Vec<u8> {
            let key = mls
                .pending_commit()
                .unwrap()
                .export_secret(
                    self.provider.crypto(),
                    GROUP_NAME_LABEL,
                    &group.0,
                    GROUP_NAME_KEY_LEN,
                )
                .unwrap();
            let sealed_name = seal_name(&key, [0x6d; 12], &group, &self.group_name).unwrap();
            WelcomeEnvelope {
                welcome: &welcome.to_bytes().unwrap(),
                sealed_name: &sealed_name,
            }
            .encode()
            .unwrap()
        }

        /// Encrypts arbitrary plaintext as an application message.
        pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
            let g = self.group.as_mut().unwrap();
            g.create_message(&self.provider, &self.signer, plaintext)
                .unwrap()
                .to_bytes()
                .unwrap()
        }

        /// Sends `text` as a Cove text message from her leaf; returns what the online
        /// members receive.
        pub fn send_text(&mut self, net: &mut Net<cove_core::cove_store::MemoryStore>, text: &str) {
            use cove_core::content::{Content, ENVELOPE_VERSION, Envelope};
            let plaintext = Envelope {
                version: ENVELOPE_VERSION,
                id: [0x6d; 16],
                sent_at_ms: 1,
                content: Content::Text {
                    text: text.to_string(),
                },
            }
            .encode()
            .unwrap();
            let bytes = self.seal(&plaintext);
            let group = GroupId(
                self.group
                    .as_ref()
                    .unwrap()
                    .group_id()
                    .as_slice()
                    .try_into()
                    .unwrap(),
            );
            let now = net.now_ms;
            let frames = net.relay.inject(group, self.device, bytes, now);
            net.deliver(frames);
        }
    }
}

/// mallory, a member of alice's group with bob, commits the add of a device the relay made
/// up for alice (a KeyPackage claiming `cove:alice:<ghost>`, without a certificate): alice and
/// bob each refuse its leaf once (`NoCertificate`) and raise no "new device" warning for it
/// (its key is not pinned as alice's), the leaf is removed by their commit, and neither the
/// add nor the removal is shown as a membership change of alice.
#[test]
fn a_refused_leaf_added_by_a_commit_is_reported_once_without_a_new_device_warning() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let mut mallory = mallory::Mallory::register(&mut net.relay, "mallory");
    let group = group_of(&mut net, alice, &["bob", "mallory"]);
    mallory.join(&net.relay);
    // Only an admin may add another user's device (issue 13): the leaf check is what is
    // tested here.
    admins::promote(&mut net, alice, "friends", &["mallory"]);
    mallory.apply_commits(&net.relay);
    let ghost = mallory::Mallory::ghost_of(&mut net.relay, "alice");
    for slot in [alice, bob] {
        net.take_events(slot);
    }
    mallory.add_devices(&mut net, "alice", &[ghost.device]);
    net.run();
    for slot in [alice, bob] {
        let events = net.take_events(slot);
        assert_eq!(
            refusals(&events),
            [(
                group,
                "alice".to_string(),
                ghost.device,
                LeafRefusal::NoCertificate
            )],
            "slot {slot}: {events:?}"
        );
        assert!(warnings(&events).is_empty(), "slot {slot}: {events:?}");
        assert!(
            !devices_in(&mut net, slot, &group).contains(&("alice".to_string(), ghost.device.0)),
            "slot {slot}: removed"
        );
        // Neither the forged add nor its removal is shown as alice joining or leaving.
        let membership: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::MembersChanged { .. }))
            .collect();
        assert!(membership.is_empty(), "slot {slot}: {membership:?}");
    }
}

#[test]
fn hostile_plaintexts_from_a_member_are_skipped_and_duplicate_ids_dropped() {
    use cove_core::content::{Content, ENVELOPE_VERSION, Envelope};

    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let mut mallory = mallory::Mallory::register(&mut net.relay, "mallory");
    let group = group_of(&mut net, alice, &["bob", "mallory"]);
    mallory.join(&net.relay);
    net.take_events(bob);

    let envelope = |id: u8, text: String| {
        Envelope {
            version: ENVELOPE_VERSION,
            id: [id; 16],
            sent_at_ms: 1,
            content: Content::Text { text },
        }
        .encode()
        .unwrap()
    };
    let mut unknown_variant = envelope(1, "x".into());
    // Envelope = version, id (16), sent_at varint (1), then the variant index: make it 200.
    unknown_variant[18] = 200;
    let plaintexts: Vec<Vec<u8>> = vec![
        envelope(2, "hello from mallory".into()),      // fine
        envelope(2, "same id, new ciphertext".into()), // duplicate id: dropped
        vec![0u8; 70 * 1024],                          // oversized plaintext
        // A well-formed envelope just over the limit (cove-core refuses to encode it).
        postcard::to_stdvec(&Envelope {
            version: ENVELOPE_VERSION,
            id: [3; 16],
            sent_at_ms: 1,
            content: Content::Text {
                text: "y".repeat(65 * 1024),
            },
        })
        .unwrap(),
        unknown_variant, // unknown content kind: shown as unsupported (issue 13)
        {
            let mut e = envelope(4, "v".into());
            e[0] = 9; // unknown envelope version
            e
        },
        vec![], // empty
        envelope(5, "still fine".into()),
    ];
    let now = net.now_ms;
    for p in &plaintexts {
        let bytes = mallory.seal(p);
        let frames = net.relay.inject(group, mallory.device, bytes, now);
        net.deliver(frames);
    }
    net.run();
    for slot in [alice, bob] {
        let events = net.take_events(slot);
        assert_eq!(
            texts(&events),
            vec![
                "hello from mallory".to_string(),
                String::new(),
                "still fine".to_string()
            ],
            "slot {slot}"
        );
        let unsupported: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some((m.id.0, m.unsupported)),
                _ => None,
            })
            .collect();
        assert_eq!(
            unsupported,
            vec![([2; 16], None), ([1; 16], Some(200)), ([5; 16], None)],
            "slot {slot}: the newer client's kind is shown as unsupported"
        );
        assert_eq!(
            warnings(&events).len(),
            5,
            "slot {slot}: {:?}",
            warnings(&events)
        );
    }
}

/// A further device of `of`'s user, authorised by `of` and connected.
fn linked_device(net: &mut Net<MemoryStore>, of: usize, name: &str, n: u8) -> usize {
    let mut second = Client::init(MemoryStore::new(), user(name), seed(n)).unwrap();
    let now = net.now_ms;
    let (authorizer, authorization) = net
        .client(of)
        .authorize_device(now, &second.device_key())
        .unwrap()
        .unwrap();
    second
        .set_device_authorization(authorizer, authorization)
        .unwrap();
    let slot = net.add(second);
    net.run();
    assert!(net.client(slot).device().is_some());
    slot
}

fn devices_in(net: &mut Net<MemoryStore>, slot: usize, group: &GroupId) -> Vec<(String, u64)> {
    let mut m: Vec<(String, u64)> = net
        .client(slot)
        .group_members(group)
        .into_iter()
        .map(|m| (m.user.to_string(), m.device.0))
        .collect();
    m.sort();
    m
}

#[test]
fn a_creator_with_two_devices_has_both_in_the_group_and_both_chat() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let alice2 = linked_device(&mut net, alice, "alice", 42);
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let a2 = net.client(alice2).device().unwrap().0;
    let everyone = devices_in(&mut net, alice, &group);
    assert!(
        everyone.contains(&("alice".to_string(), a2)),
        "alice's second device is a member: {everyone:?}"
    );
    assert_eq!(everyone.len(), 3, "{everyone:?}");
    for slot in [alice2, bob] {
        assert_eq!(devices_in(&mut net, slot, &group), everyone, "slot {slot}");
    }
    for slot in [alice, alice2, bob] {
        net.take_events(slot);
    }
    send(&mut net, bob, "hi alices");
    net.run();
    net.take_events(bob);
    for slot in [alice, alice2] {
        assert_eq!(
            texts(&net.take_events(slot)),
            vec!["hi alices".to_string()],
            "slot {slot}"
        );
    }
    let op = send(&mut net, alice2, "from the second device");
    assert_eq!(op_result(&mut net, alice2, op), Ok(()));
    net.run();
    for slot in [alice, bob] {
        assert_eq!(
            texts(&net.take_events(slot)),
            vec!["from the second device".to_string()],
            "slot {slot}"
        );
    }
    let b: Vec<String> = net
        .client(bob)
        .history("friends")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(b, vec!["hi alices", "from the second device"]);
}

#[test]
fn a_device_linked_later_joins_the_group_at_its_users_next_add() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let _carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob"]);
    let alice2 = linked_device(&mut net, alice, "alice", 42);
    assert!(net.client(alice2).groups().is_empty());
    let now = net.now_ms;
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    let a2 = net.client(alice2).device().unwrap().0;
    assert!(devices_in(&mut net, bob, &group).contains(&("alice".to_string(), a2)));
    net.take_events(alice2);
    send(&mut net, bob, "welcome, second device");
    net.run();
    assert_eq!(
        texts(&net.take_events(alice2)),
        vec!["welcome, second device".to_string()]
    );
}

#[test]
fn a_rate_limited_post_is_resent_once_after_the_timeout() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    net.take_events(alice);
    net.take_events(bob);
    assert_eq!(net.client(alice).poll_timeout(), None);
    net.relay.rate_limit_posts = 1;
    net.relay.rate_limit_retry_ms = Some(2_000);
    let op = send(&mut net, alice, "patience");
    net.run();
    assert!(texts(&net.take_events(bob)).is_empty());
    assert!(
        !net.nodes[alice]
            .events
            .iter()
            .any(|e| matches!(e, Event::OpDone { op: o, .. } if *o == op)),
        "still pending"
    );
    let deadline = net
        .client(alice)
        .poll_timeout()
        .expect("a retry is scheduled");
    assert!(
        deadline > net.now_ms,
        "the relay's retry_after_ms is honoured"
    );
    // Too early: nothing happens.
    let early = deadline - 1;
    net.client(alice).handle_timeout(early).unwrap();
    net.run();
    assert_eq!(net.relay.app_posts, 0);
    assert!(texts(&net.take_events(bob)).is_empty());
    net.now_ms = deadline;
    net.client(alice).handle_timeout(deadline).unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    assert_eq!(texts(&net.take_events(bob)), vec!["patience".to_string()]);
    assert_eq!(net.relay.app_posts, 1, "posted exactly once");
    assert_eq!(net.client(alice).poll_timeout(), None);
    assert!(!net.client(alice).has_pending_ops());
    // A second timeout call later sends nothing more.
    let later = net.now_ms + 60_000;
    net.client(alice).handle_timeout(later).unwrap();
    net.run();
    assert_eq!(net.relay.app_posts, 1);
    assert!(texts(&net.take_events(bob)).is_empty());
}

#[test]
fn without_retry_after_the_backoff_doubles_and_is_capped() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    net.relay.rate_limit_posts = 10;
    net.relay.rate_limit_retry_ms = None;
    send(&mut net, alice, "eventually");
    net.run();
    let mut delays = Vec::new();
    for _ in 0..10 {
        let deadline = net.client(alice).poll_timeout().expect("scheduled");
        delays.push(deadline - net.now_ms);
        net.now_ms = deadline;
        net.client(alice).handle_timeout(deadline).unwrap();
        net.run();
    }
    // 500 ms doubling per refusal, capped at 30 s (minus the few simulated ms the
    // refusal took to arrive).
    assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
    assert!(delays[0] <= 500 && delays[1] > 500, "{delays:?}");
    assert!(delays.iter().all(|d| *d <= 30_000), "{delays:?}");
    assert!(delays[9] > 29_000, "{delays:?}");
    assert_eq!(texts(&net.take_events(bob)), vec!["eventually".to_string()]);
    assert_eq!(net.relay.app_posts, 1);
}

#[test]
fn a_new_device_of_a_member_is_announced_to_the_others_and_key_checked() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    assert!(warnings(&net.take_events(alice)).is_empty());
    let bob2 = linked_device(&mut net, bob, "bob", 42);
    // bob adds his own new device (adding his own name adds just the missing devices).
    let now = net.now_ms;
    let op = net
        .client(bob)
        .add_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    net.run();
    let b2 = net.client(bob2).device().unwrap().0;
    assert!(devices_in(&mut net, alice, &group).contains(&("bob".to_string(), b2)));
    let events = net.take_events(alice);
    // Announced as added by bob's signed list, without a "new device" warning (which is
    // for a device the list does not name).
    let b2_key = net.client(bob2).device_key();
    assert_eq!(devices_added(&events), [("bob".to_string(), b2_key)]);
    let w = warnings(&events);
    assert!(w.is_empty(), "{w:?}");
    assert!(
        !events.iter().any(|e| matches!(e, Event::KeyChanged { .. })),
        "the directory agrees with the key in the commit"
    );
    // Running the add again changes nothing.
    let now = net.now_ms;
    let op = net
        .client(bob)
        .add_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    send(&mut net, alice, "hello bob's devices");
    net.run();
    assert_eq!(
        texts(&net.take_events(bob2)),
        vec!["hello bob's devices".to_string()]
    );
}

/// Replays `slot`'s reconnection up to (not including) the relay's `BacklogDone`, which is
/// returned: the device is authenticated and has its backlog, and the end of the backlog is
/// still to come.
fn reconnect_holding_backlog_done(net: &mut Net<MemoryStore>, slot: usize) -> ServerFrame {
    net.disconnect(slot);
    net.connect(slot);
    net.nodes[slot].hold = true;
    // The challenge is answered; the relay's reply, the backlog and BacklogDone are queued.
    let challenge = net.nodes[slot].inbound.pop_front().unwrap();
    let now = net.now_ms;
    net.client(slot).handle_frame(now, challenge).unwrap();
    net.step();
    let frames: Vec<ServerFrame> = net.nodes[slot].inbound.drain(..).collect();
    let at = frames
        .iter()
        .position(|f| matches!(f, ServerFrame::BacklogDone))
        .expect("the relay ends the backlog");
    let mut frames = frames.into_iter();
    for f in frames.by_ref().take(at) {
        net.client(slot).handle_frame(now, f).unwrap();
    }
    let done = frames.next().unwrap();
    net.nodes[slot].inbound.extend(frames);
    assert!(net.client(slot).is_ready());
    done
}

#[test]
fn an_add_started_before_the_backlog_ends_claims_once_and_succeeds() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &[]);
    let bob_device = net.client(bob).device().unwrap();
    let stock = net.relay.stock(bob_device);
    let backlog_done = reconnect_holding_backlog_done(&mut net, alice);
    // `cove group add` right after authentication: the look-ups go out before the backlog
    // ends, and their replies and the claims' replies come after BacklogDone.
    let now = net.now_ms;
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("bob")])
        .unwrap();
    net.nodes[alice].hold = false;
    net.step(); // signed device lists fetched, answered
    net.step(); // directory look-ups out, answered
    net.step(); // claims out, answered
    assert_eq!(
        net.relay.stock(bob_device),
        stock - 1,
        "bob's KeyPackage is claimed"
    );
    net.nodes[alice].inbound.push_front(backlog_done);
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    assert_eq!(
        net.relay.stock(bob_device) + 1,
        stock,
        "exactly one KeyPackage of bob was claimed (none wasted)"
    );
    assert_eq!(
        net.client(bob).epoch(&group),
        net.client(alice).epoch(&group)
    );
    send(&mut net, alice, "welcome bob");
    net.run();
    assert_eq!(
        texts(&net.take_events(bob)),
        vec!["welcome bob".to_string()]
    );
}

#[test]
fn a_second_group_of_the_same_name_is_refused_locally() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let now = net.now_ms;
    // Refused while the first creation is still under way...
    let op = net.client(alice).create_group(now, "friends").unwrap();
    let second = net.client(alice).create_group(now, "friends");
    assert!(
        matches!(&second, Err(CommandError::DuplicateGroupName(n)) if n == "friends"),
        "{second:?}"
    );
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    // ... and once it exists; the name keeps working, another name is fine.
    let again = net.client(alice).create_group(now, "friends");
    assert!(
        matches!(&again, Err(CommandError::DuplicateGroupName(n)) if n == "friends"),
        "{again:?}"
    );
    assert_eq!(net.client(alice).groups().len(), 1);
    net.client(alice).resolve("friends").unwrap();
    let op = net.client(alice).create_group(now, "family").unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
}

/// Issue 8: a member removed and added again while offline receives the commit that
/// removed it first (the relay keeps it for him), then the Welcome that adds it again: it
/// leaves the old group state, joins at the new epoch and reads on, without warnings.
#[test]
fn a_member_removed_and_added_again_while_offline_sees_the_removal_then_joins_again() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let bob_device = net.client(bob).device().unwrap();
    net.disconnect(bob);
    let now = net.now_ms;
    let op = net
        .client(alice)
        .remove_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    send(&mut net, alice, "welcome back");
    net.run();
    net.take_events(bob);
    net.connect(bob);
    net.run();
    let events = net.take_events(bob);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::RemovedFromGroup { group: g } if *g == group)),
        "the removal is delivered: {events:?}"
    );
    assert_eq!(texts(&events), vec!["welcome back".to_string()]);
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    assert!(net.client(bob).groups()[0].active);
    assert_eq!(
        net.client(bob).epoch_authenticator(&group),
        net.client(alice).epoch_authenticator(&group)
    );
    // bob acked the removal: the relay holds no departure record for him any more.
    assert_eq!(net.relay.forget_departures(bob_device), 0);
    net.take_events(alice);
    let op = send(&mut net, bob, "glad to be back");
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    net.run();
    assert_eq!(
        texts(&net.take_events(alice)),
        vec!["glad to be back".to_string()]
    );
}

#[test]
fn a_member_removed_and_added_again_while_offline_takes_the_new_welcome_and_reads_on() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    let held = net.client(bob).epoch(&group).unwrap();
    net.disconnect(bob);
    let now = net.now_ms;
    let op = net
        .client(alice)
        .remove_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("bob")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    send(&mut net, alice, "welcome back");
    net.run();
    net.take_events(bob);
    // What a hostile relay could keep and replay later: the Welcome that re-adds bob.
    let bob_device = net.client(bob).device().unwrap();
    let mut welcome = net
        .relay
        .inbox_of(bob_device)
        .pop()
        .expect("bob's re-add Welcome waits in his inbox");
    // bob never sees the removal (this relay moves his cursor to the re-add, as the relay
    // did before it kept departure records), only the Welcome into a later epoch of a
    // group he still holds.
    assert_eq!(net.relay.forget_departures(bob_device), 1);
    net.connect(bob);
    net.run();
    let events = net.take_events(bob);
    assert_eq!(texts(&events), vec!["welcome back".to_string()]);
    let warned = warnings(&events);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("re-added") && warned[0].contains(&format!("epoch {held}")),
        "{warned:?}"
    );
    assert_eq!(
        net.client(bob).epoch_authenticator(&group),
        net.client(alice).epoch_authenticator(&group)
    );
    net.take_events(alice);
    let op = send(&mut net, bob, "glad to be back");
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    net.run();
    assert_eq!(
        texts(&net.take_events(alice)),
        vec!["glad to be back".to_string()]
    );
    net.take_events(bob);

    // A hostile relay replays that Welcome under a new inbox position (an old position is
    // dropped as a duplicate before it is even read): a Welcome for the epoch bob already
    // holds must not replace his group state (a rollback); he is warned and stays put.
    welcome.seq = cove_wire::Seq(welcome.seq.0 + 1000);
    net.relay.fabricated_inbox.insert(bob_device, welcome.seq);
    let before = net.client(bob).epoch_authenticator(&group);
    net.deliver(vec![(bob, ServerFrame::Deliver(Delivery::Inbox(welcome)))]);
    net.run();
    let warned = warnings(&net.take_events(bob));
    assert_eq!(warned.len(), 1, "the replay is reported: {warned:?}");
    // Refused (here already because its KeyPackage was used up; with a last-resort one the
    // epoch check refuses it as "already a member"), never taken.
    assert!(
        warned[0].starts_with("skipped a Welcome"),
        "refused, not taken: {warned:?}"
    );
    assert_eq!(net.client(bob).epoch_authenticator(&group), before);
    assert_eq!(
        net.client(bob).epoch_authenticator(&group),
        net.client(alice).epoch_authenticator(&group)
    );
    send(&mut net, alice, "still here");
    net.run();
    assert_eq!(
        texts(&net.take_events(bob)),
        vec!["still here".to_string()],
        "bob still reads the group after the replay"
    );
}

#[test]
fn an_entry_that_cannot_be_processed_is_kept_unacknowledged_reported_and_recovered() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let _carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob"]);
    let bob_device = net.client(bob).device().unwrap();
    let stream = cove_wire::Stream::Group(group);
    let before = net.relay.cursor(bob_device, stream);
    net.take_events(bob);
    // bob loses the commit that adds carol on the way, then gets a message of the new epoch.
    net.nodes[bob].hold = true;
    let now = net.now_ms;
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    let lost: Vec<ServerFrame> = net.nodes[bob].inbound.drain(..).collect();
    assert!(
        matches!(lost.as_slice(), [ServerFrame::Deliver(Delivery::Group(e))] if matches!(e.kind, cove_wire::EntryKind::Commit { .. })),
        "{lost:?}"
    );
    send(&mut net, alice, "in the new epoch");
    net.nodes[bob].hold = false;
    net.run();
    // Kept, not shown, and not acknowledged: the relay still holds bob's cursor before the
    // commit he missed.
    let events = net.take_events(bob);
    assert!(texts(&events).is_empty(), "{events:?}");
    assert_eq!(net.relay.cursor(bob_device, stream), before);

    // Reconnecting with the commit lost once more: after the backlog, bob is told.
    net.disconnect(bob);
    net.connect(bob);
    net.nodes[bob].hold = true;
    let challenge = net.nodes[bob].inbound.pop_front().unwrap();
    let now = net.now_ms;
    net.client(bob).handle_frame(now, challenge).unwrap();
    net.step();
    let frames: Vec<ServerFrame> = net.nodes[bob].inbound.drain(..).collect();
    for f in frames {
        let commit = matches!(&f, ServerFrame::Deliver(Delivery::Group(e)) if matches!(e.kind, cove_wire::EntryKind::Commit { .. }));
        if !commit {
            net.client(bob).handle_frame(now, f).unwrap();
        }
    }
    net.nodes[bob].hold = false;
    net.run();
    let events = net.take_events(bob);
    assert!(texts(&events).is_empty(), "{events:?}");
    let warned = warnings(&events);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].starts_with(&format!(
            "1 entries of group {group} could not be processed and are kept"
        )),
        "{warned:?}"
    );

    // The next connection delivers the commit: the kept message is applied after it.
    net.disconnect(bob);
    net.connect(bob);
    net.run();
    let events = net.take_events(bob);
    assert_eq!(texts(&events), vec!["in the new epoch".to_string()]);
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    assert_eq!(
        net.client(bob).epoch_authenticator(&group),
        net.client(alice).epoch_authenticator(&group)
    );
    assert!(net.relay.cursor(bob_device, stream) > before);
}

#[test]
fn one_last_resort_key_package_serves_two_joins_and_both_groups_decrypt() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let bob_device = net.client(bob).device().unwrap();
    // bob is offline (no top-up) and his normal KeyPackages are gone.
    net.disconnect(bob);
    assert!(net.relay.drain_stock(bob_device) > 0);
    let now = net.now_ms;
    for name in ["one", "two"] {
        let op = net.client(alice).create_group(now, name).unwrap();
        assert_eq!(op_result(&mut net, alice, op), Ok(()));
        let op = net
            .client(alice)
            .add_users(now, name, &[user("bob")])
            .unwrap();
        assert_eq!(
            op_result(&mut net, alice, op),
            Ok(()),
            "adding bob to {name}"
        );
        net.client(alice)
            .send_text(now, name, &format!("hello in {name}"))
            .unwrap();
    }
    assert_eq!(
        net.relay.stock(bob_device),
        0,
        "both adds used the last-resort one"
    );
    net.connect(bob);
    net.run();
    net.take_events(alice);
    let events = net.take_events(bob);
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    let mut got = texts(&events);
    got.sort();
    assert_eq!(
        got,
        vec!["hello in one".to_string(), "hello in two".to_string()]
    );
    for name in ["one", "two"] {
        let group = net.client(alice).resolve(name).unwrap();
        assert_eq!(
            net.client(bob).epoch_authenticator(&group),
            net.client(alice).epoch_authenticator(&group)
        );
        let op = net
            .client(bob)
            .send_text(now, name, &format!("bob in {name}"))
            .unwrap();
        assert_eq!(op_result(&mut net, bob, op), Ok(()));
    }
    net.run();
    let mut got = texts(&net.take_events(alice));
    got.sort();
    assert_eq!(
        got,
        vec!["bob in one".to_string(), "bob in two".to_string()]
    );
}

/// When the relay refuses a registered device's authentication, `handle_frame` fails with
/// `HandleError::AuthRefused` carrying the relay's reply (the shell stops retrying by this
/// type, not by the error's text), and the client is not ready.
#[test]
fn a_refused_authentication_is_auth_refused_with_the_relays_reply() {
    use cove_core::{HandleError, Output};
    use cove_wire::{ErrorCode, ErrorReply};
    let mut net = Net::new();
    let a = device(&mut net, "alice");
    net.disconnect(a);
    net.connect(a);
    net.nodes[a].hold = true;
    let challenge = net.nodes[a].inbound.pop_front().unwrap();
    let now = net.now_ms;
    net.client(a).handle_frame(now, challenge).unwrap();
    let mut auth = None;
    while let Some(out) = net.client(a).poll_output() {
        if let Output::Send(ClientFrame::Request {
            id,
            body: Request::Authenticate { .. },
        }) = out
        {
            auth = Some(id);
        }
    }
    let id = auth.expect("a registered device authenticates");
    let refusal = ErrorReply::new(ErrorCode::AuthenticationFailed, "device revoked");
    let result = net.client(a).handle_frame(
        now,
        ServerFrame::Response {
            id,
            result: Err(refusal.clone()),
        },
    );
    assert!(
        matches!(&result, Err(HandleError::AuthRefused(r)) if *r == refusal),
        "{result:?}"
    );
    assert!(!net.client(a).is_ready());
}

/// The `DeviceAdded` events of `events`: (user, device key).
fn devices_added(events: &[Event]) -> Vec<(String, cove_wire::DeviceKey)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Identity(IdentityEvent::DeviceAdded { user, device, .. }) => {
                Some((user.to_string(), *device))
            }
            _ => None,
        })
        .collect()
}

/// The `LeafRefused` events of `events`: (group, claimed user, claimed device, reason).
fn refusals(events: &[Event]) -> Vec<(GroupId, String, cove_wire::DeviceId, LeafRefusal)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Identity(IdentityEvent::LeafRefused {
                group,
                user,
                device,
                reason,
            }) => Some((*group, user.to_string(), *device, reason.clone())),
            _ => None,
        })
        .collect()
}

/// After mallory's forged group `group` (her leaf claiming to be `claimed`'s) reached bob
/// and carol, with a text of hers in it: each refused her leaf once for `reason` and did not
/// take her Welcome. No `Joined` into the group (so none naming `claimed` as the adder),
/// none of her messages, no warning but `expected_warnings`; the group is kept only as a left record without its name
/// (nothing of it is shown), each left the group at the relay (no state, so no leave request
/// to commit), nothing of its log waits (after a reconnection nothing more is reported), and
/// a later text of mallory's in it is ignored without a word. Then a real
/// user can still put bob and carol in a group of their own: carol's `Joined` names bob.
fn assert_forged_welcome_refused(
    net: &mut Net<MemoryStore>,
    group: GroupId,
    (claimed, mallory): (&str, &mut mallory::Mallory),
    [bob, carol]: [usize; 2],
    reason: LeafRefusal,
    expected_warnings: &[&str],
) {
    for slot in [bob, carol] {
        let events = net.take_events(slot);
        assert_eq!(
            refusals(&events),
            [(group, claimed.to_string(), mallory.device, reason.clone())],
            "slot {slot}: {events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::Joined { group: g, .. } if *g == group)),
            "slot {slot}: {events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::Message(m) if m.group == group)),
            "slot {slot}: {events:?}"
        );
        assert_eq!(warnings(&events), expected_warnings, "slot {slot}");
        let infos = net.client(slot).groups();
        let info = infos.iter().find(|g| g.id == group).expect("recorded");
        assert!(!info.active, "slot {slot}: {info:?}");
        assert_eq!(info.name, "", "slot {slot}");
        assert!(info.members.is_empty(), "slot {slot}: {info:?}");
        assert_eq!(net.client(slot).epoch(&group), None, "slot {slot}");
        assert!(
            net.client(slot)
                .history(&group.to_hex())
                .unwrap()
                .is_empty()
        );
    }
    assert!(
        net.relay.store().is_member(group, mallory.device).unwrap(),
        "nobody joined, so nobody removed her"
    );
    // Without the Welcome they hold no state for the group, so each left it at the relay:
    // nothing more of it is delivered to them.
    for slot in [bob, carol] {
        let me = net.client(slot).device().unwrap();
        assert!(
            !net.relay.store().is_member(group, me).unwrap(),
            "slot {slot} still a relay member"
        );
    }
    mallory.send_text(net, "still alice");
    net.run();
    for slot in [bob, carol] {
        net.disconnect(slot);
        net.connect(slot);
    }
    net.run();
    for slot in [bob, carol] {
        let events = net.take_events(slot);
        assert!(
            !events.iter().any(|e| matches!(
                e,
                Event::Message(_) | Event::Warning(_) | Event::Joined { .. }
            )),
            "slot {slot}: {events:?}"
        );
    }
    let now = net.now_ms;
    let op = net.client(bob).create_group(now, "ours").unwrap();
    assert_eq!(op_result(net, bob, op), Ok(()));
    let op = net
        .client(bob)
        .add_users(now, "ours", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(net, bob, op), Ok(()));
    net.client(bob).send_text(now, "ours", "just us").unwrap();
    net.run();
    let events = net.take_events(carol);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Joined { name, by, .. } if name == "ours" && by.as_str() == "bob")),
        "{events:?}"
    );
    assert_eq!(texts(&events), ["just us"]);
}

/// mallory, a member driven by bare openmls, creates a group whose only leaf claims to be
/// alice's (`cove:alice:<mallory's device id>` with mallory's key) and carries no device
/// certificate, adds bob and carol (who know alice) and writes in it: both refuse the leaf
/// and, as it is the adder's, do not take the Welcome (no "joined, added by alice"), and
/// neither shows her text.
#[test]
fn a_leaf_claiming_to_be_alice_without_a_certificate_is_refused_and_its_welcome_not_taken() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    group_of(&mut net, alice, &["bob", "carol"]);
    let mut mallory = mallory::Mallory::register(&mut net.relay, "mallory");
    let group = mallory.create_group_as(&mut net, "forged", "alice", None, &["bob", "carol"]);
    mallory.send_text(&mut net, "hi, it's alice");
    net.run();
    assert_forged_welcome_refused(
        &mut net,
        group,
        ("alice", &mut mallory),
        [bob, carol],
        LeafRefusal::NoCertificate,
        &[],
    );
}

/// The same with a certificate mallory made for "alice" with an identity key of her own:
/// bob and carol never saw alice's list, so they fetch it before taking the Welcome, pin
/// alice's real identity key, and refuse the leaf as certified by another identity (and so
/// the Welcome it sent).
#[test]
fn a_leaf_certified_by_another_identity_than_the_users_is_refused_and_its_welcome_not_taken() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let mut mallory = mallory::Mallory::register(&mut net.relay, "mallory");
    let fake = cove_core::cove_identity::IdentitySigner::new(user("alice"), &[0x66; 32]);
    let key = cove_wire::DeviceKey(mallory.signer.public().try_into().unwrap());
    let name = cove_wire::identity::DeviceName::new("alice's laptop").unwrap();
    let cert = fake
        .create(key, name, 1)
        .unwrap()
        .certificate(&key)
        .unwrap();
    for slot in [bob, carol] {
        assert!(
            net.client(slot)
                .device_list_of(&user("alice"))
                .unwrap()
                .is_none()
        );
    }
    let group =
        mallory.create_group_as(&mut net, "forged", "alice", Some(&cert), &["bob", "carol"]);
    mallory.send_text(&mut net, "hi, it's alice");
    net.run();
    let real = net
        .client(alice)
        .own_device_list()
        .unwrap()
        .unwrap()
        .identity();
    for slot in [bob, carol] {
        let pinned = net.client(slot).device_list_of(&user("alice")).unwrap();
        assert_eq!(pinned.map(|l| l.identity()), Some(real), "slot {slot}");
    }
    assert_forged_welcome_refused(
        &mut net,
        group,
        ("alice", &mut mallory),
        [bob, carol],
        LeafRefusal::OtherIdentity,
        &[],
    );
}

/// alice revokes her second device, which is in two groups with bob: her first device
/// removes it from both at once (each group moves on by one epoch, the device is out of
/// it), bob is told of the revocation once, the revoked device gets nothing sent after
/// (bob's text reaches alice's first device only), and a later add of alice leaves it out.
#[test]
fn a_revoked_device_leaves_every_group_in_the_next_epoch_and_is_not_added_again() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let laptop = linked_device(&mut net, alice, "alice", 61);
    let laptop_key = net.client(laptop).device_key();
    let laptop_device = net.client(laptop).device().unwrap();
    let now = net.now_ms;
    let mut groups = Vec::new();
    for name in ["one", "two"] {
        let op = net.client(alice).create_group(now, name).unwrap();
        assert_eq!(op_result(&mut net, alice, op), Ok(()));
        let op = net
            .client(alice)
            .add_users(now, name, &[user("bob")])
            .unwrap();
        assert_eq!(op_result(&mut net, alice, op), Ok(()));
        groups.push(net.client(alice).resolve(name).unwrap());
    }
    net.run();
    for g in &groups {
        assert!(devices_in(&mut net, bob, g).contains(&("alice".to_string(), laptop_device.0)));
    }
    let epochs: Vec<u64> = groups
        .iter()
        .map(|g| net.client(bob).epoch(g).unwrap())
        .collect();
    for slot in [alice, bob, laptop] {
        net.take_events(slot);
    }
    let inbox_before = net.relay.inbox_of(laptop_device).len();

    let now = net.now_ms;
    net.client(alice).revoke_device(now, &laptop_key).unwrap();
    net.run();
    let revoked = |events: &[Event]| {
        events
            .iter()
            .filter(|e| {
                matches!(e, Event::Identity(IdentityEvent::DeviceRevoked { user, device })
                    if user.as_str() == "alice" && *device == laptop_key)
            })
            .count()
    };
    assert_eq!(revoked(&net.take_events(alice)), 1);
    assert_eq!(revoked(&net.take_events(bob)), 1, "bob is told once");
    let laptop_events = net.take_events(laptop);
    for (g, before) in groups.iter().zip(&epochs) {
        assert_eq!(net.client(bob).epoch(g), Some(before + 1), "the next epoch");
        assert!(!devices_in(&mut net, bob, g).contains(&("alice".to_string(), laptop_device.0)));
        assert!(!net.relay.store().is_member(*g, laptop_device).unwrap());
        assert!(
            laptop_events
                .iter()
                .any(|e| matches!(e, Event::RemovedFromGroup { group } if group == g)),
            "{laptop_events:?}"
        );
    }

    let now = net.now_ms;
    net.client(bob)
        .send_text(now, "one", "after the revocation")
        .unwrap();
    net.run();
    assert_eq!(texts(&net.take_events(alice)), ["after the revocation"]);
    assert!(texts(&net.take_events(laptop)).is_empty());

    // Never added again: not by bob adding alice (an admin: issue 13), not by alice adding
    // her own devices.
    admins::promote(&mut net, alice, "one", &["bob"]);
    let op = net
        .client(bob)
        .add_users(now, "one", &[user("alice")])
        .unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    for op in net.client(alice).add_own_devices_everywhere(now).unwrap() {
        assert_eq!(op_result(&mut net, alice, op), Ok(()));
    }
    net.run();
    assert_eq!(net.relay.inbox_of(laptop_device).len(), inbox_before);
    for g in &groups {
        assert!(!devices_in(&mut net, bob, g).contains(&("alice".to_string(), laptop_device.0)));
    }
}

/// A second device of alice, registered after she is in two groups with bob, is in neither
/// until `add_own_devices_everywhere` adds it to both (one change each); bob is told of the
/// new device once, and a text sent right after reaches it.
#[test]
fn add_own_devices_everywhere_puts_a_new_device_in_every_group() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let now = net.now_ms;
    for name in ["one", "two"] {
        let op = net.client(alice).create_group(now, name).unwrap();
        assert_eq!(op_result(&mut net, alice, op), Ok(()));
        let op = net
            .client(alice)
            .add_users(now, name, &[user("bob")])
            .unwrap();
        assert_eq!(op_result(&mut net, alice, op), Ok(()));
    }
    net.run();
    net.take_events(bob);
    let phone = linked_device(&mut net, alice, "alice", 62);
    assert!(net.client(phone).groups().is_empty());
    let phone_key = net.client(phone).device_key();
    let ops = net.client(alice).add_own_devices_everywhere(now).unwrap();
    assert_eq!(ops.len(), 2);
    for op in ops {
        assert_eq!(op_result(&mut net, alice, op), Ok(()));
    }
    let now = net.now_ms;
    net.client(alice)
        .send_text(now, "one", "right after")
        .unwrap();
    net.run();
    let events = net.take_events(phone);
    let joined = events
        .iter()
        .filter(|e| matches!(e, Event::Joined { .. }))
        .count();
    assert_eq!(joined, 2, "{events:?}");
    assert_eq!(texts(&events), ["right after"]);
    let events = net.take_events(bob);
    let added: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Identity(IdentityEvent::DeviceAdded { user, device, .. }) => {
                Some((user.to_string(), *device))
            }
            _ => None,
        })
        .collect();
    assert_eq!(added, [("alice".to_string(), phone_key)]);
    assert!(
        refusals(&events).is_empty(),
        "the new device's leaf is trusted: {events:?}"
    );
}

/// The same with a leaf claiming to be a device of "zed", a user the relay does not know,
/// certified by an identity key mallory made for him: bob and carol ask for zed's list
/// before taking the Welcome, get none, and refuse the leaf as having no list that
/// certifies it (and so the Welcome it sent).
#[test]
fn a_leaf_of_a_user_without_a_device_list_is_refused_and_its_welcome_not_taken() {
    let mut net = Net::new();
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let mut mallory = mallory::Mallory::register(&mut net.relay, "mallory");
    let fake = cove_core::cove_identity::IdentitySigner::new(user("zed"), &[0x67; 32]);
    let key = cove_wire::DeviceKey(mallory.signer.public().try_into().unwrap());
    let name = cove_wire::identity::DeviceName::new("zed's").unwrap();
    let cert = fake
        .create(key, name, 1)
        .unwrap()
        .certificate(&key)
        .unwrap();
    let group = mallory.create_group_as(&mut net, "zed's", "zed", Some(&cert), &["bob", "carol"]);
    mallory.send_text(&mut net, "hi, it's zed");
    net.run();
    for slot in [bob, carol] {
        assert!(
            net.client(slot)
                .device_list_of(&user("zed"))
                .unwrap()
                .is_none()
        );
    }
    assert_forged_welcome_refused(
        &mut net,
        group,
        ("zed", &mut mallory),
        [bob, carol],
        LeafRefusal::NoList,
        // The relay knows no zed: the list fetch fails, which is what refuses the leaf.
        &["request failed: UnknownUser: unknown user"],
    );
}

/// A linked device whose authorising device has not published the new list entry yet (it
/// was offline) cannot register: the relay refuses `RegisterDevice` of a key the user's
/// signed list does not add (`NotInDeviceList`), so there is never a registered device
/// without a certificate. Once the entry is published it registers, has its certificate at
/// once (no retry pending), uploads KeyPackages carrying it and joins a group.
#[test]
fn a_linked_device_registers_only_once_its_list_entry_is_published() {
    let mut net = Net::new();
    let bob = device(&mut net, "bob");
    net.disconnect(bob);
    let mut laptop = Client::init(MemoryStore::new(), user("bob"), seed(63)).unwrap();
    let now = net.now_ms;
    let (authorizer, authorization) = net
        .client(bob)
        .authorize_device(now, &laptop.device_key())
        .unwrap()
        .unwrap();
    laptop
        .set_device_authorization(authorizer, authorization)
        .unwrap();
    let laptop = net.add(laptop);
    net.nodes[laptop].expect_handle_errors = true;
    net.run();
    assert_eq!(net.client(laptop).device(), None, "not registered");
    assert_eq!(
        net.nodes[laptop].handle_errors,
        [
            "authentication refused: NotInDeviceList: the device is not in the user's signed device list: publish its Add entry first"
        ]
    );
    net.nodes[laptop].expect_handle_errors = false;
    net.disconnect(laptop);

    // bob comes back and publishes the entry; the laptop registers at its next connection.
    net.connect(bob);
    net.run();
    net.connect(laptop);
    net.run();
    let laptop_device = net.client(laptop).device().expect("registered");
    assert!(
        net.relay.stock(laptop_device) > 0,
        "KeyPackages with the certificate"
    );
    assert!(!net.client(laptop).has_pending_ops());
    assert_eq!(net.client(laptop).poll_timeout(), None);
    assert!(warnings(&net.take_events(laptop)).is_empty());
    let now = net.now_ms;
    let op = net.client(bob).create_group(now, "friends").unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    net.run();
    assert!(
        net.take_events(laptop)
            .iter()
            .any(|e| matches!(e, Event::Joined { .. }))
    );
}

/// A message sent while the sender's group log is held (a commit in the backlog adds a
/// device whose certificate is newer than the sender's copy of its user's list, so the list
/// is being fetched) is not posted at the old epoch: it waits for the hold, goes out at the
/// epoch of that commit, and the added device reads it. (Posted at once, the new device
/// could never decrypt it: it joined after that epoch.)
#[test]
fn a_message_sent_while_a_group_waits_for_a_device_list_reaches_the_device_being_added() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let now = net.now_ms;
    let op = net.client(bob).create_group(now, "friends").unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    let op = net
        .client(bob)
        .add_users(now, "friends", &[user("alice")])
        .unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    net.run();
    net.take_events(alice);
    let group = net.client(alice).groups()[0].id;
    let before = net.client(alice).epoch(&group).unwrap();

    // alice is offline while bob links a laptop and adds it to the group.
    net.disconnect(alice);
    let laptop = linked_device(&mut net, bob, "bob", 64);
    let now = net.now_ms;
    for op in net.client(bob).add_own_devices_everywhere(now).unwrap() {
        assert_eq!(op_result(&mut net, bob, op), Ok(()));
    }
    net.run();
    assert_eq!(net.client(laptop).groups().len(), 1);

    // alice comes back: the backlog has the commit adding the laptop, whose certificate is
    // newer than alice's copy of bob's list, so the log is held while she fetches it.
    net.connect(alice);
    for _ in 0..100 {
        net.step();
        if net.nodes[alice]
            .events
            .iter()
            .any(|e| matches!(e, Event::BacklogDone))
        {
            break;
        }
    }
    assert_eq!(
        net.client(alice).epoch(&group),
        Some(before),
        "the commit waits for bob's list"
    );
    let now = net.now_ms;
    net.client(alice)
        .send_text(now, "friends", "sent while held")
        .unwrap();
    net.run();
    assert_eq!(net.client(alice).epoch(&group), Some(before + 1));
    let events = net.take_events(laptop);
    assert_eq!(texts(&events), ["sent while held"], "{events:?}");
    assert_eq!(texts(&net.take_events(bob)), ["sent while held"]);
}
