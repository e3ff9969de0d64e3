//! KeyPackage upload, claims under concurrency, last resort, bounds and the claim rate limit.

use std::collections::HashSet;

use cove_server::{Limits, StoreKind};
use cove_test_utils::{TestRelay, test_limits};
use cove_wire::limits::{MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGES_PER_UPLOAD};
use cove_wire::{BoundedVec, ErrorCode, Payload, Reply, Request, UserName};

use crate::{complete_without_yielding, relay};

fn upload(prefix: &str, n: usize, last_resort: Option<&str>) -> Request {
    let key_packages: Vec<Payload> = (0..n)
        .map(|i| Payload::from(format!("{prefix}-{i}").into_bytes()))
        .collect();
    Request::UploadKeyPackages {
        key_packages: BoundedVec(key_packages),
        last_resort: last_resort.map(|s| Payload::from(s.as_bytes())),
    }
}

/// 20 devices claim Alice's KeyPackages, all claims sent before the relay reads any: no
/// KeyPackage is handed out twice, each of the 15 normal ones once, then the last resort.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_claims_never_hand_out_a_key_package_twice() {
    let relay = TestRelay::sqlite().await;
    let (mut phone, alice) = relay.register("alice").await.unwrap();
    let mut laptop_keys = cove_test_utils::DeviceKeys::generate("alice");
    crate::device_lists::publish_signed_list(&mut phone, &alice, &[laptop_keys.public_key()]).await;
    let mut laptop = relay.connect().await.unwrap();
    laptop
        .register_device(&mut laptop_keys, &alice)
        .await
        .unwrap();
    // The phone has 10 and no last resort; the laptop 5 and a last resort.
    let r = phone.call(upload("phone", 10, None)).await.unwrap();
    assert_eq!(
        r,
        Reply::KeyPackageStock {
            remaining: 10,
            has_last_resort: false
        }
    );
    let r = laptop
        .call(upload("laptop", 5, Some("laptop-last")))
        .await
        .unwrap();
    assert_eq!(
        r,
        Reply::KeyPackageStock {
            remaining: 5,
            has_last_resort: true
        }
    );

    // All 20 claims are in the relay's sockets before it reads any (see
    // `complete_without_yielding`), so they are in flight together.
    let claimers = 20;
    let mut clients = Vec::new();
    for i in 0..claimers {
        let (client, _) = relay.register(&format!("claimer{i}")).await.unwrap();
        clients.push(client);
    }
    let claim = || Request::ClaimKeyPackages {
        user: UserName::new("alice").unwrap(),
    };
    let ids: Vec<_> = clients
        .iter_mut()
        .map(|client| complete_without_yielding(client.send_request(claim())).unwrap())
        .collect();
    let mut replies = Vec::new();
    for (client, id) in clients.iter_mut().zip(ids) {
        replies.push(client.response(id).await.unwrap());
    }
    let mut normal = Vec::new();
    let mut last_resort = 0;
    for reply in replies {
        let Ok(Reply::KeyPackages { key_packages, .. }) = reply else {
            panic!("expected KeyPackages")
        };
        assert!(key_packages.len() <= 2, "at most one per device");
        for kp in key_packages {
            let text = String::from_utf8(kp.key_package.into_vec()).unwrap();
            if kp.last_resort {
                assert_eq!(kp.device, laptop_keys.id());
                assert_eq!(text, "laptop-last");
                last_resort += 1;
            } else {
                normal.push(text);
            }
        }
    }
    let unique: HashSet<&String> = normal.iter().collect();
    assert_eq!(
        unique.len(),
        normal.len(),
        "a KeyPackage was handed out twice: {normal:?}"
    );
    assert_eq!(
        normal.len(),
        15,
        "every normal KeyPackage is handed out once"
    );
    assert_eq!(
        last_resort,
        claimers - 5,
        "the laptop's last resort once its stock ran out"
    );

    let r = phone.call(Request::KeyPackageStock).await.unwrap();
    assert_eq!(
        r,
        Reply::KeyPackageStock {
            remaining: 0,
            has_last_resort: false
        }
    );
    let r = laptop.call(Request::KeyPackageStock).await.unwrap();
    assert_eq!(
        r,
        Reply::KeyPackageStock {
            remaining: 0,
            has_last_resort: true
        }
    );
}

#[tokio::test]
async fn uploads_are_bounded() {
    let relay = relay().await;
    let (mut client, _) = relay.register("alice").await.unwrap();
    let err = client
        .call(upload("x", MAX_KEY_PACKAGES_PER_UPLOAD + 1, None))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest));
    let huge = Request::UploadKeyPackages {
        key_packages: BoundedVec(vec![Payload(vec![1; MAX_KEY_PACKAGE_BYTES + 1])]),
        last_resort: None,
    };
    assert_eq!(
        client.call(huge).await.err().unwrap().code(),
        Some(ErrorCode::TooLarge)
    );
    let r = client.call(Request::KeyPackageStock).await.unwrap();
    assert_eq!(
        r,
        Reply::KeyPackageStock {
            remaining: 0,
            has_last_resort: false
        }
    );
    // Claiming an unknown user.
    let err = client
        .call(Request::ClaimKeyPackages {
            user: UserName::new("nobody").unwrap(),
        })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::UnknownUser));
}

#[tokio::test]
async fn claims_are_rate_limited_with_a_retry_after() {
    let limits = Limits {
        claim_burst: 3,
        claims_per_minute: 1,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Memory, limits).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    alice.call(upload("a", 10, None)).await.unwrap();
    let (mut bob, _) = relay.register("bob").await.unwrap();
    let claim = || Request::ClaimKeyPackages {
        user: UserName::new("alice").unwrap(),
    };
    for _ in 0..3 {
        bob.call(claim()).await.unwrap();
    }
    let err = bob.request(claim()).await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::RateLimited);
    assert!(err.retry_after_ms.is_some_and(|ms| ms > 0), "{err:?}");
    // Other requests still work.
    assert_eq!(bob.call(Request::Ping).await.unwrap(), Reply::Pong);
    // The refused claim took nothing: 3 claimed, 7 left.
    let r = alice.call(Request::KeyPackageStock).await.unwrap();
    assert_eq!(
        r,
        Reply::KeyPackageStock {
            remaining: 7,
            has_last_resort: false
        }
    );
}

/// With a per-target budget of 5 claims (refilling at 1 a minute), four claimers (each its
/// own registered user, each well within its own claim budget) claim Alice's KeyPackages
/// three times each: exactly 5 claims succeed, the other 7 are refused `RateLimited` with a
/// `retry_after_ms`, Alice keeps 15 of her 20 KeyPackages, and a refused claimer's claim of
/// Bob's KeyPackages still succeeds.
#[tokio::test]
async fn claims_on_one_user_are_limited_across_claimers() {
    let limits = Limits {
        target_claim_burst: 5,
        target_claims_per_minute: 1,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Memory, limits).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    alice.call(upload("a", 20, None)).await.unwrap();
    let (mut bob, _) = relay.register("bob").await.unwrap();
    bob.call(upload("b", 3, None)).await.unwrap();
    let mut claimers = Vec::new();
    for i in 0..4 {
        let (client, _) = relay.register(&format!("claimer{i}")).await.unwrap();
        claimers.push(client);
    }
    let claim = |user: &str| Request::ClaimKeyPackages {
        user: UserName::new(user).unwrap(),
    };
    let (mut claimed, mut refused) = (0, 0);
    for _ in 0..3 {
        for claimer in &mut claimers {
            match claimer.request(claim("alice")).await.unwrap() {
                Ok(Reply::KeyPackages { key_packages, .. }) => {
                    assert_eq!(key_packages.0.len(), 1);
                    claimed += 1;
                }
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
                    assert!(e.retry_after_ms.is_some_and(|ms| ms > 0), "{e:?}");
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!((claimed, refused), (5, 7));
    let r = alice.call(Request::KeyPackageStock).await.unwrap();
    assert_eq!(
        r,
        Reply::KeyPackageStock {
            remaining: 15,
            has_last_resort: false
        }
    );
    // The last claimer was refused on Alice; its claim of Bob is served.
    let last = claimers.last_mut().unwrap();
    match last.call(claim("bob")).await.unwrap() {
        Reply::KeyPackages { key_packages, .. } => assert_eq!(key_packages.0.len(), 1),
        other => panic!("{other:?}"),
    }
    let r = bob.call(Request::KeyPackageStock).await.unwrap();
    assert_eq!(
        r,
        Reply::KeyPackageStock {
            remaining: 2,
            has_last_resort: false
        }
    );
}

#[tokio::test]
async fn requests_are_rate_limited_per_device() {
    let limits = Limits {
        request_burst: 5,
        requests_per_second: 1,
        ..Limits::default()
    };
    let relay = TestRelay::start(StoreKind::Memory, limits).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = alice.request(Request::Ping).await.unwrap() {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a burst past the limit is refused");
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(
        e.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 1001),
        "{e:?}"
    );
}
