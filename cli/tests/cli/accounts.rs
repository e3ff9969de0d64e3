//! Password accounts through the binary (real relay, TLS, SQLite), passwords given with
//! `--password-file` / `--new-password-file`: `init` registers the account and prints the
//! recovery key, `recovery-key show`, `password change`, `password reset --recovery-key`,
//! `account delete`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::relay;

/// Runs `cove --home HOME [--password-file FILE] ARGS` with no password in the environment
/// and `stdin` as its input (none: no terminal).
fn run(home: &Path, password_file: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cove"));
    cmd.arg("--home").arg(home);
    if let Some(file) = password_file {
        cmd.arg("--password-file").arg(file);
    }
    cmd.args(args)
        .env_remove("COVE_HOME")
        .env_remove("COVE_PASSWORD")
        .env_remove("COVE_PASSWORD_FILE")
        .env_remove("COVE_NEW_PASSWORD")
        .env_remove("COVE_NEW_PASSWORD_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running cove");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(home: &Path, password_file: Option<&Path>, args: &[&str]) -> String {
    let out = run(home, password_file, args, None);
    assert!(
        out.status.success(),
        "cove {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(home: &Path, password_file: Option<&Path>, args: &[&str]) -> String {
    let out = run(home, password_file, args, None);
    assert!(!out.status.success(), "cove {args:?} succeeded");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

/// The recovery key a command printed (`recovery key: ...`).
fn recovery_key(out: &str) -> String {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("recovery key: "))
        .unwrap_or_else(|| panic!("no recovery key in {out}"));
    cove_account::RecoveryKey::parse(line).expect("a well-formed recovery key");
    line.to_owned()
}

/// The backup key `home`'s store keeps for its account (its user checked), and the one in
/// the account bundle a fresh OPAQUE login with `password` unwraps. Runs from a blocking
/// thread of the test's runtime; no `cove` process may hold `home` meanwhile.
fn backup_keys(home: &Path, server: &str, ca: &str, password: &str) -> ([u8; 32], [u8; 32]) {
    use cove_store::Store as _;
    tokio::runtime::Handle::current().block_on(async {
        let device = cove::Device::open_offline(&cove::config::Home::new(home.to_owned()))
            .await
            .unwrap();
        let user = device.user().clone();
        let secrets = device
            .session()
            .call(|c| c.store().account_secrets())
            .await
            .unwrap()
            .unwrap()
            .expect("the home keeps account secrets");
        device.close_now().await;
        assert_eq!(secrets.user, user);
        let account = cove::account::AccountServer::new(server, Some(Path::new(ca))).unwrap();
        let (mut conn, _) = cove::raw::RawConnection::open(&account.server, account.tls.clone())
            .await
            .unwrap();
        let bundle = cove::account::login(&mut conn, &user, password.as_bytes())
            .await
            .unwrap();
        conn.close().await;
        (*secrets.backup_key, bundle.backup_key)
    })
}

fn password_file(dir: &Path, name: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path
}

/// `init` with a password file registers the account and prints the recovery key once;
/// `recovery-key show` prints the same key; after `password change` the old password fails
/// ("wrong user name or password") and the new one works; `password reset` with the
/// recovery key, from a machine without a home, sets a third password that then works
/// while the second fails; a mistyped key and another account's key are refused with their
/// own messages; and `init` with no password source and no terminal names the three ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_registers_an_account_whose_password_changes_and_resets_with_the_recovery_key() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let alice = d.join("alice");
        let first = password_file(&d, "first.txt", "first password");
        let second = password_file(&d, "second.txt", "second password");
        let third = password_file(&d, "third.txt", "third password");

        let err = fails(
            &d.join("nobody"),
            None,
            &["init", "--server", &server, "--user", "nobody", "--ca", &ca],
        );
        assert!(
            err.contains("--password-file")
                && err.contains("COVE_PASSWORD")
                && err.contains("--no-account"),
            "{err}"
        );
        assert!(!d.join("nobody").join("config.toml").exists());

        let out = ok(
            &alice,
            Some(&first),
            &["init", "--server", &server, "--user", "alice", "--ca", &ca],
        );
        assert!(
            out.contains("registered a password account for alice"),
            "{out}"
        );
        assert!(out.contains("Write the recovery key down"), "{out}");
        let key = recovery_key(&out);
        let shown = ok(&alice, Some(&first), &["recovery-key", "show"]);
        assert_eq!(recovery_key(&shown), key);
        // The home keeps the account's backup key: the one in the bundle a login unwraps.
        let (stored, unwrapped) = backup_keys(&alice, &server, &ca, "first password");
        assert_eq!(stored, unwrapped);

        // Change: the old password fails, the new one shows the same key.
        let out = ok(
            &alice,
            Some(&first),
            &[
                "password",
                "change",
                "--new-password-file",
                second.to_str().unwrap(),
            ],
        );
        assert!(out.contains("changed the password of alice"), "{out}");
        let err = fails(&alice, Some(&first), &["recovery-key", "show"]);
        assert!(err.contains("wrong user name or password"), "{err}");
        let shown = ok(&alice, Some(&second), &["recovery-key", "show"]);
        assert_eq!(recovery_key(&shown), key);

        // Reset, from a machine with no home.
        let elsewhere = d.join("elsewhere");
        let reset = |recovery: &str, new: &Path| {
            run(
                &elsewhere,
                None,
                &[
                    "password",
                    "reset",
                    "--recovery-key",
                    recovery,
                    "--server",
                    &server,
                    "--user",
                    "alice",
                    "--ca",
                    &ca,
                    "--new-password-file",
                    new.to_str().unwrap(),
                ],
                None,
            )
        };
        // One character changed (the first: it carries key bits, so the checksum fails).
        let first_char = key.chars().next().unwrap();
        let mistyped = format!("{}{}", if first_char == 'a' { 'b' } else { 'a' }, &key[1..]);
        let out = reset(&mistyped, &third);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("that is not a recovery key"), "{err}");
        let other = cove_account::RecoveryKey::generate();
        let out = reset(other.display().as_str(), &third);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("wrong user name or password"), "{err}");
        let out = reset(&key, &third);
        assert!(
            out.status.success(),
            "reset: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!elsewhere.join("config.toml").exists());

        let err = fails(&alice, Some(&second), &["recovery-key", "show"]);
        assert!(err.contains("wrong user name or password"), "{err}");
        let shown = ok(&alice, Some(&third), &["recovery-key", "show"]);
        assert_eq!(recovery_key(&shown), key);
        // The device itself is unaffected.
        ok(&alice, None, &["group", "create", "notes"]);
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// `account delete` asks for the user name (a wrong one deletes nothing), then with the
/// password deletes the account and, after the relay confirmed, the home; the name can then
/// be registered again by another home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_delete_removes_the_account_and_the_home_and_frees_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let alice = d.join("alice");
        let pw = password_file(&d, "pw.txt", "alice password");
        let wrong = password_file(&d, "wrong.txt", "not alice's password");
        ok(
            &alice,
            Some(&pw),
            &["init", "--server", &server, "--user", "alice", "--ca", &ca],
        );

        let out = run(&alice, Some(&pw), &["account", "delete"], Some("bob\n"));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not deleted"), "{err}");
        let err = fails(&alice, Some(&wrong), &["account", "delete", "--yes"]);
        assert!(err.contains("wrong user name or password"), "{err}");
        assert!(alice.join("config.toml").exists());

        let out = run(&alice, Some(&pw), &["account", "delete"], Some("alice\n"));
        assert!(
            out.status.success(),
            "delete: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("deleted the account alice"), "{stdout}");
        assert!(!alice.exists(), "the home is still there");

        // The name is free for someone else.
        let out = ok(
            &d.join("new-alice"),
            None,
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
    })
    .await
    .unwrap();
    relay.shutdown().await;
}

/// `init --lock` locks the home with the account's password; after `password change` the
/// home opens with the new password and refuses the old one ("wrong password").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_locks_a_locked_home_again_under_the_new_password() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let carol = d.join("carol");
        let old = password_file(&d, "old.txt", "old password");
        let new = password_file(&d, "new.txt", "new password");
        ok(
            &carol,
            Some(&old),
            &[
                "init", "--lock", "--server", &server, "--user", "carol", "--ca", &ca,
            ],
        );
        assert!(carol.join("db.key.locked").exists());
        ok(&carol, Some(&old), &["groups"]);
        let out = ok(
            &carol,
            Some(&old),
            &[
                "password",
                "change",
                "--new-password-file",
                new.to_str().unwrap(),
            ],
        );
        assert!(out.contains("now locked with the new password"), "{out}");
        let err = fails(&carol, Some(&old), &["groups"]);
        assert!(err.contains("wrong password"), "{err}");
        ok(&carol, Some(&new), &["groups"]);
        assert!(!carol.join("db.key").exists());
    })
    .await
    .unwrap();
    relay.shutdown().await;
}
