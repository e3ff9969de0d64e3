//! Secrets never reach the logs: payloads, nonces, signatures and KeyPackages are absent
//! even at the most verbose level the relay can run with.

use cove_test_utils::{DeviceKeys, LogCapture};
use cove_wire::{BoundedVec, Epoch, Payload, Request};

use crate::relay;

#[tokio::test]
async fn payloads_nonces_and_signatures_never_reach_the_logs() {
    let logs = LogCapture::install();
    let relay = relay().await;
    let mut alice_keys = DeviceKeys::generate("alice");
    let mut alice = relay.connect().await.unwrap();
    let nonce = alice.nonce();
    let signature = alice_keys.sign_challenge(&nonce, &alice.channel());
    alice.register(&mut alice_keys).await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();

    let secret_payload = b"TOP-SECRET-PAYLOAD-5f3a9c";
    let secret_kp = b"SECRET-KEYPACKAGE-77e1";
    let secret_welcome = b"SECRET-WELCOME-c0ffee";
    alice
        .call(Request::UploadKeyPackages {
            key_packages: BoundedVec(vec![Payload::from(&secret_kp[..])]),
            last_resort: None,
        })
        .await
        .unwrap();
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    alice
        .commit(
            group,
            Epoch(0),
            vec![bob_keys.id()],
            vec![],
            Some(secret_welcome),
            b"c",
        )
        .await
        .unwrap();
    alice
        .post_app(group, Epoch(1), secret_payload)
        .await
        .unwrap();
    bob.backlog().await.unwrap();
    // A failed authentication (error paths log too).
    let mut mallory = relay.connect().await.unwrap();
    let bad = Request::Authenticate {
        user: alice_keys.user.clone(),
        device: alice_keys.id(),
        signature: bob_keys.sign_challenge(&mallory.nonce(), &mallory.channel()),
    };
    let refused = mallory.call(bad).await.err().unwrap();
    assert_eq!(
        refused.code(),
        Some(cove_wire::ErrorCode::AuthenticationFailed)
    );
    relay.shutdown().await;

    let text = logs.contents();
    assert!(
        text.contains("registered user"),
        "the capture works: {text}"
    );
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let forbidden = [
        String::from_utf8_lossy(secret_payload).into_owned(),
        hex(secret_payload),
        String::from_utf8_lossy(secret_kp).into_owned(),
        hex(secret_kp),
        String::from_utf8_lossy(secret_welcome).into_owned(),
        hex(secret_welcome),
        hex(&nonce),
        format!("{:?}", &nonce[..8])
            .trim_end_matches(']')
            .to_owned(),
        hex(&signature.0),
        hex(&signature.0[..16]),
    ];
    for secret in forbidden {
        assert!(
            !text.contains(&secret),
            "a secret reached the logs: {secret}"
        );
    }
}
