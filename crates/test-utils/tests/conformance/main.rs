//! The `RelayStore` conformance suite run from outside `cove-server`, through its
//! `conformance` feature, the way a backend in another crate runs it: once against the
//! in-memory store, once against the SQLite store in a temporary directory and once against
//! the PostgreSQL store on a database of its own in a throwaway cluster
//! (`cove_test_utils::postgres`). Each case is a `#[test]` named `memory::<case>`,
//! `sqlite::<case>` or `postgres::<case>`. A deliberately broken backend
//! shows that the exposed suite can fail.

#![allow(clippy::unwrap_used)]

mod postgres_nodes;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use cove_server::store::{
    Appended, MemoryStore, NewPost, PostgresStore, PublicGroupState, RelayStore, SqliteStore,
    Stock, StoreError, conformance,
};
use cove_test_utils::postgres::{PgCluster, PgDatabase};
use cove_wire::identity::ListEntry;
use cove_wire::{
    ClaimedKeyPackage, DeviceId, DeviceInfo, DeviceKey, GroupEntry, GroupId, GroupSummary,
    InboxEntry, Seq, Stream, UserName,
};

/// A SQLite store in a fresh temporary directory, which lives as long as the test.
fn sqlite_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("relay.db")).unwrap();
    (dir, store)
}

cove_server::relay_store_conformance!(memory, || ((), MemoryStore::new()));
cove_server::relay_store_conformance!(sqlite, sqlite_store);

/// A PostgreSQL store on a fresh database (dropped after the test) of this process's
/// throwaway cluster (started on first use, stopped when the process ends).
fn postgres_store() -> (PgDatabase<'static>, PostgresStore) {
    let db = PgCluster::shared().database();
    let store = PostgresStore::connect(db.url()).unwrap();
    (db, store)
}

cove_server::relay_store_conformance!(postgres, postgres_store);

/// A backend that breaks one rule of the trait: an ack sets the cursor even when it is
/// older than the current one (the rule is "never backwards"). Everything else is the
/// memory store's.
struct BackwardsCursors {
    inner: MemoryStore,
    acked: Mutex<HashMap<(DeviceId, Stream), Seq>>,
}

impl RelayStore for BackwardsCursors {
    fn create_account(
        &self,
        user: &UserName,
        account: cove_server::store::Account,
    ) -> Result<(), StoreError> {
        self.inner.create_account(user, account)
    }
    fn account(&self, user: &UserName) -> Result<Option<cove_server::store::Account>, StoreError> {
        self.inner.account(user)
    }
    fn replace_password(
        &self,
        user: &UserName,
        record: Vec<u8>,
        ksf_version: u8,
        password_bundle: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.inner
            .replace_password(user, record, ksf_version, password_bundle)
    }
    fn delete_user(&self, user: &UserName) -> Result<Vec<DeviceId>, StoreError> {
        self.inner.delete_user(user)
    }
    fn append_backup_segment(
        &self,
        user: &UserName,
        segment: cove_wire::NewBackupSegment,
        caps: cove_server::store::BackupCaps,
    ) -> Result<u64, StoreError> {
        self.inner.append_backup_segment(user, segment, caps)
    }
    fn backup_segments(
        &self,
        user: &UserName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<cove_wire::BackupSegment>, StoreError> {
        self.inner.backup_segments(user, after, limit)
    }
    fn backup_holds_blob(
        &self,
        user: &UserName,
        blob: &cove_wire::BlobId,
    ) -> Result<bool, StoreError> {
        self.inner.backup_holds_blob(user, blob)
    }
    fn delete_backup_index(&self, user: &UserName) -> Result<Vec<cove_wire::BlobId>, StoreError> {
        self.inner.delete_backup_index(user)
    }
    fn register_user(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.inner.register_user(user, key)
    }
    fn add_device(&self, user: &UserName, key: &DeviceKey) -> Result<DeviceId, StoreError> {
        self.inner.add_device(user, key)
    }
    fn devices(&self, user: &UserName) -> Result<Vec<DeviceInfo>, StoreError> {
        self.inner.devices(user)
    }
    fn device(&self, device: DeviceId) -> Result<Option<(UserName, DeviceKey)>, StoreError> {
        self.inner.device(device)
    }
    fn record_seen(&self, device: DeviceId, now_ms: u64) -> Result<(), StoreError> {
        self.inner.record_seen(device, now_ms)
    }
    fn last_seen(&self, user: &UserName) -> Result<Vec<(DeviceId, Option<u64>)>, StoreError> {
        self.inner.last_seen(user)
    }
    fn device_list(&self, user: &UserName) -> Result<Vec<ListEntry>, StoreError> {
        self.inner.device_list(user)
    }
    fn append_device_list(
        &self,
        user: &UserName,
        expected_len: u64,
        entries: Vec<ListEntry>,
    ) -> Result<u64, StoreError> {
        self.inner.append_device_list(user, expected_len, entries)
    }
    fn upload_key_packages(
        &self,
        device: DeviceId,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Stock, StoreError> {
        self.inner
            .upload_key_packages(device, key_packages, last_resort)
    }
    fn claim_key_packages(&self, user: &UserName) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        self.inner.claim_key_packages(user)
    }
    fn key_package_stock(&self, device: DeviceId) -> Result<Stock, StoreError> {
        self.inner.key_package_stock(device)
    }
    fn create_group_with_state(
        &self,
        group: GroupId,
        creator: DeviceId,
        state: Option<PublicGroupState>,
    ) -> Result<(), StoreError> {
        self.inner.create_group_with_state(group, creator, state)
    }
    fn public_state(&self, group: GroupId) -> Result<Option<PublicGroupState>, StoreError> {
        self.inner.public_state(group)
    }
    fn leave_group(&self, group: GroupId, device: DeviceId) -> Result<(), StoreError> {
        self.inner.leave_group(group, device)
    }
    fn is_member(&self, group: GroupId, device: DeviceId) -> Result<bool, StoreError> {
        self.inner.is_member(group, device)
    }
    fn groups_of(&self, device: DeviceId) -> Result<Vec<GroupSummary>, StoreError> {
        self.inner.groups_of(device)
    }
    fn append_batch(&self, posts: Vec<NewPost>) -> Vec<Result<Appended, StoreError>> {
        self.inner.append_batch(posts)
    }
    fn read_group(
        &self,
        group: GroupId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        self.inner.read_group(group, after, limit, max_bytes)
    }
    fn joined(&self, group: GroupId, device: DeviceId) -> Result<Option<Seq>, StoreError> {
        self.inner.joined(group, device)
    }
    fn heads(
        &self,
        groups: &[GroupId],
        devices: &[DeviceId],
    ) -> Result<cove_server::store::Heads, StoreError> {
        self.inner.heads(groups, devices)
    }
    fn departures(&self, device: DeviceId) -> Result<Vec<(GroupId, Seq)>, StoreError> {
        self.inner.departures(device)
    }
    fn departure_cursor(
        &self,
        device: DeviceId,
        group: GroupId,
    ) -> Result<Option<Seq>, StoreError> {
        self.inner.departure_cursor(device, group)
    }
    fn read_inbox(
        &self,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        self.inner.read_inbox(device, after, limit, max_bytes)
    }
    fn cursor(&self, device: DeviceId, stream: Stream) -> Result<Seq, StoreError> {
        let real = self.inner.cursor(device, stream)?;
        let acked = self.acked.lock().unwrap().get(&(device, stream)).copied();
        Ok(acked.unwrap_or(real))
    }
    fn ack(&self, device: DeviceId, stream: Stream, seq: Seq) -> Result<(), StoreError> {
        self.inner.ack(device, stream, seq)?;
        self.acked.lock().unwrap().insert((device, stream), seq);
        Ok(())
    }
    fn prune(
        &self,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<cove_server::store::Pruned, StoreError> {
        self.inner.prune(now_ms, max_age_ms)
    }
}

/// The exposed suite fails a broken backend from outside the crate: a store whose acks move
/// a cursor backwards fails `cursors_move_forward_only` at its "never backwards" assertion.
#[test]
fn a_backend_moving_cursors_backwards_fails_the_suite() {
    let store = BackwardsCursors {
        inner: MemoryStore::new(),
        acked: Mutex::new(HashMap::new()),
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        conformance::cursors_move_forward_only(&store);
    }));
    let payload = outcome.expect_err("the suite must reject this backend");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains("never backwards"),
        "failed elsewhere: {message}"
    );
}
