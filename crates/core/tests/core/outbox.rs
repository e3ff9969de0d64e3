//! Exactly-once sending: the outbox is posted once per connection, survives the client being
//! dropped, and a message queued across commits is encrypted again rather than lost.

use super::*;

/// Reconnects `slot` and stops right after its authentication reply: the device is ready
/// to post, and the rest of the backlog (ending with `BacklogDone`) is still queued.
fn reconnect_until_authenticated<S: Store>(net: &mut Net<S>, slot: usize) {
    net.connect(slot);
    net.nodes[slot].hold = true;
    let challenge = net.nodes[slot].inbound.pop_front().unwrap();
    assert!(matches!(challenge, ServerFrame::Challenge { .. }));
    let now = net.now_ms;
    net.client(slot).handle_frame(now, challenge).unwrap();
    net.step(); // the Authenticate request reaches the relay, its reply comes back held
    let reply = net.nodes[slot].inbound.pop_front().unwrap();
    assert!(
        matches!(
            reply,
            ServerFrame::Response {
                result: Ok(cove_wire::Reply::Authenticated { .. }),
                ..
            }
        ),
        "{reply:?}"
    );
    assert!(
        matches!(
            net.nodes[slot].inbound.back(),
            Some(ServerFrame::BacklogDone)
        ),
        "the backlog is still to come"
    );
    let now = net.now_ms;
    net.client(slot).handle_frame(now, reply).unwrap();
    assert!(net.client(slot).is_ready());
}

fn history<S: Store>(net: &mut Net<S>, slot: usize) -> Vec<String> {
    net.client(slot)
        .history("friends")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect()
}

/// Issue 8: `cove send` posts as soon as it is authenticated; the resend at `BacklogDone`
/// must not post the same ciphertext again while its reply is still on its way.
#[test]
fn a_message_posted_before_the_backlog_ends_is_not_posted_again_at_backlog_done() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    net.disconnect(alice);
    net.take_events(alice);
    net.take_events(bob);
    let before = net.relay.app_posts;

    reconnect_until_authenticated(&mut net, alice);
    let op = send(&mut net, alice, "once");
    net.nodes[alice].hold = false;
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();

    assert_eq!(net.relay.app_posts - before, 1, "posted exactly once");
    // A sentinel after it: bob sees "once" once, then the sentinel, and nothing he
    // could not decrypt.
    send(&mut net, alice, "sentinel");
    net.run();
    let events = net.take_events(bob);
    assert_eq!(
        texts(&events),
        vec!["once".to_string(), "sentinel".to_string()]
    );
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    assert_eq!(history(&mut net, bob), vec!["once", "sentinel"]);
}

/// A post refused as retryable before the backlog ends waits for its own timer: the
/// resend at `BacklogDone` skips it, so it is posted once, when the timer fires.
#[test]
fn a_post_waiting_for_its_retry_is_not_also_resent_at_backlog_done() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    group_of(&mut net, alice, &["bob"]);
    net.disconnect(alice);
    net.take_events(bob);
    net.relay.rate_limit_posts = 1;
    net.relay.rate_limit_retry_ms = Some(1_000);

    reconnect_until_authenticated(&mut net, alice);
    let op = send(&mut net, alice, "patient");
    net.step(); // the post reaches the relay, which refuses it (held reply)
    net.nodes[alice].hold = false;
    net.run();
    assert_eq!(net.relay.app_posts, 0, "not resent at BacklogDone");
    let deadline = net.client(alice).poll_timeout().expect("a retry is due");
    net.now_ms = deadline;
    net.client(alice).handle_timeout(deadline).unwrap();
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    assert_eq!(net.relay.app_posts, 1);
    send(&mut net, alice, "sentinel");
    net.run();
    assert_eq!(net.relay.app_posts, 2);
    assert_eq!(
        texts(&net.take_events(bob)),
        vec!["patient".to_string(), "sentinel".to_string()]
    );
}

/// Issue 16: a message queued while the sender was offline, in an epoch the group has
/// since left behind (two commits: the relay accepts only the current and previous
/// epoch), is encrypted again at the current epoch and delivered, not deleted.
#[test]
fn a_message_queued_offline_across_two_commits_is_encrypted_again_and_delivered() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let carol = device(&mut net, "carol");
    let group = group_of(&mut net, alice, &["bob", "carol"]);
    net.disconnect(alice);
    let queued_at = net.client(alice).epoch(&group).unwrap();
    let op = send(&mut net, alice, "written offline");
    for _ in 0..2 {
        let now = net.now_ms;
        let update = net.client(bob).update_keys(now, "friends").unwrap();
        assert_eq!(op_result(&mut net, bob, update), Ok(()));
    }
    assert_eq!(net.client(bob).epoch(&group), Some(queued_at + 2));
    net.take_events(bob);
    net.take_events(carol);

    net.connect(alice);
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    assert_eq!(net.relay.stale_app_rejections, 0);
    for slot in [bob, carol] {
        let events = net.take_events(slot);
        assert_eq!(texts(&events), vec!["written offline".to_string()]);
        assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    }
    assert_eq!(history(&mut net, alice), vec!["written offline"]);
    assert!(net.client(alice).store().outbox().unwrap().is_empty());
}

/// The same when the relay's `StaleEpoch` reply reaches the sender before the commits
/// that made the message stale: the message waits for the sender's next epoch change,
/// is encrypted again then, and is delivered once.
#[test]
fn a_post_refused_as_stale_before_the_commits_arrive_is_sent_after_them() {
    let mut net = Net::new();
    let alice = device(&mut net, "alice");
    let bob = device(&mut net, "bob");
    let group = group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);
    net.nodes[alice].hold = true;
    for _ in 0..2 {
        let now = net.now_ms;
        let update = net.client(bob).update_keys(now, "friends").unwrap();
        assert_eq!(op_result(&mut net, bob, update), Ok(()));
    }
    let stale_epoch = net.client(alice).epoch(&group).unwrap();
    assert_eq!(net.client(bob).epoch(&group), Some(stale_epoch + 2));
    let op = send(&mut net, alice, "raced");
    net.step(); // the post reaches the relay: refused as stale
    assert_eq!(net.relay.stale_app_rejections, 1);
    // Hand alice the refusal first, then the two commits.
    let inbound = &mut net.nodes[alice].inbound;
    let at = inbound
        .iter()
        .position(|f| matches!(f, ServerFrame::Response { result: Err(_), .. }))
        .expect("the StaleEpoch reply");
    let refusal = inbound.remove(at).unwrap();
    inbound.push_front(refusal);
    net.nodes[alice].hold = false;
    assert_eq!(op_result(&mut net, alice, op), Ok(()));
    net.run();
    assert_eq!(
        net.relay.stale_app_rejections, 1,
        "refused once, then accepted"
    );
    send(&mut net, alice, "sentinel");
    net.run();
    let events = net.take_events(bob);
    assert_eq!(
        texts(&events),
        vec!["raced".to_string(), "sentinel".to_string()]
    );
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    assert_eq!(history(&mut net, alice), vec!["raced", "sentinel"]);
}

/// Issue 16, at the core level (the client object is dropped with its unprocessed
/// outputs; this is not a killed process): a message the relay stored but whose reply the
/// client never read is not posted again after reopening the store (its echo in the
/// backlog completes it), and one that never left is posted once.
#[test]
fn a_client_dropped_with_unacknowledged_messages_sends_each_once_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.db");
    let mut net: Net<SqliteStore> = Net::new();
    let alice =
        net.add(Client::init(SqliteStore::open(&path).unwrap(), user("alice"), seed(1)).unwrap());
    net.run();
    let bob = net.add(
        Client::init(
            SqliteStore::open(dir.path().join("bob.db")).unwrap(),
            user("bob"),
            seed(2),
        )
        .unwrap(),
    );
    net.run();
    group_of(&mut net, alice, &["bob"]);
    net.take_events(bob);

    // "stored": posted, stored by the relay, reply never read.
    net.nodes[alice].hold = true;
    send(&mut net, alice, "stored");
    net.step();
    assert_eq!(net.relay.app_posts, 1);
    // "unsent": encrypted and persisted, the post never leaves.
    send(&mut net, alice, "unsent");
    assert_eq!(net.client(alice).store().outbox().unwrap().len(), 2);
    net.nodes[alice].client = None; // dropped with its outputs
    net.disconnect(alice);
    net.nodes[alice].hold = false;
    net.run();

    let reopened = Client::open(SqliteStore::open(&path).unwrap(), seed(3)).unwrap();
    net.nodes[alice].client = Some(reopened);
    net.connect(alice);
    net.run();
    assert_eq!(net.relay.app_posts, 2, "each message posted once in all");
    assert!(net.client(alice).store().outbox().unwrap().is_empty());
    send(&mut net, alice, "sentinel");
    net.run();
    let events = net.take_events(bob);
    assert_eq!(
        texts(&events),
        vec![
            "stored".to_string(),
            "unsent".to_string(),
            "sentinel".to_string()
        ]
    );
    assert!(warnings(&events).is_empty(), "{:?}", warnings(&events));
    assert_eq!(
        history(&mut net, alice),
        vec!["stored", "unsent", "sentinel"]
    );
}
