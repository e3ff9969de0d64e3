//! Cove Drive (issue 14) end to end: a real relay, real devices (a user's two linked devices
//! and a second user), real blob transfers.

use std::path::{Path, PathBuf};

use cove::Device;
use cove::drive::DriveError;
use cove::transfer::TransferError;
use cove_core::Content;
use cove_core::drive::{DriveOp, Entry, NodeKind};
use cove_wire::BlobId;

use crate::support::*;

/// Writes `files` (relative path, bytes) under `dir`.
fn write_tree(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Pseudo-random bytes (a fixed xorshift stream), `len` of them.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Waits until `device` received a drive snapshot (a device that joined a drive reads its
/// tree from it); a snapshot received before the call counts (events are queued).
async fn snapshot_arrived(device: &mut Device) {
    until(device, "a drive snapshot", |e| {
        matches!(
            e,
            cove::Event::Content(c)
                if matches!(&c.content, Content::Drive(op) if matches!(**op, DriveOp::Snapshot { .. }))
        )
    })
    .await;
}

/// Waits until `device` received another device's drive operation that `what` matches
/// (a device reads what reached it; one arrived earlier counts: events are queued).
async fn op_arrived(device: &mut Device, name: &str, what: impl Fn(&DriveOp) -> bool) {
    until(device, name, |e| {
        matches!(e, cove::Event::Content(c) if matches!(&c.content, Content::Drive(op) if what(op)))
    })
    .await;
}

fn names(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.name.clone()).collect()
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The files alice puts in the first test: a small tree with a file of several chunks.
fn sample() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("top.txt", b"top of the tree\n".to_vec()),
        ("a/x.txt", b"x marks the spot\n".to_vec()),
        ("a/b/big.bin", noise(7, 1_500_000)),
        ("a/b/empty.txt", Vec::new()),
    ]
}

/// alice puts a tree on her first device, links a second device (which joins the drive
/// with a snapshot), and the second device lists it and gets identical bytes; a rename on
/// one is seen on the other; rm sends to the trash, restore on the other device brings it
/// back; a second put of a file makes two versions, and the other device gets the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_of_one_user_see_the_same_drive() {
    let net = Net::sqlite().await;
    let mut alice = net.user("alice").await;
    let local = scratch();
    let src = local.path().join("tree");
    write_tree(&src, &sample());
    let put = alice.drive_put(&src, "/", false).await.unwrap();
    assert_eq!(put.files, 4);
    assert_eq!(put.folders, 3); // tree, a, a/b

    let mut laptop = Device::link(&alice, &net.home("alice-laptop"))
        .await
        .unwrap();
    joined(&mut laptop).await;
    snapshot_arrived(&mut laptop).await;
    assert_eq!(names(&laptop.drive_ls("/").await.unwrap()), ["tree"]);
    assert_eq!(
        names(&laptop.drive_ls("/tree").await.unwrap()),
        ["a", "top.txt"]
    );
    let out = local.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let got = laptop.drive_get("/tree", &out, false).await.unwrap();
    assert_eq!(got.files, 4);
    for (rel, bytes) in sample() {
        assert_eq!(
            std::fs::read(out.join("tree").join(rel)).unwrap(),
            bytes,
            "{rel}"
        );
    }

    // A rename on the laptop is one on the first device.
    laptop
        .drive_mv("/tree/top.txt", "/tree/a/renamed.txt")
        .await
        .unwrap();
    op_arrived(&mut alice, "the move", |op| {
        matches!(op, DriveOp::Move { .. })
    })
    .await;
    assert_eq!(
        names(&alice.drive_ls("/tree/a").await.unwrap()),
        ["b", "renamed.txt", "x.txt"]
    );
    assert_eq!(names(&alice.drive_ls("/tree").await.unwrap()), ["a"]);

    // rm to the trash on one device, restore on the other.
    alice.drive_rm("/tree/a/x.txt").await.unwrap();
    op_arrived(&mut laptop, "the trash", |op| {
        matches!(op, DriveOp::Trash { .. })
    })
    .await;
    assert_eq!(
        names(&laptop.drive_ls("/tree/a").await.unwrap()),
        ["b", "renamed.txt"]
    );
    let trash: Vec<String> = laptop
        .drive_trash("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(trash, ["/tree/a/x.txt"]);
    assert_eq!(
        laptop.drive_restore("/tree/a/x.txt").await.unwrap(),
        "/tree/a/x.txt"
    );
    op_arrived(&mut alice, "the restore", |op| {
        matches!(op, DriveOp::Restore { .. })
    })
    .await;
    assert_eq!(
        names(&alice.drive_ls("/tree/a").await.unwrap()),
        ["b", "renamed.txt", "x.txt"]
    );
    assert!(alice.drive_trash("").await.unwrap().is_empty());

    // A second put of an existing file is its second version.
    let edited = local.path().join("x.txt");
    std::fs::write(&edited, b"x moved a little\n").unwrap();
    alice.drive_put(&edited, "/tree/a/", false).await.unwrap();
    op_arrived(
        &mut laptop,
        "the new version",
        |op| matches!(op, DriveOp::PutVersion { version, .. } if version.size == 17),
    )
    .await;
    let versions = laptop.drive_versions("/tree/a/x.txt").await.unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1].size, 17);
    let one = local.path().join("x-on-laptop.txt");
    laptop
        .drive_get("/tree/a/x.txt", &one, false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&one).unwrap(), b"x moved a little\n");
    // An existing local file is not overwritten without `force`.
    assert!(matches!(
        laptop.drive_get("/tree/a/x.txt", &one, false).await,
        Err(DriveError::Exists(_))
    ));
    alice.close().await;
    laptop.close().await;
}

/// alice shares a folder with bob read-only: `shared` lists it on bob with its owner and his
/// access, bob gets its files; his put is refused with `ReadOnly`, and an operation he
/// forces through `send_content` is ignored by alice's tree (a sentinel put by alice after
/// it is there, bob's folder is not). A device bob links afterwards asks for a snapshot
/// (`NoSnapshot` until then), which alice's next drive command answers. After unshare, a
/// file alice puts never reaches bob. Sharing the shared folder with carol just adds her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_shared_with_bob_read_only_then_unshared() {
    let net = Net::sqlite().await;
    let mut alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let local = scratch();
    let src = local.path().join("trip");
    write_tree(
        &src,
        &[
            ("plan.txt", b"day 1: the coast\n".to_vec()),
            ("photos/p1.jpg", noise(3, 300_000)),
        ],
    );
    alice.drive_put(&src, "/", false).await.unwrap();
    let bob_name = cove::UserName::new("bob").unwrap();
    let shared = alice.drive_share("/trip", &bob_name, true).await.unwrap();
    assert_eq!(shared, "alice:trip");
    joined(&mut bob).await;
    snapshot_arrived(&mut bob).await;
    // alice sees the folder through its mount in her drive.
    let mount = alice.drive_ls("/").await.unwrap();
    assert_eq!(names(&mount), ["trip"]);
    assert!(matches!(mount[0].kind, NodeKind::Mount { .. }));
    assert_eq!(
        names(&alice.drive_ls("/trip").await.unwrap()),
        ["photos", "plan.txt"]
    );

    let on_bob = bob.drive_shared().await.unwrap();
    assert_eq!(on_bob.len(), 1);
    assert_eq!(on_bob[0].name.as_deref(), Some("trip"));
    assert_eq!(on_bob[0].owner.as_ref().map(|o| o.as_str()), Some("alice"));
    assert!(on_bob[0].read_only);
    assert_eq!(
        on_bob[0]
            .members
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert_eq!(
        names(&bob.drive_ls("alice:trip").await.unwrap()),
        ["photos", "plan.txt"]
    );
    let out = local.path().join("bob-p1.jpg");
    bob.drive_get("alice:trip/photos/p1.jpg", &out, false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), noise(3, 300_000));

    // Read-only: refused by bob's client, and ignored by alice's when forced.
    let note = local.path().join("note.txt");
    std::fs::write(&note, b"bob was here").unwrap();
    assert!(matches!(
        bob.drive_put(&note, "alice:trip/", false).await,
        Err(DriveError::ReadOnly)
    ));
    let group = cove_wire::GroupId::from_hex(&on_bob[0].group).unwrap();
    let forced = DriveOp::Mkdir {
        id: [9; 16],
        parent: cove_core::drive::ROOT,
        name: "forced-by-bob".into(),
    };
    bob.session()
        .op(bob.timeout(), move |c| {
            c.send_content(
                cove::session::now_ms(),
                group,
                Content::Drive(Box::new(forced)),
            )
        })
        .await
        .unwrap()
        .unwrap();
    op_arrived(&mut alice, "bob's forced op", |op| {
        matches!(op, DriveOp::Mkdir { .. })
    })
    .await;
    let sentinel = local.path().join("sentinel.txt");
    std::fs::write(&sentinel, b"after bob's op").unwrap();
    alice.drive_put(&sentinel, "/trip/", false).await.unwrap();
    assert_eq!(
        names(&alice.drive_ls("/trip").await.unwrap()),
        ["photos", "plan.txt", "sentinel.txt"]
    );
    // bob's own tree ignores it too (every member applies the same rules).
    op_arrived(
        &mut bob,
        "the sentinel",
        |op| matches!(op, DriveOp::PutVersion { name, .. } if name == "sentinel.txt"),
    )
    .await;
    assert_eq!(
        names(&bob.drive_ls("alice:trip").await.unwrap()),
        ["photos", "plan.txt", "sentinel.txt"]
    );

    // A device bob links now asks for the tree; alice's next drive command answers.
    let mut bob_laptop = Device::link(&bob, &net.home("bob-laptop")).await.unwrap();
    joined(&mut bob_laptop).await;
    assert!(matches!(
        bob_laptop.drive_ls("alice:trip").await,
        Err(DriveError::NoSnapshot(_))
    ));
    // alice answers once she has the request (her next drive command).
    until(&mut alice, "the laptop's snapshot request", |e| {
        matches!(
            e,
            cove::Event::Content(c)
                if matches!(&c.content, Content::Drive(op) if matches!(**op, DriveOp::SnapshotRequest))
        )
    })
    .await;
    alice.drive_ls("/trip").await.unwrap();
    snapshot_arrived(&mut bob_laptop).await;
    assert_eq!(
        names(&bob_laptop.drive_ls("alice:trip").await.unwrap()),
        ["photos", "plan.txt", "sentinel.txt"]
    );

    // Sharing the shared folder again just adds: carol, read-write.
    let mut carol = net.user("carol").await;
    let carol_name = cove::UserName::new("carol").unwrap();
    assert_eq!(
        alice
            .drive_share("/trip", &carol_name, false)
            .await
            .unwrap(),
        "alice:trip"
    );
    joined(&mut carol).await;
    snapshot_arrived(&mut carol).await;
    let on_carol = carol.drive_shared().await.unwrap();
    assert_eq!(on_carol.len(), 1);
    assert_eq!(on_carol[0].group, group.to_hex());
    assert!(!on_carol[0].read_only);
    assert_eq!(
        names(&carol.drive_ls("alice:trip").await.unwrap()),
        ["photos", "plan.txt", "sentinel.txt"]
    );
    assert_eq!(names(&alice.drive_ls("/").await.unwrap()), ["trip"]);

    // Unshare: what alice puts afterwards never reaches bob.
    alice.drive_unshare("/trip", &bob_name).await.unwrap();
    let later = local.path().join("after-unshare-canary.txt");
    std::fs::write(&later, b"not for bob").unwrap();
    alice.drive_put(&later, "/trip/", false).await.unwrap();
    assert_eq!(
        names(&alice.drive_ls("/trip").await.unwrap()),
        [
            "after-unshare-canary.txt",
            "photos",
            "plan.txt",
            "sentinel.txt"
        ]
    );
    for device in [&mut bob, &mut bob_laptop] {
        until(
            device,
            "the removal",
            |e| matches!(e, cove::Event::RemovedFromGroup { group: g, .. } if *g == group),
        )
        .await;
        device.settle_shared().await.unwrap();
        assert!(device.drive_shared().await.unwrap().is_empty());
        let ops = device
            .session()
            .call(move |c| c.drive_ops(&group, 0))
            .await
            .unwrap()
            .unwrap();
        assert!(!ops.is_empty(), "bob's devices kept what they had");
        assert!(ops.iter().all(|(_, _, op)| !matches!(
            op,
            DriveOp::PutVersion { name, .. } if name == "after-unshare-canary.txt"
        )));
    }
    for d in [alice, bob, bob_laptop, carol] {
        d.close().await;
    }
}

/// Emptying the trash purges the file and deletes alice's blobs of it: a GET of one is a
/// 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_trash_deletes_the_owners_blobs() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let local = scratch();
    let file = local.path().join("gone.bin");
    std::fs::write(&file, noise(11, 700_000)).unwrap();
    alice.drive_put(&file, "/", false).await.unwrap();
    let version = alice.drive_versions("/gone.bin").await.unwrap().remove(0);
    let blobs = alice.drive_blobs().await.unwrap();
    let ids: Vec<BlobId> = cove::drive::content::blobs_of(&blobs, &version)
        .await
        .unwrap();
    assert!(!ids.is_empty());
    assert_eq!(
        blobs.download_bytes(ids[0], 4 << 20).await.unwrap().len() as u64,
        version_chunk_len(&version)
    );
    alice.drive_rm("/gone.bin").await.unwrap();
    let report = alice.drive_empty_trash("").await.unwrap();
    assert_eq!(report.purged, 1);
    assert_eq!(report.deleted, ids.len());
    assert_eq!(report.kept, 0);
    assert!(alice.drive_trash("").await.unwrap().is_empty());
    for id in ids {
        assert!(
            matches!(
                blobs.download_bytes(id, 4 << 20).await,
                Err(TransferError::Refused { status: 404, .. })
            ),
            "blob {id} still served"
        );
    }
    alice.close().await;
}

/// The sealed length of a version's first chunk.
fn version_chunk_len(v: &cove_core::drive::FileVersion) -> u64 {
    match &v.manifest {
        cove_core::drive::ManifestRef::Inline(m) => {
            u64::from(m.chunks[0].len) + cove_core::drive::chunk::CHUNK_OVERHEAD
        }
        cove_core::drive::ManifestRef::Blob(_) => 0,
    }
}

/// After a drive with files, folders and a shared folder, no file of the relay's data
/// directory (database, write-ahead log, blobs) holds a file name, a folder name or a file's
/// content, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_data_holds_no_drive_name_or_content() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let local = scratch();
    let src = local.path().join("canary-folder-name");
    let content = b"DRIVE-CONTENT-CANARY the quick brown fox jumps".repeat(50);
    write_tree(
        &src,
        &[
            ("canary-file-name.txt", content.clone()),
            ("canary-sub-folder/canary-inner-file.txt", content.clone()),
        ],
    );
    alice.drive_put(&src, "/", false).await.unwrap();
    let bob_name = cove::UserName::new("bob").unwrap();
    alice
        .drive_share("/canary-folder-name", &bob_name, false)
        .await
        .unwrap();
    joined(&mut bob).await;
    snapshot_arrived(&mut bob).await;
    assert_eq!(
        names(&bob.drive_ls("alice:canary-folder-name").await.unwrap()),
        ["canary-file-name.txt", "canary-sub-folder"]
    );
    alice.close().await;
    bob.close().await;

    let files: Vec<PathBuf> = files_under(net.relay_data());
    let mut all = Vec::new();
    for f in &files {
        all.extend(std::fs::read(f).unwrap_or_default());
    }
    assert!(contains(&all, b"alice"), "scan sanity check");
    for needle in [
        b"canary-folder-name".as_slice(),
        b"canary-file-name",
        b"canary-sub-folder",
        b"canary-inner-file",
        b"DRIVE-CONTENT-CANARY",
        b"drive/alice",
    ] {
        assert!(
            !contains(&all, needle),
            "{:?} found in the relay's data",
            String::from_utf8_lossy(needle)
        );
    }
}

/// A hostile user makes groups named like alice's drive (`drive/alice/home-00`) and after a shared
/// folder of hers (`drive/alice/<tag>`, with an `Init` naming himself the owner), and adds
/// her: her files still go to her own drive (a group holding another user is never her
/// personal drive), his groups receive no file of hers, and the fake folder is neither
/// listed, opened nor written as hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_named_after_alices_drive_is_not_hers() {
    let net = Net::sqlite().await;
    let mut alice = net.user("alice").await;
    let mallory = net.user("mallory").await;
    let mut fakes = Vec::new();
    for name in ["drive/alice/home-00", "drive/alice/0123abcd"] {
        let owned = name.to_owned();
        mallory
            .session()
            .op(mallory.timeout(), move |c| {
                c.create_drive_group(cove::session::now_ms(), &owned)
            })
            .await
            .unwrap()
            .unwrap();
        let id = mallory
            .drive_groups()
            .await
            .unwrap()
            .into_iter()
            .find(|g| g.name == name)
            .unwrap()
            .id;
        let init = DriveOp::Init {
            name: "Photos".into(),
            owner: mallory.user().clone(),
        };
        mallory.drive_post(id, vec![init]).await.unwrap();
        let (hex, users) = (id.to_hex(), crate::support::names(&["alice"]));
        mallory
            .session()
            .op(mallory.timeout(), move |c| {
                c.add_users(cove::session::now_ms(), &hex, &users)
            })
            .await
            .unwrap()
            .unwrap();
        joined(&mut alice).await;
        fakes.push(id);
    }
    let local = scratch();
    let file = local.path().join("secret plan.txt");
    std::fs::write(&file, b"alice's secret plan").unwrap();
    alice.drive_put(&file, "/", false).await.unwrap();
    let listed = alice.drive_ls("/").await.unwrap();
    assert_eq!(names(&listed), ["secret plan.txt"]);
    let mine = alice
        .drive_groups()
        .await
        .unwrap()
        .into_iter()
        .filter(|g| {
            cove_core::drive::is_personal_drive(&g.name, alice.user())
                && g.members == crate::support::names(&["alice"])
        })
        .count();
    assert_eq!(mine, 1, "alice made her own personal drive");
    // Nothing alice wrote reached mallory's groups (he reads his own logs).
    for id in fakes {
        let ops = mallory
            .session()
            .call(move |c| c.drive_ops(&id, 0))
            .await
            .unwrap()
            .unwrap();
        assert!(
            ops.iter().all(|(_, author, _)| author == mallory.user()),
            "alice posted into mallory's group: {ops:?}"
        );
    }
    assert!(alice.drive_shared().await.unwrap().is_empty());
    // Opening it as hers is refused (it has no tree from her devices) and nothing can be
    // put into it.
    assert!(matches!(
        alice.drive_ls("alice:Photos/").await,
        Err(DriveError::NoDrive(_) | DriveError::NoSnapshot(_))
    ));
    assert!(
        alice
            .drive_put(&file, "alice:Photos/", false)
            .await
            .is_err()
    );
    alice.close().await;
    mallory.close().await;
}

/// A member who is not the owner posts a forged snapshot of a shared folder (a tree with a
/// folder alice never made): a device that joins later, and alice's own, build the tree from
/// the owner's snapshot only, so the forged folder appears nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_forged_snapshot_is_not_the_tree() {
    use cove_core::drive::Tree;
    use cove_core::drive::seal::SNAPSHOT_AAD;
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let mut carol = net.user("carol").await;
    let local = scratch();
    write_tree(local.path(), &[("trip/plan.txt", b"day 1".to_vec())]);
    alice
        .drive_put(&local.path().join("trip"), "/", false)
        .await
        .unwrap();
    let bob_name = cove_wire::UserName::new("bob").unwrap();
    let shared = alice.drive_share("/trip", &bob_name, false).await.unwrap();
    snapshot_arrived(&mut bob).await;
    let carol_name = cove_wire::UserName::new("carol").unwrap();
    alice
        .drive_share("/trip", &carol_name, false)
        .await
        .unwrap();
    snapshot_arrived(&mut carol).await;

    // bob's forgery: a tree naming alice the owner, with a folder of his.
    let group = bob.drive_open(&shared).await.unwrap().group;
    let mut forged = Tree::new();
    let owner = alice.user().clone();
    let init = DriveOp::Init {
        name: "trip".into(),
        owner: owner.clone(),
    };
    forged.apply(1, &owner, &init).unwrap();
    let mkdir = DriveOp::Mkdir {
        id: [7; 16],
        parent: cove_core::drive::ROOT,
        name: "forged-by-bob".into(),
    };
    forged.apply(2, &owner, &mkdir).unwrap();
    let blobs = bob.drive_blobs().await.unwrap();
    let sealed = cove::drive::content::put_sealed(&blobs, SNAPSHOT_AAD, &forged.encode_state())
        .await
        .unwrap();
    let snapshot = DriveOp::Snapshot {
        covers: u64::MAX - 1,
        blob: sealed,
    };
    bob.session()
        .op(bob.timeout(), move |c| {
            c.send_content(
                cove::session::now_ms(),
                group,
                Content::Drive(Box::new(snapshot)),
            )
        })
        .await
        .unwrap()
        .unwrap();
    // carol has bob's snapshot in her log before she lists.
    until(&mut carol, "bob's forged snapshot", |e| {
        matches!(
            e,
            cove::Event::Content(c)
                if c.from.as_str() == "bob"
                    && matches!(&c.content, Content::Drive(op) if matches!(**op, DriveOp::Snapshot { .. }))
        )
    })
    .await;
    for device in [&carol, &alice] {
        let listed = names(&device.drive_ls(&shared).await.unwrap());
        assert_eq!(listed, ["plan.txt"], "{}", device.user());
    }
    alice.close().await;
    bob.close().await;
    carol.close().await;
}
