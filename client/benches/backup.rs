//! History-backup restore: 10,000 messages (`COVE_BENCH_MESSAGES`) of one user's history,
//! backed up by one device, restored on a new device of the user through an in-process
//! relay over loopback TLS (list the index, download every segment from the blob store,
//! open and verify it, import the rows into the new device's encrypted SQLite home, as
//! shipped). The baseline, measured in the same run: importing the same rows, already
//! opened, into a fresh home's database of the same kind (no relay, no download, no
//! decryption), so the ratio is what the backup's transport and crypto add.
//!
//! Run: `cargo bench -p cove --bench backup`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use cove::config::Home;
use cove::{Device, UserName};
use cove_core::backup::{self, BackupKey, SegmentEntry};
use cove_core::content::{Content, ENVELOPE_VERSION, Envelope};
use cove_core::cove_store::{AccountSecrets, Store, StoredMessage};
use cove_server::{Relay, RelayConfig, StoreKind};
use cove_wire::{DeviceId, Seq};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u64 = std::env::var("COVE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(n));
}

async fn secrets(device: &Device) {
    let user = device.user().clone();
    device
        .session()
        .call(move |c| {
            c.store().set_account_secrets(&AccountSecrets {
                user,
                backup_key: [7u8; 32].into(),
            })
        })
        .await
        .unwrap()
        .unwrap();
}

async fn run(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = StoreKind::Sqlite;
    let relay = Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_owned();
    let home = |u: &str| Home::new(dir.path().join(u));
    let alice_name = UserName::new("alice").unwrap();
    let mut alice = Device::init(&home("alice"), &server, alice_name.clone(), Some(&ca))
        .await
        .unwrap();
    secrets(&alice).await;
    alice.create_group("bench").await.unwrap();
    let group = alice
        .session()
        .call(|c| c.resolve("bench"))
        .await
        .unwrap()
        .unwrap();
    // The history: n texts of about 60 bytes, stored as received messages are.
    alice
        .session()
        .call(move |c| {
            let store = c.store();
            store.transaction(|s| {
                for seq in 1..=n {
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&seq.to_be_bytes());
                    let content = Envelope {
                        version: ENVELOPE_VERSION,
                        id,
                        sent_at_ms: 1_700_000_000_000 + seq,
                        content: Content::Text {
                            text: format!("message {seq} of the benchmark history, hello"),
                        },
                    }
                    .encode()
                    .unwrap();
                    s.put_message(&StoredMessage {
                        group,
                        seq: Seq(seq),
                        from: UserName::new("bob").unwrap(),
                        from_device: DeviceId(2),
                        message_id: id,
                        sent_at_ms: 1_700_000_000_000 + seq,
                        content,
                    })?;
                    s.mark_seen(&group, &id)?;
                }
                Ok::<_, cove_core::cove_store::StoreError>(())
            })
        })
        .await
        .unwrap()
        .unwrap();

    let t = Instant::now();
    let uploaded = cove::backup::backup(&mut alice).await.unwrap();
    let backup_time = t.elapsed();
    assert_eq!(uploaded.messages as u64, n);

    let reps: usize = std::env::var("BACKUP_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 10);
    // Baseline input: the same rows, sealed and opened again, as restore imports them.
    let key = BackupKey::new([7u8; 32].into());
    let opened: Vec<backup::Segment> = {
        let store = home("baseline-source").open_database().unwrap();
        let record = alice
            .session()
            .call(move |c| c.store().group(&group))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        store.put_group(&record).unwrap();
        let rows = alice
            .session()
            .call(move |c| c.store().messages(&group))
            .await
            .unwrap()
            .unwrap();
        for m in &rows {
            store.put_message(m).unwrap();
        }
        backup::plan(&store, &alice_name, DeviceId(99))
            .unwrap()
            .into_iter()
            .map(|p| {
                let sealed = backup::seal(&key, &p.segment, &mut rand::rngs::OsRng).unwrap();
                let entry = SegmentEntry {
                    version: backup::BACKUP_VERSION,
                    id: p.segment.id,
                };
                backup::open(&key, &alice_name, &entry, &sealed).unwrap()
            })
            .collect()
    };
    let mut restores = Vec::new();
    let mut baselines = Vec::new();
    for rep in 0..reps {
        // Restore on a device made now (linked, given the account secrets).
        let mut laptop = Device::link(&alice, &home(&format!("alice-laptop-{rep}")))
            .await
            .unwrap();
        secrets(&laptop).await;
        laptop.settle().await.unwrap();
        let t = Instant::now();
        let restored = cove::backup::restore_history(&mut laptop).await.unwrap();
        restores.push(t.elapsed());
        assert!(restored.refused.is_empty());
        assert_eq!(restored.messages as u64 + restored.duplicates as u64, n);
        assert_eq!(
            laptop.history("bench").await.unwrap().len() as u64,
            n,
            "the restored history"
        );
        laptop.close().await;

        // Baseline: the same opened rows imported into a fresh home's database.
        let target = home(&format!("baseline-{rep}")).open_database().unwrap();
        let segments = opened.clone();
        let t = Instant::now();
        let mut stored = 0;
        for segment in segments {
            stored += backup::import(&target, segment, 0).unwrap().0.messages;
        }
        baselines.push(t.elapsed());
        assert_eq!(stored as u64, n);
        eprintln!(
            "rep {rep}: restore {:.1} ms, baseline {:.1} ms",
            restores[rep].as_secs_f64() * 1e3,
            baselines[rep].as_secs_f64() * 1e3
        );
    }
    restores.sort();
    baselines.sort();
    let restore_time = restores[reps / 2];
    let baseline_time = baselines[reps / 2];

    println!(
        "history backup of {n} messages: {} segments, {} bytes sealed, backup {:.1} ms",
        uploaded.segments,
        uploaded.bytes,
        backup_time.as_secs_f64() * 1e3
    );
    println!(
        "restore on a new device (median of {reps}): {:.1} ms ({:.0} messages/s); baseline \
         (local import of the same rows): {:.1} ms; ratio {:.2}x",
        restore_time.as_secs_f64() * 1e3,
        n as f64 / restore_time.as_secs_f64(),
        baseline_time.as_secs_f64() * 1e3,
        restore_time.as_secs_f64() / baseline_time.as_secs_f64()
    );
    alice.close().await;
    relay.shutdown().await;
}
