//! Issue 13 through the CLI binary: replies, reactions, edits, deletes, group settings
//! (rename, describe, admins, mute, disappearing messages, info), unread counts and search,
//! each with its errors for bad input. A real relay; each user a `cove` home of its own.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{fails, init, ok, plain, relay};

/// alice, bob and carol in `friends` (alice made it), everyone synced.
fn three_friends(d: &Path, server: &str, ca: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (alice, bob, carol) = (d.join("alice"), d.join("bob"), d.join("carol"));
    init(&alice, server, ca, "alice");
    init(&bob, server, ca, "bob");
    init(&carol, server, ca, "carol");
    ok(&alice, &["group", "create", "friends"]);
    ok(&alice, &["group", "add", "friends", "bob", "carol"]);
    ok(&bob, &["sync"]);
    ok(&carol, &["sync"]);
    (alice, bob, carol)
}

/// `cove history GROUP --json` of `home`, one object per message.
fn history(home: &Path, group: &str) -> Vec<Value> {
    ok(home, &["history", group, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// The short id (8 hex digits) of the message of `group` whose text is `text`, as `home`
/// shows it.
fn short_id(home: &Path, group: &str, text: &str) -> String {
    let all = history(home, group);
    let m = all
        .iter()
        .find(|m| m["text"] == text)
        .unwrap_or_else(|| panic!("no message {text:?} in {all:#?}"));
    m["id"].as_str().unwrap()[..8].to_owned()
}

/// An 8-digit id prefix that no message of `group` has.
fn unknown_id(home: &Path, group: &str) -> String {
    let ids: Vec<String> = history(home, group)
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    (0u32..)
        .map(|n| format!("{n:08x}"))
        .find(|p| !ids.iter().any(|id| id.starts_with(p.as_str())))
        .unwrap()
}

/// `cove reply` and `cove react` (and `--remove`): every member's history shows the quote and
/// the counts, in lines and JSON; an unknown id and a word for an emoji are refused with
/// their own errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_and_react_show_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob, carol) = three_friends(&d, &server, &ca);
        ok(&alice, &["send", "friends", "dinner at 8?"]);
        let synced = plain(&ok(&bob, &["sync"]));
        assert_eq!(synced.trim(), "friends <alice> dinner at 8?");
        let id = short_id(&bob, "friends", "dinner at 8?");

        let out = ok(&bob, &["reply", "friends", &id, "yes, 8 is fine"]);
        assert_eq!(out.trim(), "replied in friends");
        assert_eq!(
            ok(&carol, &["react", "friends", &id, "👍"]).trim(),
            "reacted in friends"
        );
        ok(&bob, &["react", "friends", &id.to_uppercase(), "👍"]);
        ok(&bob, &["react", "friends", &id[..6], "❤️"]);
        ok(&bob, &["react", "friends", &id, "❤️", "--remove"]);
        ok(&alice, &["sync"]);
        ok(&carol, &["sync"]);
        let want = "friends <alice> dinner at 8?  👍 2\n\
                    friends <bob> [↪ alice: dinner at 8?] yes, 8 is fine\n";
        for home in [&alice, &bob, &carol] {
            assert_eq!(plain(&ok(home, &["history", "friends"])), want, "{home:?}");
        }
        let json = history(&alice, "friends");
        assert_eq!(json[0]["reactions"][0]["emoji"], "👍");
        assert_eq!(
            json[0]["reactions"][0]["users"],
            serde_json::json!(["carol", "bob"])
        );
        assert!(json[0]["id"].as_str().unwrap().starts_with(&id));
        assert_eq!(json[1]["reply_to"]["id"], json[0]["id"]);
        assert_eq!(json[1]["reply_to"]["from"], "alice");
        assert_eq!(json[1]["text"], "yes, 8 is fine");

        let unknown = unknown_id(&bob, "friends");
        let err = fails(&bob, &["reply", "friends", &unknown, "to nothing"]);
        assert_eq!(
            err.trim(),
            format!("error: no message with id \"{unknown}\" in this group")
        );
        let err = fails(&bob, &["react", "friends", &id, "thumbsup"]);
        assert!(
            err.starts_with("error: invalid argument: \"thumbsup\" is not an emoji"),
            "{err}"
        );
        // Nothing of the refused commands reached anyone.
        ok(&alice, &["send", "friends", "sentinel"]);
        assert_eq!(
            plain(&ok(&carol, &["sync"])).trim(),
            "friends <alice> sentinel"
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// `cove edit` and `cove delete`: the author edits (every member shows `(edited)`) and
/// deletes (`(deleted)`); another member's edit is refused as not the author's, and a
/// non-admin's delete of another's message as not an admin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_and_delete_are_the_authors() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob, carol) = three_friends(&d, &server, &ca);
        ok(&alice, &["send", "friends", "see you at 8"]);
        ok(&alice, &["send", "friends", "bring the salad"]);
        ok(&bob, &["sync"]);
        let first = short_id(&alice, "friends", "see you at 8");
        let second = short_id(&alice, "friends", "bring the salad");

        assert_eq!(
            ok(&alice, &["edit", "friends", &first, "see you at 9"]).trim(),
            "edited in friends"
        );
        assert_eq!(
            ok(&alice, &["delete", "friends", &second]).trim(),
            "deleted in friends"
        );
        let err = fails(&bob, &["edit", "friends", &first, "see you never"]);
        assert_eq!(
            err.trim(),
            "error: only the author of a message can edit it"
        );
        let err = fails(&bob, &["delete", "friends", &first]);
        assert_eq!(
            err.trim(),
            "error: only an admin of group \"friends\" can do that"
        );
        let unknown = unknown_id(&bob, "friends");
        let err = fails(&alice, &["edit", "friends", &unknown, "x"]);
        assert_eq!(
            err.trim(),
            format!("error: no message with id \"{unknown}\" in this group")
        );

        ok(&bob, &["sync"]);
        ok(&carol, &["sync"]);
        let want = "friends <alice> see you at 9 (edited)\nfriends <alice> (deleted)\n";
        for home in [&alice, &bob, &carol] {
            assert_eq!(plain(&ok(home, &["history", "friends"])), want, "{home:?}");
        }
        let json = history(&carol, "friends");
        assert_eq!(json[0]["edited"], true);
        assert_eq!(
            (json[1]["deleted"].clone(), json[1]["text"].clone()),
            (true.into(), "".into())
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// `cove group rename|describe|admin|mute|disappearing|info` and the unread counts of
/// `cove groups`; a bad duration and a non-admin's rename are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_settings_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob, carol) = three_friends(&d, &server, &ca);
        let err = fails(&bob, &["group", "rename", "friends", "bob's"]);
        assert_eq!(
            err.trim(),
            "error: only an admin of group \"friends\" can do that"
        );
        assert_eq!(
            ok(&alice, &["group", "admin", "friends", "bob"]).trim(),
            "bob is an admin of friends"
        );
        assert_eq!(
            ok(&alice, &["group", "describe", "friends", "dinner plans"]).trim(),
            "set the description of friends"
        );
        // An avatar: uploaded encrypted like a file; a later rename keeps it.
        let picture = d.join("beach.png");
        std::fs::write(&picture, [7u8; 100]).unwrap();
        let picture = picture.to_str().unwrap();
        assert_eq!(
            ok(&alice, &["group", "avatar", "friends", picture]).trim(),
            "set the avatar of friends"
        );
        let huge = d.join("huge.png");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(5 * 1024 * 1024 + 1)
            .unwrap();
        let err = fails(
            &alice,
            &["group", "avatar", "friends", huge.to_str().unwrap()],
        );
        assert!(err.contains("an avatar is at most 5 MiB"), "{err}");
        let err = fails(&carol, &["group", "avatar", "friends", "--remove"]);
        assert_eq!(
            err.trim(),
            "error: only an admin of group \"friends\" can do that"
        );
        assert_eq!(
            ok(&alice, &["group", "disappearing", "friends", "1h"]).trim(),
            "set disappearing messages to 1h in friends"
        );
        let err = fails(&alice, &["group", "disappearing", "friends", "soon"]);
        assert_eq!(
            err.trim(),
            "error: invalid argument: \"soon\" is not a duration (e.g. 30s, 5m, 1h, 7d, or off)"
        );
        let err = fails(&carol, &["group", "mute", "friends", "8 hours"]);
        assert!(
            err.starts_with("error: invalid argument: \"8 hours\" is not a duration"),
            "{err}"
        );
        let out = ok(&carol, &["group", "mute", "friends", "8h"]);
        assert!(out.starts_with("friends is muted until "), "{out}");
        ok(&bob, &["sync"]);
        assert_eq!(
            ok(&bob, &["group", "rename", "friends", "old friends"]).trim(),
            "renamed friends"
        );
        ok(&carol, &["sync"]);

        let info: Value =
            serde_json::from_str(&ok(&carol, &["group", "info", "old friends", "--json"])).unwrap();
        assert_eq!(info["name"], "old friends");
        assert_eq!(info["description"], "dinner plans");
        assert!(
            info["avatar"].as_str() == Some("[file] beach.png (100 bytes, image/png)"),
            "{info}"
        );
        let mut admins = crate::messaging::strings(&info["admins"]);
        admins.sort();
        assert_eq!(admins, ["alice", "bob"]);
        assert_eq!(info["disappearing_secs"], 3600);
        assert!(info["muted_until_ms"].as_u64().is_some(), "{info}");
        let lines = ok(&carol, &["group", "info", "old friends"]);
        for want in [
            "group old friends (",
            "description: dinner plans",
            "avatar: [file] beach.png (100 bytes, image/png)",
            "disappearing messages: 1h",
            "muted: until ",
            "unread: 0",
        ] {
            assert!(lines.contains(want), "{want:?} in {lines}");
        }
        assert!(
            lines.contains("admins: alice, bob") || lines.contains("admins: bob, alice"),
            "{lines}"
        );
        let groups = ok(&carol, &["groups"]);
        assert!(groups.contains("  muted until "), "{groups}");
        assert_eq!(
            ok(&carol, &["group", "mute", "old friends", "off"]).trim(),
            "old friends is no longer muted"
        );
        assert!(!ok(&carol, &["groups"]).contains("muted"));

        // Unread: what alice's device received (during a send) and has not shown.
        ok(&bob, &["send", "old friends", "three"]);
        ok(&bob, &["send", "old friends", "four"]);
        ok(&alice, &["send", "old friends", "five"]);
        let groups = ok(&alice, &["groups"]);
        assert!(groups.trim_end().ends_with("  (2 unread)"), "{groups}");
        assert_eq!(
            plain(&ok(&alice, &["sync"])),
            "old friends <bob> three\nold friends <bob> four\n"
        );
        let groups = ok(&alice, &["groups"]);
        assert!(!groups.contains("unread"), "{groups}");

        assert_eq!(
            ok(&alice, &["group", "disappearing", "old friends", "off"]).trim(),
            "turned disappearing messages off in old friends"
        );
        assert_eq!(
            ok(
                &alice,
                &["group", "admin", "old friends", "bob", "--remove"]
            )
            .trim(),
            "bob is no longer an admin of old friends"
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// `cove search`: finds a message by a word, in every group or one, newest first, in
/// lines and JSON; never a deleted message; `--limit 0` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_words_but_never_deleted_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob, _carol) = three_friends(&d, &server, &ca);
        ok(&alice, &["group", "create", "work"]);
        ok(&alice, &["group", "add", "work", "bob"]);
        ok(&alice, &["send", "friends", "pizza on friday"]);
        ok(&alice, &["send", "work", "the pizza budget"]);
        ok(&alice, &["send", "friends", "salad instead"]);
        ok(&alice, &["send", "friends", "secret pizza plan"]);
        ok(&bob, &["sync"]);
        let secret = short_id(&alice, "friends", "secret pizza plan");
        ok(&alice, &["delete", "friends", &secret]);
        ok(&bob, &["sync"]);

        let found = plain(&ok(&bob, &["search", "pizza"]));
        assert_eq!(
            found,
            "work <alice> the pizza budget\nfriends <alice> pizza on friday\n"
        );
        let found = plain(&ok(&bob, &["search", "pizza", "--group", "friends"]));
        assert_eq!(found, "friends <alice> pizza on friday\n");
        let found = plain(&ok(&bob, &["search", "pizza", "--limit", "1"]));
        assert_eq!(found, "work <alice> the pizza budget\n");
        let json: Vec<Value> = ok(&bob, &["search", "salad", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(json.len(), 1);
        assert_eq!(json[0]["text"], "salad instead");
        assert_eq!(json[0]["id"].as_str().unwrap().len(), 32);
        assert!(ok(&bob, &["search", "secret"]).is_empty());
        let err = fails(&bob, &["search", "pizza", "--limit", "0"]);
        assert_eq!(
            err.trim(),
            "error: invalid argument: --limit must be 1 to 1000"
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}
