use super::*;
use cove_core::drive::{FileSecret, Manifest, ManifestRef};

fn version(v: u8, sha: u8) -> FileVersion {
    FileVersion {
        version: [v; 16],
        size: 1,
        modified_ms: 0,
        sha256: [sha; 32],
        secret: FileSecret([0; 32]),
        manifest: ManifestRef::Inline(Manifest::default()),
        device: "laptop".into(),
    }
}

fn known(node: u8, v: u8, sha: u8) -> Known {
    Known {
        dir: false,
        node: [node; 16],
        version: Some([v; 16]),
        size: 1,
        mtime_ns: 5,
        sha256: Some([sha; 32]),
    }
}

fn known_dir(node: u8) -> Known {
    Known {
        dir: true,
        node: [node; 16],
        version: None,
        size: 0,
        mtime_ns: 0,
        sha256: None,
    }
}

fn local(sha: u8) -> Local {
    Local {
        dir: false,
        size: 1,
        mtime_ns: 5,
        sha256: Some([sha; 32]),
    }
}

fn local_dir() -> Local {
    Local {
        dir: true,
        size: 0,
        mtime_ns: 0,
        sha256: None,
    }
}

fn remote(node: u8, v: u8, sha: u8) -> Remote {
    Remote {
        node: [node; 16],
        latest: Some(version(v, sha)),
    }
}

fn remote_dir(node: u8) -> Remote {
    Remote {
        node: [node; 16],
        latest: None,
    }
}

fn ctx() -> PlanContext {
    PlanContext {
        device: "laptop".into(),
        today: "2026-12-05".into(),
    }
}

type Side<T> = Vec<(&'static str, T)>;

fn run(s: Side<Known>, l: Side<Local>, r: Side<Remote>) -> Vec<Action> {
    let s = s.into_iter().map(|(p, v)| (p.to_owned(), v)).collect();
    let l = l.into_iter().map(|(p, v)| (p.to_owned(), v)).collect();
    let r = r.into_iter().map(|(p, v)| (p.to_owned(), v)).collect();
    plan(&s, &l, &r, &ctx())
}

#[test]
fn nothing_changed_plans_nothing() {
    let a = run(
        vec![("d", known_dir(1)), ("d/f", known(2, 2, 2))],
        vec![("d", local_dir()), ("d/f", local(2))],
        vec![("d", remote_dir(1)), ("d/f", remote(2, 2, 2))],
    );
    assert_eq!(a, vec![]);
}

#[test]
fn new_local_file_and_folder_are_created_in_the_drive_parents_first() {
    let a = run(vec![], vec![("d", local_dir()), ("d/f", local(1))], vec![]);
    assert_eq!(
        a,
        vec![
            Action::RemoteMkdir { path: "d".into() },
            Action::Upload {
                path: "d/f".into(),
                node: None,
                previous: None
            },
        ]
    );
}

#[test]
fn new_remote_file_and_folder_are_downloaded() {
    let a = run(
        vec![],
        vec![],
        vec![("d", remote_dir(1)), ("d/f", remote(2, 2, 2))],
    );
    assert_eq!(
        a,
        vec![
            Action::LocalMkdir {
                path: "d".into(),
                node: [1; 16]
            },
            Action::Download {
                path: "d/f".into(),
                node: [2; 16],
                version: version(2, 2)
            },
        ]
    );
}

#[test]
fn a_local_edit_uploads_a_new_version_of_the_same_node() {
    let a = run(
        vec![("f", known(1, 1, 1))],
        vec![("f", local(9))],
        vec![("f", remote(1, 1, 1))],
    );
    assert_eq!(
        a,
        vec![Action::Upload {
            path: "f".into(),
            node: Some([1; 16]),
            previous: Some(version(1, 1))
        }]
    );
}

#[test]
fn a_remote_edit_downloads() {
    let a = run(
        vec![("f", known(1, 1, 1))],
        vec![("f", local(1))],
        vec![("f", remote(1, 2, 2))],
    );
    assert_eq!(
        a,
        vec![Action::Download {
            path: "f".into(),
            node: [1; 16],
            version: version(2, 2)
        }]
    );
}

#[test]
fn edits_on_both_sides_keep_both_as_a_conflict_copy() {
    let a = run(
        vec![("notes/a.txt", known(1, 1, 1))],
        vec![("notes/a.txt", local(8))],
        vec![("notes/a.txt", remote(1, 2, 2))],
    );
    let copy = "notes/a (conflict from laptop 2026-12-05).txt".to_owned();
    assert_eq!(
        a,
        vec![
            Action::ConflictCopy {
                path: "notes/a.txt".into(),
                copy: copy.clone()
            },
            Action::Upload {
                path: copy,
                node: None,
                previous: None
            },
            Action::Download {
                path: "notes/a.txt".into(),
                node: [1; 16],
                version: version(2, 2)
            },
        ]
    );
}

#[test]
fn the_same_edit_on_both_sides_only_records() {
    let a = run(
        vec![("f", known(1, 1, 1))],
        vec![("f", local(2))],
        vec![("f", remote(1, 2, 2))],
    );
    assert!(
        matches!(&a[..], [Action::Record { path, known }] if path == "f" && known.version == Some([2; 16]))
    );
    // Two new files of the same contents (an upload cut before its state was saved).
    let a = run(vec![], vec![("f", local(3))], vec![("f", remote(4, 3, 3))]);
    assert!(
        matches!(&a[..], [Action::Record { known, .. }] if known.node == [4; 16]),
        "{a:?}"
    );
}

#[test]
fn conflict_copy_names_skip_taken_names_and_keep_the_extension() {
    let mut taken = BTreeSet::new();
    let first = conflict_name("a/r.tar.gz", "lap/top", "2026-12-05", &taken);
    assert_eq!(first, "a/r.tar (conflict from lap_top 2026-12-05).gz");
    taken.insert(first);
    assert_eq!(
        conflict_name("a/r.tar.gz", "lap/top", "2026-12-05", &taken),
        "a/r.tar (conflict from lap_top 2026-12-05) (2).gz"
    );
    assert_eq!(
        conflict_name(".bashrc", "pc", "2026-12-05", &BTreeSet::new()),
        ".bashrc (conflict from pc 2026-12-05)"
    );
}

#[test]
fn a_local_delete_trashes_and_a_remote_trash_removes() {
    let a = run(
        vec![("f", known(1, 1, 1)), ("g", known(2, 2, 2))],
        vec![("g", local(2))],
        vec![("f", remote(1, 1, 1))],
    );
    assert_eq!(
        a,
        vec![
            Action::RemoteTrash {
                path: "f".into(),
                node: [1; 16]
            },
            Action::LocalRemove { path: "g".into() },
        ]
    );
}

#[test]
fn a_local_delete_of_a_file_edited_in_the_drive_downloads_it_again() {
    let a = run(
        vec![("f", known(1, 1, 1))],
        vec![],
        vec![("f", remote(1, 2, 2))],
    );
    assert!(matches!(&a[..], [Action::Download { .. }]), "{a:?}");
}

#[test]
fn a_remote_trash_of_a_locally_edited_file_uploads_it_as_new() {
    let a = run(vec![("f", known(1, 1, 1))], vec![("f", local(7))], vec![]);
    assert_eq!(
        a,
        vec![Action::Upload {
            path: "f".into(),
            node: None,
            previous: None
        }]
    );
}

#[test]
fn a_remote_move_is_a_local_rename_without_download() {
    let a = run(
        vec![("d", known_dir(1)), ("d/f", known(2, 2, 2))],
        vec![("d", local_dir()), ("d/f", local(2))],
        vec![("e", remote_dir(1)), ("e/f", remote(2, 2, 2))],
    );
    assert_eq!(
        a,
        vec![Action::LocalMove {
            from: "d".into(),
            to: "e".into()
        }]
    );
    let a = run(
        vec![("a.txt", known(2, 2, 2))],
        vec![("a.txt", local(2))],
        vec![("b.txt", remote(2, 2, 2))],
    );
    assert_eq!(
        a,
        vec![Action::LocalMove {
            from: "a.txt".into(),
            to: "b.txt".into()
        }]
    );
}

#[test]
fn a_local_rename_is_a_move_in_the_drive_without_upload() {
    let a = run(
        vec![("a.txt", known(2, 2, 2))],
        vec![("sub", local_dir()), ("sub/b.txt", local(2))],
        vec![("a.txt", remote(2, 2, 2))],
    );
    assert_eq!(
        a,
        vec![
            Action::RemoteMkdir { path: "sub".into() },
            Action::RemoteMove {
                from: "a.txt".into(),
                to: "sub/b.txt".into(),
                node: [2; 16]
            },
        ]
    );
}

#[test]
fn a_move_done_on_both_sides_only_records() {
    let a = run(
        vec![("a", known(2, 2, 2))],
        vec![("b", local(2))],
        vec![("b", remote(2, 2, 2))],
    );
    assert_eq!(
        a,
        vec![Action::RecordMove {
            from: "a".into(),
            to: "b".into()
        }]
    );
}

#[test]
fn a_locally_deleted_folder_is_trashed_whole() {
    let a = run(
        vec![
            ("d", known_dir(1)),
            ("d/f", known(2, 2, 2)),
            ("d/g", known(3, 3, 3)),
        ],
        vec![],
        vec![
            ("d", remote_dir(1)),
            ("d/f", remote(2, 2, 2)),
            ("d/g", remote(3, 3, 3)),
        ],
    );
    assert_eq!(
        a,
        vec![Action::RemoteTrash {
            path: "d".into(),
            node: [1; 16]
        }]
    );
}

#[test]
fn a_folder_trashed_in_the_drive_goes_locally_unless_it_holds_new_files() {
    let a = run(
        vec![("d", known_dir(1)), ("d/f", known(2, 2, 2))],
        vec![("d", local_dir()), ("d/f", local(2))],
        vec![],
    );
    assert_eq!(
        a,
        vec![
            Action::LocalRemove { path: "d/f".into() },
            Action::LocalRmdir { path: "d".into() },
        ]
    );
    let a = run(
        vec![("d", known_dir(1)), ("d/f", known(2, 2, 2))],
        vec![("d", local_dir()), ("d/f", local(2)), ("d/new", local(5))],
        vec![],
    );
    assert_eq!(
        a,
        vec![
            Action::RemoteMkdir { path: "d".into() },
            Action::Upload {
                path: "d/new".into(),
                node: None,
                previous: None
            },
            Action::LocalRemove { path: "d/f".into() },
        ]
    );
}

#[test]
fn gone_on_both_sides_is_forgotten_and_a_touched_file_only_records() {
    let mut touched = local(2);
    touched.mtime_ns = 99;
    let a = run(
        vec![("f", known(1, 1, 1)), ("g", known(2, 2, 2))],
        vec![("g", touched)],
        vec![("g", remote(2, 2, 2))],
    );
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(matches!(&a[0], Action::Forget { path } if path == "f"));
    assert!(matches!(&a[1], Action::Record { path, known } if path == "g" && known.mtime_ns == 99));
}

#[test]
fn a_file_moved_and_edited_in_the_drive_is_renamed_then_downloaded() {
    let a = run(
        vec![("a.txt", known(2, 2, 2))],
        vec![("a.txt", local(2))],
        vec![("b.txt", remote(2, 3, 3))],
    );
    assert_eq!(
        a,
        vec![
            Action::LocalMove {
                from: "a.txt".into(),
                to: "b.txt".into()
            },
            Action::Download {
                path: "b.txt".into(),
                node: [2; 16],
                version: version(3, 3)
            },
        ]
    );
}
