//! Durability: the real `cove-server` binary is killed with SIGKILL right after acknowledging
//! posts and restarted on the same data directory; nothing acknowledged is lost.

use std::path::Path;

use cove_test_utils::{DeviceKeys, SpawnedRelay, TestRelay};
use cove_wire::{Epoch, ErrorCode, PostKind, Reply, Request};

use crate::{assert_in_order, group_entry, inbox_entry};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove-server"))
}

#[tokio::test]
async fn kill_9_and_restart_lose_no_acknowledged_post() {
    let data = cove_test_utils::temp_dir();
    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();

    let mut alice_keys = DeviceKeys::generate("alice");
    let mut alice = relay.connect().await.unwrap();
    alice.register(&mut alice_keys).await.unwrap();
    let mut bob_keys = DeviceKeys::generate("bob");
    let mut bob = relay.connect().await.unwrap();
    bob.register(&mut bob_keys).await.unwrap();
    bob.close().await;
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    alice
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

    // Many posts in flight at once (so the relay batches them), then SIGKILL right after
    // the last acknowledgement.
    let n = 200;
    let mut ids = Vec::new();
    for i in 0..n {
        let body = Request::Post {
            group,
            epoch: Epoch(1),
            kind: PostKind::Application,
            payload: format!("durable {i}").into_bytes().into(),
        };
        ids.push(alice.send_request(body).await.unwrap());
    }
    let mut acknowledged = Vec::new();
    for id in ids {
        match alice.response(id).await.unwrap() {
            Ok(Reply::Posted { seq }) => acknowledged.push(seq),
            other => panic!("post refused: {other:?}"),
        }
    }
    relay.kill9().unwrap();

    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let mut bob = relay.connect().await.unwrap();
    bob.authenticate(&bob_keys).await.unwrap();
    let backlog = bob.backlog().await.unwrap();
    let welcome = inbox_entry(backlog[0].clone());
    assert_eq!(welcome.payload.as_bytes(), b"welcome");
    let entries: Vec<_> = backlog.into_iter().skip(1).map(group_entry).collect();
    assert_eq!(entries.len(), n, "every acknowledged post survived");
    assert_in_order(&entries);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        acknowledged
    );
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.payload.as_bytes(), format!("durable {i}").as_bytes());
    }
    // The directory and the group survived too: Alice logs in, the epoch is 1.
    let mut alice = relay.connect().await.unwrap();
    alice.authenticate(&alice_keys).await.unwrap();
    let Reply::Groups { groups } = alice.call(Request::ListGroups).await.unwrap() else {
        panic!()
    };
    assert_eq!(groups[0].epoch, Epoch(1));
}

#[tokio::test]
async fn the_certificate_is_created_once_and_reused() {
    let data = cove_test_utils::temp_dir();
    let first = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let pem = std::fs::read(data.path().join("tls/cert.pem")).unwrap();
    first.kill9().unwrap();
    let second = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    assert_eq!(
        std::fs::read(data.path().join("tls/cert.pem")).unwrap(),
        pem
    );
    // The client trusting the saved certificate connects.
    second.connect().await.unwrap();
    assert!(data.path().join("relay.db").exists());
}

#[tokio::test]
async fn graceful_shutdown_tells_connected_devices() {
    let relay = TestRelay::sqlite().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    alice.backlog().await.unwrap();
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    alice.post_app(group, Epoch(0), b"kept").await.unwrap();
    let addr = relay.addr();
    relay.shutdown().await;
    let (_, closing) = alice.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::Unavailable));
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn sigterm_shuts_the_binary_down_cleanly() {
    let data = cove_test_utils::temp_dir();
    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let mut keys = DeviceKeys::generate("alice");
    let mut alice = relay.connect().await.unwrap();
    alice.register(&mut keys).await.unwrap();
    alice.backlog().await.unwrap();
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    let first = alice.post_app(group, Epoch(0), b"one").await.unwrap();
    alice.post_app(group, Epoch(0), b"two").await.unwrap();
    // Acks may be buffered by the store; a graceful shutdown writes them.
    alice
        .ack(cove_wire::Stream::Group(group), first)
        .await
        .unwrap();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(relay.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let (_, closing) = alice.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::Unavailable));
    assert!(
        relay.wait_exit().unwrap().success(),
        "clean exit after SIGTERM"
    );
    // Restart on the same directory: the device is still registered, the ack was kept.
    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let mut again = relay.connect().await.unwrap();
    again.authenticate(&keys).await.unwrap();
    let backlog: Vec<_> = again
        .backlog()
        .await
        .unwrap()
        .into_iter()
        .map(group_entry)
        .collect();
    assert_eq!(backlog.len(), 1, "only the unacked post comes again");
    assert_eq!(backlog[0].payload.as_bytes(), b"two");
}
