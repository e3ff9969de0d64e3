//! `cove login` on a new machine (issue 11 item 3): a user whose account has a password
//! logs in from a fresh home; the new device takes the identity key from the account
//! bundle, adds itself to the signed device list, registers, and joins every group of its
//! user by an external commit, which the other members accept as the user's new device.

use cove::{Device, DeviceError, Event, GroupId, UserName};
use cove_core::IdentityEvent;
use cove_core::cove_store::Store as _;
use cove_test_utils::{TestClient, client_tls_config_from_pem_file, register_account};

use crate::support::*;

/// The password of the test accounts.
const PASSWORD: &[u8] = b"correct horse battery staple";

/// Registers a password account for the user of the first device in `net`'s home `home`
/// (closed: its connection would displace this one) over a raw connection authenticated as
/// that device (the home opened offline signs the challenge), with the identity key its
/// store holds.
pub async fn give_account(net: &Net, home: &str, password: &[u8]) {
    let device = Device::open_offline(&net.home(home)).await.unwrap();
    let seed = device
        .session()
        .call(|c| c.store().user_identity())
        .await
        .unwrap()
        .unwrap()
        .expect("the first device holds the identity key");
    let tls = client_tls_config_from_pem_file(&net.ca).unwrap();
    let url = format!("{}{}", net.server, cove_wire::WS_PATH);
    let mut raw = TestClient::connect(&url, tls).await.unwrap();
    let (nonce, channel) = (raw.nonce(), raw.channel());
    let auth = device
        .session()
        .call(move |c| c.side_authentication(&nonce, &channel))
        .await
        .unwrap()
        .expect("registered");
    raw.call(auth).await.unwrap();
    register_account(&mut raw, device.user(), password, *seed.secret_key)
        .await
        .unwrap();
    raw.close().await;
    device.close().await;
}

/// Logs in as `user` with `password` in `net`'s home `home`.
async fn login(net: &Net, home: &str, user: &str, password: &[u8]) -> Result<Device, DeviceError> {
    Device::login(
        &net.home(home),
        &net.server,
        UserName::new(user).unwrap(),
        password,
        Some(&net.ca),
    )
    .await
}

/// Alice (first device, with a password account) and bob share two groups; alice's first
/// device is offline. `login` as alice on a fresh home makes a device that is in both
/// groups (same ids, placeholder names, both users as members); bob sees "alice added a
/// device" (`DeviceAdded` for alice) and, up to the laptop's last message, no membership
/// change, key or identity change, refused leaf or unlisted-device warning; the safety
/// number he sees for alice is unchanged;
/// the new device reads bob's new messages in both groups, and bob reads its messages as
/// alice's, from the new device. The new device holds the identity key (it links a further
/// device) and a group's placeholder name can be set locally (not to another group's name,
/// nor empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_on_a_new_machine_joins_the_users_groups_as_a_new_device() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    for g in ["friends", "work"] {
        alice.create_group(g).await.unwrap();
        alice.add_users(g, &names(&["bob"])).await.unwrap();
        joined(&mut bob).await;
    }
    let alice_name = UserName::new("alice").unwrap();
    let safety_before = bob.safety_number(&alice_name).await.unwrap();
    let mut ids: Vec<GroupId> = Vec::new();
    for g in ["friends", "work"] {
        ids.push(group_id(&alice, g).await);
    }
    ids.sort();
    alice.close().await;
    give_account(&net, "alice", PASSWORD).await;

    let mut laptop = login(&net, "alice-laptop", "alice", PASSWORD)
        .await
        .unwrap();
    assert_eq!(laptop.user().as_str(), "alice");
    let groups = laptop.groups().await.unwrap();
    let mut joined_ids: Vec<GroupId> = groups
        .iter()
        .map(|g| GroupId::from_hex(&g.id).unwrap())
        .collect();
    joined_ids.sort();
    assert_eq!(joined_ids, ids);
    for g in &groups {
        let id = GroupId::from_hex(&g.id).unwrap();
        assert_eq!(g.name, cove_core::placeholder_name(&id));
        assert_eq!(g.members, ["alice", "bob"]);
    }

    // Everything bob's device reports from here to the laptop's last message (which comes
    // after both joins in the groups' logs): the joins are a device added, nothing else.
    let mut unexpected: Vec<Event> = Vec::new();
    let mut note = |e: &Event| {
        if matches!(
            e,
            Event::MembersChanged { .. }
                | Event::KeyChanged { .. }
                | Event::Identity(IdentityEvent::IdentityChanged { .. })
                | Event::Identity(IdentityEvent::LeafRefused { .. })
                | Event::Warning(cove_core::error::Warning::NewDevice { .. })
        ) {
            unexpected.push(e.clone());
        }
    };
    until(&mut bob, "alice added a device", |e| {
        note(e);
        matches!(e, Event::Identity(IdentityEvent::DeviceAdded { user, .. }) if user.as_str() == "alice")
    })
    .await;
    assert_eq!(
        bob.safety_number(&alice_name).await.unwrap(),
        safety_before,
        "a new device of alice leaves her safety number as it was"
    );

    for (i, g) in ["friends", "work"].into_iter().enumerate() {
        let text = format!("hello alice's laptop in {g}");
        bob.send_text(g, &text).await.unwrap();
        let got = until(
            &mut laptop,
            "bob's message",
            |e| matches!(e, Event::Message(m) if m.from.as_str() == "bob"),
        )
        .await;
        let last = got.last().unwrap();
        assert_eq!(last.text, text);
        assert_eq!(last.group, group_id(&bob, g).await);
        let id = group_id(&bob, g).await;
        laptop
            .send_text(&id.to_hex(), &format!("from the laptop {i}"))
            .await
            .unwrap();
        let seen = until(&mut bob, "the laptop's message", |e| {
            note(e);
            matches!(e, Event::Message(m) if m.text == format!("from the laptop {i}"))
        })
        .await;
        let last = seen.last().unwrap();
        assert_eq!(last.from.as_str(), "alice");
        assert_eq!(last.from_device, laptop.device_id().unwrap());
        assert_eq!(last.group, id);
    }
    assert!(
        unexpected.is_empty(),
        "bob saw more than a device added: {unexpected:?}"
    );

    // The laptop holds the identity key: it links a further device (signing its list entry)
    // and names a group joined under a placeholder.
    let tablet = Device::link(&laptop, &net.home("alice-tablet"))
        .await
        .unwrap();
    assert_eq!(tablet.user().as_str(), "alice");
    let friends = group_id(&bob, "friends").await.to_hex();
    let named = friends.clone();
    laptop
        .session()
        .call(move |c| c.set_group_name(&named, "friends"))
        .await
        .unwrap()
        .unwrap();
    let names_now: Vec<(String, String)> = laptop
        .groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.id, g.name))
        .collect();
    assert!(
        names_now.contains(&(friends, "friends".to_owned())),
        "{names_now:?}"
    );
    // Another group cannot take the same name, and a name is 1..=MAX_GROUP_NAME bytes.
    let work = group_id(&bob, "work").await.to_hex();
    for (name, refused) in [("friends", "duplicate"), ("", "empty")] {
        let work = work.clone();
        let result = laptop
            .session()
            .call(move |c| c.set_group_name(&work, name))
            .await
            .unwrap();
        match (refused, result) {
            ("duplicate", Err(cove_core::CommandError::DuplicateGroupName(n))) => {
                assert_eq!(n, "friends")
            }
            ("empty", Err(cove_core::CommandError::Invalid(_))) => {}
            (_, other) => panic!("{refused} name: {other:?}"),
        }
    }
    for d in [tablet, laptop, bob] {
        d.close().await;
    }
}

/// A wrong password fails with `LoginFailed` and leaves no home behind (the directory is
/// not there); a user without an account fails the same way. The right password then works
/// in the same home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_with_login_failed_and_leaves_no_home() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let bob = net.user("bob").await;
    alice.close().await;
    give_account(&net, "alice", PASSWORD).await;

    let wrong = login(&net, "alice-laptop", "alice", b"not the password").await;
    assert!(
        matches!(wrong, Err(DeviceError::LoginFailed)),
        "{:?}",
        wrong.err()
    );
    assert!(!net.home("alice-laptop").dir().exists());
    let no_account = login(&net, "bob-laptop", "bob", PASSWORD).await;
    assert!(
        matches!(no_account, Err(DeviceError::LoginFailed)),
        "{:?}",
        no_account.err()
    );
    assert!(!net.home("bob-laptop").dir().exists());

    let laptop = login(&net, "alice-laptop", "alice", PASSWORD)
        .await
        .unwrap();
    assert!(net.home("alice-laptop").is_initialised());
    laptop.close().await;
    bob.close().await;
}

/// With alice's first device online while she logs in on a new machine: the first device
/// sees its user's list gain the laptop and the laptop's external joins, and whichever way
/// the laptop ends up in the groups (its own join, or the first device's add), it is in
/// both, and a message from the laptop reaches both bob and alice's first device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_while_the_first_device_is_online_ends_in_every_group() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    for g in ["friends", "work"] {
        alice.create_group(g).await.unwrap();
        alice.add_users(g, &names(&["bob"])).await.unwrap();
        joined(&mut bob).await;
    }
    let friends = group_id(&alice, "friends").await;
    alice.close().await;
    give_account(&net, "alice", PASSWORD).await;
    let mut alice = Device::open(&net.home("alice")).await.unwrap();
    alice.settle().await.unwrap();

    let laptop = login(&net, "alice-laptop", "alice", PASSWORD)
        .await
        .unwrap();
    assert_eq!(laptop.groups().await.unwrap().len(), 2);
    laptop
        .send_text(&friends.to_hex(), "from the laptop")
        .await
        .unwrap();
    for d in [&mut bob, &mut alice] {
        let seen = until(
            d,
            "the laptop's message",
            |e| matches!(e, Event::Message(m) if m.text == "from the laptop"),
        )
        .await;
        assert_eq!(
            seen.last().unwrap().from_device,
            laptop.device_id().unwrap()
        );
    }
    for d in [laptop, alice, bob] {
        d.close().await;
    }
}
