//! Group logs: one commit per epoch, Welcomes only with accepted commits, membership checks,
//! ordered live delivery and backlog after reconnecting.

use cove_wire::{EntryKind, Epoch, ErrorCode, PostKind, Reply, Request, Seq, Stream};

use crate::{
    assert_in_order, complete_without_yielding, group_entry, group_with, inbox_entry,
    read_group_entries, relay,
};

/// Alice and Bob commit for epoch 1 and both commits are in the relay's sockets before the
/// relay has read either (so both are in flight at the same epoch before either answer):
/// exactly one is accepted, the other gets `StaleEpoch` with the new epoch, and both see the
/// winner's commit only.
///
/// How the race is staged: the relay runs in this test's single-threaded runtime, so none of
/// its tasks runs until this test awaits. Each commit is written by polling its send once
/// (it must complete at once, which a small frame on a fresh socket does); no `.await` comes
/// between the two, so the relay reads neither before both are sent.
#[tokio::test(flavor = "current_thread")]
async fn two_concurrent_commits_for_one_epoch_exactly_one_wins() {
    let relay = relay().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;

    let commit = |payload: &[u8]| Request::Post {
        group,
        epoch: Epoch(1),
        kind: PostKind::Commit {
            added: vec![].into(),
            removed: vec![].into(),
            welcome: None,
            group_info: Default::default(),
        },
        payload: payload.into(),
    };
    let a = complete_without_yielding(alice.send_request(commit(b"alice-commit"))).unwrap();
    let b = complete_without_yielding(bob.send_request(commit(b"bob-commit"))).unwrap();
    let (ra, rb) = (
        alice.response(a).await.unwrap(),
        bob.response(b).await.unwrap(),
    );
    let (winner, loser) = match (&ra, &rb) {
        (Ok(Reply::Posted { .. }), Err(e)) => ("alice", e),
        (Err(e), Ok(Reply::Posted { .. })) => ("bob", e),
        other => panic!("expected exactly one accepted commit: {other:?}"),
    };
    assert_eq!(loser.code, ErrorCode::StaleEpoch);
    assert_eq!(
        loser.current_epoch,
        Some(Epoch(2)),
        "the loser learns the current epoch"
    );

    // Both see the winner's commit, and only it.
    let expected: &[u8] = if winner == "alice" {
        b"alice-commit"
    } else {
        b"bob-commit"
    };
    for client in [&mut alice, &mut bob] {
        // Skip Alice's own first commit (epoch 0); the next entry ends epoch 1.
        let entry = loop {
            let e = read_group_entries(client, group, 1).await.remove(0);
            if e.epoch == Epoch(1) {
                break e;
            }
        };
        assert_eq!(entry.payload.as_bytes(), expected);
    }
    let reply = alice.call(Request::ListGroups).await.unwrap();
    let Reply::Groups { groups } = reply else {
        panic!()
    };
    assert_eq!(groups[0].epoch, Epoch(2));
}

#[tokio::test]
async fn the_welcome_of_a_refused_commit_is_never_delivered() {
    let relay = relay().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut carol, carol_keys) = relay.register("carol").await.unwrap();
    let (mut dave, dave_keys) = relay.register("dave").await.unwrap();
    carol.backlog().await.unwrap();
    dave.backlog().await.unwrap();
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    // Epoch 0 ends with an empty commit.
    alice
        .commit(group, Epoch(0), vec![], vec![], None, b"update")
        .await
        .unwrap();
    // A stale commit (epoch 0 again) that would add Carol: refused, Welcome dropped.
    let err = alice
        .commit(
            group,
            Epoch(0),
            vec![carol_keys.id()],
            vec![],
            Some(b"carol-welcome"),
            b"add",
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::StaleEpoch));
    // A valid commit adding Dave: his Welcome arrives.
    alice
        .commit(
            group,
            Epoch(1),
            vec![dave_keys.id()],
            vec![],
            Some(b"dave-welcome"),
            b"add",
        )
        .await
        .unwrap();
    let welcome = inbox_entry(dave.next_delivery().await.unwrap());
    assert_eq!(welcome.payload.as_bytes(), b"dave-welcome");

    // Carol got nothing on her live connection (a Pong comes after anything queued before)...
    assert_eq!(carol.call(Request::Ping).await.unwrap(), Reply::Pong);
    assert!(carol.take_buffered().is_empty());
    // ...nor in her stored backlog, nor is she a member.
    carol.close().await;
    let mut carol = relay.login(&carol_keys).await.unwrap();
    assert!(carol.backlog().await.unwrap().is_empty());
    let err = carol
        .call(Request::Fetch {
            group,
            after: Seq(0),
            limit: 10,
        })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotMember));
}

#[tokio::test]
async fn a_non_member_is_refused_on_post_and_fetch() {
    let relay = relay().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut eve, _) = relay.register("eve").await.unwrap();
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    alice
        .post_app(group, Epoch(0), b"for members only")
        .await
        .unwrap();

    let err = eve
        .post_app(group, Epoch(0), b"let me in")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotMember));
    let err = eve
        .call(Request::Fetch {
            group,
            after: Seq(0),
            limit: 10,
        })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotMember));
    let err = eve.ack(Stream::Group(group), Seq(1)).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotMember));
    // Creating a group with a taken id does not make Eve a member.
    let err = eve.create_group(group).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::GroupExists));
    // An unknown group.
    let other = cove_test_utils::random_group_id();
    let err = eve.post_app(other, Epoch(0), b"x").await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::UnknownGroup));
    // The member reads the log; nothing of Eve's is in it.
    let reply = alice
        .call(Request::Fetch {
            group,
            after: Seq(0),
            limit: 10,
        })
        .await
        .unwrap();
    let Reply::Entries { entries } = reply else {
        panic!()
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].payload.as_bytes(), b"for members only");
}

#[tokio::test]
async fn members_receive_live_posts_in_order() {
    let relay = relay().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let (mut carol, carol_keys) = relay.register("carol").await.unwrap();
    let group = group_with(
        &mut alice,
        &mut [(&mut bob, &bob_keys), (&mut carol, &carol_keys)],
    )
    .await;
    // Pipelined posts from Alice.
    let n = 50;
    let mut ids = Vec::new();
    for i in 0..n {
        let body = Request::Post {
            group,
            epoch: Epoch(1),
            kind: PostKind::Application,
            payload: format!("message {i}").into_bytes().into(),
        };
        ids.push(alice.send_request(body).await.unwrap());
    }
    let mut seqs = Vec::new();
    for id in ids {
        let Reply::Posted { seq } = alice.response(id).await.unwrap().unwrap() else {
            panic!()
        };
        seqs.push(seq);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs follow the posting order: {seqs:?}"
    );
    for client in [&mut bob, &mut carol] {
        let entries = read_group_entries(client, group, n).await;
        assert_in_order(&entries);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.payload.as_bytes(), format!("message {i}").as_bytes());
            assert_eq!(e.sender, alice.device.unwrap());
            assert_eq!(e.kind, EntryKind::Application);
        }
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    }
}

#[tokio::test]
async fn an_offline_device_gets_its_backlog_in_order_after_reconnecting() {
    let relay = relay().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    bob.close().await;

    for i in 0..30 {
        alice
            .post_app(group, Epoch(1), format!("while away {i}").as_bytes())
            .await
            .unwrap();
    }
    let mut bob = relay.login(&bob_keys).await.unwrap();
    let backlog: Vec<_> = bob
        .backlog()
        .await
        .unwrap()
        .into_iter()
        .map(group_entry)
        .collect();
    assert_eq!(
        backlog.len(),
        30,
        "the Welcome was acked; the commit precedes the cursor"
    );
    assert_in_order(&backlog);
    for (i, e) in backlog.iter().enumerate() {
        assert_eq!(e.payload.as_bytes(), format!("while away {i}").as_bytes());
    }
    // Unacked entries come again on the next connection; acked ones do not.
    bob.ack(Stream::Group(group), backlog[19].seq)
        .await
        .unwrap();
    bob.close().await;
    let mut bob = relay.login(&bob_keys).await.unwrap();
    let again: Vec<_> = bob
        .backlog()
        .await
        .unwrap()
        .into_iter()
        .map(group_entry)
        .collect();
    assert_eq!(again.len(), 10);
    assert_eq!(again[0].seq, backlog[20].seq);
    bob.ack(Stream::Group(group), again[9].seq).await.unwrap();
    // Live delivery continues after the backlog.
    alice.post_app(group, Epoch(1), b"now live").await.unwrap();
    let live = group_entry(bob.next_delivery().await.unwrap());
    assert_eq!(live.payload.as_bytes(), b"now live");
    assert!(live.seq > again[9].seq);
}

/// A `QuietAck` moves the cursor like `Ack` but is answered only when refused: a
/// successful one gets no response (an `Ack` sent after it is answered, and acks are
/// answered in request order, so a reply to the quiet one would have come first), and one
/// past the end of the log gets `InvalidRequest` under its own id.
#[tokio::test]
async fn a_quiet_ack_moves_the_cursor_and_is_answered_only_when_refused() {
    let relay = relay().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let mut seqs = Vec::new();
    for i in 0..3 {
        let text = format!("m{i}");
        seqs.push(
            alice
                .post_app(group, Epoch(1), text.as_bytes())
                .await
                .unwrap(),
        );
        let got = group_entry(bob.next_delivery().await.unwrap());
        assert_eq!(got.payload.as_bytes(), text.as_bytes());
    }
    let quiet = bob
        .send_request(Request::QuietAck {
            stream: Stream::Group(group),
            seq: seqs[1],
        })
        .await
        .unwrap();
    // The sentinel: an answered ack of the same entry, sent after it.
    bob.ack(Stream::Group(group), seqs[1]).await.unwrap();
    assert_eq!(
        bob.take_response(quiet),
        None,
        "a successful QuietAck is not answered"
    );

    let past_end = bob
        .send_request(Request::QuietAck {
            stream: Stream::Group(group),
            seq: Seq(seqs[2].0 + 100),
        })
        .await
        .unwrap();
    let refused = bob.response(past_end).await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::InvalidRequest);

    // The cursor moved: a new connection gets only the entry after seqs[1].
    bob.close().await;
    let mut bob = relay.login(&bob_keys).await.unwrap();
    let backlog: Vec<_> = bob
        .backlog()
        .await
        .unwrap()
        .into_iter()
        .map(group_entry)
        .collect();
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0].seq, seqs[2]);
}

#[tokio::test]
async fn the_inbox_backlog_comes_first_and_an_added_device_reads_from_its_commit() {
    let relay = relay().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (bob, bob_keys) = relay.register("bob").await.unwrap();
    bob.close().await;
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    alice
        .post_app(group, Epoch(0), b"before bob")
        .await
        .unwrap();
    let commit_seq = alice
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
    alice.post_app(group, Epoch(1), b"after bob").await.unwrap();

    let mut bob = relay.login(&bob_keys).await.unwrap();
    let backlog = bob.backlog().await.unwrap();
    assert_eq!(backlog.len(), 2, "{backlog:?}");
    let welcome = inbox_entry(backlog[0].clone());
    match welcome.kind {
        cove_wire::InboxKind::Welcome {
            group: g,
            commit_seq: s,
            ..
        } => {
            assert_eq!((g, s), (group, commit_seq));
        }
    }
    let entry = group_entry(backlog[1].clone());
    assert_eq!(entry.payload.as_bytes(), b"after bob");
}

#[tokio::test]
async fn a_removed_device_gets_its_removal_and_nothing_after() {
    let relay = relay().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    alice
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
    alice
        .post_app(group, Epoch(2), b"bob is gone")
        .await
        .unwrap();
    let removal = group_entry(bob.next_delivery().await.unwrap());
    assert_eq!(removal.payload.as_bytes(), b"remove bob");
    assert_eq!(bob.call(Request::Ping).await.unwrap(), Reply::Pong);
    assert!(bob.take_buffered().is_empty(), "nothing after the removal");
    let err = bob
        .post_app(group, Epoch(2), b"still here?")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotMember));
}

/// Issue 8: a device resending a post it already made (its client missed the reply) gets
/// `Posted` with the original seq, on the same connection and on a new one; the log holds
/// one entry, and the other members receive one copy (checked with a sentinel posted after
/// the resends: the next entry bob receives is the sentinel).
#[tokio::test]
async fn a_repeated_post_is_answered_with_its_original_seq_and_not_stored_again() {
    let relay = cove_test_utils::TestRelay::sqlite().await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;

    let seq = alice
        .post_app(group, Epoch(1), b"ciphertext")
        .await
        .unwrap();
    // A resend on the same connection.
    let again = alice
        .post_app(group, Epoch(1), b"ciphertext")
        .await
        .unwrap();
    assert_eq!(again, seq);
    // And from a new connection of the same device.
    alice.close().await;
    let mut alice = relay.login(&alice_keys).await.unwrap();
    assert_eq!(
        alice
            .post_app(group, Epoch(1), b"ciphertext")
            .await
            .unwrap(),
        seq
    );
    // The same bytes from another member are that member's own post.
    let bobs = bob.post_app(group, Epoch(1), b"ciphertext").await.unwrap();
    assert!(bobs > seq);
    let sentinel = alice.post_app(group, Epoch(1), b"sentinel").await.unwrap();
    assert!(sentinel > bobs);

    let entries = read_group_entries(&mut bob, group, 3).await;
    let got: Vec<(Seq, &[u8])> = entries
        .iter()
        .map(|e| (e.seq, e.payload.as_bytes()))
        .collect();
    assert_eq!(
        got,
        vec![
            (seq, &b"ciphertext"[..]),
            (bobs, &b"ciphertext"[..]),
            (sentinel, &b"sentinel"[..])
        ]
    );
    let log = alice
        .call(Request::Fetch {
            group,
            after: Seq(0),
            limit: 100,
        })
        .await
        .unwrap();
    let Reply::Entries { entries } = log else {
        panic!("{log:?}")
    };
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![Seq(1), seq, bobs, sentinel],
        "the commit that added bob, then one entry per post"
    );
}
