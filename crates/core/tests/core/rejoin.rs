//! A member that cannot process a commit of its group's log rejoins by an external commit
//! from the relay's public state (issue 10).

use cove_core::cove_store::{MemoryStore, SqliteStore, StorageProvider, Store};
use cove_core::error::Warning;
use cove_core::{Client, Event, IdentityEvent};
use cove_wire::{GroupId, Reply, ServerFrame};
use openmls::prelude::{GroupEpoch, GroupId as MlsGroupId, MlsGroup};

use super::relay::Net;
use super::{device, group_of, op_result, seed, texts, user};

/// Damages `slot`'s state of `group`: deletes the private keys of its leaf for the current
/// epoch, so that it cannot process the next commit (whose path secret is encrypted to
/// them), as a device whose stored state no longer matches the group's.
fn lose_epoch_keys(client: &Client<MemoryStore>, group: GroupId) {
    let epoch = client.epoch(&group).unwrap();
    let leaf = client.own_leaf_index(&group).unwrap();
    client
        .store()
        .delete_encryption_epoch_key_pairs(
            &MlsGroupId::from_slice(&group.0),
            &GroupEpoch::from(epoch),
            leaf,
        )
        .unwrap();
}

fn rejoined(events: &[Event], group: GroupId) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Rejoined {
                group: g,
                unreadable,
            } if *g == group => Some(*unreadable),
            _ => None,
        })
        .collect()
}

fn send<S: Store>(net: &mut Net<S>, slot: usize, text: &str) {
    let now = net.now_ms;
    let op = net.client(slot).send_text(now, "friends", text).unwrap();
    op_result(net, slot, op).unwrap();
}

/// alice and bob in alice's group "friends", their events so far taken.
fn alice_and_bob() -> (Net<MemoryStore>, usize, usize, GroupId) {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(alice);
    net.take_events(bob);
    (net, alice, bob, group)
}

/// alice's next text reaches bob, and bob's answer reaches alice.
fn messages_flow_both_ways<S: Store>(net: &mut Net<S>, alice: usize, bob: usize) {
    send(net, alice, "welcome back");
    net.run();
    assert_eq!(texts(&net.take_events(bob)), vec!["welcome back"]);
    net.take_events(alice);
    send(net, bob, "thanks");
    net.run();
    assert_eq!(texts(&net.take_events(alice)), vec!["thanks"]);
}

/// Bob cannot process alice's key update (his keys of the epoch are gone): he skips it,
/// rejoins by himself (one `Rejoined`, nothing unreadable), alice takes his external commit,
/// both end in the same epoch with the same authenticator and two members (bob's old leaf
/// removed), and messages flow both ways.
#[test]
fn a_member_that_cannot_process_a_commit_rejoins_by_itself() {
    let (mut net, alice, bob, group) = alice_and_bob();
    let start = net.client(alice).epoch(&group).unwrap();

    lose_epoch_keys(net.client(bob), group);
    let now = net.now_ms;
    let op = net.client(alice).update_keys(now, "friends").unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.run();

    let events = net.take_events(bob);
    assert_eq!(rejoined(&events, group), vec![0], "{events:?}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Warning(Warning::EntrySkipped { group: g, .. }) if *g == group
        )),
        "the commit bob could not process is reported: {events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Identity(IdentityEvent::LeafRefused { .. }))),
        "alice's leaf in the relay's tree is trusted: {events:?}"
    );
    // alice's update, then bob's external commit.
    assert_eq!(net.client(alice).epoch(&group), Some(start + 2));
    assert_eq!(net.client(bob).epoch(&group), Some(start + 2));
    assert_eq!(
        net.client(alice).epoch_authenticator(&group),
        net.client(bob).epoch_authenticator(&group)
    );
    assert_eq!(net.client(alice).group_members(&group).len(), 2);
    let alice_events = net.take_events(alice);
    assert!(
        !alice_events.iter().any(|e| matches!(e, Event::Warning(_))),
        "alice takes bob's rejoin without warnings: {alice_events:?}"
    );

    messages_flow_both_ways(&mut net, alice, bob);
}

/// While bob's frames wait, alice updates her keys (bob cannot process it), sends a message
/// and updates again: bob rejoins at the relay's latest epoch, and the message and the
/// second commit, of the epoch he skipped, are dropped and reported as 2 unreadable entries
/// (in the `Rejoined` event and a warning). What alice sends afterwards reaches him.
#[test]
fn a_rejoin_drops_and_reports_the_entries_of_the_skipped_epochs() {
    let (mut net, alice, bob, group) = alice_and_bob();

    lose_epoch_keys(net.client(bob), group);
    net.nodes[bob].hold = true;
    let now = net.now_ms;
    let op = net.client(alice).update_keys(now, "friends").unwrap();
    op_result(&mut net, alice, op).unwrap();
    send(&mut net, alice, "lost");
    let op = net.client(alice).update_keys(now, "friends").unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.nodes[bob].hold = false;
    net.run();

    let events = net.take_events(bob);
    assert_eq!(rejoined(&events, group), vec![2], "{events:?}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Warning(Warning::RejoinDropped { group: g, count: 2 }) if *g == group
        )),
        "{events:?}"
    );
    assert!(texts(&events).is_empty(), "{events:?}");
    assert_eq!(
        net.client(alice).epoch_authenticator(&group),
        net.client(bob).epoch_authenticator(&group)
    );
    send(&mut net, alice, "after");
    net.run();
    assert_eq!(texts(&net.take_events(bob)), vec!["after"]);
}

/// Alice commits again after bob fetched the group's state and before his external commit
/// reaches the relay: the relay refuses it `StaleEpoch`, bob throws that state away, fetches
/// again and rejoins at the newer epoch (one `Rejoined`; alice's second commit, of the epoch
/// he skipped, is the one unreadable entry); both end in the same epoch.
#[test]
fn a_rejoin_that_loses_a_race_fetches_the_state_again() {
    let (mut net, alice, bob, group) = alice_and_bob();
    let start = net.client(alice).epoch(&group).unwrap();

    lose_epoch_keys(net.client(bob), group);
    let now = net.now_ms;
    net.client(alice).update_keys(now, "friends").unwrap();
    // Until the relay's answer to bob's FetchGroupState waits in his inbound.
    let state_served = |net: &Net<MemoryStore>| {
        net.nodes[bob].inbound.iter().any(|f| {
            matches!(
                f,
                ServerFrame::Response {
                    result: Ok(Reply::GroupState { .. }),
                    ..
                }
            )
        })
    };
    while !state_served(&net) {
        assert!(net.step(), "bob never fetched the group's state");
    }
    net.nodes[bob].hold = true;
    let stale_before = net.relay.stale_rejections;
    let op = net.client(alice).update_keys(now, "friends").unwrap();
    op_result(&mut net, alice, op).unwrap();
    net.nodes[bob].hold = false;
    net.run();

    assert_eq!(net.relay.stale_rejections, stale_before + 1);
    let events = net.take_events(bob);
    assert_eq!(rejoined(&events, group), vec![1], "{events:?}");
    assert_eq!(net.client(alice).epoch(&group), Some(start + 3));
    assert_eq!(
        net.client(alice).epoch_authenticator(&group),
        net.client(bob).epoch_authenticator(&group)
    );
    send(&mut net, bob, "back");
    net.run();
    assert!(texts(&net.take_events(alice)).contains(&"back".to_string()));
}

/// Bob's client is closed, and its stored MLS state of the group lost; alice writes
/// meanwhile. Reopened, bob holds the group's record but no state: after the backlog he
/// rejoins by himself, alice's message of the epoch he lost is the one unreadable entry, and
/// messages flow both ways again.
#[test]
fn a_device_whose_group_state_is_missing_rejoins_after_the_backlog() {
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
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);

    net.nodes[bob].client = None;
    net.disconnect(bob);
    {
        let store = SqliteStore::open(&path).unwrap();
        let mut state = MlsGroup::load(&store, &MlsGroupId::from_slice(&group.0))
            .unwrap()
            .unwrap();
        state.delete(&store).unwrap();
    }
    send(&mut net, alice, "while you were away");
    net.take_events(alice);

    let reopened = Client::open(SqliteStore::open(&path).unwrap(), seed(3)).unwrap();
    assert_eq!(
        reopened.epoch(&group),
        None,
        "bob holds no state of the group"
    );
    net.nodes[bob].client = Some(reopened);
    net.connect(bob);
    net.run();

    let events = net.take_events(bob);
    assert_eq!(rejoined(&events, group), vec![1], "{events:?}");
    assert!(texts(&events).is_empty(), "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Warning(Warning::EntriesKept { .. }))),
        "the entries of a group being rejoined are not reported as kept: {events:?}"
    );
    assert_eq!(
        net.client(alice).epoch_authenticator(&group),
        net.client(bob).epoch_authenticator(&group)
    );
    messages_flow_both_ways(&mut net, alice, bob);
}

/// Bob's connection drops while his `FetchGroupState` is answered (the answer is lost with
/// it): after reconnecting he fetches again and rejoins; both end in the same epoch.
#[test]
fn a_rejoin_cut_off_by_a_disconnect_starts_over_after_reconnecting() {
    let (mut net, alice, bob, group) = alice_and_bob();

    lose_epoch_keys(net.client(bob), group);
    let now = net.now_ms;
    net.client(alice).update_keys(now, "friends").unwrap();
    let state_served = |net: &Net<MemoryStore>| {
        net.nodes[bob].inbound.iter().any(|f| {
            matches!(
                f,
                ServerFrame::Response {
                    result: Ok(Reply::GroupState { .. }),
                    ..
                }
            )
        })
    };
    while !state_served(&net) {
        assert!(net.step(), "bob never fetched the group's state");
    }
    net.disconnect(bob);
    net.run();
    assert!(rejoined(&net.nodes[bob].events, group).is_empty());
    net.connect(bob);
    net.run();

    let events = net.take_events(bob);
    assert_eq!(rejoined(&events, group), vec![0], "{events:?}");
    assert_eq!(
        net.client(alice).epoch_authenticator(&group),
        net.client(bob).epoch_authenticator(&group)
    );
    send(&mut net, alice, "welcome back");
    net.run();
    assert_eq!(texts(&net.take_events(bob)), vec!["welcome back"]);
}

/// Bob is offline when alice's key update, which he cannot process, is logged: he meets it
/// in his backlog and rejoins exactly once (one external commit, none refused as stale),
/// ending in alice's epoch.
#[test]
fn a_commit_met_in_the_backlog_starts_exactly_one_rejoin() {
    let (mut net, alice, bob, group) = alice_and_bob();
    let start = net.client(alice).epoch(&group).unwrap();

    net.disconnect(bob);
    lose_epoch_keys(net.client(bob), group);
    let now = net.now_ms;
    let op = net.client(alice).update_keys(now, "friends").unwrap();
    op_result(&mut net, alice, op).unwrap();
    let stale_before = net.relay.stale_rejections;
    net.connect(bob);
    net.run();

    let events = net.take_events(bob);
    assert_eq!(rejoined(&events, group), vec![0], "{events:?}");
    assert_eq!(net.relay.stale_rejections, stale_before);
    assert_eq!(net.client(alice).epoch(&group), Some(start + 2));
    assert_eq!(
        net.client(alice).epoch_authenticator(&group),
        net.client(bob).epoch_authenticator(&group)
    );
}
