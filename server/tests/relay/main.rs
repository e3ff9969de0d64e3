//! Relay integration tests: everything over real TLS and WebSockets on 127.0.0.1:0, with the
//! wire-level client from `cove-test-utils`. One binary, one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod accounts;
mod admins;
mod auth;
mod blobs_s3;
mod cluster;
mod device_lists;
mod durability;
mod fuzz_corpus;
mod groups;
mod health;
mod hostile;
mod keypackages;
mod last_seen;
mod limits;
mod link;
mod logs;
mod membership;
mod postgres;
mod quotas;
mod resources;
mod retention;
mod secrets;
mod slow_reader;
mod turn;
mod validation;

use std::future::Future;
use std::task::{Context, Poll, Waker};

use cove_test_utils::{DeviceKeys, TestClient, TestRelay};
use cove_wire::{Delivery, DeviceId, Epoch, GroupEntry, GroupId, InboxEntry, Seq, Stream};

/// The group entry of a delivery (panics on an inbox delivery).
pub fn group_entry(d: Delivery) -> GroupEntry {
    match d {
        Delivery::Group(e) => e,
        Delivery::Inbox(e) => panic!("expected a group entry, got inbox entry {}", e.seq),
    }
}

/// The inbox entry of a delivery (panics on a group delivery).
pub fn inbox_entry(d: Delivery) -> InboxEntry {
    match d {
        Delivery::Inbox(e) => e,
        Delivery::Group(e) => panic!("expected an inbox entry, got group entry {}", e.seq),
    }
}

/// Alice creates a group and adds `others` in one commit (epoch 0 → 1). Each added device
/// must be online (its client given) so it reads its Welcome; returns the group.
pub async fn group_with(
    creator: &mut TestClient,
    others: &mut [(&mut TestClient, &DeviceKeys)],
) -> GroupId {
    let group = cove_test_utils::random_group_id();
    creator.create_group(group).await.unwrap();
    if others.is_empty() {
        return group;
    }
    let added: Vec<DeviceId> = others.iter().map(|(_, k)| k.id()).collect();
    let seq = creator
        .commit(
            group,
            Epoch(0),
            added,
            vec![],
            Some(b"welcome"),
            b"commit-add",
        )
        .await
        .unwrap();
    for (client, _) in others.iter_mut() {
        let welcome = inbox_entry(client.next_delivery().await.unwrap());
        assert_eq!(welcome.payload.as_bytes(), b"welcome");
        client.ack(Stream::Inbox, welcome.seq).await.unwrap();
        // The commit itself is delivered to the new member too (its cursor starts at it).
        let _ = seq;
    }
    group
}

/// Reads deliveries until `n` group entries of `group` arrived; returns them in order.
pub async fn read_group_entries(
    client: &mut TestClient,
    group: GroupId,
    n: usize,
) -> Vec<GroupEntry> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Delivery::Group(e) = client.next_delivery().await.unwrap()
            && e.group == group
        {
            out.push(e);
        }
    }
    out
}

/// Asserts seqs are strictly increasing.
pub fn assert_in_order(entries: &[GroupEntry]) {
    let seqs: Vec<Seq> = entries.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seqs:?}"
    );
}

/// A relay with the memory store (most tests) — SQLite is used where durability matters.
pub async fn relay() -> TestRelay {
    TestRelay::memory().await
}

/// Polls `condition` every 10 ms until it holds; fails the test after
/// [`cove_test_utils::DEFAULT_TIMEOUT`] (only to stop a hung test).
pub async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + cove_test_utils::DEFAULT_TIMEOUT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Runs `future` to completion in a single poll, so that no other task of this thread's
/// runtime runs meanwhile. In a `current_thread` test that is the whole in-process relay:
/// requests sent this way one after another are all in the relay's sockets before it reads
/// any of them. Panics if the future would have to wait.
pub fn complete_without_yielding<F: Future>(future: F) -> F::Output {
    // `unconstrained`: tokio's cooperative budget must not make the poll return early.
    let mut future = std::pin::pin!(tokio::task::unconstrained(future));
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future could not complete without waiting"),
    }
}
