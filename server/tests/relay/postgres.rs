//! The relay on PostgreSQL (`StoreKind::Postgres`, `[store] postgres = "..."`): two relays
//! (two nodes) on one database of a throwaway cluster (`cove_test_utils::postgres`). A user
//! registered on one node is known to the other, a group created and posted to on one node
//! is read in a backlog on the other, and acks made on one node hold on the other.

use cove_server::StoreKind;
use cove_test_utils::TestRelay;
use cove_test_utils::postgres::PgCluster;
use cove_wire::{Epoch, InboxKind, Stream};

use crate::{group_entry, inbox_entry};

async fn node(url: &str) -> TestRelay {
    let url = url.to_string();
    TestRelay::configured(move |config| config.store = StoreKind::Postgres(url)).await
}

#[tokio::test]
async fn two_nodes_on_one_database_register_post_and_serve_the_backlog() {
    let db = PgCluster::shared().database();
    let a = node(db.url()).await;
    let b = node(db.url()).await;

    // Alice on node A, Bob on node B.
    let (mut alice, _alice_keys) = a.register("alice").await.unwrap();
    assert!(alice.backlog().await.unwrap().is_empty());
    let (mut bob, bob_keys) = b.register("bob").await.unwrap();
    assert!(bob.backlog().await.unwrap().is_empty());
    let bob_id = bob_keys.id();
    bob.close().await;

    // On A: a group, a post, a commit adding Bob (registered on B), a post after it.
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    let first = alice
        .post_app(group, Epoch(0), b"before bob")
        .await
        .unwrap();
    let commit = alice
        .commit(
            group,
            Epoch(0),
            vec![bob_id],
            vec![],
            Some(b"welcome bob"),
            b"add bob",
        )
        .await
        .unwrap();
    let after = alice.post_app(group, Epoch(1), b"after bob").await.unwrap();
    assert_eq!((first.0, commit.0, after.0), (1, 2, 3));

    // Bob comes back on B: his Welcome, then the log from his join commit on.
    let mut bob = b.login(&bob_keys).await.unwrap();
    let backlog = bob.backlog().await.unwrap();
    assert_eq!(backlog.len(), 2, "{backlog:?}");
    let mut backlog = backlog.into_iter();
    let welcome = inbox_entry(backlog.next().unwrap());
    assert_eq!(welcome.payload.as_bytes(), b"welcome bob");
    assert!(matches!(
        welcome.kind,
        InboxKind::Welcome { group: g, commit_seq, .. } if g == group && commit_seq == commit
    ));
    let entry = group_entry(backlog.next().unwrap());
    assert_eq!(
        (entry.seq, entry.payload.as_bytes()),
        (after, &b"after bob"[..])
    );

    // Bob acks both on B, then reconnects on A: nothing comes again.
    bob.ack(Stream::Inbox, welcome.seq).await.unwrap();
    bob.ack(Stream::Group(group), after).await.unwrap();
    bob.close().await;
    let mut bob = a.login(&bob_keys).await.unwrap();
    assert!(bob.backlog().await.unwrap().is_empty());

    bob.close().await;
    alice.close().await;
    a.shutdown().await;
    b.shutdown().await;
}
