//! The secrets the nodes of a cluster share (`[secrets]`, `RelayConfig::secrets`): two
//! relays on one PostgreSQL database given the same `opaque_key` and `turn_secret` files
//! (started at the same moment, so both race to create them) log in each other's password
//! accounts and accept each other's TURN credentials; a node with its own secrets does
//! neither; the shared files are used instead of the data directory's; a malformed shared
//! file stops the start with an error naming it.

use std::path::{Path, PathBuf};

use cove_server::{Relay, RelayConfig, SecretFiles, StartError, StoreKind};
use cove_test_utils::postgres::PgCluster;
use cove_test_utils::{TestRelay, test_limits};
use cove_turn::{PeerPolicy, REASON_BAD_CREDENTIALS};
use cove_wire::{ErrorCode, Reply};

use crate::accounts::{login, register_account};
use crate::turn::{RawTurn, answer, credentials_of, success, unauthorized};

/// The two shared files in `dir`.
fn shared(dir: &Path) -> SecretFiles {
    SecretFiles {
        opaque_key: Some(dir.join("opaque.key")),
        turn_secret: Some(dir.join("turn.secret")),
    }
}

/// A node on the PostgreSQL database `url` with a TURN server and `secrets`.
async fn node(url: &str, secrets: SecretFiles) -> TestRelay {
    let url = url.to_string();
    TestRelay::configured(move |config| {
        config.store = StoreKind::Postgres(url);
        config.turn_listen = Some("127.0.0.1:0".parse().unwrap());
        config.turn_peers = PeerPolicy::default();
        config.secrets = secrets;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_secret_files_log_in_each_others_accounts_and_accept_each_others_turn_credentials()
 {
    let db = PgCluster::shared().database();
    let secrets = tempfile::tempdir().unwrap();
    // Both nodes start at once: both find the files missing and race to create them.
    let (a, b) = tokio::join!(
        node(db.url(), shared(secrets.path())),
        node(db.url(), shared(secrets.path()))
    );
    // A third node on the same database keeps its secrets in its own data directory.
    let loner = node(db.url(), SecretFiles::default()).await;

    // The shared files are used, not the data directories'.
    for relay in [&a, &b] {
        assert!(!relay.data_dir().join("opaque.key").exists());
        assert!(!relay.data_dir().join("turn.secret").exists());
    }
    assert!(secrets.path().join("opaque.key").exists());
    assert_eq!(
        std::fs::read(secrets.path().join("turn.secret"))
            .unwrap()
            .len(),
        32
    );
    assert!(loner.data_dir().join("opaque.key").exists());

    // A password account registered through A logs in through B.
    let (mut alice, _keys) = a.register("alice").await.unwrap();
    let reg = register_account(&mut alice, "alice", b"correct horse").await;
    let mut fresh = b.connect().await.unwrap();
    let (export_key, answered) = login(&mut fresh, "alice", b"correct horse").await;
    let export_key = export_key.expect("the client's login check passed on node B");
    assert_eq!(export_key.as_bytes(), reg.export_key.as_bytes());
    match answered.unwrap() {
        Reply::AccountLoggedIn { password_bundle } => {
            assert_eq!(password_bundle.as_bytes(), reg.password_bundle.as_slice());
        }
        other => panic!("unexpected {other:?}"),
    }
    // Through the node with other secrets the same password fails like a wrong one.
    let mut elsewhere = loner.connect().await.unwrap();
    let (export_key, answered) = login(&mut elsewhere, "alice", b"correct horse").await;
    assert!(export_key.is_none());
    assert_eq!(answered.err().map(|e| e.code), Some(ErrorCode::LoginFailed));

    // A TURN credential minted by A allocates on B's TURN server, and not on the loner's.
    let (username, password) = credentials_of(&a, "bob").await;
    let b_turn = b.handle().turn_addr().unwrap();
    let mut on_b = RawTurn::new(b_turn, &username, &password).await;
    assert_eq!(answer(&on_b.allocate().await), success());
    let loner_turn = loner.handle().turn_addr().unwrap();
    let mut on_loner = RawTurn::new(loner_turn, &username, &password).await;
    assert_eq!(
        answer(&on_loner.allocate().await),
        unauthorized(REASON_BAD_CREDENTIALS)
    );

    a.shutdown().await;
    b.shutdown().await;
    loner.shutdown().await;
}

/// Starts a memory-store relay with `secrets` and a TURN server; the start error if any.
async fn start_with(secrets: SecretFiles) -> Result<(), StartError> {
    let data = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), data.path());
    config.store = StoreKind::Memory;
    config.limits = test_limits();
    config.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    config.secrets = secrets;
    let handle = Relay::start(config).await?;
    handle.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_malformed_shared_secret_file_is_a_start_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad: PathBuf = dir.path().join("bad");
    std::fs::write(&bad, b"not secrets").unwrap();

    let opaque = start_with(SecretFiles {
        opaque_key: Some(bad.clone()),
        turn_secret: None,
    })
    .await;
    match opaque {
        Err(StartError::OpaqueKey { path, source }) => {
            assert_eq!(path, bad);
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidData);
        }
        other => panic!("expected StartError::OpaqueKey, got {other:?}"),
    }

    let turn = start_with(SecretFiles {
        opaque_key: None,
        turn_secret: Some(bad.clone()),
    })
    .await;
    match turn {
        Err(StartError::Turn(e)) => {
            let text = e.to_string();
            assert!(text.contains(&bad.display().to_string()), "{text}");
            assert!(text.contains("not 32 bytes"), "{text}");
        }
        other => panic!("expected StartError::Turn, got {other:?}"),
    }

    // A shared file in a directory that does not exist is an error too, not a panic.
    let missing = dir.path().join("no-such-dir/opaque.key");
    let opaque = start_with(SecretFiles {
        opaque_key: Some(missing.clone()),
        turn_secret: None,
    })
    .await;
    match opaque {
        Err(StartError::OpaqueKey { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected StartError::OpaqueKey, got {other:?}"),
    }
    // The file the malformed one was never replaced.
    assert_eq!(std::fs::read(&bad).unwrap(), b"not secrets");
}
