//! Group changes: concurrent commits converge; a removed member is locked out.

use cove::{Event, SessionEvent};
use cove_core::cove_wire::{
    Delivery, Epoch, ErrorCode, Payload, PostKind, Reply, Request, Seq, ServerFrame,
};

use crate::support::*;

/// alice and bob change the group at the same time; the relay accepts one commit per
/// epoch, the loser processes the winner and retries, and every member ends in the same
/// epoch with equal epoch authenticators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_converge_to_one_epoch() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let mut carol = net.user("carol").await;
    let mut dave = net.user("dave").await;
    let mut erin = net.user("erin").await;
    let mut frank = net.user("frank").await;
    let mut grace = net.user("grace").await;
    alice.create_group("g").await.unwrap();
    alice
        .add_users("g", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    bob.settle().await.unwrap();
    let group = group_id(&alice, "g").await;

    let (n_dave, n_erin) = (names(&["dave"]), names(&["erin"]));
    let (n_frank, n_grace) = (names(&["frank"]), names(&["grace"]));
    for round in 0..3 {
        // Two members commit at once, three times over.
        let (a, b) = match round {
            0 => tokio::join!(alice.add_users("g", &n_dave), bob.add_users("g", &n_erin)),
            1 => tokio::join!(
                alice.remove_users("g", &n_dave),
                bob.remove_users("g", &n_erin)
            ),
            _ => tokio::join!(
                alice.add_users("g", &n_frank),
                carol.add_users("g", &n_grace)
            ),
        };
        a.unwrap();
        b.unwrap();
        match round {
            0 => {
                joined(&mut dave).await;
                joined(&mut erin).await;
            }
            1 => {
                until(&mut dave, "removal", |e| {
                    matches!(e, Event::RemovedFromGroup { .. })
                })
                .await;
                until(&mut erin, "removal", |e| {
                    matches!(e, Event::RemovedFromGroup { .. })
                })
                .await;
            }
            _ => {
                joined(&mut frank).await;
                joined(&mut grace).await;
            }
        }
    }
    // Wait until every member reached the same epoch, then compare authenticators.
    let members = [&alice, &bob, &carol, &frank, &grace];
    let deadline = tokio::time::Instant::now() + WAIT;
    let states = loop {
        let mut states = Vec::new();
        for m in members {
            m.session().settled(WAIT).await.unwrap();
            states.push(
                m.epoch_state(group)
                    .await
                    .unwrap()
                    .expect("member of the group"),
            );
        }
        if states.iter().all(|s| s.0 == states[0].0) || tokio::time::Instant::now() > deadline {
            break states;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // 2 (create + first add) + 2 per round: six commits after the first add.
    assert_eq!(states[0].0, 7, "epoch after seven commits");
    for (i, s) in states.iter().enumerate() {
        assert_eq!(s, &states[0], "member {i} differs from alice");
    }
    let info = alice.groups().await.unwrap();
    assert_eq!(info[0].members, ["alice", "bob", "carol", "frank", "grace"]);

    // The group still works for everyone.
    alice.send_text("g", "all in sync").await.unwrap();
    for d in [&mut bob, &mut carol, &mut frank, &mut grace] {
        until(
            d,
            "the message",
            |e| matches!(e, Event::Message(m) if m.text == "all in sync"),
        )
        .await;
    }
}

/// After carol's removal she decrypts nothing new (not even when handed the ciphertext),
/// and the relay refuses her reads and posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_can_read_nothing_new_and_the_relay_refuses_it() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let mut carol = net.user("carol").await;
    alice.create_group("g").await.unwrap();
    alice
        .add_users("g", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    alice.send_text("g", "before").await.unwrap();
    assert_eq!(texts(&messages(&mut carol, 1).await), ["before"]);
    let group = group_id(&alice, "g").await;

    alice.remove_users("g", &names(&["carol"])).await.unwrap();
    until(&mut carol, "the removal", |e| {
        matches!(e, Event::RemovedFromGroup { .. })
    })
    .await;
    let secret = "carol must never read this";
    alice.send_text("g", secret).await.unwrap();
    let on_bob = until(
        &mut bob,
        "the secret",
        |e| matches!(e, Event::Message(m) if m.text == secret),
    )
    .await;
    assert_eq!(on_bob.last().unwrap().text, secret);

    // carol, connected and caught up, receives nothing.
    assert!(
        quiet(&mut carol).await.is_empty(),
        "carol received a message after her removal"
    );
    assert!(carol.send_text("g", "still here?").await.is_err());

    // The relay refuses her.
    let fetch = Request::Fetch {
        group,
        after: Seq(0),
        limit: 100,
    };
    let refused = carol.probe(fetch.clone()).await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::NotMember);
    let post = Request::Post {
        group,
        epoch: Epoch(2),
        kind: PostKind::Application,
        payload: Payload(vec![1; 100]),
    };
    assert_eq!(
        carol.probe(post).await.unwrap().unwrap_err().code,
        ErrorCode::NotMember
    );

    // Handed the ciphertext anyway (by a member), her client cannot decrypt it.
    let entries = match bob.probe(fetch).await.unwrap().unwrap() {
        Reply::Entries { entries } => entries,
        other => panic!("unexpected {other:?}"),
    };
    let after_removal: Vec<_> = entries.into_iter().filter(|e| e.epoch.0 >= 2).collect();
    assert!(!after_removal.is_empty());
    for entry in after_removal {
        carol
            .session()
            .call(move |c| {
                let _ = c.handle_frame(0, ServerFrame::Deliver(Delivery::Group(entry)));
                while c.poll_output().is_some() {}
            })
            .await
            .unwrap();
    }
    while let Ok(Some(e)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), carol.next_event()).await
    {
        assert!(
            !matches!(e, SessionEvent::Core(Event::Message(_))),
            "carol decrypted {e:?}"
        );
    }
    let history: Vec<String> = carol
        .history("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(history, ["before"]);
}
