//! Device lists at the relay: a device publishes its user's signed list, any authenticated
//! device fetches it, and the relay refuses (with `InvalidRequest` naming the rule) forged
//! entries, another user's list, a first list without the publisher, a rollback and a fork.
//! Real relay on 127.0.0.1:0, real TLS, SQLite.

use std::path::Path;

use cove_identity::{DeviceList, IdentitySigner};
use cove_test_utils::{ClientError, DeviceKeys, SpawnedRelay, TestClient, TestRelay};
use cove_wire::identity::{DeviceName, ListEntry, ListHead, list_entry_message};
use cove_wire::limits::MAX_DEVICE_LIST_ENTRIES;
use cove_wire::{BoundedVec, DeviceKey, ErrorCode, Reply, Request, UserName};

fn name(n: &str) -> DeviceName {
    DeviceName::new(n).unwrap()
}

fn user(n: &str) -> UserName {
    UserName::new(n).unwrap()
}

/// An identity signer of `user` with the secret made of byte `k`.
fn signer(who: &str, k: u8) -> IdentitySigner {
    IdentitySigner::new(user(who), &[k; 32])
}

/// A fresh device key (not registered anywhere).
fn other_key() -> DeviceKey {
    DeviceKeys::generate("other").public_key()
}

async fn publish(client: &mut TestClient, entries: &[ListEntry]) -> Result<ListHead, ClientError> {
    let body = Request::PublishDeviceList {
        entries: BoundedVec(entries.to_vec()),
    };
    match client.call(body).await? {
        Reply::DeviceListHead { head } => Ok(head),
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn fetch(client: &mut TestClient, who: &str) -> Vec<ListEntry> {
    let body = Request::FetchDeviceList { user: user(who) };
    match client.call(body).await.unwrap() {
        Reply::DeviceList { entries } => entries.0,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Asserts the publish is refused with `InvalidRequest` and a message containing `rule`.
async fn assert_refused(client: &mut TestClient, entries: &[ListEntry], rule: &str) {
    match publish(client, entries).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
            assert!(e.message.contains(rule), "{rule:?} not in {:?}", e.message);
        }
        other => panic!("expected a refusal naming {rule:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_published_list_is_served_to_any_device_and_grows_by_appends() {
    let relay = TestRelay::sqlite().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let (mut bob, _) = relay.register("bob").await.unwrap();
    assert_eq!(
        fetch(&mut bob, "alice").await,
        vec![],
        "nothing published yet"
    );

    let id = signer("alice", 1);
    let mut list = id
        .create(alice_keys.public_key(), name("laptop"), 1)
        .unwrap();
    let head = publish(&mut alice, list.entries()).await.unwrap();
    assert_eq!(head, list.head());
    assert_eq!(fetch(&mut bob, "alice").await, list.entries());

    // A later publish carries only the new entry.
    let cert = id.add(&mut list, other_key(), name("phone"), 2).unwrap();
    let head = publish(&mut alice, std::slice::from_ref(&cert.entry))
        .await
        .unwrap();
    assert_eq!(head, list.head());
    assert_eq!(head.index, 2);
    let served = fetch(&mut bob, "alice").await;
    assert_eq!(served, list.entries());
    // What the relay serves verifies and extends the head the reader saw first.
    let verified = DeviceList::verify(&user("alice"), &served).unwrap();
    verified.extends(&head).unwrap();
    assert_eq!(fetch(&mut alice, "bob").await, vec![]);
}

#[tokio::test]
async fn forged_foreign_and_selfless_lists_are_refused_and_change_nothing() {
    let relay = TestRelay::sqlite().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let (mut bob, _) = relay.register("bob").await.unwrap();
    let me = alice_keys.public_key();
    let id = signer("alice", 1);

    // A first list without the publishing device.
    let selfless = id.create(other_key(), name("laptop"), 1).unwrap();
    assert_refused(
        &mut alice,
        selfless.entries(),
        "does not list the publishing device",
    )
    .await;
    // Bob's list (listing alice's device key, signed by bob's identity) published by alice.
    let foreign = signer("bob", 2).create(me, name("laptop"), 1).unwrap();
    assert_refused(&mut alice, foreign.entries(), "another user's list").await;
    // A first list whose Add entry is signed by another key than the identity key.
    let list = id.create(me, name("laptop"), 1).unwrap();
    let mut forged = list.entries().to_vec();
    let mallory = DeviceKeys::generate("alice");
    forged[1].signature = mallory.sign_raw(&list_entry_message(&forged[1].body).unwrap());
    assert_refused(&mut alice, &forged, "not signed by the identity key").await;
    assert_eq!(fetch(&mut bob, "alice").await, vec![]);

    // The valid list is accepted; a forged append to it is refused.
    publish(&mut alice, list.entries()).await.unwrap();
    let mut next = list.clone();
    let cert = id.add(&mut next, other_key(), name("phone"), 2).unwrap();
    let mut entry = cert.entry;
    entry.signature = mallory.sign_raw(&list_entry_message(&entry.body).unwrap());
    assert_refused(&mut alice, &[entry], "not signed by the identity key").await;
    assert_eq!(fetch(&mut bob, "alice").await, list.entries());
}

#[tokio::test]
async fn a_rollback_and_a_fork_of_the_stored_list_are_refused() {
    let relay = TestRelay::sqlite().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let id = signer("alice", 1);
    let base = id
        .create(alice_keys.public_key(), name("laptop"), 1)
        .unwrap();
    publish(&mut alice, base.entries()).await.unwrap();

    // Two branches from the same head: the relay stores branch A's entry 2.
    let mut a = base.clone();
    let a2 = id.add(&mut a, other_key(), name("phone"), 2).unwrap().entry;
    let mut b = base.clone();
    let b2 = id
        .add(&mut b, other_key(), name("tablet"), 2)
        .unwrap()
        .entry;
    let b3 = id.add(&mut b, other_key(), name("desk"), 3).unwrap().entry;
    publish(&mut alice, &[a2]).await.unwrap();

    // Rollback: the older list (entries 0 and 1) sent again.
    assert_refused(&mut alice, base.entries(), "rollback").await;
    // Another entry 2 in place of the stored one.
    assert_refused(&mut alice, std::slice::from_ref(&b2), "rollback").await;
    // Fork: entry 3 of branch B, which does not follow the stored entry 2.
    assert_refused(&mut alice, &[b3], "fork").await;
    assert_eq!(fetch(&mut alice, "alice").await, a.entries());
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove-server"))
}

#[tokio::test]
async fn a_device_list_survives_a_relay_restart() {
    let data = cove_test_utils::temp_dir();
    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let mut alice_keys = DeviceKeys::generate("alice");
    let mut alice = relay.connect().await.unwrap();
    alice.register(&mut alice_keys).await.unwrap();
    let id = signer("alice", 1);
    let mut list = id
        .create(alice_keys.public_key(), name("laptop"), 1)
        .unwrap();
    let head = publish(&mut alice, list.entries()).await.unwrap();
    relay.kill9().unwrap();

    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let mut alice = relay.connect().await.unwrap();
    alice.authenticate(&alice_keys).await.unwrap();
    assert_eq!(fetch(&mut alice, "alice").await, list.entries());
    // The restarted relay still extends the stored chain (and only it).
    let entry = id
        .add(&mut list, other_key(), name("phone"), 2)
        .unwrap()
        .entry;
    let new_head = publish(&mut alice, &[entry]).await.unwrap();
    assert_eq!(new_head, list.head());
    assert_ne!(new_head, head);
    assert_refused(&mut alice, &list.entries()[..2], "rollback").await;
}

#[tokio::test]
async fn device_list_requests_need_authentication_a_known_user_and_bounded_entries() {
    let relay = TestRelay::sqlite().await;
    let mut anonymous = relay.connect().await.unwrap();
    let fetch_alice = Request::FetchDeviceList {
        user: user("alice"),
    };
    let err = anonymous.call(fetch_alice.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));

    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let list = signer("alice", 1)
        .create(alice_keys.public_key(), name("laptop"), 1)
        .unwrap();
    let publish_body = Request::PublishDeviceList {
        entries: BoundedVec(list.entries().to_vec()),
    };
    let err = anonymous.call(publish_body).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));

    let err = alice
        .call(Request::FetchDeviceList {
            user: user("nobody"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownUser));
    assert_refused(&mut alice, &[], "no entries to publish").await;
    let too_many = vec![list.entries()[0].clone(); MAX_DEVICE_LIST_ENTRIES + 1];
    assert_refused(&mut alice, &too_many, "more than 1024 entries").await;
    assert_eq!(fetch(&mut alice, "alice").await, vec![]);
}

/// Publishes verify signatures (up to a whole list's), so they spend the same per-device
/// budget as KeyPackage claims: past it the relay answers `RateLimited` with a retry delay,
/// stores nothing, and serves other requests.
#[tokio::test]
async fn device_list_publishes_are_rate_limited_like_claims() {
    let limits = cove_server::Limits {
        claim_burst: 2,
        claims_per_minute: 1,
        ..cove_test_utils::test_limits()
    };
    let relay = TestRelay::start(cove_server::StoreKind::Memory, limits).await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let id = signer("alice", 1);
    let mut list = id
        .create(alice_keys.public_key(), name("laptop"), 1)
        .unwrap();
    publish(&mut alice, list.entries()).await.unwrap();
    let phone = id.add(&mut list, other_key(), name("phone"), 2).unwrap();
    publish(&mut alice, std::slice::from_ref(&phone.entry))
        .await
        .unwrap();
    let tablet = id.add(&mut list, other_key(), name("tablet"), 3).unwrap();
    match publish(&mut alice, std::slice::from_ref(&tablet.entry)).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited, "{e}");
            assert_eq!(e.message, "too many device-list publishes");
            assert!(e.retry_after_ms.is_some_and(|ms| ms > 0), "{e:?}");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(alice.call(Request::Ping).await.unwrap(), Reply::Pong);
    assert_eq!(
        fetch(&mut alice, "alice").await.len(),
        3,
        "the refused entry was not stored"
    );
}

/// Publishes, from `first`'s connection, a list of `first`'s user signed by identity 1: its
/// `Create`, `first`'s key, then `more`. Returns the signer and the list.
pub async fn publish_signed_list(
    client: &mut TestClient,
    first: &DeviceKeys,
    more: &[DeviceKey],
) -> (IdentitySigner, DeviceList) {
    let id = signer(first.user.as_str(), 1);
    let mut list = id.create(first.public_key(), name("first"), 1).unwrap();
    for (i, key) in more.iter().enumerate() {
        id.add(&mut list, *key, name(&format!("device {i}")), 2)
            .unwrap();
    }
    publish(client, list.entries()).await.unwrap();
    (id, list)
}

/// Asserts `RegisterDevice` of `keys` (authorised by `by`) on `client` is refused with `code`
/// and a message containing `says`.
async fn assert_registration_refused(
    client: &mut TestClient,
    keys: &mut DeviceKeys,
    by: &DeviceKeys,
    code: ErrorCode,
    says: &str,
) {
    match client.register_device(keys, by).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, code, "{e}");
            assert!(e.message.contains(says), "{says:?} not in {:?}", e.message);
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// The relay registers a further device only if the user's signed list adds its key and
/// does not revoke it: a valid authorisation by a registered device is not enough, with no
/// list or with one that does not name the key (`NotInDeviceList`, the challenge stays
/// usable), and a key added and revoked is refused as revoked.
#[tokio::test]
async fn register_device_needs_a_key_the_signed_list_adds() {
    let relay = TestRelay::sqlite().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let mut laptop = DeviceKeys::generate("alice");
    let mut client = relay.connect().await.unwrap();
    let no_list = "not in the user's signed device list";
    assert_registration_refused(
        &mut client,
        &mut laptop,
        &alice_keys,
        ErrorCode::NotInDeviceList,
        no_list,
    )
    .await;
    let (id, mut list) = publish_signed_list(&mut alice, &alice_keys, &[]).await;
    assert_registration_refused(
        &mut client,
        &mut laptop,
        &alice_keys,
        ErrorCode::NotInDeviceList,
        no_list,
    )
    .await;
    // Once listed, the same connection (same challenge) registers it.
    let cert = id
        .add(&mut list, laptop.public_key(), name("laptop"), 3)
        .unwrap();
    publish(&mut alice, &[cert.entry]).await.unwrap();
    let laptop_id = client
        .register_device(&mut laptop, &alice_keys)
        .await
        .unwrap();
    let reply = alice
        .call(Request::ListDevices {
            user: user("alice"),
        })
        .await
        .unwrap();
    let Reply::Devices { devices, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        devices.iter().map(|d| d.device).collect::<Vec<_>>(),
        [alice_keys.id(), laptop_id]
    );

    // Listed, then revoked before it ever registered.
    let mut tablet = DeviceKeys::generate("alice");
    let add = id
        .add(&mut list, tablet.public_key(), name("tablet"), 4)
        .unwrap();
    let revoke = id.revoke(&mut list, tablet.public_key(), 5).unwrap();
    publish(&mut alice, &[add.entry, revoke]).await.unwrap();
    let mut client = relay.connect().await.unwrap();
    assert_registration_refused(
        &mut client,
        &mut tablet,
        &alice_keys,
        ErrorCode::UnknownDevice,
        "revoked",
    )
    .await;
}

/// The per-user cap (16) counts only devices the signed list does not revoke: with 16
/// registered, revoking one lets exactly one new listed device register.
#[tokio::test]
async fn the_device_cap_counts_only_unrevoked_devices() {
    use cove_wire::limits::MAX_DEVICES_PER_USER;
    let relay = TestRelay::memory().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let mut others: Vec<DeviceKeys> = (1..MAX_DEVICES_PER_USER)
        .map(|_| DeviceKeys::generate("alice"))
        .collect();
    let keys: Vec<DeviceKey> = others.iter().map(DeviceKeys::public_key).collect();
    let (id, mut list) = publish_signed_list(&mut alice, &alice_keys, &keys).await;
    for keys in &mut others {
        let mut client = relay.connect().await.unwrap();
        client.register_device(keys, &alice_keys).await.unwrap();
    }
    let count = |reply: Reply| match reply {
        Reply::Devices { devices, .. } => devices.len(),
        other => panic!("{other:?}"),
    };
    let list_devices = || Request::ListDevices {
        user: user("alice"),
    };
    assert_eq!(
        count(alice.call(list_devices()).await.unwrap()),
        MAX_DEVICES_PER_USER
    );
    // Revoke one; list a new device in its place: the relay registers it.
    let revoke = id.revoke(&mut list, others[3].public_key(), 9).unwrap();
    let mut new = DeviceKeys::generate("alice");
    let add = id
        .add(&mut list, new.public_key(), name("new"), 10)
        .unwrap();
    publish(&mut alice, &[revoke, add.entry]).await.unwrap();
    let mut client = relay.connect().await.unwrap();
    client.register_device(&mut new, &alice_keys).await.unwrap();
    assert_eq!(
        count(alice.call(list_devices()).await.unwrap()),
        MAX_DEVICES_PER_USER,
        "16 unrevoked devices in the directory (the revoked one is left out)"
    );
}

/// When a publish revokes a device, its KeyPackages (normal and last-resort) are withdrawn:
/// a claim returns none of them, also of ones it uploads afterwards over a connection that
/// was open before the revoke; the other device's KeyPackages are claimed as before.
#[tokio::test]
async fn a_revoked_devices_key_packages_are_withdrawn() {
    let relay = TestRelay::sqlite().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let mut laptop_keys = DeviceKeys::generate("alice");
    let (id, mut list) =
        publish_signed_list(&mut alice, &alice_keys, &[laptop_keys.public_key()]).await;
    let mut laptop = relay.connect().await.unwrap();
    laptop
        .register_device(&mut laptop_keys, &alice_keys)
        .await
        .unwrap();
    let upload = |tag: &str| Request::UploadKeyPackages {
        key_packages: BoundedVec(vec![
            cove_wire::Payload::from(format!("{tag}-1").into_bytes()),
            cove_wire::Payload::from(format!("{tag}-2").into_bytes()),
        ]),
        last_resort: Some(cove_wire::Payload::from(format!("{tag}-lr").into_bytes())),
    };
    alice.call(upload("alice")).await.unwrap();
    laptop.call(upload("laptop")).await.unwrap();

    let revoke = id.revoke(&mut list, laptop_keys.public_key(), 3).unwrap();
    publish(&mut alice, &[revoke]).await.unwrap();
    laptop.call(upload("late")).await.unwrap();

    let (mut bob, _) = relay.register("bob").await.unwrap();
    let mut claimed = Vec::new();
    for _ in 0..4 {
        let reply = bob
            .call(Request::ClaimKeyPackages {
                user: user("alice"),
            })
            .await
            .unwrap();
        let Reply::KeyPackages { key_packages, .. } = reply else {
            panic!("{reply:?}")
        };
        for kp in key_packages.0 {
            assert_eq!(kp.device, alice_keys.id(), "only alice's unrevoked device");
            claimed.push(String::from_utf8(kp.key_package.into_vec()).unwrap());
        }
    }
    assert_eq!(claimed, ["alice-1", "alice-2", "alice-lr", "alice-lr"]);
}
