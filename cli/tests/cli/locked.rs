//! A home locked with a password (`cove init --lock`), through the binary.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use crate::relay;

fn cove_with(home: &Path, password_file: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cove"));
    cmd.arg("--home").arg(home);
    if let Some(file) = password_file {
        cmd.arg("--password-file").arg(file);
    }
    cmd.args(args)
        .env_remove("COVE_HOME")
        .env_remove("COVE_PASSWORD")
        .env_remove("COVE_PASSWORD_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running cove")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `cove init --lock` keeps the database key only wrapped under the password: no `db.key`,
/// a 0600 `db.key.locked`; commands without the password, or with a wrong one, fail with a
/// message that says so; with it they work; and no file of the home holds the database key
/// (unwrapped here with the password to know what to scan for), a sent message, or the
/// SQLite header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_home_needs_its_password_and_holds_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, server, ca) = relay(dir.path()).await;
    let alice = dir.path().join("alice");
    let pw = dir.path().join("pw.txt");
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    std::fs::write(&wrong, "correct horse battery stapler\n").unwrap();
    let secret_text = "LOCKED-HOME-CANARY";
    let (alice2, pw2, wrong2) = (alice.clone(), pw.clone(), wrong.clone());
    tokio::task::spawn_blocking(move || {
        let (alice, pw, wrong) = (alice2.as_path(), pw2.as_path(), wrong2.as_path());
        let out = cove_with(
            alice,
            Some(pw),
            &[
                "init", "--lock", "--server", &server, "--user", "alice", "--ca", &ca,
            ],
        );
        assert!(out.status.success(), "init: {}", stderr(&out));
        assert!(!alice.join("db.key").exists());
        assert!(alice.join("db.key.locked").exists());

        let out = cove_with(alice, None, &["groups"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("locked with a password"),
            "{}",
            stderr(&out)
        );
        let out = cove_with(alice, Some(wrong), &["groups"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));

        for args in [
            &["group", "create", "notes"][..],
            &["send", "notes", secret_text][..],
        ] {
            let out = cove_with(alice, Some(pw), args);
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        }
        let out = cove_with(alice, Some(pw), &["history", "notes"]);
        assert!(out.status.success(), "history: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(secret_text));
    })
    .await
    .unwrap();

    let locked = std::fs::read(alice.join("db.key.locked")).unwrap();
    let key = cove_account::home_key::unlock(b"correct horse battery staple", &locked).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&alice), 0o700);
    for entry in std::fs::read_dir(&alice).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        let data = std::fs::read(&path).unwrap();
        for needle in [&key[..], secret_text.as_bytes(), b"SQLite format 3"] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "{:?} found in {}",
                String::from_utf8_lossy(needle),
                path.display()
            );
        }
    }
}

/// Asks the daemon serving `home` to shut down (JSON-RPC `shutdown` over its socket) and
/// waits until its socket is gone.
fn shutdown_daemon(home: &Path) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let socket = home.join("daemon.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("the daemon socket");
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"shutdown\"}\n")
        .unwrap();
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    assert!(answer.contains("\"result\""), "{answer}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not stop"
        );
        // Poll interval only: the socket's removal decides.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `cove unlock` on a locked home: a wrong password is refused at once (no daemon starts);
/// the right one starts the daemon in the background, and then commands with no password
/// at all work through it (create a group, send, list); a second `unlock` says it is
/// unlocked already; once the daemon stops, the home asks for its password again. An
/// unlocked (plain) home is refused with "not locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_serves_a_locked_home_without_its_password_until_the_daemon_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, server, ca) = relay(dir.path()).await;
    let (alice, plain) = (dir.path().join("alice"), dir.path().join("plain"));
    let pw = dir.path().join("pw.txt");
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    std::fs::write(&wrong, "correct horse battery stapler\n").unwrap();
    tokio::task::spawn_blocking(move || {
        let (alice, plain, pw, wrong) = (
            alice.as_path(),
            plain.as_path(),
            pw.as_path(),
            wrong.as_path(),
        );
        let out = cove_with(
            alice,
            Some(pw),
            &[
                "init", "--lock", "--server", &server, "--user", "alice", "--ca", &ca,
            ],
        );
        assert!(out.status.success(), "init: {}", stderr(&out));

        let out = cove_with(alice, Some(wrong), &["unlock"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));
        assert!(
            !alice.join("daemon.sock").exists(),
            "no daemon after a wrong password"
        );

        let out = cove_with(alice, Some(pw), &["unlock"]);
        assert!(out.status.success(), "unlock: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("is unlocked while the daemon runs"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for args in [
            &["group", "create", "notes"][..],
            &["send", "notes", "no password asked"][..],
        ] {
            let out = cove_with(alice, None, args);
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        }
        let out = cove_with(alice, None, &["history", "notes"]);
        assert!(out.status.success(), "history: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("no password asked"));
        let out = cove_with(alice, None, &["unlock"]);
        assert!(out.status.success(), "unlock again: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("is unlocked already"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );

        shutdown_daemon(alice);
        let out = cove_with(alice, None, &["groups"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("locked with a password"),
            "{}",
            stderr(&out)
        );

        let out = cove_with(
            plain,
            None,
            &[
                "init",
                "--no-account",
                "--server",
                &server,
                "--user",
                "plain",
                "--ca",
                &ca,
            ],
        );
        assert!(out.status.success(), "init: {}", stderr(&out));
        let out = cove_with(plain, None, &["unlock"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("is not locked"), "{}", stderr(&out));
    })
    .await
    .unwrap();
}
