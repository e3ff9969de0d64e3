//! What other users wrote prints escaped on one line (issue 10 item 5), and `cove group info`
//! shows the same epoch and authenticator on every member.

use std::process::{Command, Stdio};

use super::{init, ok, relay};

/// A text with a screen-clearing escape, a carriage return, a newline followed by a fake
/// message line and a right-to-left override.
const HOSTILE: &str = "hi\u{1b}[2J\rX\nfriends <alice> send me your password \u{202e}gnp.exe";
/// How `HOSTILE` from alice in `friends` prints: one line, every such character escaped.
const SHOWN: &str = "friends <alice> hi\\u{1b}[2J\\rX\\nfriends <alice> send me your password \
                     \\u{202e}gnp.exe";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_message_prints_escaped_on_one_line_in_sync_history_and_listen() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob, carol) = (d.join("alice"), d.join("bob"), d.join("carol"));
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        init(&carol, &server, &ca, "carol");
        ok(&alice, &["group", "create", "friends"]);
        ok(&alice, &["group", "add", "friends", "bob", "carol"]);
        ok(&bob, &["sync"]);
        ok(&carol, &["sync"]);

        let mut listen = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(&bob)
            .arg("listen")
            .env_remove("COVE_HOME")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = crate::lines_of(vec![
            Box::new(listen.stdout.take().unwrap()),
            Box::new(listen.stderr.take().unwrap()),
        ]);
        // A generous deadline per line, only against a hang.
        let next = || rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap();
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|l: &String| l.starts_with("listening as bob"))
        {
            seen.push(next());
        }
        ok(&alice, &["send", "friends", HOSTILE]);
        // Bob's listen prints the message as one line; the sentinel after it proves no
        // second line (the fake one) came out of it.
        ok(&alice, &["send", "friends", "sentinel"]);
        let mut printed = Vec::new();
        loop {
            let line = next();
            let line = if line.starts_with("listening") || line.starts_with("-- ") {
                line
            } else {
                crate::strip_stamp(&line).to_owned()
            };
            if line.starts_with("friends <alice> ") {
                printed.push(line.clone());
            }
            if line == "friends <alice> sentinel" {
                break;
            }
            seen.push(line);
        }
        listen.kill().unwrap();
        listen.wait().unwrap();
        assert_eq!(
            printed,
            [SHOWN, "friends <alice> sentinel"],
            "listen, after {seen:?}"
        );

        let sync = crate::plain(&ok(&carol, &["sync"]));
        assert_eq!(sync, format!("{SHOWN}\nfriends <alice> sentinel\n"), "sync");
        let history = crate::plain(&ok(&carol, &["history", "friends"]));
        assert_eq!(
            history,
            format!("{SHOWN}\nfriends <alice> sentinel\n"),
            "history"
        );
        // JSON stays JSON and carries the text as it was sent.
        let json = ok(&bob, &["history", "friends", "--json"]);
        let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(first["text"], HOSTILE);
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_named_with_control_characters_prints_escaped_in_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob) = (d.join("alice"), d.join("bob"));
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        let name = "evil\u{1b}]0;pwned\u{7}\u{202e}\nname";
        ok(&alice, &["group", "create", name]);
        ok(&alice, &["group", "add", name, "bob"]);
        ok(&bob, &["sync"]);
        let groups = ok(&bob, &["groups"]);
        assert_eq!(groups.lines().count(), 1, "{groups}");
        assert!(
            groups.starts_with("evil\\u{1b}]0;pwned\\u{7}\\u{202e}\\nname  "),
            "{groups}"
        );
        assert!(groups.ends_with("  members: alice, bob\n"), "{groups}");
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// `cove group info --json` of one member, parsed.
fn info(home: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&ok(home, &["group", "info", "friends", "--json"])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_info_shows_the_same_epoch_and_authenticator_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob, carol) = (d.join("alice"), d.join("bob"), d.join("carol"));
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        init(&carol, &server, &ca, "carol");
        ok(&alice, &["group", "create", "friends"]);
        ok(&alice, &["group", "add", "friends", "bob"]);
        ok(&bob, &["sync"]);

        let (a, b) = (info(&alice), info(&bob));
        assert_eq!(a, b, "alice and bob see the same group state");
        assert_eq!(a["name"], "friends");
        let auth = a["epoch_authenticator"].as_str().unwrap().to_owned();
        assert_eq!(auth.len(), 64, "{a}");
        let users: Vec<&str> = a["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user"].as_str().unwrap())
            .collect();
        assert_eq!(users, ["alice", "bob"]);
        let epoch = a["epoch"].as_u64().unwrap();

        // The human form names the same values.
        let text = ok(&bob, &["group", "info", "friends"]);
        assert!(
            text.starts_with(&format!("group friends ({}) ", a["id"].as_str().unwrap())),
            "{text}"
        );
        assert!(text.contains(&format!("  epoch {epoch}\n")), "{text}");
        assert!(
            text.contains(&format!("\nepoch authenticator {auth}\n")),
            "{text}"
        );
        assert!(
            text.contains("\nmembers (2 devices):\n  alice  device "),
            "{text}"
        );

        // A member change: both move to the same new epoch and authenticator.
        ok(&alice, &["group", "add", "friends", "carol"]);
        ok(&bob, &["sync"]);
        let (a2, b2) = (info(&alice), info(&bob));
        assert_eq!(a2, b2, "alice and bob agree after the change");
        assert_eq!(a2["epoch"].as_u64().unwrap(), epoch + 1);
        assert_ne!(a2["epoch_authenticator"].as_str().unwrap(), auth);
        assert_eq!(a2["members"].as_array().unwrap().len(), 3);
        // An unknown group: an error on one line, the name as typed shown escaped.
        let err = super::fails(&carol, &["group", "info", "no\u{1b}[2Jpe"]);
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("no\\u{1b}[2Jpe"), "{err}");
        assert!(!err.contains('\u{1b}'), "{err}");
    })
    .await
    .unwrap();
    relay.shutdown().await;
}
