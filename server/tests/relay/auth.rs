//! Registration and challenge-response authentication.

use cove_test_utils::DeviceKeys;
use cove_wire::{DeviceId, ErrorCode, Reply, Request, ServerFrame};

use crate::relay;

#[tokio::test]
async fn register_then_authenticate_on_a_new_connection() {
    let relay = relay().await;
    let (first, alice) = relay.register("alice").await.unwrap();
    first.close().await;
    let mut again = relay.login(&alice).await.unwrap();
    assert_eq!(again.device, alice.device);
    let reply = again
        .call(Request::ListDevices {
            user: alice.user.clone(),
        })
        .await
        .unwrap();
    let Reply::Devices { devices, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device, alice.id());
    assert_eq!(devices[0].key, alice.public_key());
}

#[tokio::test]
async fn a_taken_user_name_is_refused() {
    let relay = relay().await;
    let (_alice, _) = relay.register("alice").await.unwrap();
    let err = relay.register("alice").await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::UserTaken));
}

#[tokio::test]
async fn a_bad_signature_is_refused_and_the_connection_closed() {
    let relay = relay().await;
    let mut client = relay.connect().await.unwrap();
    let alice = DeviceKeys::generate("alice");
    let mallory = DeviceKeys::generate("alice");
    // Signed by a different key than the one registered.
    let body = Request::Register {
        user: alice.user.clone(),
        key: alice.public_key(),
        signature: mallory.sign_challenge(&client.nonce(), &client.channel()),
    };
    let err = client.call(body).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::AuthenticationFailed));
    let (_, closing) = client.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::AuthenticationFailed));
    // Nothing was registered: the name is still free.
    relay.register("alice").await.unwrap();
}

#[tokio::test]
async fn a_signature_over_the_wrong_nonce_is_refused() {
    let relay = relay().await;
    let (first, alice) = relay.register("alice").await.unwrap();
    first.close().await;
    let mut client = relay.connect().await.unwrap();
    let body = Request::Authenticate {
        user: alice.user.clone(),
        device: alice.id(),
        signature: alice.sign_challenge(&[7u8; 32], &client.channel()),
    };
    let err = client.call(body).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::AuthenticationFailed));
}

#[tokio::test]
async fn a_replayed_challenge_response_is_refused() {
    let relay = relay().await;
    let (first, alice) = relay.register("alice").await.unwrap();
    first.close().await;
    // A valid response, observed on connection A...
    let mut a = relay.connect().await.unwrap();
    let response = Request::Authenticate {
        user: alice.user.clone(),
        device: alice.id(),
        signature: alice.sign_challenge(&a.nonce(), &a.channel()),
    };
    // ...replayed on connection B, whose challenge differs.
    let mut b = relay.connect().await.unwrap();
    assert_ne!(a.nonce(), b.nonce());
    let err = b.call(response.clone()).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::AuthenticationFailed));
    // On A it was good (so the refusal is the replay, not the signature).
    assert!(matches!(
        a.call(response.clone()).await.unwrap(),
        Reply::Authenticated { .. }
    ));
    // And it cannot be used twice on A either.
    let err = a.call(response).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::AlreadyAuthenticated));
}

/// The answer to a challenge signs the TLS connection and the relay's certificate too: the
/// right nonce signed with another connection's exporter value (what a relay in the middle
/// would forward), or with another relay certificate, is refused `AuthenticationFailed` and
/// the connection closed with it; the same key signing its own connection's binding gets in.
#[tokio::test]
async fn a_challenge_answer_bound_to_another_tls_channel_is_refused() {
    let relay = relay().await;
    let (first, alice) = relay.register("alice").await.unwrap();
    first.close().await;
    let authenticate = |signature| Request::Authenticate {
        user: alice.user.clone(),
        device: alice.id(),
        signature,
    };

    let other = relay.connect().await.unwrap();
    let mut client = relay.connect().await.unwrap();
    assert_ne!(other.channel().exporter, client.channel().exporter);
    assert_eq!(
        other.channel().relay_certificate,
        client.channel().relay_certificate
    );
    let forwarded = alice.sign_challenge(&client.nonce(), &other.channel());
    let err = client.call(authenticate(forwarded)).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::AuthenticationFailed));
    let (_, closing) = client.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::AuthenticationFailed));

    let mut client = relay.connect().await.unwrap();
    let another_relay = cove_wire::sign::ChannelBinding {
        relay_certificate: [0xaa; 32],
        ..client.channel()
    };
    let signature = alice.sign_challenge(&client.nonce(), &another_relay);
    let err = client.call(authenticate(signature)).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::AuthenticationFailed));
    let (_, closing) = client.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::AuthenticationFailed));

    let mut client = relay.connect().await.unwrap();
    let own = alice.sign_challenge(&client.nonce(), &client.channel());
    assert_eq!(
        client.call(authenticate(own)).await.unwrap(),
        Reply::Authenticated { device: alice.id() }
    );
}

#[tokio::test]
async fn an_unknown_device_is_refused() {
    let relay = relay().await;
    let (first, alice) = relay.register("alice").await.unwrap();
    first.close().await;
    let (_bob_client, bob) = relay.register("bob").await.unwrap();

    let mut client = relay.connect().await.unwrap();
    let body = Request::Authenticate {
        user: alice.user.clone(),
        device: DeviceId(9_999_999),
        signature: alice.sign_challenge(&client.nonce(), &client.channel()),
    };
    assert_eq!(
        client.call(body).await.err().unwrap().code(),
        Some(ErrorCode::UnknownDevice)
    );

    // Bob's device claimed for Alice's name.
    let mut client = relay.connect().await.unwrap();
    let body = Request::Authenticate {
        user: alice.user.clone(),
        device: bob.id(),
        signature: bob.sign_challenge(&client.nonce(), &client.channel()),
    };
    assert_eq!(
        client.call(body).await.err().unwrap().code(),
        Some(ErrorCode::UnknownDevice)
    );
}

#[tokio::test]
async fn a_second_device_needs_a_valid_authorization() {
    let relay = relay().await;
    let (mut alice_client, alice) = relay.register("alice").await.unwrap();
    let (_bob_client, bob) = relay.register("bob").await.unwrap();
    let mut laptop = DeviceKeys::generate("alice");
    // Alice's signed list names the laptop (the rule of `RegisterDevice` tested in
    // `device_lists`), so what is refused below is the authorisation.
    crate::device_lists::publish_signed_list(&mut alice_client, &alice, &[laptop.public_key()])
        .await;

    // Authorised by a key that is not Alice's (but naming Alice's device).
    let stranger = DeviceKeys::generate("alice");
    let mut client = relay.connect().await.unwrap();
    let body = Request::RegisterDevice {
        user: laptop.user.clone(),
        key: laptop.public_key(),
        signature: laptop.sign_challenge(&client.nonce(), &client.channel()),
        authorizer: alice.id(),
        authorization: stranger.authorize_device(&laptop.public_key()),
    };
    let err = client.call(body).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::AuthenticationFailed));

    // Authorised by another user's device.
    let mut client = relay.connect().await.unwrap();
    let body = Request::RegisterDevice {
        user: laptop.user.clone(),
        key: laptop.public_key(),
        signature: laptop.sign_challenge(&client.nonce(), &client.channel()),
        authorizer: bob.id(),
        authorization: bob.authorize_device(&laptop.public_key()),
    };
    assert_eq!(
        client.call(body).await.err().unwrap().code(),
        Some(ErrorCode::UnknownDevice)
    );

    // Properly authorised.
    let mut client = relay.connect().await.unwrap();
    let id = client.register_device(&mut laptop, &alice).await.unwrap();
    assert_ne!(id, alice.id());
    let reply = client
        .call(Request::ListDevices {
            user: alice.user.clone(),
        })
        .await
        .unwrap();
    let Reply::Devices { devices, .. } = reply else {
        panic!("{reply:?}")
    };
    let ids: Vec<DeviceId> = devices.iter().map(|d| d.device).collect();
    assert_eq!(ids, vec![alice.id(), id]);
    // The new device can log in on its own later.
    client.close().await;
    relay.login(&laptop).await.unwrap();
}

#[tokio::test]
async fn requests_before_authentication_are_refused_and_the_connection_stays_usable() {
    let relay = relay().await;
    let mut client = relay.connect().await.unwrap();
    let err = client.call(Request::ListGroups).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    let err = client
        .call(Request::ClaimKeyPackages {
            user: cove_wire::UserName::new("bob").unwrap(),
        })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    assert!(matches!(
        client.call(Request::Ping).await.unwrap(),
        Reply::Pong
    ));
    let mut alice = DeviceKeys::generate("alice");
    client.register(&mut alice).await.unwrap();
    assert!(matches!(
        client.call(Request::ListGroups).await.unwrap(),
        Reply::Groups { .. }
    ));
}

#[tokio::test]
async fn the_same_device_connecting_twice_displaces_the_older_connection() {
    let relay = relay().await;
    let (mut old, alice) = relay.register("alice").await.unwrap();
    old.backlog().await.unwrap();
    let mut new = relay.login(&alice).await.unwrap();
    new.backlog().await.unwrap();
    let (_, closing) = old.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::Displaced));
    assert!(matches!(
        new.call(Request::Ping).await.unwrap(),
        Reply::Pong
    ));
    assert!(relay.handle().is_online(alice.id()));
}

#[tokio::test]
async fn the_challenge_comes_first_and_is_fresh() {
    let relay = relay().await;
    let a = relay.connect().await.unwrap();
    let b = relay.connect().await.unwrap();
    assert_ne!(a.nonce(), b.nonce());
    assert_ne!(a.nonce(), [0u8; 32]);
    // A raw connection's first frame is the challenge, with the protocol version.
    let mut ws = cove_test_utils::TestClient::connect_ws(&relay.url(), relay.tls())
        .await
        .unwrap();
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap().into_data();
    let frame: ServerFrame = cove_wire::decode(&first).unwrap();
    assert!(
        matches!(frame, ServerFrame::Challenge { version: 1, .. }),
        "{frame:?}"
    );
}
