//! The relay stores ciphertext only, and a client's home is private and encrypted at rest.

use std::os::unix::fs::PermissionsExt as _;

use cove::config::{ConfigError, Home};
use cove::{Device, DeviceError, UserName};
use cove_server::{Relay, RelayConfig, StoreKind};

use crate::support::*;

/// After a chat (and a graceful relay shutdown, so everything is flushed), no file in the
/// relay's data directory contains any of the plaintexts, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_data_directory_holds_no_plaintext() {
    // A relay whose data directory outlives it, to scan after a clean shutdown.
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), &relay_dir);
    config.store = StoreKind::Sqlite;
    config.limits = cove_test_utils::test_limits();
    let relay = Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_owned();
    let home = |n: &str| Home::new(dir.path().join(n));
    let alice = register(&home("alice"), &server, "alice", &ca).await;
    let mut bob = register(&home("bob"), &server, "bob", &ca).await;
    let group_name = "plaintext-probe-group-name";
    alice.create_group(group_name).await.unwrap();
    alice.add_users(group_name, &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;
    let texts: Vec<String> = (0..20)
        .map(|i| format!("PLAINTEXT-CANARY-{i:02}-the quick brown fox"))
        .collect();
    for (i, text) in texts.iter().enumerate() {
        let sender = if i % 2 == 0 { &alice } else { &bob };
        sender.send_text(group_name, text).await.unwrap();
    }
    let got = messages(&mut bob, texts.len()).await;
    assert_eq!(got.len(), texts.len());
    alice.close().await;
    bob.close().await;
    relay.shutdown().await;

    let mut files = Vec::new();
    walk(&relay_dir, &mut files);
    let mut all = Vec::new();
    for f in &files {
        all.extend(std::fs::read(f).unwrap());
    }
    // The scan can find things: the relay does store user names in clear.
    assert!(
        contains(&all, b"alice"),
        "scan sanity check: user name not found"
    );
    for needle in texts
        .iter()
        .map(String::as_bytes)
        .chain([group_name.as_bytes(), b"CANARY"])
    {
        for f in &files {
            let data = std::fs::read(f).unwrap();
            assert!(
                !contains(&data, needle),
                "{:?} found in {}",
                String::from_utf8_lossy(needle),
                f.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A client's home after a chat: the directory is 0700 and every file in it 0600; no file
/// holds a message text, the group's name, the SQLite header or the database key's bytes; the
/// database copied without `db.key`, or with another home's `db.key`, does not open, with an
/// error that says so. Bob's home is the control: the same scan finds his messages in his
/// database once it is decrypted (he can read his history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_home_is_private_and_its_database_encrypted() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let group_name = "home-probe-group-name";
    alice.create_group(group_name).await.unwrap();
    alice.add_users(group_name, &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;
    let sent: Vec<String> = (0..10).map(|i| format!("HOME-CANARY-{i:02}")).collect();
    for text in &sent {
        alice.send_text(group_name, text).await.unwrap();
    }
    assert_eq!(texts(&messages(&mut bob, sent.len()).await), sent);
    alice.close().await;
    bob.close().await;

    let home = net.home("alice");
    let dir_mode = std::fs::metadata(home.dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "home directory mode");
    let mut files = Vec::new();
    walk(home.dir(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("cove.db")));
    assert!(files.iter().any(|f| f.ends_with("db.key")));
    let key_hex = std::fs::read_to_string(home.key_path()).unwrap();
    let key = hex::decode(key_hex.trim()).unwrap();
    assert_eq!(key.len(), 32);
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} mode", f.display());
        if f.ends_with("db.key") {
            continue;
        }
        let data = std::fs::read(f).unwrap();
        for needle in sent.iter().map(String::as_bytes).chain([
            group_name.as_bytes(),
            b"SQLite format 3",
            &key[..],
        ]) {
            assert!(
                !contains(&data, needle),
                "{:?} found in {}",
                String::from_utf8_lossy(needle),
                f.display()
            );
        }
    }

    // The database without its key, and with bob's key.
    let copy = Home::new(net.home("alice").dir().with_file_name("alice-copy"));
    std::fs::create_dir_all(copy.dir()).unwrap();
    std::fs::copy(home.config_path(), copy.config_path()).unwrap();
    std::fs::copy(home.database_path(), copy.database_path()).unwrap();
    match Device::open_offline(&copy).await {
        Err(DeviceError::Config(ConfigError::DatabaseKeyMissing(_))) => {}
        other => panic!("opened without db.key: {:?}", other.map(|_| ())),
    }
    std::fs::copy(net.home("bob").key_path(), copy.key_path()).unwrap();
    match Device::open_offline(&copy).await {
        Err(DeviceError::Config(ConfigError::DatabaseKeyMismatch(_))) => {}
        other => panic!("opened with another key: {:?}", other.map(|_| ())),
    }
    // With its own key the copy opens and holds the history.
    std::fs::copy(home.key_path(), copy.key_path()).unwrap();
    let reopened = Device::open_offline(&copy).await.unwrap();
    let history = reopened.history(group_name).await.unwrap();
    assert_eq!(history.len(), sent.len());
    reopened.close().await;
}

/// A password account's life at a real relay process logging everything (`RUST_LOG=trace`):
/// registration (`register_account`), a wrong-password login and a right one
/// (`Device::login`, a new device), a backup. Afterwards neither the relay's log nor any file
/// of its data directory holds the password, the recovery key (written or raw), the backup
/// key or the identity key's seed; the log does name the user (so the scan can find things).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_log_and_data_hold_no_password_or_account_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let log = dir.path().join("relay.log");
    let relay = RelayProcess::spawn_logging(&data, "127.0.0.1:0", &[], Some(&log));
    let server = format!("wss://{}", relay.addr);
    let ca = data.join("tls").join("cert.pem");
    let home = |n: &str| Home::new(dir.path().join(n));
    let password = b"PASSWORD-CANARY correct horse battery staple";

    let alice = register(&home("alice"), &server, "alice", &ca).await;
    let recovery = alice.register_account(password).await.unwrap();
    let mut alice = Device::open(&home("alice")).await.unwrap();
    alice.create_group("notes").await.unwrap();
    alice.send_text("notes", "BACKED-UP-CANARY").await.unwrap();
    cove::backup::backup(&mut alice).await.unwrap();
    let (seed, backup_key) = alice
        .session()
        .call(|c| {
            use cove_core::cove_store::Store as _;
            let store = c.store();
            (
                store.user_identity().unwrap().unwrap().secret_key,
                store.account_secrets().unwrap().unwrap().backup_key,
            )
        })
        .await
        .unwrap();
    alice.close().await;

    let wrong = Device::login(
        &home("laptop"),
        &server,
        UserName::new("alice").unwrap(),
        b"PASSWORD-CANARY but wrong",
        Some(&ca),
    )
    .await;
    assert!(
        matches!(wrong, Err(DeviceError::LoginFailed)),
        "{:?}",
        wrong.err()
    );
    let mut laptop = Device::login(
        &home("laptop"),
        &server,
        UserName::new("alice").unwrap(),
        password,
        Some(&ca),
    )
    .await
    .unwrap();
    let restored = cove::backup::restore_history(&mut laptop).await.unwrap();
    assert_eq!(restored.messages, 1);
    laptop.close().await;
    relay.kill9();

    let logged = std::fs::read(&log).unwrap();
    assert!(
        contains(&logged, b"alice"),
        "scan sanity check: the trace log names no user"
    );
    let mut files = vec![log.clone()];
    walk(&data, &mut files);
    let written = recovery.display();
    let secrets: [(&str, &[u8]); 6] = [
        ("password", password),
        ("password canary", b"PASSWORD-CANARY"),
        ("written recovery key", written.as_bytes()),
        ("recovery key", recovery.as_bytes()),
        ("backup key", &backup_key[..]),
        ("identity seed", &seed[..]),
    ];
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for (what, secret) in secrets {
            assert!(
                !contains(&bytes, secret),
                "{} holds the {what}",
                f.display()
            );
        }
    }
}
