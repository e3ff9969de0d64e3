//! Group admins (issue 13 item 2): the creator's user is the only admin; admins promote and
//! demote (commits every member sees as `GroupChanged`); only admins add or remove other
//! users' devices; every member refuses a non-admin's removal of another user's device even
//! when the relay lets it through; the last admin leaving hands admin on first.

use cove_core::error::{EntryError, Warning};
use cove_core::{CommandError, Event, GroupChange};
use cove_wire::{BoundedVec, Payload, PostKind};
use openmls::prelude::LeafNodeIndex;

use super::mallory::Mallory;
use super::relay::Net;
use super::{device, group_of, op_result, user};

/// `admin` promotes each of `users` in `group` (each a completed commit).
pub fn promote<S: cove_core::cove_store::Store>(
    net: &mut Net<S>,
    admin: usize,
    group: &str,
    users: &[&str],
) {
    for u in users {
        let now = net.now_ms;
        let op = net.client(admin).promote(now, group, &user(u)).unwrap();
        assert_eq!(op_result(net, admin, op), Ok(()), "promote {u}");
    }
    net.run();
}

/// The `GroupChanged` admin sets among `events`, with who changed them.
fn admin_changes(events: &[Event]) -> Vec<(String, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::GroupChanged {
                by,
                change: GroupChange::Admins(admins),
                ..
            } => Some((
                by.to_string(),
                admins.iter().map(|a| a.to_string()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// The creator's user is the group's only admin on every member (`group_admins` and
/// `GroupInfo::admins`); a member that is no admin is refused `NotAdmin` locally for adding
/// or removing other users, promoting and demoting; the only admin cannot demote itself
/// (`LastAdmin`), nor promote a non-member (`NotGroupMember`).
#[test]
fn the_creator_is_the_only_admin_and_the_others_are_refused_locally() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let _dave = device(&mut net, "dave");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    for slot in [alice, bob, carol] {
        assert_eq!(net.client(slot).group_admins(&group), [user("alice")]);
        let info = net.client(slot).groups();
        assert_eq!(info[0].admins, [user("alice")], "slot {slot}");
    }
    let now = net.now_ms;
    let c = net.client(bob);
    assert!(matches!(
        c.remove_users(now, "friends", &[user("carol")]),
        Err(CommandError::NotAdmin(g)) if g == "friends"
    ));
    assert!(matches!(
        c.add_users(now, "friends", &[user("dave")]),
        Err(CommandError::NotAdmin(_))
    ));
    assert!(matches!(
        c.promote(now, "friends", &user("bob")),
        Err(CommandError::NotAdmin(_))
    ));
    assert!(matches!(
        c.demote(now, "friends", &user("alice")),
        Err(CommandError::NotAdmin(_))
    ));
    let c = net.client(alice);
    assert!(matches!(
        c.demote(now, "friends", &user("alice")),
        Err(CommandError::LastAdmin(_))
    ));
    assert!(matches!(
        c.promote(now, "friends", &user("dave")),
        Err(CommandError::NotGroupMember(u)) if u == user("dave")
    ));
}

/// alice promotes bob: every member (alice included) sees `GroupChanged` with the new
/// admins, and bob may then remove carol; alice demotes bob: every member sees it, and bob
/// is refused `NotAdmin` again.
#[test]
fn a_promoted_member_removes_others_and_a_demoted_one_no_longer_can() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let _dave = device(&mut net, "dave");
    let group = group_of(&mut net, alice, &["bob", "carol", "dave"]);
    for slot in [alice, bob, carol] {
        net.take_events(slot);
    }
    promote(&mut net, alice, "friends", &["bob"]);
    let both = (
        "alice".to_string(),
        vec!["alice".to_string(), "bob".to_string()],
    );
    for slot in [alice, bob, carol] {
        let events = net.take_events(slot);
        assert_eq!(
            admin_changes(&events),
            std::slice::from_ref(&both),
            "slot {slot}"
        );
        assert_eq!(
            net.client(slot).group_admins(&group),
            [user("alice"), user("bob")]
        );
    }

    let now = net.now_ms;
    let op = net
        .client(bob)
        .remove_users(now, "friends", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
    assert!(
        net.take_events(carol)
            .iter()
            .any(|e| matches!(e, Event::RemovedFromGroup { group: g } if *g == group))
    );

    let op = net
        .client(alice)
        .demote(now, "friends", &user("bob"))
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    let only = ("alice".to_string(), vec!["alice".to_string()]);
    for slot in [alice, bob] {
        let events = net.take_events(slot);
        assert_eq!(
            admin_changes(&events),
            std::slice::from_ref(&only),
            "slot {slot}"
        );
    }
    assert!(matches!(
        net.client(bob)
            .remove_users(now, "friends", &[user("dave")]),
        Err(CommandError::NotAdmin(_))
    ));
    // A demote of someone who is no admin changes nothing (no commit).
    let epoch = net.client(alice).epoch(&group);
    let op = net
        .client(alice)
        .demote(now, "friends", &user("bob"))
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    assert_eq!(net.client(alice).epoch(&group), epoch);
}

/// A member that is no admin (mallory, driving bare openmls) commits the removal of bob
/// through a relay that does not validate handshakes: alice and bob both skip the commit
/// with `EntryError::NotAdmin`, stay at their epoch, and bob is not removed.
#[test]
fn every_member_refuses_a_non_admins_removal_the_relay_let_through() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let mut mallory = Mallory::register(&mut net.relay, "mallory");
    let group = group_of(&mut net, alice, &["bob", "mallory"]);
    mallory.join(&net.relay);
    for slot in [alice, bob] {
        net.take_events(slot);
    }
    let epoch = net.client(alice).epoch(&group).unwrap();
    let bob_device = net.client(bob).device().unwrap();
    let bob_leaf = net.client(bob).own_leaf_index(&group).unwrap();

    let mls = mallory.group.as_mut().unwrap();
    let (commit, _, gi) = mls
        .remove_members(
            &mallory.provider,
            &mallory.signer,
            &[LeafNodeIndex::new(bob_leaf)],
        )
        .unwrap();
    mls.merge_pending_commit(&mallory.provider).unwrap();
    let kind = PostKind::Commit {
        added: BoundedVec(Vec::new()),
        removed: BoundedVec(vec![bob_device]),
        welcome: None,
        group_info: Payload(
            openmls::prelude::MlsMessageOut::from(gi.unwrap())
                .to_bytes()
                .unwrap(),
        ),
    };
    net.relay.set_validate_handshakes(false);
    let now = net.now_ms;
    let frames = net
        .relay
        .post_raw(group, mallory.device, kind, commit.to_bytes().unwrap(), now);
    net.deliver(frames);
    net.run();
    for slot in [alice, bob] {
        let events = net.take_events(slot);
        let refused = events.iter().any(|e| {
            matches!(e, Event::Warning(Warning::EntrySkipped { reason, .. })
                if matches!(&**reason, EntryError::NotAdmin { user: u, .. } if u.as_str() == "mallory"))
        });
        assert!(refused, "slot {slot}: {events:?}");
        assert!(
            !events.iter().any(|e| matches!(
                e,
                Event::RemovedFromGroup { .. } | Event::MembersChanged { .. }
            )),
            "slot {slot}: {events:?}"
        );
        assert_eq!(net.client(slot).epoch(&group), Some(epoch), "slot {slot}");
    }
}

/// alice, the only admin, leaves: she hands admin to the longest-standing other member
/// (bob, added first) before her leave request, so bob and carol end with bob as the
/// group's admin, alice's leaf removed, and the same epoch.
#[test]
fn the_last_admin_leaving_hands_admin_to_the_longest_standing_member() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob"]);
    let now = net.now_ms;
    let op = net
        .client(alice)
        .add_users(now, "friends", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();

    let op = net.client(alice).leave(now, "friends").unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    assert!(!net.client(alice).groups()[0].active, "alice left");
    for slot in [bob, carol] {
        let c = net.client(slot);
        assert_eq!(c.group_admins(&group), [user("bob")], "slot {slot}");
        let info = c.groups();
        assert_eq!(info[0].members, [user("bob"), user("carol")], "slot {slot}");
    }
    assert_eq!(
        net.client(bob).epoch(&group),
        net.client(carol).epoch(&group)
    );
    // bob, now the admin, removes carol.
    let op = net
        .client(bob)
        .remove_users(now, "friends", &[user("carol")])
        .unwrap();
    assert_eq!(op_result(&mut net, bob, op), Ok(()));
}
