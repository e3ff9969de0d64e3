//! The PostgreSQL store as several relay nodes use it: the whole conformance suite on two
//! stores (two connection pools, as two nodes have) over one database, calls alternating
//! between them, so no case can pass on state one node keeps to itself and the concurrent
//! cases race across nodes; the schema rule (a newer schema is refused, a reopen keeps the
//! data); and the cluster helper failing loudly without PostgreSQL.

use std::sync::atomic::{AtomicUsize, Ordering};

use cove_server::store::{
    Account, Appended, BackupCaps, NewPost, PostgresStore, Pruned, PublicGroupState, RelayStore,
    Stock, StoreError, conformance,
};
use cove_test_utils::postgres::{PgCluster, PgDatabase, require_pg_bin};
use cove_wire::identity::ListEntry;
use cove_wire::{
    BackupSegment, BlobId, ClaimedKeyPackage, DeviceId, DeviceInfo, DeviceKey, GroupEntry, GroupId,
    GroupSummary, InboxEntry, NewBackupSegment, Seq, Stream, UserName,
};

/// Two nodes' stores on one database; each call goes to the next node in turn.
struct TwoNodes {
    nodes: [PostgresStore; 2],
    turn: AtomicUsize,
}

impl TwoNodes {
    fn node(&self) -> &PostgresStore {
        &self.nodes[self.turn.fetch_add(1, Ordering::Relaxed) % 2]
    }
}

fn two_nodes() -> (PgDatabase<'static>, TwoNodes) {
    let db = PgCluster::shared().database();
    let nodes = [
        PostgresStore::connect(db.url()).unwrap(),
        PostgresStore::connect(db.url()).unwrap(),
    ];
    (
        db,
        TwoNodes {
            nodes,
            turn: AtomicUsize::new(0),
        },
    )
}

cove_server::relay_store_conformance!(two_nodes_one_database, two_nodes);

impl RelayStore for TwoNodes {
    fn register_user(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.node().register_user(user, key)
    }
    fn add_device(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.node().add_device(user, key)
    }
    fn devices(&self, user: &UserName) -> Result<Vec<DeviceInfo>, StoreError> {
        self.node().devices(user)
    }
    fn device(&self, device: DeviceId) -> Result<Option<(UserName, DeviceKey)>, StoreError> {
        self.node().device(device)
    }
    fn record_seen(&self, device: DeviceId, now_ms: u64) -> Result<(), StoreError> {
        self.node().record_seen(device, now_ms)
    }
    fn last_seen(&self, user: &UserName) -> Result<Vec<(DeviceId, Option<u64>)>, StoreError> {
        self.node().last_seen(user)
    }
    fn upload_key_packages(
        &self,
        device: DeviceId,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Stock, StoreError> {
        self.node()
            .upload_key_packages(device, key_packages, last_resort)
    }
    fn claim_key_packages(&self, user: &UserName) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        self.node().claim_key_packages(user)
    }
    fn key_package_stock(&self, device: DeviceId) -> Result<Stock, StoreError> {
        self.node().key_package_stock(device)
    }
    fn create_group_with_state(
        &self,
        group: GroupId,
        creator: DeviceId,
        state: Option<PublicGroupState>,
    ) -> Result<(), StoreError> {
        self.node().create_group_with_state(group, creator, state)
    }
    fn public_state(&self, group: GroupId) -> Result<Option<PublicGroupState>, StoreError> {
        self.node().public_state(group)
    }
    fn leave_group(&self, group: GroupId, device: DeviceId) -> Result<(), StoreError> {
        self.node().leave_group(group, device)
    }
    fn is_member(&self, group: GroupId, device: DeviceId) -> Result<bool, StoreError> {
        self.node().is_member(group, device)
    }
    fn groups_of(&self, device: DeviceId) -> Result<Vec<GroupSummary>, StoreError> {
        self.node().groups_of(device)
    }
    fn append_batch(&self, posts: Vec<NewPost>) -> Vec<Result<Appended, StoreError>> {
        self.node().append_batch(posts)
    }
    fn read_group(
        &self,
        group: GroupId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        self.node().read_group(group, after, limit, max_bytes)
    }
    fn joined(&self, group: GroupId, device: DeviceId) -> Result<Option<Seq>, StoreError> {
        self.node().joined(group, device)
    }
    fn fetch(
        &self,
        group: GroupId,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        self.node().fetch(group, device, after, limit, max_bytes)
    }
    fn heads(
        &self,
        groups: &[GroupId],
        devices: &[DeviceId],
    ) -> Result<cove_server::store::Heads, StoreError> {
        self.node().heads(groups, devices)
    }
    fn departures(&self, device: DeviceId) -> Result<Vec<(GroupId, Seq)>, StoreError> {
        self.node().departures(device)
    }
    fn departure_cursor(
        &self,
        device: DeviceId,
        group: GroupId,
    ) -> Result<Option<Seq>, StoreError> {
        self.node().departure_cursor(device, group)
    }
    fn read_inbox(
        &self,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        self.node().read_inbox(device, after, limit, max_bytes)
    }
    fn cursor(&self, device: DeviceId, stream: Stream) -> Result<Seq, StoreError> {
        self.node().cursor(device, stream)
    }
    fn ack(&self, device: DeviceId, stream: Stream, seq: Seq) -> Result<(), StoreError> {
        self.node().ack(device, stream, seq)
    }
    fn device_list(&self, user: &UserName) -> Result<Vec<ListEntry>, StoreError> {
        self.node().device_list(user)
    }
    fn append_device_list(
        &self,
        user: &UserName,
        expected_len: u64,
        entries: Vec<ListEntry>,
    ) -> Result<u64, StoreError> {
        self.node().append_device_list(user, expected_len, entries)
    }
    fn create_account(&self, user: &UserName, account: Account) -> Result<(), StoreError> {
        self.node().create_account(user, account)
    }
    fn account(&self, user: &UserName) -> Result<Option<Account>, StoreError> {
        self.node().account(user)
    }
    fn replace_password(
        &self,
        user: &UserName,
        record: Vec<u8>,
        ksf_version: u8,
        password_bundle: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.node()
            .replace_password(user, record, ksf_version, password_bundle)
    }
    fn delete_user(&self, user: &UserName) -> Result<Vec<DeviceId>, StoreError> {
        self.node().delete_user(user)
    }
    fn append_backup_segment(
        &self,
        user: &UserName,
        segment: NewBackupSegment,
        caps: BackupCaps,
    ) -> Result<u64, StoreError> {
        self.node().append_backup_segment(user, segment, caps)
    }
    fn backup_segments(
        &self,
        user: &UserName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BackupSegment>, StoreError> {
        self.node().backup_segments(user, after, limit)
    }
    fn backup_holds_blob(&self, user: &UserName, blob: &BlobId) -> Result<bool, StoreError> {
        self.node().backup_holds_blob(user, blob)
    }
    fn delete_backup_index(&self, user: &UserName) -> Result<Vec<BlobId>, StoreError> {
        self.node().delete_backup_index(user)
    }
    fn prune(&self, now_ms: u64, max_age_ms: u64) -> Result<Pruned, StoreError> {
        self.node().prune(now_ms, max_age_ms)
    }
}

/// Runs `sql` on the database at `url` with the cluster's `psql`.
fn psql(url: &str, sql: &str) {
    let bin = require_pg_bin(cove_test_utils::postgres::pg_bin());
    let out = std::process::Command::new(bin.join("psql"))
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-d", url, "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nodes starting together on an empty database (a cluster's first start) all open it: one
/// migrates, the others wait for it and then find the schema current (before the fix, the
/// waiting nodes' serialisable snapshot, taken before the lock, did not see the new tables and
/// `CREATE TABLE` failed). Every node then sees the others' writes.
#[test]
fn nodes_starting_together_on_an_empty_database_all_open_it() {
    let db = PgCluster::shared().database();
    let url = db.url();
    let stores: Vec<PostgresStore> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(move || PostgresStore::connect(url)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("connect: {e}")))
            .collect()
    });
    let alice = conformance::device(&stores[0], "alice", 1);
    for store in &stores {
        assert_eq!(
            store.device(alice).unwrap(),
            Some((conformance::user("alice"), conformance::key(1)))
        );
    }
}

/// A database migrated by a newer relay (a higher schema version) is refused with
/// `Backend` naming both versions; this build's own version opens, with its data.
#[test]
fn a_database_of_a_newer_schema_is_refused_and_a_reopen_keeps_the_data() {
    let db = PgCluster::shared().database();
    let url = db.url();
    let alice = {
        let store = PostgresStore::connect(url).unwrap();
        conformance::device(&store, "alice", 1)
    };
    let store = PostgresStore::connect(url).unwrap();
    assert_eq!(
        store.device(alice).unwrap(),
        Some((conformance::user("alice"), conformance::key(1)))
    );
    drop(store);
    let ours = PostgresStore::schema_version();
    psql(
        url,
        &format!("UPDATE schema_version SET version = {}", ours + 1),
    );
    match PostgresStore::connect(url) {
        Err(StoreError::Backend(msg)) => assert_eq!(
            msg,
            format!(
                "database schema version {} is newer than this relay's {ours}",
                ours + 1
            )
        ),
        Err(other) => panic!("refused with {other:?}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

/// Without PostgreSQL's binaries the cluster helper fails the test, saying what to install.
#[test]
#[should_panic(expected = "PostgreSQL is not installed")]
fn without_postgresql_the_cluster_helper_fails_loudly() {
    require_pg_bin(None);
}
