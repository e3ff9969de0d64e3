//! The relay stores ciphertext only.

use cove::config::Home;
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
