//! Crashes, meaning killed processes: the relay binary killed with SIGKILL between send and
//! delivery, and the `cove` CLI killed with SIGKILL in the middle of processing its backlog.
//! A killed process loses what it had in memory, not what the kernel has (the page cache
//! survives), so these tests say nothing about power loss or a missing fsync.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use cove::Device;
use cove::config::Home;

use crate::support::*;

/// Messages the relay acknowledged survive `kill -9` of the relay: a member who was offline
/// receives all of them after the restart, and so does one who was online, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_relay_between_send_and_delivery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let relay = RelayProcess::spawn(&data, "127.0.0.1:0");
    let addr = relay.addr;
    let server = format!("wss://{addr}");
    let ca = data.join("tls").join("cert.pem");
    let home = |n: &str| Home::new(dir.path().join(n));
    let alice = register(&home("alice"), &server, "alice", &ca).await;
    let mut bob = register(&home("bob"), &server, "bob", &ca).await;
    let mut carol = register(&home("carol"), &server, "carol", &ca).await;
    alice.create_group("g").await.unwrap();
    alice
        .add_users("g", &names(&["bob", "carol"]))
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;

    // bob is offline; carol is online. alice's sends complete when the relay has them.
    bob.close_now().await;
    let first: Vec<String> = (0..10).map(|i| format!("before the crash {i}")).collect();
    for text in &first {
        alice.send_text("g", text).await.unwrap();
    }
    relay.kill9();

    // Same data directory, same address.
    let relay = RelayProcess::spawn(&data, &addr.to_string());
    assert_eq!(relay.addr, addr);
    let mut bob = Device::open(&home("bob")).await.unwrap();

    // alice's session reconnects by itself and the group works after the restart: her
    // sentinel, sent now, is the last entry of the log.
    alice.send_text("g", SENTINEL).await.unwrap();
    let got = before_sentinel(&mut bob).await;
    assert_eq!(texts(&got), first, "bob after the relay restart");

    // carol may have received some before the crash; in total she has each exactly once.
    let on_carol = before_sentinel(&mut carol).await;
    assert_eq!(texts(&on_carol), first, "carol across the relay restart");

    let history: Vec<String> = carol
        .history("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(history[..first.len()], first[..]);
    for d in [alice, bob, carol] {
        d.close().await;
    }
    drop(relay);
}

/// `cove listen` is killed with SIGKILL while it processes a backlog; on the next start the
/// device has every message exactly once, in order, and shows the rest without repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_processing_resumes_without_loss_or_repetition() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;
    bob.close().await;

    let sent: Vec<String> = (0..150)
        .map(|i| format!("backlog message {i:03}"))
        .collect();
    for text in &sent {
        alice.send_text("g", text).await.unwrap();
    }

    // bob's CLI starts processing the backlog and is killed after a few messages.
    let cove = workspace_binary("cove-cli", "cove");
    let mut listen = Command::new(&cove)
        .arg("--home")
        .arg(net.home("bob").dir())
        .args(["listen", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listen.stdout.take().unwrap()).lines();
    let mut shown = Vec::new();
    for _ in 0..10 {
        let line = lines
            .next()
            .expect("cove listen printed too little")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        shown.push(v["text"].as_str().unwrap().to_owned());
    }
    listen.kill().unwrap(); // SIGKILL
    listen.wait().unwrap();
    // Whatever it printed before dying.
    for line in lines.map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        shown.push(v["text"].as_str().unwrap().to_owned());
    }

    // Restart: everything is there once, in order.
    let mut bob = Device::open(&net.home("bob")).await.unwrap();
    bob.settle().await.unwrap();
    let mut history = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while history.len() < sent.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob has {} of {} messages",
            history.len(),
            sent.len()
        );
        bob.settle().await.unwrap();
        history = bob.history("g").await.unwrap();
        if history.len() < sent.len() {
            // Poll interval only: the loop condition decides.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let texts: Vec<String> = history.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, sent, "bob's history after the crash");
    // What the CLI had shown comes first, in order; the rest is shown now, none twice.
    assert_eq!(shown[..], sent[..shown.len()]);
    let rest = bob.sync().await.unwrap();
    let rest: Vec<String> = rest.into_iter().map(|m| m.text).collect();
    // At most the one message being shown at the moment of the kill is shown again.
    assert!(
        rest.len() <= sent.len() - shown.len() + 1,
        "{} shown again",
        rest.len()
    );
    let mut all = shown.clone();
    all.extend(rest.iter().filter(|t| !shown.contains(t)).cloned());
    assert_eq!(all, sent, "shown before the kill + shown after");
    alice.close().await;
    bob.close().await;
}
