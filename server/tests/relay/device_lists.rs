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
