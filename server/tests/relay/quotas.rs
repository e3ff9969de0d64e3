//! Post quotas (PROTOCOL.md "Quotas"): one member flooding a group, or several devices of
//! one attacker flooding a device they added to a group, are refused with `RateLimited`
//! past their burst, and nothing over quota is stored.
//!
//! The refill rates are one post a minute, so no refill can happen within a test; the
//! request rate is the tests' (high) one, so only the quotas refuse.

use cove_server::{Limits, StoreKind};
use cove_test_utils::{TestClient, TestRelay, test_limits};
use cove_wire::{Epoch, ErrorCode, GroupId, Reply, Request, Seq};

use crate::group_with;

fn quota_limits(sender_burst: u32, group_burst: u32) -> Limits {
    Limits {
        sender_posts_per_minute: 1,
        sender_post_burst: sender_burst,
        group_posts_per_minute: 1,
        group_post_burst: group_burst,
        ..test_limits()
    }
}

/// Posts `payload`, expecting a refusal; returns its code and `retry_after_ms`.
async fn refused(client: &mut TestClient, group: GroupId, payload: &[u8]) -> (ErrorCode, u32) {
    match client.post_app(group, Epoch(1), payload).await {
        Err(cove_test_utils::ClientError::Refused(e)) => (
            e.code,
            e.retry_after_ms
                .expect("a RateLimited refusal says when to retry"),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The payloads of the application entries in `group` after `after`, read by `reader`
/// with `Fetch`.
async fn stored_payloads(reader: &mut TestClient, group: GroupId, after: Seq) -> Vec<Vec<u8>> {
    match reader
        .call(Request::Fetch {
            group,
            after,
            limit: 500,
        })
        .await
        .unwrap()
    {
        Reply::Entries { entries } => entries
            .0
            .into_iter()
            .map(|e| e.payload.as_bytes().to_vec())
            .collect(),
        other => panic!("expected Entries, got {other:?}"),
    }
}

/// One member floods: after its burst of 5 posts (the commit that made the group counts
/// as one), its next post is refused with `RateLimited` and a `retry_after_ms`, and is not
/// stored; the other member's posts still pass, and the log holds exactly the accepted
/// posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_member_is_capped_and_the_others_still_post() {
    let relay = TestRelay::start(StoreKind::Sqlite, quota_limits(5, 100)).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let commit_seq = Seq(1);
    for i in 0..4 {
        alice
            .post_app(group, Epoch(1), format!("flood {i}").as_bytes())
            .await
            .unwrap();
    }
    for i in 0..3 {
        let (code, retry) = refused(&mut alice, group, format!("over {i}").as_bytes()).await;
        assert_eq!(code, ErrorCode::RateLimited);
        assert!(retry > 0);
    }
    bob.post_app(group, Epoch(1), b"bob still posts")
        .await
        .unwrap();
    let stored = stored_payloads(&mut bob, group, commit_seq).await;
    let expected: Vec<Vec<u8>> = (0..4)
        .map(|i| format!("flood {i}").into_bytes())
        .chain([b"bob still posts".to_vec()])
        .collect();
    assert_eq!(stored, expected);
}

/// An attacker adds a victim device and two of its own devices to a group and floods it
/// from all of them: each device is capped at its burst, and the group as a whole at the
/// group's burst (8 posts, the commit included), with the group-level `RateLimited` even
/// for a device with quota left. The victim's log holds exactly the 8 accepted posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_to_a_victim_device_is_capped_at_the_group_quota() {
    let relay = TestRelay::start(StoreKind::Memory, quota_limits(5, 8)).await;
    let (mut mallory, _) = relay.register("mallory").await.unwrap();
    let (mut sock1, sock1_keys) = relay.register("sock1").await.unwrap();
    let (mut sock2, sock2_keys) = relay.register("sock2").await.unwrap();
    let (mut victim, victim_keys) = relay.register("victim").await.unwrap();
    let group = group_with(
        &mut mallory,
        &mut [
            (&mut sock1, &sock1_keys),
            (&mut sock2, &sock2_keys),
            (&mut victim, &victim_keys),
        ],
    )
    .await;
    // Group: 1 (commit) + 4 (mallory) + 3 (sock1) = 8, its burst.
    for i in 0..4 {
        mallory
            .post_app(group, Epoch(1), format!("m{i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(
        refused(&mut mallory, group, b"m-over").await.0,
        ErrorCode::RateLimited
    );
    for i in 0..3 {
        sock1
            .post_app(group, Epoch(1), format!("s{i}").as_bytes())
            .await
            .unwrap();
    }
    // sock1 has posted 3 of its 5, sock2 none: the group's quota refuses both.
    assert_eq!(
        refused(&mut sock1, group, b"s-over").await.0,
        ErrorCode::RateLimited
    );
    assert_eq!(
        refused(&mut sock2, group, b"t-over").await.0,
        ErrorCode::RateLimited
    );
    let stored = stored_payloads(&mut victim, group, Seq(1)).await;
    let expected: Vec<Vec<u8>> = ["m0", "m1", "m2", "m3", "s0", "s1", "s2"]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    assert_eq!(stored, expected);
}

/// A commit that removes the flooder is accepted although the committer's and the
/// group's quotas are used up: members can always get rid of a flooder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_commit_passes_a_used_up_quota() {
    let relay = TestRelay::start(StoreKind::Memory, quota_limits(3, 3)).await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    let (mut mallory, mallory_keys) = relay.register("mallory").await.unwrap();
    let group = group_with(&mut alice, &mut [(&mut mallory, &mallory_keys)]).await;
    for i in 0..2 {
        mallory
            .post_app(group, Epoch(1), format!("m{i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(
        refused(&mut mallory, group, b"over").await.0,
        ErrorCode::RateLimited
    );
    assert_eq!(
        refused(&mut alice, group, b"alice").await.0,
        ErrorCode::RateLimited
    );
    let seq = alice
        .commit(
            group,
            Epoch(1),
            vec![],
            vec![mallory_keys.id()],
            None,
            b"remove",
        )
        .await
        .unwrap();
    assert_eq!(seq, Seq(4));
}
