//! Linking a second machine by a code, through the binaries: `cove device link` on an
//! existing home prints a code and waits; `cove device join CODE --server .. --ca ..` on a
//! home that shares no files with it (only the printed code and the relay's CA path pass).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use super::{cove, fails, init, ok, relay};

/// A running `cove` whose stdout lines arrive on a channel.
pub(super) struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub(super) fn start(home: &Path, args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cove"))
            .arg("--home")
            .arg(home)
            .args(args)
            .env_remove("COVE_HOME")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = crate::lines_of(vec![Box::new(child.stdout.take().unwrap())]);
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it. A generous
    /// deadline per line, only against a hang.
    pub(super) fn line_starting(&mut self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no line {prefix:?} after {:?}", self.seen));
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// Waits for the exit; returns success, all stdout lines and stderr.
    pub(super) fn finish(mut self) -> (bool, Vec<String>, String) {
        let out = {
            let mut stderr = String::new();
            use std::io::Read as _;
            self.child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            stderr
        };
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        (status.success(), self.seen, out)
    }
}

/// Alice and bob with a group `friends` and two messages in it; returns the homes.
fn two_users_chatting(d: &Path, server: &str, ca: &str) -> (PathBuf, PathBuf) {
    let (alice, bob) = (d.join("alice"), d.join("bob"));
    init(&alice, server, ca, "alice");
    init(&bob, server, ca, "bob");
    ok(&bob, &["group", "create", "friends"]);
    ok(&bob, &["group", "add", "friends", "alice"]);
    ok(&alice, &["sync"]);
    ok(&alice, &["send", "friends", "hello bob"]);
    ok(&bob, &["sync"]);
    ok(&bob, &["send", "friends", "hi alice"]);
    (alice, bob)
}

/// A code with its last word changed (to another word of the list).
fn wrong(code: &str) -> String {
    let (start, last) = code.rsplit_once('-').unwrap();
    let other = if last == "acorn" { "zipper" } else { "acorn" };
    format!("{start}-{other}")
}

/// Linked by code, bob's laptop (a home sharing no files with bob's) is in `friends`, its
/// `cove history` shows the two earlier messages, and it receives alice's message sent right
/// after the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_linked_by_code_has_the_groups_the_history_and_new_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let (alice, bob) = two_users_chatting(&d, &server, &ca);
        let laptop = d.join("laptop");
        let mut host = Running::start(&bob, &["device", "link"]);
        let code = host.line_starting("link code: ");
        let out = ok(
            &laptop,
            &["device", "join", &code, "--server", &server, "--ca", &ca],
        );
        assert!(out.contains("of bob"), "{out}");
        assert!(out.contains("received 2 messages of history"), "{out}");
        let (success, lines, stderr) = host.finish();
        assert!(success, "{lines:?} {stderr}");
        assert!(
            lines.iter().any(|l| l == "added the new device to friends"),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l == "linking complete"), "{lines:?}");

        let groups = ok(&laptop, &["groups"]);
        assert!(groups.contains("friends"), "{groups}");
        let history = ok(&laptop, &["history", "friends"]);
        let texts: Vec<&str> = history.lines().collect();
        assert_eq!(texts.len(), 2, "{history}");
        assert!(texts[0].contains("<alice> hello bob"), "{history}");
        assert!(texts[1].contains("<bob> hi alice"), "{history}");

        ok(&alice, &["send", "friends", "right after the link"]);
        // `sync` shows what this device has not shown yet: the handed-over history, then
        // the new message.
        let out = cove(&laptop, &["sync"]);
        assert!(out.status.success());
        // Every message decrypted: no warning.
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let synced = crate::plain(&String::from_utf8(out.stdout).unwrap());
        assert_eq!(
            synced.lines().collect::<Vec<_>>(),
            [
                "friends <alice> hello bob",
                "friends <bob> hi alice",
                "friends <alice> right after the link"
            ],
            "{synced}"
        );
        let history = ok(&laptop, &["history", "friends"]);
        assert_eq!(history.lines().count(), 3, "{history}");
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// A mistyped code fails on both machines with the same clear error, and the new machine's
/// home is not left half-initialised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_fails_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let bob = d.join("bob");
        init(&bob, &server, &ca, "bob");
        let laptop = d.join("laptop");
        let mut host = Running::start(&bob, &["device", "link"]);
        let code = host.line_starting("link code: ");
        let err = fails(
            &laptop,
            &[
                "device",
                "join",
                &wrong(&code),
                "--server",
                &server,
                "--ca",
                &ca,
            ],
        );
        let clear = "the link code did not match: check it and start again";
        assert!(err.contains(clear), "{err}");
        let (success, lines, stderr) = host.finish();
        assert!(!success, "{lines:?}");
        assert!(stderr.contains(clear), "{stderr}");
        assert!(!laptop.join("config.toml").exists() && !laptop.join("cove.db").exists());
        // Nothing changed for bob: still one device.
        let list = ok(&bob, &["device", "list"]);
        assert_eq!(
            list.lines().filter(|l| l.contains("added")).count(),
            1,
            "{list}"
        );
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// While a first machine links with a code, a second machine with the same code is refused
/// (the code was used) and the first link completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_joiner_of_a_code_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let bob = d.join("bob");
        init(&bob, &server, &ca, "bob");
        let mut host = Running::start(&bob, &["device", "link"]);
        let code = host.line_starting("link code: ");
        let first = Running::start(
            &d.join("laptop"),
            &["device", "join", &code, "--server", &server, "--ca", &ca],
        );
        host.line_starting("a machine joined");
        let phone = d.join("phone");
        let err = fails(
            &phone,
            &["device", "join", &code, "--server", &server, "--ca", &ca],
        );
        assert!(
            err.contains("another device already used this code"),
            "{err}"
        );
        assert!(!phone.join("config.toml").exists());
        let (success, lines, stderr) = first.finish();
        assert!(success, "{lines:?} {stderr}");
        let (success, lines, stderr) = host.finish();
        assert!(success, "{lines:?} {stderr}");
        let out = cove(&d.join("laptop"), &["device", "list"]);
        assert!(out.status.success());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// A code not used within its lifetime (shortened to 1 s by the relay's config): the waiting
/// device stops with "the code expired", and a machine joining with it afterwards is told so
/// and keeps no home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_fails_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        cove_server::RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = cove_server::StoreKind::Sqlite;
    config.limits.link_code_lifetime_ms = 1_000;
    let relay = cove_server::Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_str().unwrap().to_owned();
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let bob = d.join("bob");
        init(&bob, &server, &ca, "bob");
        let mut host = Running::start(&bob, &["device", "link"]);
        let code = host.line_starting("link code: ");
        let (success, lines, stderr) = host.finish();
        assert!(!success, "{lines:?}");
        assert!(stderr.contains("the code expired"), "{stderr}");
        let laptop = d.join("laptop");
        let err = fails(
            &laptop,
            &["device", "join", &code, "--server", &server, "--ca", &ca],
        );
        assert!(err.contains("the code expired"), "{err}");
        assert!(!laptop.join("config.toml").exists());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// A linked device does not hold its user's identity key, so it cannot add a device to the
/// signed list: `cove device link` on it fails at once with that reason, before any code is
/// shown (the relay's codes live 1 s here, so a code shown would end in "the code expired"
/// instead), and so does `cove device link --from` it, which leaves no home behind. The
/// first device still links the same machine afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_refuses_to_link_before_showing_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        cove_server::RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = cove_server::StoreKind::Sqlite;
    config.limits.link_code_lifetime_ms = 1_000;
    let relay = cove_server::Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_str().unwrap().to_owned();
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let reason = "only the user's first device or a device logged in with the password \
                      (which hold the identity key) can link new devices";
        let (bob, laptop, tablet) = (d.join("bob"), d.join("laptop"), d.join("tablet"));
        init(&bob, &server, &ca, "bob");
        ok(
            &laptop,
            &["device", "link", "--from", bob.to_str().unwrap()],
        );

        let out = cove(&laptop, &["device", "link"]);
        let (stdout, stderr) = (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        assert!(!out.status.success(), "{stdout}");
        assert!(stderr.contains(reason), "{stderr}");
        assert!(!stdout.contains("link code"), "{stdout}");

        let err = fails(
            &tablet,
            &["device", "link", "--from", laptop.to_str().unwrap()],
        );
        assert!(err.contains(reason), "{err}");
        assert!(!tablet.join("config.toml").exists());

        ok(
            &tablet,
            &["device", "link", "--from", bob.to_str().unwrap()],
        );
        assert!(tablet.join("config.toml").exists());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}
