//! The tree's rules, one test per rule or refusal, the state encoding, and properties over
//! random operation sequences.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cove_wire::{BlobId, GroupId, UserName};
use proptest::prelude::*;

use super::*;
use crate::drive::chunk::{ChunkRef, FileSecret, Manifest};
use crate::drive::op::{MAX_BATCH_OPS, OpInvalid, SealedBlob};

fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

fn id(n: u8) -> NodeId {
    let mut id = [0u8; 16];
    id[0] = n;
    id[15] = 0xAA;
    id
}

fn version(tag: u8, size: u64) -> FileVersion {
    FileVersion {
        version: [tag; 16],
        size,
        modified_ms: 1_000 + u64::from(tag),
        sha256: [tag; 32],
        secret: FileSecret([7; 32]),
        manifest: ManifestRef::Inline(Manifest {
            chunks: vec![ChunkRef {
                id: [tag; 32],
                blob: BlobId([tag; 16]),
                len: 1,
            }],
        }),
        device: "laptop".to_owned(),
    }
}

fn sealed(tag: u8) -> SealedBlob {
    SealedBlob {
        blob: BlobId([tag; 16]),
        key: FileSecret([tag; 32]),
        len: 64,
    }
}

/// A tree with its log position, applying as alice (the owner) unless told otherwise.
struct Log {
    tree: Tree,
    alice: UserName,
}

impl Log {
    fn new() -> Self {
        let alice = user("alice");
        let mut tree = Tree::new();
        tree.apply(
            1,
            &alice,
            &DriveOp::Init {
                name: "Drive".to_owned(),
                owner: alice.clone(),
            },
        )
        .unwrap();
        Log { tree, alice }
    }

    fn by(&mut self, author: &UserName, op: DriveOp) -> Result<(), TreeError> {
        let seq = self.tree.applied() + 1;
        let before = self.tree.clone();
        let result = self.tree.apply(seq, author, &op);
        if result.is_err() {
            // A refused operation changes nothing but the log position.
            let mut expected = before;
            expected.applied = seq;
            assert_eq!(self.tree, expected, "refused {op:?} changed the tree");
        }
        assert_eq!(self.tree.applied(), seq);
        result
    }

    fn op(&mut self, op: DriveOp) -> Result<(), TreeError> {
        let alice = self.alice.clone();
        self.by(&alice, op)
    }

    fn mkdir(&mut self, n: u8, parent: NodeId, name: &str) -> Result<(), TreeError> {
        self.op(DriveOp::Mkdir {
            id: id(n),
            parent,
            name: name.to_owned(),
        })
    }

    fn put(&mut self, n: u8, parent: NodeId, name: &str) -> Result<(), TreeError> {
        self.op(DriveOp::PutVersion {
            id: id(n),
            parent,
            name: name.to_owned(),
            version: version(n, 10 + u64::from(n)),
        })
    }

    fn mv(&mut self, n: u8, parent: NodeId, name: &str) -> Result<(), TreeError> {
        self.op(DriveOp::Move {
            id: id(n),
            parent,
            name: name.to_owned(),
        })
    }

    fn names(&self, folder: NodeId) -> Vec<String> {
        self.tree
            .list(&folder)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    fn round_trip(&self) {
        let bytes = self.tree.encode_state();
        assert_eq!(Tree::decode_state(&bytes), Ok(self.tree.clone()));
    }
}

#[test]
fn init_sets_name_and_owner_once() {
    let alice = user("alice");
    let bob = user("bob");
    let mut tree = Tree::new();
    assert_eq!(tree.info(), None);
    let init = |owner: &UserName| DriveOp::Init {
        name: "Drive".to_owned(),
        owner: owner.clone(),
    };
    // An Init naming another owner than its author is refused.
    assert_eq!(
        tree.apply(1, &bob, &init(&alice)),
        Err(TreeError::NotAllowed(bob.clone()))
    );
    assert_eq!(tree.info(), None);
    tree.apply(2, &alice, &init(&alice)).unwrap();
    assert_eq!(tree.info(), Some(("Drive", &alice)));
    assert_eq!(
        tree.apply(3, &bob, &init(&bob)),
        Err(TreeError::NotAllowed(bob.clone()))
    );
    assert_eq!(
        tree.apply(4, &alice, &init(&alice)),
        Err(TreeError::NotAllowed(alice.clone()))
    );
    assert_eq!(tree.info(), Some(("Drive", &alice)));
    assert_eq!(tree.applied(), 4);
}

#[test]
fn before_init_only_init_and_snapshots_apply() {
    let alice = user("alice");
    let mut tree = Tree::new();
    let ops = [
        DriveOp::Mkdir {
            id: id(1),
            parent: ROOT,
            name: "a".to_owned(),
        },
        DriveOp::Trash { id: id(1) },
        DriveOp::Purge { ids: vec![] },
        DriveOp::SetAccess {
            user: user("bob"),
            read_only: true,
        },
        DriveOp::Unlink {
            link: BlobId([1; 16]),
        },
    ];
    for (seq, op) in (1..).zip(&ops) {
        assert_eq!(
            tree.apply(seq, &alice, op),
            Err(TreeError::NoInit),
            "{op:?}"
        );
    }
    tree.apply(10, &alice, &DriveOp::SnapshotRequest).unwrap();
    tree.apply(
        11,
        &alice,
        &DriveOp::Snapshot {
            covers: 3,
            blob: sealed(1),
        },
    )
    .unwrap();
    assert_eq!(tree.applied(), 11);
    assert_eq!(tree, {
        let mut empty = Tree::new();
        empty.applied = 11;
        empty
    });
}

#[test]
fn stale_positions_are_refused_and_refusals_advance() {
    let mut log = Log::new();
    let alice = log.alice.clone();
    log.mkdir(1, ROOT, "a").unwrap();
    let at = log.tree.applied();
    let op = DriveOp::Mkdir {
        id: id(2),
        parent: ROOT,
        name: "b".to_owned(),
    };
    assert_eq!(log.tree.apply(at, &alice, &op), Err(TreeError::Stale));
    assert_eq!(log.tree.apply(at - 1, &alice, &op), Err(TreeError::Stale));
    assert_eq!(log.tree.applied(), at);
    // A refused operation (unknown parent) still advances the position, once.
    let bad = DriveOp::Mkdir {
        id: id(2),
        parent: id(99),
        name: "b".to_owned(),
    };
    assert!(matches!(
        log.tree.apply(at + 5, &alice, &bad),
        Err(TreeError::NotFound(_))
    ));
    assert_eq!(log.tree.applied(), at + 5);
    assert_eq!(log.tree.apply(at + 5, &alice, &op), Err(TreeError::Stale));
    log.tree.apply(at + 6, &alice, &op).unwrap();
    assert_eq!(log.names(ROOT), ["a", "b"]);
}

#[test]
fn invalid_operations_are_refused() {
    let mut log = Log::new();
    assert_eq!(log.mkdir(1, ROOT, "a/b"), Err(TreeError::Invalid));
    assert_eq!(log.mkdir(1, ROOT, ".."), Err(TreeError::Invalid));
    assert_eq!(
        log.op(DriveOp::Mkdir {
            id: ROOT,
            parent: ROOT,
            name: "x".to_owned()
        }),
        Err(TreeError::Invalid)
    );
    assert_eq!(log.op(DriveOp::Trash { id: ROOT }), Err(TreeError::Invalid));
    assert_eq!(
        log.op(DriveOp::Purge {
            ids: vec![id(1); crate::drive::op::MAX_PURGE_IDS + 1]
        }),
        Err(TreeError::Invalid)
    );
    assert!(log.tree.list(&ROOT).unwrap().is_empty());
}

#[test]
fn mkdir_creates_and_refuses() {
    let mut log = Log::new();
    log.mkdir(1, ROOT, "docs").unwrap();
    log.mkdir(2, id(1), "2026").unwrap();
    assert_eq!(log.tree.resolve("/docs/2026"), Ok(id(2)));
    assert_eq!(
        log.tree.node(&id(2)),
        Some((id(1), "2026", &NodeKind::Folder))
    );
    assert_eq!(log.mkdir(1, ROOT, "other"), Err(TreeError::Duplicate));
    assert!(matches!(
        log.mkdir(3, id(50), "x"),
        Err(TreeError::NotFound(_))
    ));
    log.put(4, ROOT, "f.txt").unwrap();
    assert_eq!(
        log.mkdir(3, id(4), "x"),
        Err(TreeError::NotAFolder("f.txt".to_owned()))
    );
    log.op(DriveOp::Mount {
        id: id(5),
        parent: ROOT,
        name: "shared".to_owned(),
        group: GroupId([5; 16]),
    })
    .unwrap();
    assert_eq!(
        log.tree.node(&id(5)),
        Some((
            ROOT,
            "shared",
            &NodeKind::Mount {
                group: GroupId([5; 16])
            }
        ))
    );
    assert_eq!(
        log.mkdir(3, id(5), "x"),
        Err(TreeError::NotAFolder("shared".to_owned()))
    );
    assert_eq!(
        log.tree.list(&id(5)),
        Err(TreeError::NotAFolder("shared".to_owned()))
    );
    log.op(DriveOp::Trash { id: id(1) }).unwrap();
    // Under a trashed folder (itself or an ancestor) nothing is created; its id stays used.
    assert!(matches!(
        log.mkdir(3, id(2), "x"),
        Err(TreeError::NotFound(_))
    ));
    assert!(matches!(
        log.mkdir(3, id(1), "x"),
        Err(TreeError::NotFound(_))
    ));
    assert_eq!(log.mkdir(2, ROOT, "again"), Err(TreeError::Duplicate));
    assert_eq!(log.names(ROOT), ["f.txt", "shared"]);
    log.round_trip();
}

#[test]
fn depth_is_bounded() {
    let mut log = Log::new();
    let mut parent = ROOT;
    for depth in 1..=MAX_DEPTH {
        let mut node = [0u8; 16];
        node[..8].copy_from_slice(&(depth as u64).to_be_bytes());
        log.op(DriveOp::Mkdir {
            id: node,
            parent,
            name: "d".to_owned(),
        })
        .unwrap();
        parent = node;
    }
    assert_eq!(log.mkdir(1, parent, "too-deep"), Err(TreeError::Full));
    assert_eq!(log.put(1, parent, "too-deep"), Err(TreeError::Full));
    // A move that would push a subtree past the bound is refused too.
    log.mkdir(1, ROOT, "top").unwrap();
    log.mkdir(2, id(1), "child").unwrap();
    let mut deepest_but_one = [0u8; 16];
    deepest_but_one[..8].copy_from_slice(&((MAX_DEPTH - 1) as u64).to_be_bytes());
    assert_eq!(log.mv(1, deepest_but_one, "top"), Err(TreeError::Full));
    assert_eq!(log.mv(2, deepest_but_one, "child"), Ok(()));
    assert_eq!(
        log.tree.path(&id(2)).unwrap().matches('/').count(),
        MAX_DEPTH
    );
    log.round_trip();
}

#[test]
fn name_clashes_get_the_first_free_number() {
    let mut log = Log::new();
    for n in 1..=3 {
        log.put(n, ROOT, "a.txt").unwrap();
    }
    log.put(4, ROOT, ".bashrc").unwrap();
    log.put(5, ROOT, ".bashrc").unwrap();
    log.mkdir(6, ROOT, "noext").unwrap();
    log.mkdir(7, ROOT, "noext").unwrap();
    log.put(8, ROOT, "a.tar.gz").unwrap();
    log.put(9, ROOT, "a.tar.gz").unwrap();
    log.put(10, ROOT, "end.").unwrap();
    log.put(11, ROOT, "end.").unwrap();
    assert_eq!(
        log.names(ROOT),
        [
            ".bashrc",
            ".bashrc (2)",
            "a (2).txt",
            "a (3).txt",
            "a.tar (2).gz",
            "a.tar.gz",
            "a.txt",
            "end (2).",
            "end.",
            "noext",
            "noext (2)"
        ]
    );
    // The first free number: (2) is free again once its holder leaves.
    log.op(DriveOp::Trash { id: id(2) }).unwrap();
    log.put(12, ROOT, "a.txt").unwrap();
    assert_eq!(log.tree.node(&id(12)).unwrap().1, "a (2).txt");
    log.put(13, ROOT, "a.txt").unwrap();
    assert_eq!(log.tree.node(&id(13)).unwrap().1, "a (4).txt");
    // The rule on moves: onto a taken name.
    log.mv(13, ROOT, "noext").unwrap();
    assert_eq!(log.tree.node(&id(13)).unwrap().1, "noext (3)");
    log.round_trip();
}

#[test]
fn clash_names_stay_within_the_name_bound() {
    let mut log = Log::new();
    // A long stem is cut (on a character boundary: 'é' is two bytes).
    let long = format!("{}.txt", "é".repeat(125)); // 254 bytes
    assert!(valid_name(&long));
    log.put(1, ROOT, &long).unwrap();
    log.put(2, ROOT, &long).unwrap();
    let second = log.tree.node(&id(2)).unwrap().1.to_owned();
    assert!(
        second.len() <= MAX_NAME_BYTES && valid_name(&second),
        "{second}"
    );
    assert!(second.ends_with(" (2).txt"), "{second}");
    assert!(second.starts_with("éé"), "{second}");
    // An extension that leaves no room is treated as part of the stem.
    let long_ext = format!("a.{}", "x".repeat(253));
    log.put(3, ROOT, &long_ext).unwrap();
    log.put(4, ROOT, &long_ext).unwrap();
    let fourth = log.tree.node(&id(4)).unwrap().1.to_owned();
    assert_eq!(fourth, format!("a.{} (2)", "x".repeat(249)));
    log.round_trip();
}

#[test]
fn put_version_appends_and_keeps_the_newest() {
    let mut log = Log::new();
    log.mkdir(1, ROOT, "dir").unwrap();
    log.put(2, id(1), "f.bin").unwrap();
    // Appending ignores parent and name.
    for tag in 0..(MAX_VERSIONS as u8 + 3) {
        log.op(DriveOp::PutVersion {
            id: id(2),
            parent: ROOT,
            name: "ignored".to_owned(),
            version: version(100 + tag, u64::from(tag)),
        })
        .unwrap();
    }
    let versions = log.tree.versions(&id(2)).unwrap();
    assert_eq!(versions.len(), MAX_VERSIONS);
    assert_eq!(versions.first().unwrap().version, [103; 16]);
    assert_eq!(
        versions.last().unwrap().version,
        [100 + MAX_VERSIONS as u8 + 2; 16]
    );
    assert_eq!(log.tree.resolve("/dir/f.bin"), Ok(id(2)));
    assert_eq!(log.names(ROOT), ["dir"]);
    let entry = &log.tree.list(&id(1)).unwrap()[0];
    assert_eq!(
        (entry.size, entry.modified_ms),
        (
            u64::from(MAX_VERSIONS as u8 + 2),
            1_000 + u64::from(100 + MAX_VERSIONS as u8 + 2)
        )
    );
    // On a folder: not a file; on a trashed file: not found.
    assert_eq!(
        log.put(1, ROOT, "x"),
        Err(TreeError::NotAFile("dir".to_owned()))
    );
    assert_eq!(
        log.tree.versions(&id(1)),
        Err(TreeError::NotAFile("dir".to_owned()))
    );
    log.op(DriveOp::Trash { id: id(1) }).unwrap();
    assert!(matches!(log.put(2, ROOT, "x"), Err(TreeError::NotFound(_))));
    assert_eq!(log.tree.versions(&id(2)).unwrap().len(), MAX_VERSIONS);
    log.round_trip();
}

#[test]
fn move_renames_moves_and_refuses_cycles() {
    let mut log = Log::new();
    log.mkdir(1, ROOT, "a").unwrap();
    log.mkdir(2, id(1), "b").unwrap();
    log.mkdir(3, id(2), "c").unwrap();
    log.put(4, id(3), "f.txt").unwrap();
    log.mv(4, ROOT, "g.txt").unwrap();
    assert_eq!(log.tree.path(&id(4)).as_deref(), Some("/g.txt"));
    log.mv(2, ROOT, "b2").unwrap();
    assert_eq!(log.tree.path(&id(3)).as_deref(), Some("/b2/c"));
    assert_eq!(log.mv(2, id(2), "x"), Err(TreeError::Cycle));
    assert_eq!(log.mv(2, id(3), "x"), Err(TreeError::Cycle));
    assert_eq!(log.mv(1, id(1), "x"), Err(TreeError::Cycle));
    assert_eq!(
        log.mv(1, id(4), "x"),
        Err(TreeError::NotAFolder("g.txt".to_owned()))
    );
    assert!(matches!(log.mv(50, ROOT, "x"), Err(TreeError::NotFound(_))));
    assert!(matches!(
        log.mv(1, id(50), "x"),
        Err(TreeError::NotFound(_))
    ));
    assert_eq!(
        log.mv(0, ROOT, "x"),
        Err(TreeError::NotFound(hex::encode(id(0))))
    );
    assert_eq!(
        log.op(DriveOp::Move {
            id: ROOT,
            parent: id(1),
            name: "x".to_owned()
        }),
        Err(TreeError::Invalid)
    );
    // Onto its own place: nothing changes, not even a clash copy of itself.
    let before = log.tree.clone();
    log.mv(4, ROOT, "g.txt").unwrap();
    assert_eq!(log.tree.list(&ROOT), before.list(&ROOT));
    assert_eq!(log.names(ROOT), ["a", "b2", "g.txt"]);
    // A trashed node does not move.
    log.op(DriveOp::Trash { id: id(3) }).unwrap();
    assert!(matches!(log.mv(3, ROOT, "c"), Err(TreeError::NotFound(_))));
    log.round_trip();
}

#[test]
fn trash_restore_and_purge() {
    let mut log = Log::new();
    let bob = user("bob");
    log.mkdir(1, ROOT, "a").unwrap();
    log.mkdir(2, id(1), "b").unwrap();
    log.put(3, id(2), "f.txt").unwrap();
    log.by(&bob, DriveOp::Trash { id: id(2) }).unwrap();
    assert_eq!(log.names(id(1)), Vec::<String>::new());
    assert!(log.tree.is_trashed(&id(2)) && log.tree.is_trashed(&id(3)));
    assert!(!log.tree.is_trashed(&id(1)) && !log.tree.is_trashed(&id(50)));
    assert_eq!(log.tree.path(&id(3)), None);
    assert_eq!(log.tree.child(&id(2), "f.txt"), None);
    let trash = log.tree.trash();
    assert_eq!(trash.len(), 1);
    assert_eq!((trash[0].id, trash[0].path.as_str()), (id(2), "/a/b"));
    assert_eq!(trash[0].author, bob);
    // Only a live node goes to the trash; only a trashed top comes back.
    assert!(matches!(
        log.op(DriveOp::Trash { id: id(2) }),
        Err(TreeError::NotFound(_))
    ));
    assert!(matches!(
        log.op(DriveOp::Trash { id: id(3) }),
        Err(TreeError::NotFound(_))
    ));
    assert!(matches!(
        log.op(DriveOp::Restore { id: id(3) }),
        Err(TreeError::NotFound(_))
    ));
    assert!(matches!(
        log.op(DriveOp::Restore { id: id(1) }),
        Err(TreeError::NotFound(_))
    ));
    log.round_trip();
    // Back to its parent, with the clash rule.
    log.mkdir(4, id(1), "b").unwrap();
    log.op(DriveOp::Restore { id: id(2) }).unwrap();
    assert_eq!(log.names(id(1)), ["b", "b (2)"]);
    assert_eq!(log.tree.resolve("/a/b (2)/f.txt"), Ok(id(3)));
    assert!(log.tree.trash().is_empty());
    // Parent trashed: to the root.
    log.op(DriveOp::Trash { id: id(2) }).unwrap();
    log.op(DriveOp::Trash { id: id(1) }).unwrap();
    assert_eq!(
        log.tree
            .trash()
            .iter()
            .map(|e| e.path.as_str())
            .collect::<Vec<_>>(),
        ["/a", "/a/b (2)"]
    );
    log.op(DriveOp::Restore { id: id(2) }).unwrap();
    assert_eq!(log.tree.path(&id(3)).as_deref(), Some("/b (2)/f.txt"));
    // Parent purged: to the root as well.
    log.mkdir(5, ROOT, "x").unwrap();
    log.mv(2, id(5), "b").unwrap();
    log.op(DriveOp::Trash { id: id(2) }).unwrap();
    log.op(DriveOp::Trash { id: id(5) }).unwrap();
    log.op(DriveOp::Purge {
        ids: vec![id(1), id(5), id(77), id(3)],
    })
    .unwrap();
    assert_eq!(log.tree.node(&id(1)), None);
    assert_eq!(log.tree.node(&id(4)), None, "a purge takes the subtree");
    assert_eq!(log.tree.node(&id(5)), None);
    assert!(log.tree.node(&id(3)).is_some(), "a purge ignores non-tops");
    log.round_trip();
    log.op(DriveOp::Restore { id: id(2) }).unwrap();
    assert_eq!(log.tree.path(&id(3)).as_deref(), Some("/b/f.txt"));
    // Purged ids are free again.
    log.op(DriveOp::Trash { id: id(2) }).unwrap();
    log.op(DriveOp::Purge { ids: vec![id(2)] }).unwrap();
    assert_eq!(log.tree.node(&id(3)), None);
    log.mkdir(3, ROOT, "reused").unwrap();
    assert_eq!(log.tree.usage(), (0, 1, 0, 0));
    log.round_trip();
}

#[test]
fn read_only_members_and_the_owner() {
    let mut log = Log::new();
    let alice = log.alice.clone();
    let bob = user("bob");
    let carol = user("carol");
    log.by(
        &bob,
        DriveOp::Mkdir {
            id: id(1),
            parent: ROOT,
            name: "bob's".to_owned(),
        },
    )
    .unwrap();
    let read_only = |u: &UserName, ro: bool| DriveOp::SetAccess {
        user: u.clone(),
        read_only: ro,
    };
    assert_eq!(
        log.by(&bob, read_only(&carol, true)),
        Err(TreeError::NotAllowed(bob.clone()))
    );
    assert_eq!(log.op(read_only(&alice, true)), Err(TreeError::Invalid));
    log.op(read_only(&bob, true)).unwrap();
    log.op(read_only(&carol, true)).unwrap();
    assert_eq!(log.tree.read_only_users(), [bob.clone(), carol.clone()]);
    assert!(!log.tree.can_write(&bob) && log.tree.can_write(&alice));
    for op in [
        DriveOp::Mkdir {
            id: id(2),
            parent: ROOT,
            name: "x".to_owned(),
        },
        DriveOp::Trash { id: id(1) },
        DriveOp::Move {
            id: id(1),
            parent: ROOT,
            name: "y".to_owned(),
        },
        DriveOp::Purge { ids: vec![] },
        DriveOp::Link {
            node: ROOT,
            link: sealed(1),
            expires_ms: None,
        },
        DriveOp::Unlink {
            link: BlobId([1; 16]),
        },
    ] {
        assert_eq!(log.by(&bob, op), Err(TreeError::NotAllowed(bob.clone())));
    }
    // Read-only members still ask for and post snapshots.
    log.by(&bob, DriveOp::SnapshotRequest).unwrap();
    log.op(read_only(&bob, false)).unwrap();
    assert_eq!(log.tree.read_only_users(), [carol]);
    log.round_trip();
    log.by(&bob, DriveOp::Trash { id: id(1) }).unwrap();
    assert!(log.tree.is_trashed(&id(1)));
}

#[test]
fn links_are_kept_until_unlinked() {
    let mut log = Log::new();
    log.put(1, ROOT, "f").unwrap();
    log.put(2, ROOT, "g").unwrap();
    log.op(DriveOp::Link {
        node: id(1),
        link: sealed(1),
        expires_ms: Some(99),
    })
    .unwrap();
    log.op(DriveOp::Link {
        node: ROOT,
        link: sealed(2),
        expires_ms: None,
    })
    .unwrap();
    assert_eq!(
        log.op(DriveOp::Link {
            node: id(2),
            link: sealed(1),
            expires_ms: None
        }),
        Err(TreeError::Duplicate)
    );
    log.op(DriveOp::Trash { id: id(2) }).unwrap();
    assert!(matches!(
        log.op(DriveOp::Link {
            node: id(2),
            link: sealed(3),
            expires_ms: None
        }),
        Err(TreeError::NotFound(_))
    ));
    let s1 = sealed(1);
    let s2 = sealed(2);
    assert_eq!(
        log.tree.links(),
        [(id(1), &s1, Some(99)), (ROOT, &s2, None)]
    );
    log.round_trip();
    log.op(DriveOp::Unlink {
        link: BlobId([1; 16]),
    })
    .unwrap();
    assert_eq!(
        log.op(DriveOp::Unlink {
            link: BlobId([1; 16])
        }),
        Err(TreeError::NotFound(BlobId([1; 16]).to_hex()))
    );
    assert_eq!(log.tree.links(), [(ROOT, &s2, None)]);
}

#[test]
fn paths_resolve_and_walk() {
    let mut log = Log::new();
    log.mkdir(1, ROOT, "a").unwrap();
    log.mkdir(2, id(1), "b").unwrap();
    log.put(3, id(2), "z.txt").unwrap();
    log.put(4, id(1), "c.txt").unwrap();
    log.put(5, ROOT, "top").unwrap();
    for (path, want) in [
        ("/", ROOT),
        ("", ROOT),
        ("/a/b", id(2)),
        ("a/b", id(2)),
        ("a//b/", id(2)),
        ("/a/b/z.txt", id(3)),
    ] {
        assert_eq!(log.tree.resolve(path), Ok(want), "{path}");
    }
    for path in ["./a", "a/../a", "a/.", "/nope", "/a/c.txt/x"] {
        assert_eq!(
            log.tree.resolve(path),
            Err(TreeError::NotFound(path.to_owned())),
            "{path}"
        );
    }
    assert_eq!(log.tree.child(&id(1), "b"), Some(id(2)));
    let entry = log.tree.entry(&id(3)).unwrap();
    assert_eq!(
        (entry.name.as_str(), entry.path.as_str(), entry.size),
        ("z.txt", "/a/b/z.txt", 13)
    );
    assert_eq!(entry.author, user("alice"));
    assert_eq!(log.tree.entry(&ROOT), None);
    assert_eq!(log.tree.entry(&id(9)), None);
    assert_eq!(log.tree.path(&ROOT).as_deref(), Some("/"));
    assert_eq!(log.tree.path(&id(3)).as_deref(), Some("/a/b/z.txt"));
    let walk: Vec<(NodeId, String)> = log
        .tree
        .walk(&ROOT)
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.path))
        .collect();
    assert_eq!(
        walk,
        [
            (id(1), "a".to_owned()),
            (id(2), "a/b".to_owned()),
            (id(3), "a/b/z.txt".to_owned()),
            (id(4), "a/c.txt".to_owned()),
            (id(5), "top".to_owned()),
        ]
    );
    let sub: Vec<String> = log
        .tree
        .walk(&id(1))
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(sub, ["b", "b/z.txt", "c.txt"]);
    assert_eq!(
        log.tree.walk(&id(3)),
        Err(TreeError::NotAFolder("z.txt".to_owned()))
    );
    assert!(matches!(log.tree.walk(&id(9)), Err(TreeError::NotFound(_))));
    // usage: live files and folders, latest bytes, all bytes (trash included).
    log.op(DriveOp::PutVersion {
        id: id(3),
        parent: ROOT,
        name: "x".to_owned(),
        version: version(40, 1000),
    })
    .unwrap();
    log.op(DriveOp::Trash { id: id(5) }).unwrap();
    assert_eq!(log.tree.usage(), (2, 2, 1000 + 14, 13 + 1000 + 14 + 15));
}

#[test]
fn extract_makes_a_new_tree_of_a_folder() {
    let mut log = Log::new();
    let bob = user("bob");
    log.mkdir(1, ROOT, "share").unwrap();
    log.mkdir(2, id(1), "sub").unwrap();
    log.put(3, id(2), "f.txt").unwrap();
    log.put(4, id(1), "g.txt").unwrap();
    log.put(5, id(1), "gone.txt").unwrap();
    log.op(DriveOp::Trash { id: id(5) }).unwrap();
    log.put(6, ROOT, "outside").unwrap();
    let shared = log.tree.extract(&id(1), "share", &bob).unwrap();
    assert_eq!(shared.info(), Some(("share", &bob)));
    assert_eq!(shared.applied(), 0);
    assert_eq!(shared.resolve("/sub/f.txt"), Ok(id(3)));
    assert_eq!(shared.versions(&id(3)), log.tree.versions(&id(3)));
    assert_eq!(shared.node(&id(2)).map(|n| n.0), Some(ROOT));
    let paths: Vec<String> = shared
        .walk(&ROOT)
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(paths, ["g.txt", "sub", "sub/f.txt"]);
    assert_eq!(shared.node(&id(5)), None);
    assert_eq!(shared.node(&id(6)), None);
    assert!(shared.trash().is_empty());
    assert_eq!(
        Tree::decode_state(&shared.encode_state()),
        Ok(shared.clone())
    );
    assert_eq!(
        log.tree.extract(&id(4), "x", &bob).err(),
        Some(TreeError::NotAFolder("g.txt".to_owned()))
    );
    assert!(matches!(
        log.tree.extract(&id(5), "x", &bob),
        Err(TreeError::NotFound(_))
    ));
    assert_eq!(
        log.tree.extract(&id(1), "", &bob).err(),
        Some(TreeError::Invalid)
    );
}

/// Encodes a hand-made state (for hostile inputs the tree would never produce).
fn encode_raw(
    nodes: Vec<NodeRecord<String, UserName, NodeKind>>,
    trash: Vec<(NodeId, String)>,
) -> Vec<u8> {
    let state: StateFormat<String, UserName, NodeKind, Link> = StateFormat::V1(StateV1 {
        applied: 9,
        name: "Drive".to_owned(),
        owner: Some(user("alice")),
        read_only: vec![],
        nodes,
        trash,
        links: vec![],
    });
    postcard::to_allocvec(&state).unwrap()
}

fn record(
    n: u8,
    parent: NodeId,
    name: &str,
    kind: NodeKind,
) -> NodeRecord<String, UserName, NodeKind> {
    NodeRecord {
        id: id(n),
        parent,
        name: name.to_owned(),
        kind,
        author: user("alice"),
    }
}

#[test]
fn decode_refuses_broken_states() {
    let folder = || NodeKind::Folder;
    // The well-formed base decodes.
    let ok = encode_raw(
        vec![
            record(1, ROOT, "a", folder()),
            record(2, id(1), "b", folder()),
        ],
        vec![],
    );
    let tree = Tree::decode_state(&ok).unwrap();
    assert_eq!(tree.resolve("/a/b"), Ok(id(2)));
    assert_eq!(tree.applied(), 9);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "cycle",
            encode_raw(
                vec![
                    record(1, id(2), "a", folder()),
                    record(2, id(1), "b", folder()),
                ],
                vec![],
            ),
        ),
        (
            "self parent",
            encode_raw(vec![record(1, id(1), "a", folder())], vec![]),
        ),
        (
            "missing parent",
            encode_raw(vec![record(1, id(9), "a", folder())], vec![]),
        ),
        (
            "file parent",
            encode_raw(
                vec![
                    record(
                        1,
                        ROOT,
                        "f",
                        NodeKind::File {
                            versions: vec![version(1, 1)],
                        },
                    ),
                    record(2, id(1), "b", folder()),
                ],
                vec![],
            ),
        ),
        (
            "mount parent",
            encode_raw(
                vec![
                    record(
                        1,
                        ROOT,
                        "m",
                        NodeKind::Mount {
                            group: GroupId([1; 16]),
                        },
                    ),
                    record(2, id(1), "b", folder()),
                ],
                vec![],
            ),
        ),
        (
            "same name twice",
            encode_raw(
                vec![
                    record(1, ROOT, "a", folder()),
                    record(2, ROOT, "a", folder()),
                ],
                vec![],
            ),
        ),
        (
            "unsorted ids",
            encode_raw(
                vec![
                    record(2, ROOT, "a", folder()),
                    record(1, ROOT, "b", folder()),
                ],
                vec![],
            ),
        ),
        (
            "duplicate ids",
            encode_raw(
                vec![
                    record(1, ROOT, "a", folder()),
                    record(1, ROOT, "b", folder()),
                ],
                vec![],
            ),
        ),
        (
            "root as node",
            encode_raw(
                vec![NodeRecord {
                    id: ROOT,
                    parent: ROOT,
                    name: "r".to_owned(),
                    kind: folder(),
                    author: user("alice"),
                }],
                vec![],
            ),
        ),
        (
            "bad name",
            encode_raw(vec![record(1, ROOT, "a/b", folder())], vec![]),
        ),
        (
            "no versions",
            encode_raw(
                vec![record(1, ROOT, "f", NodeKind::File { versions: vec![] })],
                vec![],
            ),
        ),
        (
            "too many versions",
            encode_raw(
                vec![record(
                    1,
                    ROOT,
                    "f",
                    NodeKind::File {
                        versions: vec![version(1, 1); MAX_VERSIONS + 1],
                    },
                )],
                vec![],
            ),
        ),
        (
            "trash of unknown node",
            encode_raw(
                vec![record(1, ROOT, "a", folder())],
                vec![(id(2), "/x".to_owned())],
            ),
        ),
        (
            "cycle in the trash",
            encode_raw(
                vec![
                    record(1, id(2), "a", folder()),
                    record(2, id(1), "b", folder()),
                    record(3, ROOT, "t", folder()),
                ],
                vec![(id(3), "/t".to_owned())],
            ),
        ),
        ("trailing bytes", {
            let mut b = ok.clone();
            b.push(0);
            b
        }),
        ("truncated", ok[..ok.len() - 1].to_vec()),
        ("unknown version", {
            let mut b = ok.clone();
            b[0] = 1;
            b
        }),
        ("empty", vec![]),
    ];
    for (what, bytes) in cases {
        assert_eq!(
            Tree::decode_state(&bytes),
            Err(TreeError::Invalid),
            "{what}"
        );
    }
    // Depth: a chain of MAX_DEPTH folders decodes, one more does not.
    let chain = |len: u16| {
        let node = |n: u16| {
            let mut node = [0u8; 16];
            node[..2].copy_from_slice(&n.to_be_bytes());
            node
        };
        let nodes = (1..=len)
            .map(|n| NodeRecord {
                id: node(n),
                parent: if n == 1 { ROOT } else { node(n - 1) },
                name: "d".to_owned(),
                kind: folder(),
                author: user("alice"),
            })
            .collect();
        encode_raw(nodes, vec![])
    };
    let max = MAX_DEPTH as u16;
    assert_eq!(
        Tree::decode_state(&chain(max)).map(|t| t.nodes.len()),
        Ok(MAX_DEPTH)
    );
    assert_eq!(Tree::decode_state(&chain(max + 1)), Err(TreeError::Invalid));
    // An uninitialised tree is no state to start from.
    assert_eq!(
        Tree::decode_state(&Tree::new().encode_state()),
        Err(TreeError::Invalid)
    );
}

fn pool_node(n: u8) -> NodeId {
    if n == 0 { ROOT } else { id(n) }
}

const NAMES: [&str; 6] = ["a", "a.txt", "a (2).txt", ".x", "b", "b.tar.gz"];

fn arb_op() -> impl Strategy<Value = (u8, DriveOp)> {
    // Node ids from a small pool (so operations meet), parents often the root.
    let node = || prop_oneof![1 => Just(ROOT), 12 => (1u8..9).prop_map(pool_node)];
    let parent = || prop_oneof![1 => Just(ROOT), 1 => (1u8..9).prop_map(pool_node)];
    let name = || proptest::sample::select(&NAMES[..]).prop_map(str::to_owned);
    let op = prop_oneof![
        1 => Just(DriveOp::Init { name: "Drive".to_owned(), owner: user("alice") }),
        6 => (node(), parent(), name()).prop_map(|(id, parent, name)| DriveOp::Mkdir { id, parent, name }),
        6 => (node(), parent(), name(), 0u8..4).prop_map(|(id, parent, name, tag)| DriveOp::PutVersion {
            id, parent, name, version: version(tag, u64::from(tag) * 100),
        }),
        6 => (node(), parent(), name()).prop_map(|(id, parent, name)| DriveOp::Move { id, parent, name }),
        3 => node().prop_map(|id| DriveOp::Trash { id }),
        3 => node().prop_map(|id| DriveOp::Restore { id }),
        1 => proptest::collection::vec(node(), 0..4).prop_map(|ids| DriveOp::Purge { ids }),
        1 => (0u8..3, any::<bool>()).prop_map(|(u, read_only)| DriveOp::SetAccess {
            user: user(["alice", "bob", "carol"][usize::from(u)]), read_only,
        }),
        1 => (node(), 0u8..3).prop_map(|(node, tag)| DriveOp::Link { node, link: sealed(tag), expires_ms: None }),
        1 => (0u8..3).prop_map(|tag| DriveOp::Unlink { link: BlobId([tag; 16]) }),
        1 => (node(), parent(), name()).prop_map(|(id, parent, name)| DriveOp::Mount {
            id, parent, name, group: GroupId([9; 16]),
        }),
        1 => Just(DriveOp::SnapshotRequest),
    ];
    // Mostly alice (the owner), sometimes bob or carol.
    (
        prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        op,
    )
}

fn arb_log() -> impl Strategy<Value = Vec<(u8, DriveOp)>> {
    proptest::collection::vec(arb_op(), 0..120).prop_map(|mut ops| {
        ops.insert(
            0,
            (
                0,
                DriveOp::Init {
                    name: "Drive".to_owned(),
                    owner: user("alice"),
                },
            ),
        );
        ops
    })
}

fn author(n: u8) -> UserName {
    user(["alice", "bob", "carol"][usize::from(n)])
}

/// Applies `ops` from log position `first`, checking after each that a refused operation
/// changed nothing but the position and that the state survives its encoding.
fn replay(tree: &mut Tree, first: u64, ops: &[(u8, DriveOp)]) {
    for (seq, (who, op)) in (first..).zip(ops) {
        let before = tree.clone();
        if tree.apply(seq, &author(*who), op).is_err() {
            let mut expected = before;
            expected.applied = seq;
            assert_eq!(*tree, expected, "refused {op:?} changed the tree");
        }
        assert_eq!(tree.applied(), seq);
        if tree.info().is_some() {
            assert_eq!(
                Tree::decode_state(&tree.encode_state()).as_ref(),
                Ok(&*tree)
            );
        }
    }
}

proptest! {
    /// Two members applying the same log hold equal trees (encodings equal byte for byte),
    /// and a member starting from a snapshot taken anywhere in the log, then applying the
    /// rest, holds the same tree again.
    #[test]
    fn replays_agree_and_snapshots_continue(ops in arb_log(), split in any::<prop::sample::Index>()) {
        let mut a = Tree::new();
        replay(&mut a, 1, &ops);
        let mut b = Tree::new();
        replay(&mut b, 1, &ops);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.encode_state(), b.encode_state());
        prop_assert_eq!(a.walk(&ROOT), b.walk(&ROOT));

        let k = split.index(ops.len() + 1);
        let mut prefix = Tree::new();
        replay(&mut prefix, 1, &ops[..k]);
        let Ok(mut resumed) = Tree::decode_state(&prefix.encode_state()) else {
            // Only an uninitialised tree has no state; the log starts with Init.
            prop_assert_eq!(k, 0);
            return Ok(());
        };
        replay(&mut resumed, k as u64 + 1, &ops[k..]);
        prop_assert_eq!(&resumed, &a);
        prop_assert_eq!(resumed.encode_state(), a.encode_state());
    }

    /// A batch leaves the tree its operations leave one message each: the same nodes,
    /// names (clashes included), versions and refusals, at one log position.
    #[test]
    fn a_batch_applies_like_its_operations_one_by_one(
        ops in arb_log(),
        batch in proptest::collection::vec(arb_op(), 1..24),
        who in 0u8..3,
    ) {
        let mut one_by_one = Tree::new();
        replay(&mut one_by_one, 1, &ops);
        let mut batched = one_by_one.clone();
        // Valid operations (one invalid operation refuses its whole batch: another test).
        let inner: Vec<DriveOp> = batch
            .into_iter()
            .map(|(_, op)| op)
            .filter(|op| op.batchable() && op.validate().is_ok())
            .collect();
        prop_assume!(!inner.is_empty());
        let first = ops.len() as u64 + 1;
        let mut expected = Ok(());
        for (seq, op) in (first..).zip(&inner) {
            let r = one_by_one.apply(seq, &author(who), op);
            expected = expected.and(r);
        }
        let got = batched.apply(first, &author(who), &DriveOp::Batch { ops: inner.clone() });
        prop_assert_eq!(got, expected);
        prop_assert_eq!(batched.applied(), first);
        batched.applied = one_by_one.applied;
        prop_assert_eq!(&batched, &one_by_one);
    }

    /// Random bytes never panic the state decoder.
    #[test]
    fn random_state_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_hostile(&bytes);
    }

    /// Mutated encodings of real trees (bytes flipped, cut, inserted) never panic, and what
    /// decodes is a tree that encodes and decodes to itself.
    #[test]
    fn mutated_states_never_panic(
        ops in arb_log(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut tree = Tree::new();
        replay(&mut tree, 1, &ops);
        let mut bytes = tree.encode_state();
        for (at, byte, how) in edits {
            let i = at.index(bytes.len() + 1);
            match how {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        check_hostile(&bytes);
    }
}

fn check_hostile(bytes: &[u8]) {
    if let Ok(tree) = Tree::decode_state(bytes) {
        assert_eq!(Tree::decode_state(&tree.encode_state()).as_ref(), Ok(&tree));
        let walked = tree.walk(&ROOT).unwrap();
        for entry in walked {
            assert_eq!(tree.resolve(&entry.path), Ok(entry.id));
        }
        let _ = (tree.trash(), tree.usage(), tree.links());
    }
}

proptest! {
    /// The clash rule's fast path (one scan of the names sharing the stem) picks the same
    /// name as probing number after number, on folders full of numbered names.
    #[test]
    fn free_name_scan_agrees_with_probing(
        taken in proptest::collection::vec((0usize..4, 0u64..12, 0usize..3), 0..40),
        wanted in (0usize..4, 0usize..3),
    ) {
        let stems = ["a", "a (2)", ".x", "b.tar"];
        let exts = ["", ".txt", ".gz"];
        let mut index = BTreeMap::new();
        let make = |s: usize, n: u64, e: usize| match n {
            0 => format!("{}{}", stems[s], exts[e]),
            1 => format!("{} (0{}){}", stems[s], n, exts[e]),
            _ => format!("{} ({n}){}", stems[s], exts[e]),
        };
        for (i, (s, n, e)) in taken.into_iter().enumerate() {
            index.insert(Name::from(make(s, n, e)), id(i as u8));
        }
        let wanted = make(wanted.0, 0, wanted.1);
        index.insert(Name::from(wanted.as_str()), id(200));
        prop_assert_eq!(free_name(&index, &wanted), free_name_probing(&index, &wanted));
    }
}

/// A folder of 3,000 same-named files: each new one gets the next number.
#[test]
fn many_clashes_get_consecutive_numbers() {
    let mut index: BTreeMap<Name, NodeId> = BTreeMap::new();
    index.insert("IMG.jpg".into(), id(1));
    for n in 2..3_000u32 {
        let name = free_name(&index, "IMG.jpg");
        assert_eq!(&*name, format!("IMG ({n}).jpg"));
        let mut node = [0u8; 16];
        node[..4].copy_from_slice(&n.to_be_bytes());
        index.insert(name, node);
    }
}

/// The state encoding is a format other members decode: these bytes change only on purpose
/// (then a new `StateFormat` version is appended).
#[test]
fn state_encoding_is_stable() {
    let mut log = Log::new();
    log.mkdir(1, ROOT, "d").unwrap();
    log.op(DriveOp::PutVersion {
        id: id(2),
        parent: id(1),
        name: "f".to_owned(),
        version: FileVersion {
            version: [2; 16],
            size: 3,
            modified_ms: 4,
            sha256: [5; 32],
            secret: FileSecret([6; 32]),
            manifest: ManifestRef::Inline(Manifest::default()),
            device: "pc".to_owned(),
        },
    })
    .unwrap();
    log.put(3, ROOT, "t").unwrap();
    log.op(DriveOp::Trash { id: id(3) }).unwrap();
    log.op(DriveOp::SetAccess {
        user: user("bob"),
        read_only: true,
    })
    .unwrap();
    // V1; applied 6; "Drive", owner alice; read-only [bob]; nodes by id (id, parent, name,
    // kind, author); trash [(id 3, "/t")]; no links.
    assert_eq!(
        hex::encode(log.tree.encode_state()),
        concat!(
            "00060544726976650105616c6963650103626f6203010000000000000000000000000000aa000000",
            "0000000000000000000000000001640005616c696365020000000000000000000000000000aa0100",
            "00000000000000000000000000aa0166010102020202020202020202020202020202030405050505",
            "05050505050505050505050505050505050505050505050505050505060606060606060606060606",
            "0606060606060606060606060606060606060606000002706305616c696365030000000000000000",
            "000000000000aa000000000000000000000000000000000174010103030303030303030303030303",
            "0303030deb0703030303030303030303030303030303030303030303030303030303030303030707",
            "07070707070707070707070707070707070707070707070707070707070700010303030303030303",
            "03030303030303030303030303030303030303030303030303030303030303030303030303030303",
            "01066c6170746f7005616c69636501030000000000000000000000000000aa022f7400",
        )
    );
}

#[test]
fn a_batch_holds_only_file_and_folder_changes() {
    let put = |n: u8| DriveOp::PutVersion {
        id: id(n),
        parent: ROOT,
        name: format!("f{n}"),
        version: version(n, 1),
    };
    let ok = DriveOp::Batch {
        ops: vec![
            DriveOp::Mkdir {
                id: id(1),
                parent: ROOT,
                name: "d".to_owned(),
            },
            put(2),
            DriveOp::Move {
                id: id(2),
                parent: id(1),
                name: "g".to_owned(),
            },
            DriveOp::Trash { id: id(2) },
            DriveOp::Restore { id: id(2) },
        ],
    };
    assert_eq!(ok.validate(), Ok(()));
    let alice = user("alice");
    for inner in [
        DriveOp::Init {
            name: "Drive".to_owned(),
            owner: alice.clone(),
        },
        DriveOp::SetAccess {
            user: user("bob"),
            read_only: false,
        },
        DriveOp::SnapshotRequest,
        DriveOp::Snapshot {
            covers: 1,
            blob: sealed(1),
        },
        DriveOp::Link {
            node: id(2),
            link: sealed(2),
            expires_ms: None,
        },
        DriveOp::Unlink {
            link: BlobId([1; 16]),
        },
        DriveOp::Mount {
            id: id(3),
            parent: ROOT,
            name: "m".to_owned(),
            group: GroupId([9; 16]),
        },
        DriveOp::Purge { ids: vec![id(2)] },
        DriveOp::Batch { ops: vec![put(4)] },
    ] {
        let bad = DriveOp::Batch {
            ops: vec![put(5), inner.clone()],
        };
        assert_eq!(bad.validate(), Err(OpInvalid::Batch), "{inner:?}");
        // Refused whole by every tree: not even the valid operation applies.
        let mut log = Log::new();
        assert_eq!(log.by(&alice, bad), Err(TreeError::Invalid));
        assert!(log.tree.entry(&id(5)).is_none());
    }
    assert_eq!(
        DriveOp::Batch { ops: vec![] }.validate(),
        Err(OpInvalid::Batch)
    );
    let too_many = DriveOp::Batch {
        ops: (0..=MAX_BATCH_OPS)
            .map(|i| put((i % 200) as u8 + 1))
            .collect(),
    };
    assert_eq!(too_many.validate(), Err(OpInvalid::TooMany));
    // One invalid operation inside (a bad name) refuses the batch.
    let bad_name = DriveOp::Batch {
        ops: vec![DriveOp::Mkdir {
            id: id(6),
            parent: ROOT,
            name: "a/b".to_owned(),
        }],
    };
    assert_eq!(bad_name.validate(), Err(OpInvalid::Name));
}

#[test]
fn a_read_only_members_batch_changes_nothing() {
    let mut log = Log::new();
    let (alice, bob) = (log.alice.clone(), user("bob"));
    log.by(
        &alice,
        DriveOp::SetAccess {
            user: bob.clone(),
            read_only: true,
        },
    )
    .unwrap();
    let batch = DriveOp::Batch {
        ops: vec![
            DriveOp::Mkdir {
                id: id(1),
                parent: ROOT,
                name: "d".to_owned(),
            },
            DriveOp::PutVersion {
                id: id(2),
                parent: ROOT,
                name: "f".to_owned(),
                version: version(1, 1),
            },
        ],
    };
    assert_eq!(log.by(&bob, batch.clone()), Err(TreeError::NotAllowed(bob)));
    assert!(log.tree.entry(&id(1)).is_none() && log.tree.entry(&id(2)).is_none());
    // The owner's same batch applies whole, at one log position.
    let seq = log.tree.applied() + 1;
    log.by(&alice, batch).unwrap();
    assert_eq!(log.tree.applied(), seq);
    assert!(log.tree.entry(&id(1)).is_some() && log.tree.entry(&id(2)).is_some());
}

#[test]
fn a_refused_operation_in_a_batch_leaves_the_others_applied() {
    let mut log = Log::new();
    let alice = log.alice.clone();
    let seq = log.tree.applied() + 1;
    let got = log.tree.apply(
        seq,
        &alice,
        &DriveOp::Batch {
            ops: vec![
                // Into a folder that does not exist: refused.
                DriveOp::PutVersion {
                    id: id(1),
                    parent: id(9),
                    name: "lost".to_owned(),
                    version: version(1, 1),
                },
                DriveOp::PutVersion {
                    id: id(2),
                    parent: ROOT,
                    name: "kept".to_owned(),
                    version: version(2, 1),
                },
            ],
        },
    );
    assert!(got.is_err(), "the first refusal is reported");
    assert!(log.tree.entry(&id(1)).is_none());
    assert!(log.tree.entry(&id(2)).is_some());
}
