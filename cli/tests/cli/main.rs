//! The `cove` binary end to end: a real relay (in-process, 127.0.0.1:0, TLS, SQLite) and two
//! users driven only through the CLI, each with its own home directory.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod files;

use std::path::Path;
use std::process::{Command, Output};

use cove_server::{Relay, RelayConfig, StoreKind};

fn cove(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cove"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("COVE_HOME")
        .output()
        .expect("running cove")
}

/// Runs `cove` and returns its stdout, failing the test with its stderr if it failed.
fn ok(home: &Path, args: &[&str]) -> String {
    let out = cove(home, args);
    assert!(
        out.status.success(),
        "cove {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `cove`, expects a failure, and returns its stderr.
fn fails(home: &Path, args: &[&str]) -> String {
    let out = cove(home, args);
    assert!(!out.status.success(), "cove {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_create_add_send_sync_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = StoreKind::Sqlite;
    let relay = Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_str().unwrap().to_owned();
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");

    // The CLI blocks; run it off the runtime's threads.
    let (alice2, bob2) = (alice.clone(), bob.clone());
    let bob_laptop = dir.path().join("bob-laptop");
    let lines = tokio::task::spawn_blocking(move || {
        let (alice, bob) = (alice2.as_path(), bob2.as_path());
        let out = ok(
            alice,
            &["init", "--server", &server, "--user", "alice", "--ca", &ca],
        );
        assert!(out.contains("alice"), "{out}");
        ok(
            bob,
            &["init", "--server", &server, "--user", "bob", "--ca", &ca],
        );
        // bob's second device, linked from the first.
        let out = ok(
            &bob_laptop,
            &["device", "link", "--from", bob.to_str().unwrap()],
        );
        assert!(out.contains("of bob"), "{out}");
        ok(alice, &["group", "create", "friends"]);
        ok(alice, &["group", "add", "friends", "bob"]);
        ok(alice, &["send", "friends", "hello bob"]);
        ok(alice, &["send", "friends", "second message"]);

        let out = ok(bob, &["sync", "--json"]);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        // The second device received the same messages.
        let laptop = ok(&bob_laptop, &["sync", "--json"]);
        let laptop: Vec<serde_json::Value> = laptop
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(laptop.len(), 2);
        assert_eq!(laptop[0]["id"], lines[0]["id"]);

        // A second sync shows nothing new; bob answers; alice sees only bob's message.
        assert_eq!(ok(bob, &["sync", "--json"]), "");
        ok(bob, &["send", "friends", "hi alice"]);
        let out = ok(alice, &["sync"]);
        assert_eq!(out.trim(), "friends <bob> hi alice");
        let groups = ok(bob, &["groups"]);
        assert!(
            groups.contains("friends") && groups.contains("alice, bob"),
            "{groups}"
        );
        let history = ok(bob, &["history", "friends", "--json"]);
        assert_eq!(history.lines().count(), 3);
        // Both see the same safety number.
        let a = ok(alice, &["safety-number", "bob"]);
        let b = ok(bob, &["safety-number", "alice"]);
        assert_eq!(a, b);
        assert!(a.trim().split(' ').count() >= 6, "{a}");
        lines
    })
    .await
    .unwrap();

    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, text) in lines.iter().zip(["hello bob", "second message"]) {
        assert_eq!(line["group"], "friends");
        assert_eq!(line["from"], "alice");
        assert_eq!(line["text"], text);
        assert_eq!(line["id"].as_str().unwrap().len(), 32);
        assert!(line["sent_at"].as_u64().unwrap() > 1_600_000_000_000);
    }
    assert_ne!(lines[0]["id"], lines[1]["id"]);
    relay.shutdown().await;
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("nobody");
    let err = fails(&home, &["send", "friends", "hi"]);
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("not initialised") && err.contains("cove init"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let err = fails(
        &home,
        &["init", "--server", "http://x:1", "--user", "alice"],
    );
    assert!(
        err.starts_with("error: ") && err.contains("wss://"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!home.join("config.toml").exists());

    // Nobody listens on this port: a clear error after the timeout, not a hang or a panic.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = fails(
        &home,
        &[
            "init",
            "--server",
            &format!("wss://127.0.0.1:{port}"),
            "--user",
            "al",
        ],
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("not connected") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // A failed init leaves nothing behind, so it can simply be run again.
    assert!(!home.join("config.toml").exists() && !home.join("cove.db").exists());
}

#[test]
fn every_command_has_help_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &["init"][..],
        &["group", "create"],
        &["group", "add"],
        &["group", "remove"],
        &["group", "leave"],
        &["groups"],
        &["send"],
        &["sync"],
        &["listen"],
        &["history"],
        &["safety-number"],
        &["device", "link"],
        &["demo"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = ok(dir.path(), &args);
        assert!(
            out.contains("Example"),
            "cove {cmd:?} --help has no example:\n{out}"
        );
    }
}
