//! The encrypted history backup end to end: a real relay (SQLite, blob store), real
//! devices over TLS with real SQLite homes. A device of alice backs up, a device of alice
//! made later restores and shows the past; what a hostile relay could serve (another
//! user's segment, a changed blob, a reordered index) is refused; another user's device
//! cannot use alice's index.

use cove::backup::{self, BackupError};
use cove::transfer::BlobClient;
use cove::{Device, MessageView};
use cove_core::backup::{MAX_SEALED_SEGMENT, SegmentEntry};
use cove_core::cove_store::{AccountSecrets, Store};
use cove_server::store::{BackupCaps, RelayStore, SqliteStore};
use cove_wire::{
    BackupSegment, BlobId, ErrorCode, NewBackupSegment, Payload, Reply, Request, UserName,
};

use crate::support::{Net, joined, messages, names};

/// Gives `device` the account secrets of its user with backup key `[key; 32]` (what
/// `cove init` with a password or `cove login` store).
async fn set_secrets(device: &Device, key: u8) {
    let user = device.user().clone();
    device
        .session()
        .call(move |c| {
            c.store().set_account_secrets(&AccountSecrets {
                user,
                backup_key: [key; 32].into(),
            })
        })
        .await
        .unwrap()
        .unwrap();
}

/// The index of `device`'s user as the relay lists it.
async fn index(device: &mut Device) -> Vec<BackupSegment> {
    let user = device.user().clone();
    match device
        .relay_request(Request::ListBackupSegments { user, after: 0 })
        .await
        .unwrap()
    {
        Ok(Reply::BackupSegments { segments, more }) => {
            assert!(!more);
            segments.0
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

/// (from, text, sent_at) of each message, in order.
fn seen(history: &[MessageView]) -> Vec<(String, String, u64)> {
    history
        .iter()
        .map(|m| (m.from.clone(), m.text.clone(), m.sent_at))
        .collect()
}

/// alice and bob in two groups, messages both ways in each, and a file in the second.
async fn two_groups(net: &Net) -> (Device, Device, tempfile::TempDir) {
    let mut alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    for g in ["g1", "g2"] {
        alice.create_group(g).await.unwrap();
        alice.add_users(g, &names(&["bob"])).await.unwrap();
        joined(&mut bob).await;
    }
    alice.send_text("g1", "alice one").await.unwrap();
    alice.send_text("g2", "alice two").await.unwrap();
    bob.send_text("g1", "bob one").await.unwrap();
    bob.send_text("g2", "bob two").await.unwrap();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("notes.txt");
    std::fs::write(&path, b"the file's contents").unwrap();
    cove::transfer::send_file(&alice, "g2", &path, false)
        .await
        .unwrap();
    messages(&mut alice, 2).await;
    alice.sync().await.unwrap();
    (alice, bob, files)
}

/// A device of alice made after the messages were sent restores the backup of another of
/// her devices: `history` shows both groups' messages (texts, senders, times, the file
/// with a key that downloads it) as on the first device; a second backup uploads only
/// what came since, and a second restore adds only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_device_restores_the_history_of_both_groups_incrementally() {
    let net = Net::sqlite().await;
    let (mut alice, _bob, files) = two_groups(&net).await;
    set_secrets(&alice, 7).await;
    let first = backup::backup(&mut alice).await.unwrap();
    assert_eq!((first.segments, first.messages), (1, 5));
    assert_eq!(backup::backup(&mut alice).await.unwrap().segments, 0);

    let mut laptop = Device::link(&alice, &net.home("alice-laptop"))
        .await
        .unwrap();
    set_secrets(&laptop, 7).await;
    let restored = backup::restore_history(&mut laptop).await.unwrap();
    assert_eq!(restored.refused, vec![]);
    assert_eq!((restored.segments, restored.messages), (1, 5));
    for g in ["g1", "g2"] {
        let want = alice.history(g).await.unwrap();
        let got = laptop.history(g).await.unwrap();
        assert_eq!(seen(&got), seen(&want), "{g}");
        assert!(got.iter().all(|m| m.group == g));
    }
    assert_eq!(
        seen(&laptop.history("g1").await.unwrap())
            .into_iter()
            .map(|(from, text, _)| (from, text))
            .collect::<Vec<_>>(),
        vec![
            ("alice".to_owned(), "alice one".to_owned()),
            ("bob".to_owned(), "bob one".to_owned())
        ]
    );
    // The restored file message carries its key: the laptop downloads and decrypts it.
    let file = laptop
        .history("g2")
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.attachment.is_some())
        .unwrap();
    let out = files.path().join("restored.txt");
    cove::transfer::download(&laptop, "g2", &file.id, &out, false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"the file's contents");

    // Incremental: only what came since.
    alice.send_text("g2", "after the backup").await.unwrap();
    alice.send_text("g1", "and one more").await.unwrap();
    let second = backup::backup(&mut alice).await.unwrap();
    assert_eq!((second.segments, second.messages), (1, 2));
    assert_eq!(index(&mut alice).await.len(), 2);
    let again = backup::restore_history(&mut laptop).await.unwrap();
    assert_eq!(again.refused, vec![]);
    assert_eq!(again.segments, 2);
    // alice added the laptop to her groups meanwhile, so the two new ones may have reached
    // it directly already: then they are duplicates here.
    assert_eq!(again.messages + again.duplicates, 7);
    assert_eq!(
        laptop
            .history("g2")
            .await
            .unwrap()
            .last()
            .map(|m| m.text.clone()),
        Some("after the backup".to_owned())
    );
}

/// What a hostile relay could serve is refused and never imported, each counted: a
/// changed blob, another user's segment listed in alice's index, and an index whose
/// entries were put in another order (a device's counter going back). The one good
/// segment is imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_foreign_and_reordered_segments_are_refused() {
    let net = Net::sqlite().await;
    let (mut alice, mut bob, _files) = two_groups(&net).await;
    set_secrets(&alice, 7).await;
    set_secrets(&bob, 9).await;
    assert_eq!(backup::backup(&mut alice).await.unwrap().messages, 5);
    alice.send_text("g1", "second segment").await.unwrap();
    assert_eq!(backup::backup(&mut alice).await.unwrap().messages, 1);
    alice.send_text("g1", "third segment").await.unwrap();
    assert_eq!(backup::backup(&mut alice).await.unwrap().messages, 1);
    bob.sync().await.unwrap();
    assert!(backup::backup(&mut bob).await.unwrap().segments > 0);
    let alices = index(&mut alice).await;
    let bobs = index(&mut bob).await;
    assert_eq!(alices.len(), 3);

    // The relay, turned hostile, rewrites alice's index: the first segment with one byte of
    // its blob changed, the third, the second (its counter lower than the third's: out of
    // order), then bob's segment.
    let relay = SqliteStore::open(net.relay_data().join("relay.db")).unwrap();
    let alice_name = UserName::new("alice").unwrap();
    relay.delete_backup_index(&alice_name).unwrap();
    let relist = |s: &BackupSegment| NewBackupSegment {
        blob: s.blob,
        size: s.size,
        entry: s.entry.clone(),
    };
    for s in [&alices[0], &alices[2], &alices[1], &bobs[0]] {
        relay
            .append_backup_segment(&alice_name, relist(s), BackupCaps::default())
            .unwrap();
    }
    let blob_file = net.relay_data().join("blobs").join(alices[0].blob.to_hex());
    let mut bytes = std::fs::read(&blob_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&blob_file, &bytes).unwrap();

    let mut laptop = Device::link(&alice, &net.home("alice-laptop"))
        .await
        .unwrap();
    set_secrets(&laptop, 7).await;
    let restored = backup::restore_history(&mut laptop).await.unwrap();
    assert_eq!((restored.segments, restored.messages), (1, 1));
    let refused: Vec<(u64, String)> = restored
        .refused
        .iter()
        .map(|r| (r.position, r.reason.clone()))
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(refused[0].0, 1);
    assert!(refused[0].1.contains("authentication"), "{refused:?}");
    assert_eq!(refused[1].0, 3);
    assert!(refused[1].1.contains("out of order"), "{refused:?}");
    assert_eq!(refused[2].0, 4);
    assert!(refused[2].1.contains("authentication"), "{refused:?}");
    let texts: Vec<String> = laptop
        .history("g1")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, vec!["third segment".to_owned()]);
}

/// bob's device cannot list or append to alice's index (`NotOwner`), nor index alice's
/// blob in his own (`InvalidRequest`), nor a blob under a wrong size; a device without
/// account secrets makes no backup; a round backs up only once its batch waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_device_cannot_use_alices_index() {
    let net = Net::sqlite().await;
    let (mut alice, mut bob, _files) = two_groups(&net).await;
    assert!(matches!(
        backup::backup(&mut alice).await,
        Err(BackupError::NoAccount)
    ));
    assert!(index(&mut alice).await.is_empty());
    set_secrets(&alice, 7).await;
    // A sync round backs up only once a batch waits: 5 rows are not one of 100.
    assert_eq!(backup::backup_if_due(&mut alice, 100).await.unwrap(), None);
    assert!(index(&mut alice).await.is_empty());
    let due = backup::backup_if_due(&mut alice, 5).await.unwrap().unwrap();
    assert_eq!((due.segments, due.messages), (1, 5));
    let alices = index(&mut alice).await;
    assert_eq!(alices.len(), 1);
    let alice_name = UserName::new("alice").unwrap();
    let code = |answer: Result<Reply, cove_wire::ErrorReply>| answer.err().map(|e| e.code);

    let listed = bob
        .relay_request(Request::ListBackupSegments {
            user: alice_name.clone(),
            after: 0,
        })
        .await
        .unwrap();
    assert_eq!(code(listed), Some(ErrorCode::NotOwner));

    let bob_blob = BlobClient::for_device(&bob)
        .await
        .unwrap()
        .upload_bytes(vec![1u8; 100])
        .await
        .unwrap();
    let segment = |blob: BlobId, size: u64| NewBackupSegment {
        blob,
        size,
        entry: Payload(vec![0; 8]),
    };
    let appended = bob
        .relay_request(Request::AppendBackupSegment {
            user: alice_name.clone(),
            segment: segment(bob_blob, 100),
        })
        .await
        .unwrap();
    assert_eq!(code(appended), Some(ErrorCode::NotOwner));
    let bob_name = UserName::new("bob").unwrap();
    for (blob, size) in [(alices[0].blob, alices[0].size), (bob_blob, 99)] {
        let refused = bob
            .relay_request(Request::AppendBackupSegment {
                user: bob_name.clone(),
                segment: segment(blob, size),
            })
            .await
            .unwrap();
        assert_eq!(code(refused), Some(ErrorCode::InvalidRequest));
    }
    assert!(index(&mut bob).await.is_empty());
    assert_eq!(index(&mut alice).await, alices);
    // The blob the index names is the one alice uploaded, whole.
    let sealed = BlobClient::for_device(&alice)
        .await
        .unwrap()
        .download_bytes(alices[0].blob, MAX_SEALED_SEGMENT as u64)
        .await
        .unwrap();
    assert_eq!(sealed.len() as u64, alices[0].size);
    assert!(SegmentEntry::decode(alices[0].entry.as_bytes()).is_ok());
}
