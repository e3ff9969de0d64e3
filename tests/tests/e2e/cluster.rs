//! Relays that scale out (issue 15), end to end: real `cove-server` processes on one
//! PostgreSQL database and one NATS server, blobs in S3 (`s3s-fs`), behind a TCP load
//! balancer (`cove_test_utils::cluster`), with real `cove` devices connected through the
//! balancer or pinned to given nodes.
//!
//! The nodes run the built `cove-server` binary: after changing the relay, run
//! `cargo build -p cove-server` before `cargo test -p cove-e2e --test e2e cluster`.

use cove_test_utils::cluster::{Cluster, ClusterOptions};
use cove_test_utils::{DeviceKeys, TestClient, ws_url};

/// The harness itself, with PostgreSQL only (no bus, no S3): the balancer hands new
/// connections to the nodes in turn, a user registered through one node authenticates
/// through another (one store), a killed node is skipped, and a restarted node is back on
/// its address and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_spreads_connections_skips_a_killed_node_and_uses_it_again_after_restart() {
    let mut cluster = Cluster::start_with(
        2,
        ClusterOptions {
            bus: false,
            s3: false,
            turn: false,
            ..ClusterOptions::default()
        },
    );
    let tls = cluster.tls();
    let mut keys = DeviceKeys::generate("alice");
    let mut first = TestClient::connect(&ws_url(cluster.balancer_addr()), tls.clone())
        .await
        .unwrap();
    first.register(&mut keys).await.unwrap();
    first.close().await;
    let mut second = TestClient::connect(&ws_url(cluster.balancer_addr()), tls.clone())
        .await
        .unwrap();
    second.authenticate(&keys).await.unwrap();
    assert_eq!(
        cluster.balanced(),
        vec![1, 1],
        "one connection to each node"
    );
    second.close().await;

    cluster.kill9(0);
    for _ in 0..2 {
        let mut c = TestClient::connect(&ws_url(cluster.balancer_addr()), tls.clone())
            .await
            .unwrap();
        c.authenticate(&keys).await.unwrap();
        c.close().await;
    }
    assert_eq!(
        cluster.balanced(),
        vec![1, 3],
        "the killed node was skipped"
    );

    cluster.restart(0);
    let mut on_first = TestClient::connect(&ws_url(cluster.node_addr(0)), tls.clone())
        .await
        .unwrap();
    on_first.authenticate(&keys).await.unwrap();
    on_first.close().await;
    let mut c = TestClient::connect(&ws_url(cluster.balancer_addr()), tls)
        .await
        .unwrap();
    c.authenticate(&keys).await.unwrap();
    c.close().await;
    assert_eq!(
        cluster.balanced(),
        vec![2, 3],
        "the restarted node is used again"
    );
}
