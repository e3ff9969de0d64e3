//! Group admins end to end (issue 13 item 2): three users through a real relay that
//! validates handshakes. A member that is no admin is refused removing another; once
//! promoted, it removes; the creator, the only admin, leaving hands admin on so the group
//! keeps one.

use cove::{DeviceError, Event};
use cove_core::{CommandError, GroupChange};

use crate::support::{Net, group_id, joined, names, until};

/// Waits until `device` sees the admins of a group change to `admins`.
async fn admins_become(device: &mut cove::Device, admins: &[&str]) {
    let want = names(admins);
    until(
        device,
        &format!("admins {admins:?}"),
        |e| matches!(e, Event::GroupChanged { change: GroupChange::Admins(a), .. } if *a == want),
    )
    .await;
}

/// bob, no admin, is refused (`NotAdmin`) removing carol; alice promotes bob, every member
/// sees it, and bob then removes carol (carol is told she was removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admins_remove_is_refused_and_a_promoted_member_removes() {
    let net = Net::sqlite().await;
    let mut alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let mut carol = net.user("carol").await;
    alice.create_group("g").await.unwrap();
    alice
        .add_users("g", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    let group = group_id(&bob, "g").await;

    let refused = bob.remove_users("g", &names(&["carol"])).await;
    assert!(
        matches!(refused, Err(DeviceError::Command(CommandError::NotAdmin(ref g))) if g == "g"),
        "{refused:?}"
    );

    alice.promote("g", &names(&["bob"])[0]).await.unwrap();
    admins_become(&mut alice, &["alice", "bob"]).await;
    admins_become(&mut bob, &["alice", "bob"]).await;
    admins_become(&mut carol, &["alice", "bob"]).await;

    bob.remove_users("g", &names(&["carol"])).await.unwrap();
    until(
        &mut carol,
        "her removal",
        |e| matches!(e, Event::RemovedFromGroup { group: g } if *g == group),
    )
    .await;
}

/// alice, the creator and only admin, leaves: bob (the longest-standing other member)
/// becomes the admin on bob's and carol's devices, and bob's removal of carol then passes
/// the relay and carol's device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_creator_leaving_leaves_the_group_an_admin() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let mut carol = net.user("carol").await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    alice.add_users("g", &names(&["carol"])).await.unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    let group = group_id(&bob, "g").await;

    alice.leave("g").await.unwrap();
    admins_become(&mut bob, &["bob"]).await;
    admins_become(&mut carol, &["bob"]).await;
    // alice's leaf goes (bob, now the admin, commits it).
    until(
        &mut carol,
        "alice's removal",
        |e| matches!(e, Event::MembersChanged { removed, .. } if *removed == names(&["alice"])),
    )
    .await;
    let admins = bob
        .session()
        .call(move |c| c.group_admins(&group))
        .await
        .unwrap();
    assert_eq!(admins, names(&["bob"]));

    bob.remove_users("g", &names(&["carol"])).await.unwrap();
    until(
        &mut carol,
        "her removal",
        |e| matches!(e, Event::RemovedFromGroup { group: g } if *g == group),
    )
    .await;
}
