//! Last seen: the relay records when each device last authenticated (or registered) and
//! tells only the device's own user (`ListOwnDevices`); the directory (`ListDevices`) that
//! any user reads carries no times. Real relay on 127.0.0.1:0, real TLS, SQLite.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cove_test_utils::{DeviceKeys, TestClient, TestRelay};
use cove_wire::{DeviceInfo, ErrorCode, OwnDevice, Reply, Request, UserName};

use crate::device_lists::publish_signed_list;

/// Wall-clock ms, as the relay stamps them.
fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// Waits (with an overall deadline, only to stop a hung test) until the wall clock is past
/// `ms`, so that a later login is stamped later than `ms`.
async fn wait_past(ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while now_ms() <= ms {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clock did not move"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn own_devices(client: &mut TestClient) -> Vec<OwnDevice> {
    match client.call(Request::ListOwnDevices).await.unwrap() {
        Reply::OwnDevices { devices } => devices.0,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn last_seen(devices: &[OwnDevice], keys: &DeviceKeys) -> u64 {
    let d = devices
        .iter()
        .find(|d| d.device == keys.id())
        .unwrap_or_else(|| panic!("{:?} not in {devices:?}", keys.id()));
    d.last_seen_ms
        .expect("a device that logged in has a last seen time")
}

/// A device's last seen is its registration time, then moves forward at each login (of a
/// later millisecond) and only for that device; the other device of the user keeps its own.
#[tokio::test]
async fn last_seen_moves_forward_at_each_login_of_a_device() {
    let relay = TestRelay::sqlite().await;
    let before = now_ms();
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let after = now_ms();
    let devices = own_devices(&mut alice).await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(
        (devices[0].device, devices[0].key, devices[0].revoked),
        (alice_keys.id(), alice_keys.public_key(), false)
    );
    let registered = last_seen(&devices, &alice_keys);
    assert!(
        (before..=after).contains(&registered),
        "{registered} not in {before}..={after}"
    );

    let mut laptop_keys = DeviceKeys::generate("alice");
    publish_signed_list(&mut alice, &alice_keys, &[laptop_keys.public_key()]).await;
    wait_past(registered).await;
    let mut laptop = relay.connect().await.unwrap();
    laptop
        .register_device(&mut laptop_keys, &alice_keys)
        .await
        .unwrap();
    let devices = own_devices(&mut laptop).await;
    let laptop_registered = last_seen(&devices, &laptop_keys);
    assert!(laptop_registered > registered);
    assert_eq!(
        last_seen(&devices, &alice_keys),
        registered,
        "alice's phone did not log in"
    );

    for _ in 0..2 {
        let previous = last_seen(&own_devices(&mut laptop).await, &alice_keys);
        wait_past(previous).await;
        let before = now_ms();
        let mut again = relay.login(&alice_keys).await.unwrap();
        let after = now_ms();
        let devices = own_devices(&mut again).await;
        let seen = last_seen(&devices, &alice_keys);
        assert!(seen > previous, "{seen} not after {previous}");
        assert!(
            (before..=after).contains(&seen),
            "{seen} not in {before}..={after}"
        );
        assert_eq!(last_seen(&devices, &laptop_keys), laptop_registered);
        again.close().await;
    }
}

/// Another user learns no one's last seen: `ListOwnDevices` answers with the asker's own
/// devices only, and the directory of alice that bob reads is exactly ids and keys.
/// Unauthenticated, the request is refused.
#[tokio::test]
async fn another_user_gets_no_last_seen_values() {
    let relay = TestRelay::sqlite().await;
    let (_alice, alice_keys) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();

    let bobs = own_devices(&mut bob).await;
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert_eq!(
        (bobs[0].device, bobs[0].key, bobs[0].revoked),
        (bob_keys.id(), bob_keys.public_key(), false)
    );

    let alice = UserName::new("alice").unwrap();
    let reply = bob
        .call(Request::ListDevices {
            user: alice.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        reply,
        Reply::Devices {
            user: alice,
            devices: cove_wire::BoundedVec(vec![DeviceInfo {
                device: alice_keys.id(),
                key: alice_keys.public_key(),
            }]),
        }
    );

    let mut anonymous = relay.connect().await.unwrap();
    let err = anonymous.call(Request::ListOwnDevices).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
}

/// A device the user's signed list revokes stays in its user's own list, marked revoked,
/// with the last seen of its last login.
#[tokio::test]
async fn a_revoked_device_is_listed_as_revoked_with_its_last_seen() {
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
    let seen = last_seen(&own_devices(&mut alice).await, &laptop_keys);

    let revoke = id.revoke(&mut list, laptop_keys.public_key(), 3).unwrap();
    let body = Request::PublishDeviceList {
        entries: cove_wire::BoundedVec(vec![revoke]),
    };
    alice.call(body).await.unwrap();
    let devices = own_devices(&mut alice).await;
    let flags: Vec<_> = devices.iter().map(|d| (d.device, d.revoked)).collect();
    assert_eq!(
        flags,
        vec![(alice_keys.id(), false), (laptop_keys.id(), true)]
    );
    assert_eq!(last_seen(&devices, &laptop_keys), seen);
    // A refused login of the revoked device is no login: its last seen stays.
    let Err(err) = relay.login(&laptop_keys).await else {
        panic!("the revoked device logged in");
    };
    assert_eq!(err.code(), Some(ErrorCode::UnknownDevice));
    assert_eq!(
        last_seen(&own_devices(&mut alice).await, &laptop_keys),
        seen
    );
}
