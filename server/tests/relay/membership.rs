//! Membership edges: a device reads a group only from the commit that added it, and a device
//! removed while offline still receives the commit that removed it (and nothing after).

use cove_test_utils::TestRelay;
use cove_wire::{Epoch, ErrorCode, Reply, Request, Seq, Stream};

use crate::{group_entry, inbox_entry, relay};

/// Fetches `group` from `after` and returns the seqs and payloads.
async fn fetch(
    client: &mut cove_test_utils::TestClient,
    group: cove_wire::GroupId,
    after: u64,
) -> Result<Vec<(u64, Vec<u8>)>, Option<ErrorCode>> {
    match client
        .call(Request::Fetch {
            group,
            after: Seq(after),
            limit: 100,
        })
        .await
    {
        Ok(Reply::Entries { entries }) => Ok(entries
            .0
            .into_iter()
            .map(|e| (e.seq.0, e.payload.as_bytes().to_vec()))
            .collect()),
        Ok(other) => panic!("expected Entries: {other:?}"),
        Err(e) => Err(e.code()),
    }
}

#[tokio::test]
async fn fetch_never_returns_entries_from_before_the_device_joined() {
    let relay = relay().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let (mut carol, _) = relay.register("carol").await.unwrap();
    bob.backlog().await.unwrap();
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    alice.post_app(group, Epoch(0), b"secret 1").await.unwrap();
    alice.post_app(group, Epoch(0), b"secret 2").await.unwrap();
    let added_at = alice
        .commit(
            group,
            Epoch(0),
            vec![bob_keys.id()],
            vec![],
            Some(b"welcome"),
            b"add bob",
        )
        .await
        .unwrap();
    assert_eq!(added_at, Seq(3));
    alice.post_app(group, Epoch(1), b"hello bob").await.unwrap();
    let welcome = inbox_entry(bob.next_delivery().await.unwrap());
    assert_eq!(welcome.payload.as_bytes(), b"welcome");

    // The creator reads everything; Bob only what follows the commit that added him,
    // whatever `after` he asks for.
    assert_eq!(fetch(&mut alice, group, 0).await.unwrap().len(), 4);
    let expected = vec![(4, b"hello bob".to_vec())];
    for after in [0, 1, 2, 3] {
        assert_eq!(fetch(&mut bob, group, after).await.unwrap(), expected);
    }
    assert_eq!(fetch(&mut bob, group, 4).await.unwrap(), vec![]);
    // A non-member reads nothing.
    assert_eq!(
        fetch(&mut carol, group, 0).await.err(),
        Some(Some(ErrorCode::NotMember))
    );
}

/// Bob is offline while Alice removes him; on reconnecting he receives the group's entries
/// from his cursor up to and including the removal commit, nothing after; once he acks it,
/// the group is gone from his backlog.
async fn removed_while_offline(relay: TestRelay) {
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = crate::group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let first = alice.post_app(group, Epoch(1), b"seen").await.unwrap();
    let seen = group_entry(bob.next_delivery().await.unwrap());
    assert_eq!(seen.seq, first);
    bob.ack(Stream::Group(group), first).await.unwrap();
    bob.close().await;

    alice.post_app(group, Epoch(1), b"missed").await.unwrap();
    let removal = alice
        .commit(
            group,
            Epoch(1),
            vec![],
            vec![bob_keys.id()],
            None,
            b"remove bob",
        )
        .await
        .unwrap();
    alice.post_app(group, Epoch(2), b"after bob").await.unwrap();

    let mut bob = relay.login(&bob_keys).await.unwrap();
    let backlog: Vec<_> = bob
        .backlog()
        .await
        .unwrap()
        .into_iter()
        .map(group_entry)
        .collect();
    let got: Vec<(Seq, &[u8])> = backlog
        .iter()
        .map(|e| (e.seq, e.payload.as_bytes()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Seq(first.0 + 1), &b"missed"[..]),
            (removal, &b"remove bob"[..])
        ]
    );
    // Still not a member: no reads, no posts.
    assert_eq!(
        fetch(&mut bob, group, 0).await.err(),
        Some(Some(ErrorCode::NotMember))
    );
    let err = bob.post_app(group, Epoch(2), b"x").await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotMember));
    // Not acked: it comes again.
    bob.close().await;
    let mut bob = relay.login(&bob_keys).await.unwrap();
    assert_eq!(bob.backlog().await.unwrap().len(), 2);
    // Acking past the removal is refused; acking it ends the group for Bob.
    let err = bob
        .ack(Stream::Group(group), Seq(removal.0 + 1))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest));
    bob.ack(Stream::Group(group), removal).await.unwrap();
    bob.close().await;
    let mut bob = relay.login(&bob_keys).await.unwrap();
    assert!(bob.backlog().await.unwrap().is_empty());
    let err = bob.ack(Stream::Group(group), removal).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotMember));
}

#[tokio::test]
async fn a_device_removed_while_offline_gets_its_removal_on_reconnect() {
    removed_while_offline(relay().await).await;
}

#[tokio::test]
async fn a_device_removed_while_offline_gets_its_removal_on_reconnect_sqlite() {
    removed_while_offline(TestRelay::sqlite().await).await;
}
