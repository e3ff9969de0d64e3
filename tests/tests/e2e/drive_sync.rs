//! `cove drive sync` (issue 14 item 3): two devices of alice, each syncing its own local
//! folder with her personal drive in alternate one-shot passes, through a real relay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cove::Device;
use cove::drive::sync::{PassReport, Syncer};
use cove_core::Content;
use cove_core::drive::DriveOp;

use crate::support::{Net, WAIT, contains, joined, until, workspace_binary};

/// alice's laptop (registered) and desk (linked), both in her personal drive, and a local
/// folder for each.
struct Pair {
    net: Net,
    laptop: Device,
    desk: Device,
    a: PathBuf,
    b: PathBuf,
}

async fn pair() -> Pair {
    let net = Net::sqlite().await;
    let laptop = net.user("alice").await;
    let mut desk = Device::link(&laptop, &net.home("alice-desk"))
        .await
        .unwrap();
    // The laptop creates the drive; the desk, already a device of alice, is added to it.
    laptop.drive_open("").await.unwrap();
    joined(&mut desk).await;
    // The drive's `Init` reached the desk (else it would have no tree yet).
    until(&mut desk, "the drive's Init", |e| {
        matches!(
            e,
            cove::Event::Content(c)
                if matches!(&c.content, Content::Drive(op) if matches!(**op, DriveOp::Init { .. }))
        )
    })
    .await;
    desk.drive_open("").await.unwrap();
    let a = net.dir.path().join("laptop-files");
    let b = net.dir.path().join("desk-files");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    Pair {
        net,
        laptop,
        desk,
        a,
        b,
    }
}

/// One `--once` pass of `device` syncing `dir` with `/`; its report and its log lines.
async fn pass(device: &Device, dir: &Path) -> PassReport {
    let mut syncer = Syncer::open(device, dir, "/", Box::new(|_| {}))
        .await
        .unwrap();
    let report = syncer.pass().await.unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    report
}

/// Every file under `dir` (`.coveignore` excepted) with its contents.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                if rel != ".coveignore" {
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
    }
    out
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible enough, and no rand dependency here.
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_small_files_sync_both_ways_and_an_unchanged_pass_does_nothing() {
    let p = pair().await;
    for i in 0..500 {
        write(
            &p.a,
            &format!("lap{}/f{i}.txt", i % 10),
            format!("laptop {i}").as_bytes(),
        );
        write(
            &p.b,
            &format!("desk{}/g{i}.txt", i % 10),
            format!("desk {i}").as_bytes(),
        );
    }
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!((r.uploaded, r.downloaded, r.folders), (500, 0, 10));
    let r = pass(&p.desk, &p.b).await;
    assert_eq!((r.uploaded, r.downloaded, r.folders), (500, 500, 20));
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!((r.uploaded, r.downloaded, r.folders), (0, 500, 10));
    let (fa, fb) = (files(&p.a), files(&p.b));
    assert_eq!(fa.len(), 1000);
    assert_eq!(fa, fb, "both folders hold the same 1,000 files");
    for (device, dir) in [(&p.laptop, &p.a), (&p.desk, &p.b)] {
        let r = pass(device, dir).await;
        assert!(
            !r.changed(),
            "a pass with nothing changed did something: {r:?}"
        );
    }
    assert_eq!(p.laptop.drive_ls("/lap3").await.unwrap().len(), 50);
    // The 1,000 files went up in batches (a few dozen messages), not a message each: the
    // drive group's whole log (Init, membership, 20 folders, the versions) is shorter than
    // the files (one message per file would make it over 1,020 entries).
    let log = p.laptop.drive_open("").await.unwrap().tree.applied();
    assert!(log < 500, "the drive's log holds {log} entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_on_both_sides_keep_both_as_a_conflict_copy() {
    let p = pair().await;
    write(&p.a, "notes/plan.txt", b"v1");
    pass(&p.laptop, &p.a).await;
    pass(&p.desk, &p.b).await;
    write(&p.a, "notes/plan.txt", b"the laptop's edit");
    write(&p.b, "notes/plan.txt", b"the desk's edit, longer");
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!(r.uploaded, 1);
    let r = pass(&p.desk, &p.b).await;
    assert_eq!((r.conflicts, r.uploaded, r.downloaded), (1, 1, 1));
    pass(&p.laptop, &p.a).await;
    let (fa, fb) = (files(&p.a), files(&p.b));
    assert_eq!(fa, fb);
    assert_eq!(fa.len(), 2, "{:?}", fa.keys());
    assert_eq!(fa["notes/plan.txt"], b"the laptop's edit");
    let prefix = format!("notes/plan (conflict from {} ", p.desk.drive_device_name());
    let copy = fa
        .keys()
        .find(|k| k.starts_with(&prefix) && k.ends_with(").txt"))
        .unwrap_or_else(|| panic!("no conflict copy named {prefix}...: {:?}", fa.keys()));
    assert_eq!(fa[copy], b"the desk's edit, longer");
    // In the drive: two files, each with the versions it had.
    let ls = p.laptop.drive_ls("/notes").await.unwrap();
    assert_eq!(ls.len(), 2);
    // The sync state is encrypted: no path in the clear in any file of it.
    let state_dir = p.net.home("alice").dir().join("drive-sync");
    let mut scanned = 0;
    for e in std::fs::read_dir(&state_dir).unwrap().flatten() {
        if e.path().is_file() {
            let bytes = std::fs::read(e.path()).unwrap();
            assert!(
                !contains(&bytes, b"plan.txt"),
                "{} holds a path",
                e.path().display()
            );
            assert!(!bytes.starts_with(b"SQLite format 3"));
            scanned += 1;
        }
    }
    assert!(scanned >= 1, "no state file under {}", state_dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_on_one_device_is_a_rename_on_the_other_and_transfers_nothing() {
    let p = pair().await;
    let big = random_bytes(3 << 20, 7);
    write(&p.a, "a/big.bin", &big);
    write(&p.a, "a/small.txt", b"small");
    pass(&p.laptop, &p.a).await;
    let r = pass(&p.desk, &p.b).await;
    assert_eq!(r.downloaded, 2);

    // A local rename into a new folder on the laptop: a move in the drive, no upload.
    std::fs::create_dir(p.a.join("b")).unwrap();
    std::fs::rename(p.a.join("a/big.bin"), p.a.join("b/big2.bin")).unwrap();
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!((r.moved, r.uploaded, r.bytes_up), (1, 0, 0), "{r:?}");
    // On the desk: a local rename, nothing fetched.
    let r = pass(&p.desk, &p.b).await;
    assert_eq!((r.moved, r.downloaded, r.bytes_down), (1, 0, 0), "{r:?}");
    assert_eq!(files(&p.b), files(&p.a));
    assert_eq!(files(&p.b)["b/big2.bin"], big);

    // A move made in the drive (`cove drive mv` on the desk): the laptop renames its copy.
    p.desk.drive_mv("/b/big2.bin", "/top.bin").await.unwrap();
    p.desk.drive_mv("/a", "/renamed").await.unwrap();
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!((r.moved, r.downloaded, r.bytes_down), (2, 0, 0), "{r:?}");
    let fa = files(&p.a);
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        ["renamed/small.txt", "top.bin"]
    );
    assert_eq!(fa["top.bin"], big);
    let r = pass(&p.desk, &p.b).await;
    assert_eq!((r.moved, r.downloaded, r.bytes_down), (2, 0, 0), "{r:?}");
    assert_eq!(files(&p.b), fa);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_delete_goes_to_the_trash_and_a_restore_brings_it_back() {
    let p = pair().await;
    write(&p.a, "keep.txt", b"keep");
    write(&p.a, "docs/gone.txt", b"soon in the trash");
    pass(&p.laptop, &p.a).await;
    pass(&p.desk, &p.b).await;
    assert!(p.b.join("docs/gone.txt").exists());

    std::fs::remove_file(p.a.join("docs/gone.txt")).unwrap();
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!(r.deleted, 1);
    let trash = p.laptop.drive_trash("").await.unwrap();
    assert_eq!(trash.len(), 1, "{trash:?}");
    assert_eq!(trash[0].path.trim_start_matches('/'), "docs/gone.txt");
    let r = pass(&p.desk, &p.b).await;
    assert_eq!(r.deleted, 1);
    assert!(!p.b.join("docs/gone.txt").exists());

    p.desk.drive_restore("/docs/gone.txt").await.unwrap();
    let r = pass(&p.desk, &p.b).await;
    assert_eq!(r.downloaded, 1);
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!(r.downloaded, 1);
    assert_eq!(
        std::fs::read(p.a.join("docs/gone.txt")).unwrap(),
        b"soon in the trash"
    );
    assert_eq!(files(&p.a), files(&p.b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coveignored_files_are_never_uploaded() {
    let p = pair().await;
    write(&p.a, ".coveignore", b"# local only\n*.tmp\nbuild/\n");
    write(&p.a, "draft.tmp", b"scratch");
    write(&p.a, "src/x.tmp", b"scratch");
    write(&p.a, "build/out.o", b"object");
    write(&p.a, "src/main.rs", b"fn main() {}");
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!(r.uploaded, 1);
    let mut all: Vec<String> = p
        .laptop
        .drive_ls("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    all.extend(
        p.laptop
            .drive_ls("/src")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name),
    );
    assert_eq!(all, ["src", "main.rs"]);
    pass(&p.desk, &p.b).await;
    assert_eq!(files(&p.b).keys().collect::<Vec<_>>(), ["src/main.rs"]);
}

/// Runs `cove drive sync DIR / --once` for the home `home` as a child process, kills it
/// with SIGKILL once `progress` sees the transfer under way, and returns whether it was
/// killed (else it finished first).
fn killed_in_the_middle(home: &Path, dir: &Path, progress: impl Fn() -> bool) -> bool {
    let cove = workspace_binary("cove-cli", "cove");
    let mut child = Command::new(cove)
        .arg("--home")
        .arg(home)
        .env_remove("COVE_HOME")
        .args(["drive", "sync"])
        .arg(dir)
        .args(["/", "--once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if progress() {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(std::time::Instant::now() < deadline, "no progress in time");
        std::thread::yield_now();
    }
}

/// `cove drive sync DIR / --once` to completion; its stdout.
fn sync_once(home: &Path, dir: &Path) -> String {
    let cove = workspace_binary("cove-cli", "cove");
    let out = Command::new(cove)
        .arg("--home")
        .arg(home)
        .env_remove("COVE_HOME")
        .args(["drive", "sync"])
        .arg(dir)
        .args(["/", "--once"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number in `… (N B sent)` / `… (N B fetched)` on the line about `name`; 0 when there
/// is none (the killed run had finished the transfer and only its record was left to do).
fn bytes_of(stdout: &str, verb: &str, name: &str) -> u64 {
    let Some(line) = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{verb} {name} (")))
    else {
        return 0;
    };
    line.rsplit('(')
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_during_an_upload_and_a_download_resumes_without_duplicates() {
    const SIZE: usize = 64 << 20;
    let p = pair().await;
    let big = random_bytes(SIZE, 42);
    write(&p.a, "big.bin", &big);
    let laptop_home = p.net.home("alice").dir().to_owned();
    let desk_home = p.net.home("alice-desk").dir().to_owned();
    p.laptop.close().await;
    p.desk.close().await;

    // The upload: killed once its journal records uploaded chunks (`chunks`: 52 bytes a
    // chunk, see `cove::drive::content`).
    let sync_dir = laptop_home.join("drive-sync");
    let journaled = || {
        std::fs::read_dir(&sync_dir).is_ok_and(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".journal"))
                .flat_map(|j| std::fs::read_dir(j.path()).into_iter().flatten().flatten())
                .any(|upload| {
                    std::fs::metadata(upload.path().join("chunks")).is_ok_and(|m| m.len() >= 8 * 52)
                })
        })
    };
    let killed = killed_in_the_middle(&laptop_home, &p.a, journaled);
    assert!(killed, "the upload finished before it could be killed");
    let out = sync_once(&laptop_home, &p.a);
    let sent = bytes_of(&out, "uploaded", "big.bin");
    assert!(
        sent < SIZE as u64,
        "the resumed upload sent {sent} B, a full redo is {SIZE}"
    );

    // The download: killed once the sidecar of its part file records verified chunks (a
    // 48-byte header, then 4 bytes a chunk, see `cove::drive::content`).
    let sidecar = p.b.join(".big.bin.cove-part.done");
    let killed = killed_in_the_middle(&desk_home, &p.b, || {
        std::fs::metadata(&sidecar).is_ok_and(|m| m.len() >= 48 + 8 * 4)
    });
    assert!(killed, "the download finished before it could be killed");
    let out = sync_once(&desk_home, &p.b);
    let fetched = bytes_of(&out, "downloaded", "big.bin");
    assert!(
        fetched < SIZE as u64,
        "the resumed download fetched {fetched} B, a full redo is {SIZE}"
    );
    assert!(
        std::fs::read(p.b.join("big.bin")).unwrap() == big,
        "the file is whole"
    );
    let fb = files(&p.b);
    assert_eq!(
        fb.keys().collect::<Vec<_>>(),
        ["big.bin"],
        "no conflict copy, no temp file"
    );

    // One node in the drive, with one version; nothing left to do on either side.
    let desk = Device::open(&p.net.home("alice-desk")).await.unwrap();
    let ls = desk.drive_ls("/").await.unwrap();
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(desk.drive_versions("/big.bin").await.unwrap().len(), 1);
    let r = pass(&desk, &p.b).await;
    assert!(!r.changed(), "{r:?}");
    desk.close().await;
    let out = sync_once(&laptop_home, &p.a);
    assert!(out.contains("0 uploaded, 0 downloaded"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sync_uploads_local_changes_and_downloads_the_other_devices() {
    use std::io::{BufRead, BufReader};
    let p = pair().await;
    let laptop_home = p.net.home("alice").dir().to_owned();
    p.laptop.close().await;
    let cove = workspace_binary("cove-cli", "cove");
    let mut child = Command::new(cove)
        .arg("--home")
        .arg(&laptop_home)
        .env_remove("COVE_HOME")
        .args(["drive", "sync"])
        .arg(&p.a)
        .args(["/", "--interval", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(want) => return,
                Ok(_) => {}
                Err(_) => panic!("the running sync did not print {want:?} in time"),
            }
        }
    };
    // A file written while it runs is uploaded (a change notification, or the rescan).
    write(&p.a, "live/hello.txt", b"written while syncing");
    wait_for("uploaded live/hello.txt");
    pass(&p.desk, &p.b).await;
    assert_eq!(
        std::fs::read(p.b.join("live/hello.txt")).unwrap(),
        b"written while syncing"
    );
    // A file from the other device arrives without a local change.
    write(&p.b, "from-desk.txt", b"hello from the desk");
    let r = pass(&p.desk, &p.b).await;
    assert_eq!(r.uploaded, 1);
    wait_for("downloaded from-desk.txt");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        std::fs::read(p.a.join("from-desk.txt")).unwrap(),
        b"hello from the desk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_syncs_each_way() {
    const SIZE: usize = 200 << 20;
    let p = pair().await;
    let from_laptop = random_bytes(SIZE, 1);
    let from_desk = random_bytes(SIZE, 2);
    write(&p.a, "laptop.bin", &from_laptop);
    write(&p.b, "desk.bin", &from_desk);
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!(r.uploaded, 1);
    assert!(r.bytes_up >= SIZE as u64);
    let r = pass(&p.desk, &p.b).await;
    assert_eq!((r.uploaded, r.downloaded), (1, 1));
    let r = pass(&p.laptop, &p.a).await;
    assert_eq!(r.downloaded, 1);
    for dir in [&p.a, &p.b] {
        assert!(std::fs::read(dir.join("laptop.bin")).unwrap() == from_laptop);
        assert!(std::fs::read(dir.join("desk.bin")).unwrap() == from_desk);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_into_a_missing_drive_folder_creates_it_and_moved_edited_files_follow() {
    let p = pair().await;
    let log = || Box::new(|_: &str| {});
    write(&p.a, "a.txt", b"first");
    let mut laptop = Syncer::open(&p.laptop, &p.a, "/projects/cove", log())
        .await
        .unwrap();
    let r = laptop.pass().await.unwrap();
    assert_eq!((r.uploaded, r.skipped.len()), (1, 0));
    let ls = p.desk.drive_ls("/projects/cove").await.unwrap();
    assert_eq!(
        ls.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["a.txt"]
    );
    let mut desk = Syncer::open(&p.desk, &p.b, "/projects/cove", log())
        .await
        .unwrap();
    assert_eq!(desk.pass().await.unwrap().downloaded, 1);

    // Moved and edited on the desk in one pass: the laptop renames, then downloads.
    std::fs::rename(p.b.join("a.txt"), p.b.join("b.txt")).unwrap();
    let r = desk.pass().await.unwrap();
    assert_eq!(r.moved, 1);
    write(&p.b, "b.txt", b"second, longer");
    let r = desk.pass().await.unwrap();
    assert_eq!(r.uploaded, 1);
    let r = laptop.pass().await.unwrap();
    assert_eq!((r.moved, r.downloaded, r.skipped.len()), (1, 1, 0), "{r:?}");
    assert_eq!(files(&p.a), files(&p.b));
    assert_eq!(files(&p.a)["b.txt"], b"second, longer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_local_folder_trashes_nothing() {
    let p = pair().await;
    write(&p.a, "d/one.txt", b"1");
    write(&p.a, "two.txt", b"2");
    pass(&p.laptop, &p.a).await;
    std::fs::remove_dir_all(&p.a).unwrap();
    let mut syncer = Syncer::open(&p.laptop, &p.a, "/", Box::new(|_| {}))
        .await
        .unwrap();
    match syncer.pass().await {
        Err(cove::drive::sync::SyncError::EmptyFolder { synced, .. }) => assert_eq!(synced, 3),
        other => panic!("expected EmptyFolder, got {other:?}"),
    }
    assert!(p.laptop.drive_trash("").await.unwrap().is_empty());
    assert_eq!(p.laptop.drive_ls("/").await.unwrap().len(), 2);
}

/// A folder alice shares with bob syncs to bob's device and back: bob's sync of
/// `alice:trip` gets her files, a file bob adds reaches alice's sync of the same folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_folder_syncs_to_bobs_device_and_back() {
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    let a = net.dir.path().join("alice-trip");
    let b = net.dir.path().join("bob-trip");
    write(&a, "trip/plan.txt", b"day 1: the coast");
    write(&a, "trip/maps/north.bin", &random_bytes(700_000, 5));
    alice.drive_put(&a.join("trip"), "/", false).await.unwrap();
    let bob_name = cove_wire::UserName::new("bob").unwrap();
    let shared = alice.drive_share("/trip", &bob_name, false).await.unwrap();
    assert_eq!(shared, "alice:trip");
    until(&mut bob, "the shared folder's snapshot", |e| {
        matches!(
            e,
            cove::Event::Content(c)
                if matches!(&c.content, Content::Drive(op) if matches!(**op, DriveOp::Snapshot { .. }))
        )
    })
    .await;
    std::fs::create_dir_all(&b).unwrap();
    let mut bobs = Syncer::open(&bob, &b, &shared, Box::new(|_| {}))
        .await
        .unwrap();
    bobs.pass().await.unwrap();
    assert_eq!(files(&b), files(&a.join("trip")));
    write(&b, "from-bob.txt", b"bob's packing list");
    bobs.pass().await.unwrap();
    // alice syncs the shared folder itself (a folder mounted in her drive syncs on its own).
    let a2 = net.dir.path().join("alice-trip-sync");
    std::fs::create_dir_all(&a2).unwrap();
    let mut alices = Syncer::open(&alice, &a2, &shared, Box::new(|_| {}))
        .await
        .unwrap();
    alices.pass().await.unwrap();
    assert_eq!(
        std::fs::read(a2.join("from-bob.txt")).unwrap(),
        b"bob's packing list"
    );
    assert_eq!(files(&a2), files(&b));
    drop((alices, bobs));
    alice.close().await;
    bob.close().await;
}
