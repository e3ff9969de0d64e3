//! A device that stops reading is disconnected with `Closing { SlowReader }` once its bounded
//! queue is full; everything stays stored and arrives when it reconnects.

use cove_server::{Limits, StoreKind};
use cove_test_utils::{TestRelay, test_limits};
use cove_wire::{Epoch, ErrorCode, PostKind, Reply, Request};

use crate::{assert_in_order, group_entry, group_with};

#[tokio::test]
async fn a_slow_reader_is_disconnected_and_later_receives_everything() {
    let limits = Limits {
        outgoing_queue_frames: 64,
        // The `Closing` frame waits behind the megabytes already in the socket buffers until
        // Bob reads them; a long grace lets it through however slowly this test reads.
        close_grace_ms: 120_000,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Sqlite, limits).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    assert!(relay.handle().is_online(bob_keys.id()));

    // Bob stops reading. Alice posts 16 KiB messages until the relay gives up on Bob
    // (kernel socket buffers absorb several MiB first), with a generous cap.
    let payload = |i: usize| {
        let mut p = format!("slow {i:06} ").into_bytes();
        p.resize(16 * 1024, b'.');
        p
    };
    let mut posted = 0usize;
    while relay.handle().is_online(bob_keys.id()) {
        assert!(posted < 20_000, "the slow reader was never disconnected");
        let mut ids = Vec::new();
        // A window of 16 posts: Alice's own queue holds their replies and deliveries.
        for _ in 0..16 {
            let body = Request::Post {
                group,
                epoch: Epoch(1),
                kind: PostKind::Application,
                payload: payload(posted).into(),
            };
            ids.push(alice.send_request(body).await.unwrap());
            posted += 1;
        }
        for id in ids {
            assert!(matches!(
                alice.response(id).await.unwrap(),
                Ok(Reply::Posted { .. })
            ));
        }
        alice.take_buffered();
    }

    // What Bob's old connection still holds, then the close.
    let (received, closing) = bob.read_until_closed().await;
    assert!(
        received.len() < posted,
        "the relay stopped before delivering everything"
    );
    assert_eq!(closing, Some(ErrorCode::SlowReader));

    // Reconnected, Bob gets every post, in order.
    let mut bob = relay.login(&bob_keys).await.unwrap();
    let backlog: Vec<_> = bob
        .backlog()
        .await
        .unwrap()
        .into_iter()
        .map(group_entry)
        .collect();
    assert_eq!(backlog.len(), posted);
    assert_in_order(&backlog);
    for (i, e) in backlog.iter().enumerate() {
        assert_eq!(&e.payload.as_bytes()[..12], &payload(i)[..12]);
    }
}
