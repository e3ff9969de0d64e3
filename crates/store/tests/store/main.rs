//! The conformance suite every `Store` backend passes: the same tests run against
//! `MemoryStore` and `SqliteStore` (a file in a temp dir).

#![allow(clippy::unwrap_used, missing_docs)]

use cove_store::{
    DatabaseKey, Durability, GroupRecord, Identity, Kv, Membership, MemoryStore, Namespace,
    OutboxItem, PinnedDevice, SqliteStore, Store, StoredMessage,
};
use cove_wire::{DeviceId, DeviceKey, Epoch, GroupId, Seq, Stream, UserName};

mod search;

fn user(n: &str) -> UserName {
    UserName::new(n).unwrap()
}

fn kv_basics(s: &impl Store) {
    assert_eq!(s.kv_get(Namespace::Config, b"a").unwrap(), None);
    s.kv_put(Namespace::Config, b"a", b"1").unwrap();
    s.kv_put(Namespace::Config, b"a", b"2").unwrap();
    assert_eq!(
        s.kv_get(Namespace::Config, b"a").unwrap(),
        Some(b"2".to_vec())
    );
    // Namespaces are separate.
    assert_eq!(s.kv_get(Namespace::Group, b"a").unwrap(), None);
    s.kv_delete(Namespace::Config, b"a").unwrap();
    s.kv_delete(Namespace::Config, b"a").unwrap();
    assert_eq!(s.kv_get(Namespace::Config, b"a").unwrap(), None);
}

fn scan_is_ordered_and_prefix_bounded(s: &impl Store) {
    for k in [&b"b\x02"[..], b"a\xff", b"b\x01", b"b\xff\xff", b"c", b"b"] {
        s.kv_put(Namespace::Message, k, k).unwrap();
    }
    s.kv_put(Namespace::Seen, b"b\x00", b"x").unwrap();
    let keys: Vec<Vec<u8>> = s
        .kv_scan(Namespace::Message, b"b")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![
            b"b".to_vec(),
            b"b\x01".to_vec(),
            b"b\x02".to_vec(),
            b"b\xff\xff".to_vec()
        ]
    );
    let from: Vec<Vec<u8>> = s
        .kv_scan_from(Namespace::Message, b"b", b"b\x02")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(from, vec![b"b\x02".to_vec(), b"b\xff\xff".to_vec()]);
    assert_eq!(
        s.kv_scan_from(Namespace::Message, b"b", b"a")
            .unwrap()
            .len(),
        4,
        "a start before the prefix reads the whole prefix"
    );
    assert!(
        s.kv_scan_from(Namespace::Message, b"b", b"c")
            .unwrap()
            .is_empty(),
        "a start past the prefix reads nothing"
    );
    let all = s.kv_scan(Namespace::Message, b"").unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(s.kv_scan(Namespace::Message, b"\xff").unwrap().len(), 0);
}

fn transactions_commit_and_roll_back(s: &impl Store) {
    s.kv_put(Namespace::Config, b"keep", b"old").unwrap();
    s.kv_put(Namespace::Config, b"gone", b"old").unwrap();
    s.begin().unwrap();
    assert!(s.in_transaction());
    assert!(s.begin().is_err(), "no nesting");
    s.kv_put(Namespace::Config, b"keep", b"new").unwrap();
    s.kv_delete(Namespace::Config, b"gone").unwrap();
    s.kv_put(Namespace::Config, b"fresh", b"new").unwrap();
    s.kv_put(Namespace::Config, b"fresh", b"newer").unwrap();
    assert_eq!(
        s.kv_get(Namespace::Config, b"keep").unwrap(),
        Some(b"new".to_vec()),
        "reads see own writes"
    );
    s.rollback().unwrap();
    assert!(!s.in_transaction());
    assert_eq!(
        s.kv_get(Namespace::Config, b"keep").unwrap(),
        Some(b"old".to_vec())
    );
    assert_eq!(
        s.kv_get(Namespace::Config, b"gone").unwrap(),
        Some(b"old".to_vec())
    );
    assert_eq!(s.kv_get(Namespace::Config, b"fresh").unwrap(), None);

    s.begin().unwrap();
    s.kv_put(Namespace::Config, b"keep", b"committed").unwrap();
    s.commit().unwrap();
    assert_eq!(
        s.kv_get(Namespace::Config, b"keep").unwrap(),
        Some(b"committed".to_vec())
    );
    assert!(s.commit().is_err());
    assert!(s.rollback().is_err());

    let r: Result<(), cove_store::StoreError> = s.transaction(|s| {
        s.set_config("t", "1")?;
        Err(cove_store::StoreError::Backend("boom".into()))
    });
    assert!(r.is_err());
    assert_eq!(s.config("t").unwrap(), None);
    s.transaction(|s| s.set_config("t", "2")).unwrap();
    assert_eq!(s.config("t").unwrap(), Some("2".into()));
}

fn typed_records(s: &impl Store) {
    assert!(s.identity().unwrap().is_none());
    let id = Identity {
        user: user("alice"),
        device: Some(DeviceId(7)),
        secret_key: [5u8; 32].into(),
        public_key: DeviceKey([6; 32]),
    };
    s.set_identity(&id).unwrap();
    let back = s.identity().unwrap().unwrap();
    assert_eq!(back.user, id.user);
    assert_eq!(back.device, id.device);
    assert_eq!(*back.secret_key, [5u8; 32]);
    assert!(
        !format!("{back:?}").contains("5, 5"),
        "secret key is redacted in Debug"
    );

    let pin = |u: &str, d: u64, k: u8| PinnedDevice {
        user: user(u),
        device: DeviceId(d),
        key: DeviceKey([k; 32]),
        pinned_at_ms: 1,
    };
    s.pin_device(&pin("bob", 3, 1)).unwrap();
    s.pin_device(&pin("bob", 2, 2)).unwrap();
    s.pin_device(&pin("bobby", 4, 3)).unwrap();
    s.pin_device(&pin("bob", 3, 9)).unwrap();
    assert_eq!(
        s.pinned_devices(&user("bob")).unwrap(),
        vec![pin("bob", 2, 2), pin("bob", 3, 9)]
    );
    assert_eq!(s.pinned_devices(&user("carol")).unwrap(), vec![]);

    let g = GroupRecord {
        id: GroupId([1; 16]),
        name: "friends".into(),
        membership: Membership::Active,
        joined_at_ms: 5,
    };
    let h = GroupRecord {
        id: GroupId([0; 16]),
        name: "other".into(),
        membership: Membership::Removed,
        joined_at_ms: 6,
    };
    s.put_group(&g).unwrap();
    s.put_group(&h).unwrap();
    assert_eq!(s.group(&g.id).unwrap(), Some(g.clone()));
    assert_eq!(s.groups().unwrap(), vec![h.clone(), g.clone()]);

    let msg = |seq: u64| StoredMessage {
        group: g.id,
        seq: Seq(seq),
        from: user("bob"),
        from_device: DeviceId(3),
        message_id: [seq as u8; 16],
        sent_at_ms: 10,
        content: vec![1, 2, 3],
    };
    for seq in [300, 2, 256, 1] {
        s.put_message(&msg(seq)).unwrap();
    }
    let seqs: Vec<u64> = s
        .messages(&g.id)
        .unwrap()
        .into_iter()
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(seqs, vec![1, 2, 256, 300], "history in log order");
    assert!(s.messages(&h.id).unwrap().is_empty());
    let after = |group: &GroupId, seq: u64| -> Vec<u64> {
        s.messages_after(group, Seq(seq))
            .unwrap()
            .into_iter()
            .map(|m| m.seq.0)
            .collect()
    };
    assert_eq!(after(&g.id, 0), vec![1, 2, 256, 300]);
    assert_eq!(
        after(&g.id, 2),
        vec![256, 300],
        "only what follows the position"
    );
    assert_eq!(
        after(&g.id, 255),
        vec![256, 300],
        "a position between two entries"
    );
    assert_eq!(after(&g.id, 300), Vec::<u64>::new());
    assert_eq!(
        after(&g.id, u64::MAX),
        Vec::<u64>::new(),
        "no overflow at the end"
    );
    assert_eq!(after(&h.id, 0), Vec::<u64>::new(), "bounded to its group");

    assert!(!s.is_seen(&g.id, &[1; 16]).unwrap());
    s.mark_seen(&g.id, &[1; 16]).unwrap();
    assert!(s.is_seen(&g.id, &[1; 16]).unwrap());
    assert!(!s.is_seen(&h.id, &[1; 16]).unwrap());

    let a = s.next_local_id().unwrap();
    let b = s.next_local_id().unwrap();
    assert!(b > a);
    let item = |id: u64| OutboxItem {
        local_id: id,
        group: g.id,
        epoch: Epoch(2),
        message_id: [9; 16],
        sent_at_ms: 4,
        content: vec![4],
        payload: vec![5; 100],
    };
    s.put_outbox(&item(b)).unwrap();
    s.put_outbox(&item(a)).unwrap();
    assert_eq!(s.outbox().unwrap(), vec![item(a), item(b)]);
    s.delete_outbox(a).unwrap();
    assert_eq!(s.outbox().unwrap(), vec![item(b)]);

    assert_eq!(s.cursor(&Stream::Inbox).unwrap(), Seq(0));
    s.set_cursor(&Stream::Inbox, Seq(4)).unwrap();
    s.set_cursor(&Stream::Group(g.id), Seq(9)).unwrap();
    assert_eq!(s.cursor(&Stream::Inbox).unwrap(), Seq(4));
    assert_eq!(s.cursor(&Stream::Group(g.id)).unwrap(), Seq(9));
    assert_eq!(s.cursor(&Stream::Group(h.id)).unwrap(), Seq(0));

    s.put_pending(&g.id, Seq(20), b"later").unwrap();
    s.put_pending(&g.id, Seq(10), b"sooner").unwrap();
    assert_eq!(
        s.pending(&g.id).unwrap(),
        vec![(Seq(10), b"sooner".to_vec()), (Seq(20), b"later".to_vec())]
    );
    s.delete_pending(&g.id, Seq(10)).unwrap();
    assert_eq!(s.pending(&g.id).unwrap().len(), 1);
}

/// openmls runs on the store as its StorageProvider: a group created through it can be
/// loaded back, and a rolled-back transaction leaves no group behind.
fn serves_as_openmls_storage<S: Store>(s: S) {
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_traits::OpenMlsProvider;

    struct P<S> {
        crypto: openmls_rust_crypto::RustCrypto,
        storage: S,
    }
    impl<S: Store> OpenMlsProvider for P<S> {
        type CryptoProvider = openmls_rust_crypto::RustCrypto;
        type RandProvider = openmls_rust_crypto::RustCrypto;
        type StorageProvider = S;
        fn storage(&self) -> &S {
            &self.storage
        }
        fn crypto(&self) -> &Self::CryptoProvider {
            &self.crypto
        }
        fn rand(&self) -> &Self::RandProvider {
            &self.crypto
        }
    }
    let cs = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let p = P {
        crypto: Default::default(),
        storage: s,
    };
    let signer = SignatureKeyPair::new(cs.signature_algorithm()).unwrap();
    signer.store(p.storage()).unwrap();
    let cred = CredentialWithKey {
        credential: BasicCredential::new(b"alice".to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    let cfg = MlsGroupCreateConfig::builder().ciphersuite(cs).build();

    p.storage().begin().unwrap();
    let g = MlsGroup::new_with_group_id(
        &p,
        &signer,
        &cfg,
        GroupId::from_slice(b"rolled-back"),
        cred.clone(),
    )
    .unwrap();
    drop(g);
    p.storage().rollback().unwrap();
    assert!(
        MlsGroup::load(p.storage(), &GroupId::from_slice(b"rolled-back"))
            .unwrap()
            .is_none()
    );

    let mut g =
        MlsGroup::new_with_group_id(&p, &signer, &cfg, GroupId::from_slice(b"kept"), cred).unwrap();
    let _ = g.create_message(&p, &signer, b"hello").unwrap();
    let loaded = MlsGroup::load(p.storage(), &GroupId::from_slice(b"kept"))
        .unwrap()
        .unwrap();
    assert_eq!(loaded.epoch(), g.epoch());
    assert_eq!(
        loaded.epoch_authenticator().as_slice(),
        g.epoch_authenticator().as_slice()
    );
    let _ = g
        .self_update(&p, &signer, LeafNodeParameters::default())
        .unwrap();
    g.merge_pending_commit(&p).unwrap();
    let loaded = MlsGroup::load(p.storage(), &GroupId::from_slice(b"kept"))
        .unwrap()
        .unwrap();
    assert_eq!(loaded.epoch().as_u64(), 1);
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn kv_basics() {
                let (s, _d) = $make;
                super::kv_basics(&s);
            }
            #[test]
            fn scan_is_ordered_and_prefix_bounded() {
                let (s, _d) = $make;
                super::scan_is_ordered_and_prefix_bounded(&s);
            }
            #[test]
            fn transactions_commit_and_roll_back() {
                let (s, _d) = $make;
                super::transactions_commit_and_roll_back(&s);
            }
            #[test]
            fn typed_records() {
                let (s, _d) = $make;
                super::typed_records(&s);
            }
            #[test]
            fn serves_as_openmls_storage() {
                let (s, _d) = $make;
                super::serves_as_openmls_storage(s);
            }
        }
    };
}

conformance!(memory, (MemoryStore::new(), ()));
conformance!(sqlite, {
    let d = tempfile::tempdir().unwrap();
    (SqliteStore::open(d.path().join("cove.db")).unwrap(), d)
});
conformance!(sqlite_full_durability, {
    let d = tempfile::tempdir().unwrap();
    (
        SqliteStore::open_with(d.path().join("cove.db"), Durability::Full).unwrap(),
        d,
    )
});

#[test]
fn sqlite_persists_across_reopen_and_drops_uncommitted_writes() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.set_config("server", "wss://x").unwrap();
        s.begin().unwrap();
        s.set_config("half", "done").unwrap();
        // Dropped mid-transaction (closed without a commit; killed processes are the
        // e2e tests' job): the uncommitted write must not survive.
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.config("server").unwrap(), Some("wss://x".into()));
    assert_eq!(s.config("half").unwrap(), None);
}

/// Every file the store at `path` consists of (the database, its WAL and shared memory).
fn store_files(path: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(bytes) = std::fs::read(std::path::PathBuf::from(p)) {
            all.extend_from_slice(&bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const MARKER: &[u8] = b"plaintext-marker-7d1f0c";

#[test]
fn an_encrypted_store_holds_no_plaintext_and_opens_only_with_its_key() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    let key = DatabaseKey::from_bytes([0x5a; 32]);
    {
        let s = SqliteStore::open_encrypted(&path, &key, Durability::Process).unwrap();
        s.kv_put(Namespace::Config, b"k", MARKER).unwrap();
        // The same text as a plaintext store writes it, to prove the scan can see it.
        let plain = SqliteStore::open(d.path().join("plain.db")).unwrap();
        plain.kv_put(Namespace::Config, b"k", MARKER).unwrap();
        assert!(contains(&store_files(&d.path().join("plain.db")), MARKER));
        let files = store_files(&path);
        assert!(!contains(&files, MARKER));
        assert!(!contains(&files, b"SQLite format 3"));
        assert!(!contains(&files, b"CREATE TABLE"));
        assert!(!contains(&files, key.as_bytes()));
    }
    assert!(matches!(
        SqliteStore::open_encrypted(
            &path,
            &DatabaseKey::from_bytes([0x5b; 32]),
            Durability::Process
        ),
        Err(cove_store::StoreError::WrongKey)
    ));
    // Opened as a plaintext store, it is not a database.
    assert!(SqliteStore::open(&path).is_err());
    let s = SqliteStore::open_encrypted(&path, &key, Durability::Process).unwrap();
    assert_eq!(
        s.kv_get(Namespace::Config, b"k").unwrap(),
        Some(MARKER.to_vec())
    );
}

#[test]
fn a_plaintext_store_is_encrypted_in_place_with_nothing_lost() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        for i in 0..200u32 {
            s.kv_put(Namespace::Message, &i.to_be_bytes(), MARKER)
                .unwrap();
        }
    }
    assert!(contains(&store_files(&path), MARKER));
    let key = DatabaseKey::from_bytes([7; 32]);
    SqliteStore::encrypt_in_place(&path, &key).unwrap();
    assert!(!contains(&store_files(&path), MARKER));
    let s = SqliteStore::open_encrypted(&path, &key, Durability::Process).unwrap();
    assert_eq!(s.kv_scan(Namespace::Message, b"").unwrap().len(), 200);
}

#[test]
fn a_deleted_value_does_not_linger_in_the_file() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    let s = SqliteStore::open(&path).unwrap();
    s.kv_put(Namespace::Config, b"secret", MARKER).unwrap();
    s.kv_put(Namespace::Config, b"other", b"x").unwrap();
    s.kv_delete(Namespace::Config, b"secret").unwrap();
    drop(s);
    // Closing checkpoints the WAL into the file: with secure_delete the freed cell is zeroed.
    assert!(!contains(&store_files(&path), MARKER));
}
