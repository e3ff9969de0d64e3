//! `cove drive` through the built binary (issue 14): put, ls --long, get, escaped names, the
//! drive group kept out of the chat commands, a read-only share and its errors.

use super::{fails, init, ok, relay};

/// carla puts a folder (one name holds a bidi override), lists it long (escaped), gets a
/// file back byte for byte; `cove groups` does not list the drive and `cove send` to it is
/// refused; a path that does not exist is a one-line error; mkdir -p, mv into a folder, rm
/// and the trash listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_ls_get_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, server, ca) = relay(dir.path()).await;
    let work = dir.path();
    let carla = work.join("carla");
    init(&carla, &server, &ca, "carla");
    let src = work.join("notes");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(src.join("sub/b.txt"), b"beta\n").unwrap();
    std::fs::write(src.join("evil\u{202e}txt.exe"), b"x").unwrap();
    let put = ok(&carla, &["drive", "put", src.to_str().unwrap()]);
    assert!(put.contains("put 3 file(s), 2 new folder(s)"), "{put}");

    let ls = ok(&carla, &["drive", "ls"]);
    assert_eq!(ls, "notes/\n");
    let long = ok(&carla, &["drive", "ls", "/notes", "--long"]);
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines.len(), 3, "{long}");
    assert!(
        lines[0].starts_with("- ") && lines[0].ends_with(" a.txt"),
        "{long}"
    );
    assert!(
        lines[0].contains("6 bytes") && lines[0].contains(" carla "),
        "{long}"
    );
    assert!(lines[1].ends_with("evil\\u{202e}txt.exe"), "{long}");
    assert!(
        lines[2].starts_with("d ") && lines[2].ends_with(" sub/"),
        "{long}"
    );

    let out = work.join("b-copy.txt");
    ok(
        &carla,
        &["drive", "get", "/notes/sub/b.txt", out.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"beta\n");

    ok(&carla, &["drive", "mkdir", "-p", "/x/y/z"]);
    assert_eq!(ok(&carla, &["drive", "ls", "/x/y"]), "z/\n");
    let exists = fails(&carla, &["drive", "mkdir", "/x"]);
    assert!(exists.contains("exists"), "{exists}");
    ok(&carla, &["drive", "mv", "/x/y/z", "/notes"]);
    assert_eq!(ok(&carla, &["drive", "ls", "/x/y"]), "");
    ok(&carla, &["drive", "rm", "/x"]);
    assert_eq!(ok(&carla, &["drive", "ls"]), "notes/\n");
    assert_eq!(ok(&carla, &["drive", "restore"]), "/x\n");

    let groups = ok(&carla, &["groups"]);
    assert!(!groups.contains("drive/"), "{groups}");
    let refused = fails(&carla, &["send", "drive/carla", "hi"]);
    assert!(refused.contains("Cove Drive group"), "{refused}");
    let missing = fails(&carla, &["drive", "ls", "/nope"]);
    assert!(missing.contains("no such file or folder"), "{missing}");
    assert_eq!(missing.trim_end().lines().count(), 1, "{missing}");
}

/// carla shares a folder read-only with dave: `drive shared` on dave names it, its owner
/// and his access; dave's put there fails with the read-only error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_share_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, server, ca) = relay(dir.path()).await;
    let work = dir.path();
    let (carla, dave) = (work.join("carla"), work.join("dave"));
    init(&carla, &server, &ca, "carla");
    init(&dave, &server, &ca, "dave");
    let src = work.join("plans");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("p.txt"), b"the plan\n").unwrap();
    ok(&carla, &["drive", "put", src.to_str().unwrap(), "/"]);
    let shared = ok(&carla, &["drive", "share", "/plans", "dave", "--read-only"]);
    assert!(shared.contains("carla:plans"), "{shared}");
    let listed = ok(&dave, &["drive", "shared"]);
    assert!(
        listed.starts_with("carla:plans  owner carla  members carla, dave  read-only"),
        "{listed}"
    );
    assert_eq!(ok(&dave, &["drive", "ls", "carla:plans"]), "p.txt\n");
    let note = work.join("n.txt");
    std::fs::write(&note, b"n").unwrap();
    let refused = fails(
        &dave,
        &["drive", "put", note.to_str().unwrap(), "carla:plans/"],
    );
    assert!(refused.contains("read-only"), "{refused}");
}

/// A machine linked by a code (`device link` / `device join`) has the drive: the linking
/// device adds it to the drive group and hands over the history, which holds the tree's
/// operations, so `drive ls` and `drive get` work on it at once; `drive usage` counts the
/// files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_linked_by_code_has_the_drive() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, server, ca) = relay(dir.path()).await;
    let d = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let carla = d.join("carla");
        init(&carla, &server, &ca, "carla");
        let file = d.join("hello.txt");
        std::fs::write(&file, b"hello from the first machine\n").unwrap();
        ok(&carla, &["drive", "put", file.to_str().unwrap()]);
        let laptop = d.join("laptop");
        let mut host = super::link::Running::start(&carla, &["device", "link"]);
        let code = host.line_starting("link code: ");
        ok(
            &laptop,
            &["device", "join", &code, "--server", &server, "--ca", &ca],
        );
        let (success, lines, stderr) = host.finish();
        assert!(success, "{lines:?} {stderr}");
        assert_eq!(ok(&laptop, &["drive", "ls"]), "hello.txt\n");
        let out = d.join("on-laptop.txt");
        ok(
            &laptop,
            &["drive", "get", "/hello.txt", out.to_str().unwrap()],
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"hello from the first machine\n"
        );
        let usage = ok(&laptop, &["drive", "usage"]);
        assert!(usage.starts_with("relay: "), "{usage}");
        assert!(
            usage.contains("Drive: 1 file(s), 0 folder(s), 29 bytes"),
            "{usage}"
        );
    })
    .await
    .unwrap();
}
