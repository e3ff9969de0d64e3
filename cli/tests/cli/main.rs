//! The `cove` binary end to end: a real relay (in-process, 127.0.0.1:0, TLS, SQLite) and two
//! users driven only through the CLI, each with its own home directory.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod accounts;
mod backup;
mod daemon;
mod drive;
mod escape;
mod files;
mod link;
mod locked;
mod login;
mod messaging;
mod tui;

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

/// The lines of `streams` (a child's stdout and/or stderr), as they come, on one channel: one
/// reader thread per stream, each ending at end of file or when the receiver is gone.
fn lines_of(streams: Vec<Box<dyn std::io::Read + Send>>) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in streams {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
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

/// `out` with the time and short id that start every message line taken off, after checking
/// that they are there: `HH:MM` (or `YYYY-MM-DD HH:MM`), then 8 hex digits. Other lines
/// (`-- ...` events) stay as they are.
fn plain(out: &str) -> String {
    out.split_inclusive('\n').map(strip_stamp).collect()
}

/// One line of [`plain`].
fn strip_stamp(line: &str) -> &str {
    if line.starts_with("-- ") || line.trim().is_empty() {
        return line;
    }
    let mut rest = line;
    let (first, after) = rest.split_once(' ').unwrap_or((rest, ""));
    if first.len() == 10 && first.as_bytes()[4] == b'-' && first.as_bytes()[7] == b'-' {
        rest = after;
    }
    let (time, after) = rest.split_once(' ').unwrap_or((rest, ""));
    let t = time.as_bytes();
    assert!(
        t.len() == 5 && t[2] == b':' && [0, 1, 3, 4].iter().all(|&i| t[i].is_ascii_digit()),
        "no time at the start of {line:?}"
    );
    let (id, after) = after.split_once(' ').unwrap_or((after, ""));
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "no short id in {line:?}"
    );
    after
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
    let (relay, server, ca) = relay(dir.path()).await;
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");

    // The CLI blocks; run it off the runtime's threads.
    let (alice2, bob2) = (alice.clone(), bob.clone());
    let bob_laptop = dir.path().join("bob-laptop");
    let lines = tokio::task::spawn_blocking(move || {
        let (alice, bob) = (alice2.as_path(), bob2.as_path());
        let out = ok(
            alice,
            &[
                "init",
                "--no-account",
                "--server",
                &server,
                "--user",
                "alice",
                "--ca",
                &ca,
            ],
        );
        assert!(out.contains("alice"), "{out}");
        ok(
            bob,
            &[
                "init",
                "--no-account",
                "--server",
                &server,
                "--user",
                "bob",
                "--ca",
                &ca,
            ],
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
        let out = plain(&ok(alice, &["sync"]));
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
        &[
            "init",
            "--no-account",
            "--server",
            "http://x:1",
            "--user",
            "alice",
        ],
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
            "--no-account",
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

/// A `device link` whose new device cannot register (the relay is gone) fails with the
/// reason in one line and leaves nothing in the new home, as a failed `init` does, so it
/// can simply be run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_device_link_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let (bob, laptop) = (dir.path().join("bob"), dir.path().join("bob-laptop"));
    let home = bob.clone();
    tokio::task::spawn_blocking(move || init(&home, &server, &ca, "bob"))
        .await
        .unwrap();
    relay.shutdown().await;
    let home = laptop.clone();
    let err = tokio::task::spawn_blocking(move || {
        fails(&home, &["device", "link", "--from", bob.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("not connected") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!laptop.join("config.toml").exists() && !laptop.join("cove.db").exists());
}

#[test]
fn every_command_has_help_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &["init"][..],
        &["login"],
        &["group", "create"],
        &["group", "add"],
        &["group", "remove"],
        &["group", "leave"],
        &["group", "info"],
        &["group", "rename"],
        &["group", "describe"],
        &["group", "admin"],
        &["group", "mute"],
        &["group", "disappearing"],
        &["groups"],
        &["reply"],
        &["react"],
        &["edit"],
        &["delete"],
        &["search"],
        &["send"],
        &["sync"],
        &["listen"],
        &["history"],
        &["safety-number"],
        &["device", "link"],
        &["device", "list"],
        &["device", "join"],
        &["device", "revoke"],
        &["demo"],
        &["recovery-key", "show"],
        &["password", "change"],
        &["password", "reset"],
        &["account", "delete"],
        &["backup"],
        &["restore-history"],
        &["daemon"],
        &["unlock"],
        &["tui"],
        &["drive"],
        &["drive", "ls"],
        &["drive", "put"],
        &["drive", "get"],
        &["drive", "mkdir"],
        &["drive", "mv"],
        &["drive", "rm"],
        &["drive", "restore"],
        &["drive", "empty-trash"],
        &["drive", "versions"],
        &["drive", "share"],
        &["drive", "unshare"],
        &["drive", "shared"],
        &["drive", "link"],
        &["drive", "usage"],
        &["drive", "sync"],
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

/// A relay on 127.0.0.1:0 (TLS, SQLite) and the `--server`/`--ca` arguments for `cove init`.
async fn relay(dir: &Path) -> (cove_server::RelayHandle, String, String) {
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("relay"));
    config.store = StoreKind::Sqlite;
    let relay = Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_str().unwrap().to_owned();
    (relay, server, ca)
}

fn init(home: &Path, server: &str, ca: &str, user: &str) {
    ok(
        home,
        &[
            "init",
            "--no-account",
            "--server",
            server,
            "--user",
            user,
            "--ca",
            ca,
        ],
    );
}

/// Posts bytes that are no MLS message to `group` (by name) as the device of `home`, on a
/// raw connection authenticated as it (the relay stores what a member posts; it cannot read
/// it): every other member skips the entry with a warning. `tag` makes the bytes differ from
/// an earlier call's (the relay takes a repeated post as a retry). Returns the entry's
/// position and the group's id (hex). Runs from a blocking thread of the test's runtime; no
/// `cove` process may hold `home` meanwhile.
fn post_garbage(home: &Path, group: &str, tag: &str) -> (u64, String) {
    use cove_wire::{GroupId, Payload, PostKind, Reply, Request};
    tokio::runtime::Handle::current().block_on(async {
        let device = cove::Device::open_offline(&cove::config::Home::new(home.to_owned()))
            .await
            .unwrap();
        let view = device
            .groups()
            .await
            .unwrap()
            .into_iter()
            .find(|g| g.name == group)
            .expect("a member of the group");
        let post = Request::Post {
            group: GroupId::from_hex(&view.id).unwrap(),
            epoch: cove_wire::Epoch(view.epoch),
            kind: PostKind::Application,
            payload: Payload(format!("this is not an MLS message ({tag})").into_bytes()),
        };
        let reply = device.probe(post).await.unwrap();
        device.close_now().await;
        match reply {
            Ok(Reply::Posted { seq }) => (seq.0, view.id),
            other => panic!("the relay answered the post with {other:?}"),
        }
    })
}

/// The warning a member prints for the entry [`post_garbage`] posted at `seq` in `group`.
fn garbage_warning(seq: u64, group: &str) -> String {
    format!("skipped entry {seq} of group {group} from device ")
}

/// `cove sync` prints every warning of the core: on stderr as `warning: ...`, with `--json`
/// as a `{"warning": ...}` line on stdout. The warning used here: bob's device posts an
/// entry that is no MLS message to the group (through the real relay), which alice skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_prints_the_cores_warnings_on_stderr_and_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob) = (d.join("alice"), d.join("bob"));
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        ok(&alice, &["group", "create", "friends"]);
        ok(&alice, &["group", "add", "friends", "bob"]);
        ok(&bob, &["sync"]);
        ok(&alice, &["sync"]);

        let (seq, group) = post_garbage(&bob, "friends", "1");
        let out = cove(&alice, &["sync"]);
        assert!(out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("warning: "))
            .collect();
        assert_eq!(warnings.len(), 1, "{stderr}");
        assert!(
            warnings[0].starts_with(&format!("warning: {}", garbage_warning(seq, &group))),
            "{stderr}"
        );
        assert!(warnings[0].contains("undecodable MLS message"), "{stderr}");

        // Again with --json: the warning is a JSON line of its own.
        let (seq, group) = post_garbage(&bob, "friends", "2");
        let out = ok(&alice, &["sync", "--json"]);
        let warnings: Vec<String> = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON lines"))
            .filter_map(|v| v["warning"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(warnings.len(), 1, "{out}");
        assert!(
            warnings[0].starts_with(&garbage_warning(seq, &group)),
            "{out}"
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// A second `group create` of a name this device already has is refused with a clear
/// error, and the name keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_group_name_is_refused_and_the_first_group_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let alice = d.join("alice");
        init(&alice, &server, &ca, "alice");
        ok(&alice, &["group", "create", "friends"]);
        let err = fails(&alice, &["group", "create", "friends"]);
        assert_eq!(
            err.trim_end(),
            "error: a group named \"friends\" already exists; choose another name"
        );
        let groups = ok(&alice, &["groups"]);
        assert_eq!(groups.lines().count(), 1, "{groups}");
        ok(&alice, &["send", "friends", "still one group"]);
        assert_eq!(ok(&alice, &["history", "friends"]).lines().count(), 1);
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Through the binaries: bob's first device lists both of his devices (the linked one added
/// to the signed list) with their relay ids and last-seen times, revokes the laptop by a key
/// prefix, and from then on the laptop's `cove sync` fails with the relay's reason, while the
/// list shows it revoked with its id and last login. With the relay gone, the list is still
/// shown, ids and last seen unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_list_shows_both_devices_and_a_revoked_laptop_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    let bob_home = d.join("bob");
    tokio::task::spawn_blocking(move || {
        let bob = d.join("bob");
        let laptop = d.join("bob-laptop");
        init(&bob, &server, &ca, "bob");
        ok(
            &laptop,
            &["device", "link", "--from", bob.to_str().unwrap()],
        );
        let out = ok(&bob, &["device", "list"]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("identity key "), "{out}");
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[1].contains("first device") && lines[1].ends_with("(this device)"),
            "{out}"
        );
        assert!(
            lines[2].contains("device 2") && !lines[2].contains("this device"),
            "{out}"
        );
        // The relay's ids (bob's first device is the relay's first) and last-seen times:
        // "now" for the asking device, the laptop's login time for the laptop.
        let fields = |line: &str| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(lines[1])[1..3], ["id", "1"], "{out}");
        assert_eq!(fields(lines[2])[1..3], ["id", "2"], "{out}");
        assert!(lines[1].contains("  last seen now  (this device)"), "{out}");
        assert!(
            lines[2].contains("  last seen 20") && lines[2].ends_with(" UTC"),
            "{out}"
        );
        let laptop_key = lines[2].split_whitespace().next().unwrap().to_owned();
        // The laptop sees the same list, itself marked, and bob's phone's last login.
        let seen = ok(&laptop, &["device", "list"]);
        assert_eq!(seen.lines().count(), 3, "{seen}");
        assert!(
            seen.lines()
                .nth(2)
                .is_some_and(|l| l.ends_with("  last seen now  (this device)")),
            "{seen}"
        );
        let phone = seen.lines().nth(1).unwrap();
        assert_eq!(fields(phone)[1..3], ["id", "1"], "{seen}");
        assert!(
            phone.contains("  last seen 20") && phone.ends_with(" UTC"),
            "{seen}"
        );
        // The laptop cannot revoke (it does not hold the identity key).
        let err = fails(&laptop, &["device", "revoke", &lines[1][2..10]]);
        assert!(
            err.contains("does not hold the user's identity key"),
            "{err}"
        );

        // By the id the list shows.
        let out = ok(&bob, &["device", "revoke", "2"]);
        assert_eq!(out.trim_end(), format!("revoked device {laptop_key}"));
        let err = fails(&laptop, &["sync"]);
        assert!(err.contains("this device was revoked by its user"), "{err}");
        let out = ok(&bob, &["device", "list"]);
        assert_eq!(out.lines().count(), 3, "{out}");
        // The revoked laptop, with its id and the last login it made.
        let revoked = out.lines().nth(2).unwrap().trim();
        assert!(
            revoked.starts_with(&format!("{laptop_key}  revoked  id 2  last seen 20"))
                && revoked.ends_with(" UTC"),
            "{out}"
        );
        assert!(fails(&bob, &["device", "revoke", "zz"]).contains("no device of this user"));
    })
    .await
    .unwrap();
    relay.shutdown().await;

    // Offline: what this device last verified, without ids or times.
    tokio::task::spawn_blocking(move || {
        let out = ok(&bob_home, &["device", "list"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(lines[0].starts_with("identity key "), "{out}");
        assert!(
            lines[1].contains("  id ?  ")
                && lines[1].contains("first device")
                && lines[1].ends_with("  last seen unknown  (this device)"),
            "{out}"
        );
        assert!(
            lines[2].contains("  revoked  id ?  last seen unknown"),
            "{out}"
        );
        assert_eq!(
            lines[3],
            "device ids and last seen unknown: the relay did not answer"
        );
        assert!(lines[4].starts_with("relay not reachable: "), "{out}");
    })
    .await
    .unwrap();
}

/// `send-file` on a directory names the problem; `init` with a taken user name fails with
/// the relay's reason, not with a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_file_on_a_directory_and_a_taken_user_name_fail_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let alice = d.join("alice");
        init(&alice, &server, &ca, "alice");
        ok(&alice, &["group", "create", "friends"]);
        let folder = d.join("photos");
        std::fs::create_dir(&folder).unwrap();
        let err = fails(&alice, &["send-file", "friends", folder.to_str().unwrap()]);
        assert_eq!(
            err.trim_end(),
            format!(
                "error: {} is a directory; send-file sends one file",
                folder.display()
            )
        );

        let other = d.join("other-alice");
        let err = fails(
            &other,
            &[
                "init",
                "--no-account",
                "--server",
                &server,
                "--user",
                "alice",
                "--ca",
                &ca,
            ],
        );
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("user name taken"), "{err}");
        assert!(!err.contains("timed out"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!other.join("config.toml").exists());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// bob is removed and added again while offline: his next sync still receives what was
/// sent before his removal and the commit that removed him (no warning about a missed
/// removal), joins again, reads what was sent after the re-add, and can send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_and_re_added_while_offline_reads_and_sends_again() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob) = (d.join("alice"), d.join("bob"));
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        ok(&alice, &["group", "create", "friends"]);
        ok(&alice, &["group", "add", "friends", "bob"]);
        ok(&alice, &["send", "friends", "first"]);
        assert_eq!(plain(&ok(&bob, &["sync"])).trim(), "friends <alice> first");

        ok(&alice, &["send", "friends", "before the removal"]);
        ok(&alice, &["group", "remove", "friends", "bob"]);
        ok(&alice, &["group", "add", "friends", "bob"]);
        ok(&alice, &["send", "friends", "welcome back"]);
        let out = cove(&bob, &["sync"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(
            plain(&String::from_utf8(out.stdout).unwrap()),
            "friends <alice> before the removal\nfriends <alice> welcome back\n"
        );
        assert!(!stderr.contains("warning:"), "{stderr}");
        ok(&bob, &["send", "friends", "glad to be back"]);
        assert_eq!(
            plain(&ok(&alice, &["sync"])).trim(),
            "friends <bob> glad to be back"
        );
        let alice_groups = ok(&alice, &["groups"]);
        let bob_groups = ok(&bob, &["groups"]);
        let epoch = |s: &str| {
            s.split("epoch ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(epoch(&alice_groups), epoch(&bob_groups));
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Issue 16: a device whose normal KeyPackages are used up joins through its last-resort
/// KeyPackage, and the same last-resort KeyPackage serves a second group too: both joins
/// succeed and both groups decrypt both ways. Real relay, real devices (library API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_last_resort_key_package_serves_two_joins_and_both_groups_work() {
    use cove::config::Home;
    use cove::{Device, UserName};
    use cove_wire::{Reply, Request};

    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = StoreKind::Sqlite;
    // carol claims a whole stock below; the default claim bursts (per claimer and per
    // target user) would refuse that.
    config.limits.claim_burst = 10_000;
    config.limits.target_claim_burst = 10_000;
    let relay = Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_owned();
    let home = |n: &str| Home::new(dir.path().join(n));
    let name = |n: &str| UserName::new(n).unwrap();
    let mut alice = Device::init(&home("alice"), &server, name("alice"), Some(&ca))
        .await
        .unwrap();
    let bob = Device::init(&home("bob"), &server, name("bob"), Some(&ca))
        .await
        .unwrap();
    let carol = Device::init(&home("carol"), &server, name("carol"), Some(&ca))
        .await
        .unwrap();
    // bob is offline from now on, so he cannot top his stock up. carol's probes use their
    // own connections; her session stays offline so that it cannot displace them.
    bob.close().await;
    carol.close().await;
    let carol = Device::open_offline(&home("carol")).await.unwrap();
    let claim = || async {
        let reply = carol
            .probe(Request::ClaimKeyPackages { user: name("bob") })
            .await
            .unwrap()
            .unwrap();
        let Reply::KeyPackages { key_packages, .. } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(key_packages.0.len(), 1, "bob has one device");
        key_packages.0[0].last_resort
    };
    let mut used = 0;
    while !claim().await {
        used += 1;
        assert!(used < 1_000, "the stock never ran out");
    }
    assert!(used > 0, "bob had normal KeyPackages before");

    for group in ["one", "two"] {
        alice.create_group(group).await.unwrap();
        alice.add_users(group, &[name("bob")]).await.unwrap();
    }
    // Still only the last-resort one on file: both adds were served by it.
    assert!(claim().await);
    alice.send_text("one", "in one").await.unwrap();
    alice.send_text("two", "in two").await.unwrap();

    let mut bob = Device::open(&home("bob")).await.unwrap();
    let mut got: Vec<(String, String)> = bob
        .sync()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.group, m.text))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("one".to_owned(), "in one".to_owned()),
            ("two".to_owned(), "in two".to_owned())
        ]
    );
    bob.send_text("one", "bob in one").await.unwrap();
    bob.send_text("two", "bob in two").await.unwrap();
    // alice stayed connected: bob's messages reach her live (a deadline only against a hang).
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(60), alice.next_message())
            .await
            .expect("bob's messages reach alice")
            .unwrap();
        got.push((m.group, m.text));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("one".to_owned(), "bob in one".to_owned()),
            ("two".to_owned(), "bob in two".to_owned())
        ]
    );
    for device in [alice, bob, carol] {
        device.close().await;
    }
    relay.shutdown().await;
}

/// `cove listen` prints the core's warnings as they happen (stderr, `warning: ...`): the
/// first warning it prints is alice's for the entry bob's device posts, while she listens,
/// that is no MLS message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_the_cores_warnings_as_they_happen() {
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob) = (d.join("alice"), d.join("bob"));
        init(&alice, &server, &ca, "alice");
        init(&bob, &server, &ca, "bob");
        ok(&alice, &["group", "create", "friends"]);
        ok(&alice, &["group", "add", "friends", "bob"]);
        ok(&bob, &["sync"]);
        let mut listen = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(&alice)
            .arg("listen")
            .env_remove("COVE_HOME")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = lines_of(vec![Box::new(listen.stderr.take().unwrap())]);
        // A generous deadline per line, only against a hang.
        let next = || rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap();
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|l: &String| l.starts_with("listening as alice"))
        {
            seen.push(next());
        }
        let (seq, group) = post_garbage(&bob, "friends", "1");
        let expected = format!("warning: {}", garbage_warning(seq, &group));
        let warning = loop {
            let line = next();
            if line.starts_with("warning: ") {
                break line;
            }
            seen.push(line);
        };
        listen.kill().unwrap();
        listen.wait().unwrap();
        assert!(
            warning.starts_with(&expected) && warning.contains("undecodable MLS message"),
            "{warning} after {seen:?}"
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Replaces `user`'s device list in the relay's SQLite file by one signed by another identity
/// key (made of byte `seed`) that names the user's first device: what a hostile relay could
/// serve, or what others see of a user who started over. Returns the new identity key (hex).
fn rewrite_list_at_relay(relay_dir: &Path, user: &str, seed: u8) -> String {
    use cove_core::cove_identity::IdentitySigner;
    use cove_wire::identity::DeviceName;
    let db = rusqlite::Connection::open(relay_dir.join("relay.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
    let key: Vec<u8> = db
        .query_row(
            "SELECT key FROM devices WHERE user = ?1 ORDER BY id LIMIT 1",
            [user],
            |r| r.get(0),
        )
        .unwrap();
    let device = cove_wire::DeviceKey(key.try_into().unwrap());
    let signer = IdentitySigner::new(cove_wire::UserName::new(user).unwrap(), &[seed; 32]);
    let list = signer
        .create(device, DeviceName::new("reinstalled").unwrap(), 1)
        .unwrap();
    db.execute("DELETE FROM device_lists WHERE user = ?1", [user])
        .unwrap();
    for e in list.entries() {
        db.execute(
            "INSERT INTO device_lists (user, idx, entry) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                user,
                i64::try_from(e.body.index).unwrap(),
                cove_wire::encode(e).unwrap()
            ],
        )
        .unwrap();
    }
    signer.identity().to_hex()
}

/// The safety number `cove verify` printed (the line after `safety number with ...:`).
fn safety_number_in(out: &str) -> String {
    let mut lines = out.lines();
    lines
        .by_ref()
        .find(|l| l.starts_with("safety number with "))
        .unwrap_or_else(|| panic!("no safety number in {out}"));
    lines.next().unwrap().trim().to_owned()
}

/// `cove verify` through the binaries. alice and bob see the same number; bob's run without
/// a terminal and without `--yes` verifies nothing and says why; alice confirms with `--yes`
/// and `cove verify` lists bob as verified. Then the relay serves a list of bob's signed by
/// another identity key: when carol removes bob from a group alice is in (members fetch the
/// list of a user whose leaf is removed), alice's `cove sync --json` reports `{"identity":"identity_changed","user":"bob","verified":true}`, her sends
/// (text and file) to the group with bob fail naming him, `cove verify` lists him as changed,
/// and once she verifies the new key (a new number) her message reaches bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_shows_the_number_and_a_changed_identity_blocks_sending_until_verified() {
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

        let out = cove(&bob, &["verify", "alice"]);
        assert!(out.status.success());
        let bobs = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("not marked verified: stdin is not a terminal"),
            "{stderr}"
        );
        assert!(bobs.contains("state: unverified"), "{bobs}");
        let out = ok(&alice, &["verify", "bob", "--yes"]);
        let number = safety_number_in(&out);
        assert_eq!(number, safety_number_in(&bobs), "both sides see one number");
        assert_eq!(number.split(' ').count(), 12, "{number}");
        assert!(out.contains("bob is verified"), "{out}");
        assert_eq!(
            ok(&alice, &["verify"]).trim_end(),
            format!("{:<16} verified", "bob")
        );
        assert!(ok(&bob, &["verify"]).contains("alice            unverified"));
        let err = fails(&bob, &["verify", "bob"]);
        assert!(err.contains("bob is this device's own user"), "{err}");
        let err = fails(&alice, &["verify", "nobody"]);
        assert!(err.contains("no identity key known for nobody"), "{err}");

        // carol's group with alice and bob; then bob's list changes identity at the relay,
        // and carol removes bob from her group: a member whose leaf is removed has their
        // list fetched again by the others (it may be a revocation).
        ok(&carol, &["group", "create", "club"]);
        ok(&carol, &["group", "add", "club", "alice"]);
        ok(&carol, &["group", "add", "club", "bob"]);
        ok(&alice, &["sync"]);
        let new_identity = rewrite_list_at_relay(&d.join("relay"), "bob", 77);
        ok(&carol, &["group", "remove", "club", "bob"]);
        let out = ok(&alice, &["sync", "--json"]);
        let events: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON lines"))
            .filter(|v| v.get("identity").is_some())
            .collect();
        assert_eq!(
            events,
            [serde_json::json!({"identity": "identity_changed", "user": "bob", "verified": true})],
            "{out}"
        );
        let err = fails(&alice, &["send", "friends", "blocked?"]);
        assert!(
            err.contains("not sent: the identity key of bob changed since you verified it"),
            "{err}"
        );
        let file = d.join("note.txt");
        std::fs::write(&file, b"a file for bob").unwrap();
        let err = fails(&alice, &["send-file", "friends", file.to_str().unwrap()]);
        assert!(
            err.contains("not sent: the identity key of bob changed since you verified it"),
            "{err}"
        );
        assert!(
            ok(&alice, &["verify"]).contains("changed since verified (sending blocked"),
            "listed as changed"
        );
        let out = ok(&alice, &["verify", "bob", "--yes"]);
        assert!(out.contains(&new_identity), "{out}");
        assert_ne!(
            safety_number_in(&out),
            number,
            "a new identity, a new number"
        );
        assert!(
            out.contains("bob is verified; sending to groups with bob works again"),
            "{out}"
        );
        ok(&alice, &["send", "friends", "after verifying"]);
        let out = ok(&bob, &["sync"]);
        assert!(out.contains("friends <alice> after verifying"), "{out}");
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// `cove listen --json` prints identity events as they happen, as JSON lines of their own:
/// bob's list names another identity key at the relay, carol removes bob from a group alice is
/// in (so alice fetches his list again), and alice (who never verified bob) sees `{"identity":"identity_changed","user":"bob",
/// "verified":false}`; her sends to bob are not blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_json_prints_an_identity_change_as_it_happens() {
    use std::process::Stdio;

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
        ok(&carol, &["group", "create", "club"]);
        ok(&carol, &["group", "add", "club", "alice"]);
        ok(&carol, &["group", "add", "club", "bob"]);
        ok(&alice, &["sync"]);
        let mut listen = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(&alice)
            .args(["listen", "--json"])
            .env_remove("COVE_HOME")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rx = lines_of(vec![Box::new(listen.stdout.take().unwrap())]);
        rewrite_list_at_relay(&d.join("relay"), "bob", 78);
        // A commit removing bob's leaf makes alice fetch his list again.
        ok(&carol, &["group", "remove", "club", "bob"]);
        // A generous deadline per line, only against a hang.
        let mut seen = Vec::new();
        let event = loop {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e} after {seen:?}"));
            let value: serde_json::Value = serde_json::from_str(&line).expect("JSON lines");
            if value.get("identity").is_some() {
                break value;
            }
            seen.push(line);
        };
        listen.kill().unwrap();
        listen.wait().unwrap();
        assert_eq!(
            event,
            serde_json::json!({"identity": "identity_changed", "user": "bob", "verified": false}),
            "after {seen:?}"
        );
        ok(&alice, &["send", "friends", "not blocked"]);
        assert!(
            ok(&alice, &["verify"])
                .contains("bob              changed (identity key changed; not verified)")
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// An unknown audio device fails `cove call`/`cove answer` before anything connects, naming
/// the device and listing the available ones; `cove devices` lists inputs and outputs (ALSA's
/// `null` PCM exists wherever alsa-lib is installed).
#[test]
fn unknown_audio_devices_fail_early_and_devices_are_listed() {
    let home = tempfile::tempdir().unwrap();
    let err = fails(home.path(), &["call", "talk", "--audio-in", "no-such-mic"]);
    let expected = "--audio-in no-such-mic: no audio input device `no-such-mic`; available: ";
    let listed = err
        .split_once(expected)
        .unwrap_or_else(|| panic!("{err}"))
        .1;
    assert!(listed.contains("null"), "{err}");
    let err = fails(
        home.path(),
        &["answer", "--wait", "1", "--audio-out", "no-such-speaker"],
    );
    assert!(
        err.contains(
            "--audio-out no-such-speaker: no audio output device `no-such-speaker`; available: "
        ),
        "{err}"
    );
    // Nothing was created in the home: the check ran before the device was opened.
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);

    let out = ok(home.path(), &["devices"]);
    let (inputs, outputs) = out.split_once("outputs (--audio-out):").unwrap();
    assert!(inputs.starts_with("inputs (--audio-in):"), "{out}");
    assert!(inputs.contains(" null "), "{out}");
    assert!(outputs.contains(" null "), "{out}");
}
