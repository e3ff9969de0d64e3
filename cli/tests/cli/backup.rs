//! `cove backup` and `cove restore-history` through the binary, against a real relay.

use cove::config::Home;
use cove_store::{AccountSecrets, Store};
use cove_wire::UserName;

use super::{fails, init, ok, relay};

/// Without account secrets `cove backup` fails with the reason; with them it uploads what
/// is new once (a second run has nothing new), and `cove restore-history` on the same home
/// finds every row already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_uploads_what_is_new_once_and_restore_reports_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, server, ca) = relay(dir.path()).await;
    let alice = dir.path().join("alice");
    tokio::task::spawn_blocking(move || {
        init(&alice, &server, &ca, "alice");
        ok(&alice, &["group", "create", "friends"]);
        ok(&alice, &["send", "friends", "one"]);
        ok(&alice, &["send", "friends", "two"]);
        let err = fails(&alice, &["backup"]);
        assert!(err.contains("needs a password account"), "{err}");
        {
            let store = Home::new(alice.clone()).open_database().unwrap();
            store
                .set_account_secrets(&AccountSecrets {
                    user: UserName::new("alice").unwrap(),
                    backup_key: [5u8; 32].into(),
                })
                .unwrap();
        }
        let out = ok(&alice, &["backup"]);
        assert!(
            out.starts_with("backed up 2 messages in 1 segments ("),
            "{out}"
        );
        assert_eq!(ok(&alice, &["backup"]).trim(), "nothing new to back up");
        ok(&alice, &["send", "friends", "three"]);
        let out = ok(&alice, &["backup"]);
        assert!(
            out.starts_with("backed up 1 messages in 1 segments ("),
            "{out}"
        );
        assert_eq!(
            ok(&alice, &["restore-history"]).trim(),
            "restored 0 messages from 2 segments (3 already here, 0 refused)"
        );
    })
    .await
    .unwrap();
}
