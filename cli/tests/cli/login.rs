//! `cove login` through the binary: a second machine of a user with a password account.

use std::path::PathBuf;

use crate::{fails, ok, relay};

/// The group ids (hex) in `cove groups` output, sorted.
fn group_ids(groups: &str) -> Vec<String> {
    let mut ids: Vec<String> = groups
        .lines()
        .filter_map(|l| l.split("  ").nth(1).map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// `cove login --lock --password-file` on a fresh home: a wrong password fails with the
/// `LoginFailed` message and a non-zero exit, leaving no home; the right one makes a device
/// of alice in a home locked with the same password, restores the history alice's first
/// device backed up (`cove history` shows messages from before the login, the groups carry
/// their names), whose `cove groups` lists alice's two groups (same ids, both members), and
/// whose `cove send` reaches bob, who also sees "alice added a device". A password change
/// on the first device then keeps both devices sending, and a login needs the new password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_a_password_file_restores_the_history_joins_the_groups_and_sends_to_bob() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    let laptop = dir.path().join("alice-laptop");
    let pw = dir.path().join("pw.txt");
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    std::fs::write(&wrong, "correct horse battery stapler\n").unwrap();

    let (a, b, s, c, p) = (
        alice.clone(),
        bob.clone(),
        server.clone(),
        ca.clone(),
        pw.clone(),
    );
    let alice_groups = tokio::task::spawn_blocking(move || {
        // alice's first device registers her password account (`cove init`, the real flow).
        let p = p.to_str().unwrap();
        let init = ok(
            &a,
            &[
                "--password-file",
                p,
                "init",
                "--server",
                &s,
                "--user",
                "alice",
                "--ca",
                &c,
            ],
        );
        assert!(init.contains("recovery key: "), "{init}");
        ok(
            &b,
            &[
                "init",
                "--no-account",
                "--server",
                &s,
                "--user",
                "bob",
                "--ca",
                &c,
            ],
        );
        for g in ["friends", "work"] {
            ok(&a, &["group", "create", g]);
            ok(&a, &["group", "add", g, "bob"]);
        }
        ok(&b, &["sync"]);
        // History from before the laptop exists, backed up by alice's first device.
        ok(&b, &["send", "friends", "bob before the laptop"]);
        ok(&a, &["sync"]);
        ok(&a, &["send", "work", "alice before the laptop"]);
        let backup = ok(&a, &["backup"]);
        assert!(backup.contains("backed up"), "{backup}");
        ok(&a, &["groups"])
    })
    .await
    .unwrap();

    let args = |file: &PathBuf| -> Vec<String> {
        [
            "--password-file",
            file.to_str().unwrap(),
            "login",
            "--lock",
            "--server",
            &server,
            "--user",
            "alice",
            "--ca",
            &ca,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let (wrong_args, right_args) = (args(&wrong), args(&pw));
    let (l, b, p) = (laptop.clone(), bob.clone(), pw.clone());
    let (server, ca) = (server.clone(), ca.clone());
    tokio::task::spawn_blocking(move || {
        let wrong_args: Vec<&str> = wrong_args.iter().map(String::as_str).collect();
        let err = fails(&l, &wrong_args);
        assert!(
            err.contains("login failed: wrong user name or password"),
            "{err}"
        );
        assert!(!l.exists(), "a failed login leaves no home");

        let right_args: Vec<&str> = right_args.iter().map(String::as_str).collect();
        let out = ok(&l, &right_args);
        assert!(out.contains("joined 2 group(s)"), "{out}");
        assert!(out.contains("restored 2 message(s) of history"), "{out}");
        // --lock: the new home's database key is kept only under the password.
        assert!(l.join("db.key.locked").exists() && !l.join("db.key").exists());
        let p = p.to_str().unwrap();
        let groups = ok(&l, &["--password-file", p, "groups"]);
        assert_eq!(group_ids(&groups), group_ids(&alice_groups), "{groups}");
        assert_eq!(groups.matches("members: alice, bob").count(), 2, "{groups}");
        // The backup named the groups joined by external commits, and holds their past.
        assert!(
            groups.lines().any(|g| g.starts_with("friends"))
                && groups.lines().any(|g| g.starts_with("work")),
            "{groups}"
        );
        let past = ok(&l, &["--password-file", p, "history", "friends"]);
        assert!(past.contains("<bob> bob before the laptop"), "{past}");
        let past = ok(&l, &["--password-file", p, "history", "work"]);
        assert!(past.contains("<alice> alice before the laptop"), "{past}");
        let friends = alice_groups
            .lines()
            .find(|l| l.starts_with("friends"))
            .and_then(|l| l.split("  ").nth(1))
            .unwrap()
            .to_owned();
        ok(
            &l,
            &[
                "--password-file",
                p,
                "send",
                &friends,
                "hello from alice's laptop",
            ],
        );
        let seen = ok(&b, &["sync"]);
        assert!(
            seen.contains("alice added a device (safety number unchanged)"),
            "{seen}"
        );
        assert!(
            seen.contains("friends <alice> hello from alice's laptop"),
            "{seen}"
        );

        // A password change on the first device keeps every device working: both still
        // send (the laptop's home stays locked with what it was locked with), and the next
        // login needs the new password.
        let new_pw = l.parent().unwrap().join("new-pw.txt");
        std::fs::write(&new_pw, "a brand new passphrase\n").unwrap();
        let a = l.parent().unwrap().join("alice");
        let out = ok(
            &a,
            &[
                "--password-file",
                p,
                "password",
                "change",
                "--new-password-file",
                new_pw.to_str().unwrap(),
            ],
        );
        assert!(out.contains("changed the password of alice"), "{out}");
        ok(
            &a,
            &["send", "friends", "after the change, from the first device"],
        );
        ok(
            &l,
            &[
                "--password-file",
                p,
                "send",
                &friends,
                "after the change, from the laptop",
            ],
        );
        let seen = ok(&b, &["sync"]);
        assert!(
            seen.contains("after the change, from the first device")
                && seen.contains("after the change, from the laptop"),
            "{seen}"
        );
        let tablet = l.parent().unwrap().join("alice-tablet");
        let err = fails(
            &tablet,
            &[
                "--password-file",
                p,
                "login",
                "--server",
                &server,
                "--user",
                "alice",
                "--ca",
                &ca,
            ],
        );
        assert!(
            err.contains("login failed: wrong user name or password"),
            "{err}"
        );
        let out = ok(
            &tablet,
            &[
                "--password-file",
                new_pw.to_str().unwrap(),
                "login",
                "--server",
                &server,
                "--user",
                "alice",
                "--ca",
                &ca,
            ],
        );
        assert!(out.contains("joined 2 group(s)"), "{out}");
    })
    .await
    .unwrap();
    relay.shutdown().await;
}
