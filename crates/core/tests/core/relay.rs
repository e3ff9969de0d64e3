//! The network the core tests run on: the relay core of `cove-server`
//! (`cove_test_utils::sim::Relay`, over the in-memory `RelayStore`) behind a thin layer of
//! test hooks, and a network of clients driven step by step, without sockets. Shared with
//! `benches/mls.rs`.
//!
//! The layer never decides what the relay does; it only plays a hostile or unlucky relay
//! around the real one: it rewrites directory replies (`tampered_keys`), refuses posts with
//! `RateLimited` before the relay sees them, posts bytes as a member would (`inject`),
//! counts what the store accepted and refused (a decorator of the store), and sets up or
//! inspects the store directly.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cove_core::cove_store::Store;
use cove_core::{Client, Event, Output};
use cove_server::store::{
    Appended, MemoryStore, NewPost, PublicGroupState, RelayStore, Stock, StoreError,
};
use cove_test_utils::sim;
use cove_wire::limits::MAX_FETCH_ENTRIES;
use cove_wire::sign::ChannelBinding;
use cove_wire::{
    ClaimedKeyPackage, ClientFrame, DeviceId, DeviceInfo, DeviceKey, Epoch, ErrorCode, ErrorReply,
    GroupEntry, GroupId, GroupSummary, InboxEntry, Payload, PostKind, Reply, Request, Seq,
    ServerFrame, Stream, UserName,
};

/// What the store accepted and refused, counted by [`Counting`].
#[derive(Default)]
struct Counts {
    /// Application messages stored (a repeated post the relay answers with the original
    /// seq is not stored again, so it does not count).
    app_posts: AtomicUsize,
    /// Commits refused with StaleEpoch.
    stale_commits: AtomicUsize,
    /// Application messages and proposals refused with StaleEpoch.
    stale_app: AtomicUsize,
    /// Device-list appends stored.
    list_appends: AtomicUsize,
}

/// The in-memory store, counting what `append_batch` does; every call goes to it unchanged.
struct Counting {
    inner: MemoryStore,
    counts: Arc<Counts>,
}

impl RelayStore for Counting {
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
    fn device_list(
        &self,
        user: &UserName,
    ) -> Result<Vec<cove_wire::identity::ListEntry>, StoreError> {
        self.inner.device_list(user)
    }
    fn append_device_list(
        &self,
        user: &UserName,
        expected_len: u64,
        entries: Vec<cove_wire::identity::ListEntry>,
    ) -> Result<u64, StoreError> {
        let len = self.inner.append_device_list(user, expected_len, entries)?;
        self.counts.list_appends.fetch_add(1, Ordering::Relaxed);
        Ok(len)
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
        let commits: Vec<bool> = posts
            .iter()
            .map(|p| matches!(p.kind, PostKind::Commit { .. }))
            .collect();
        let results = self.inner.append_batch(posts);
        for (commit, result) in commits.into_iter().zip(&results) {
            let counter = match (commit, result) {
                (false, Ok(a)) if matches!(a.entry.kind, cove_wire::EntryKind::Application) => {
                    &self.counts.app_posts
                }
                (true, Err(StoreError::StaleEpoch { .. })) => &self.counts.stale_commits,
                (false, Err(StoreError::StaleEpoch { .. })) => &self.counts.stale_app,
                _ => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        results
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
    fn fetch(
        &self,
        group: GroupId,
        device: DeviceId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<GroupEntry>, StoreError> {
        self.inner.fetch(group, device, after, limit, max_bytes)
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
        self.inner.cursor(device, stream)
    }
    fn ack(&self, device: DeviceId, stream: Stream, seq: Seq) -> Result<(), StoreError> {
        self.inner.ack(device, stream, seq)
    }
    fn try_ack_buffered(
        &self,
        device: DeviceId,
        stream: Stream,
        seq: Seq,
    ) -> Option<Result<(), StoreError>> {
        self.inner.try_ack_buffered(device, stream, seq)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn prune(
        &self,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<cove_server::store::Pruned, StoreError> {
        self.inner.prune(now_ms, max_age_ms)
    }
}

/// The relay core with test hooks around it.
pub struct Relay {
    sim: sim::Relay,
    counts: Arc<Counts>,
    /// Test hook: the directory presents these keys instead of the registered ones.
    pub tampered_keys: HashMap<DeviceId, DeviceKey>,
    /// Test hook: `FetchDeviceList` of these users is answered with these entries instead
    /// of the stored list (a relay that lies, or a user who started over with a new
    /// identity key, as far as other clients can tell).
    pub served_lists: HashMap<UserName, Vec<cove_wire::identity::ListEntry>>,
    /// Test hook: inbox positions up to this one were made up for the device (a replayed
    /// entry delivered under a new seq); being the relay that made them up, it answers
    /// their acks with `Acked` instead of refusing them as past the inbox's end.
    pub fabricated_inbox: HashMap<DeviceId, Seq>,
    /// How many commits the relay refused with StaleEpoch.
    pub stale_rejections: usize,
    /// Test hook: refuse this many application posts of members with `RateLimited` (retry
    /// after `rate_limit_retry_ms`) before passing them on again.
    pub rate_limit_posts: usize,
    pub rate_limit_retry_ms: Option<u32>,
    /// Application posts the relay stored in a group log.
    pub app_posts: usize,
    /// Application posts and proposals the relay refused with StaleEpoch (an application
    /// message is accepted in the group's current epoch or the one just before it).
    pub stale_app_rejections: usize,
    /// Every group ack received, in order: the sender's slot and whether it was a
    /// `QuietAck` (else an answered `Ack`).
    pub group_acks: Vec<(usize, bool)>,
}

impl Default for Relay {
    fn default() -> Self {
        let counts = Arc::new(Counts::default());
        let store = Counting {
            inner: MemoryStore::new(),
            counts: Arc::clone(&counts),
        };
        Relay {
            sim: sim::Relay::with_store(Arc::new(store)),
            counts,
            tampered_keys: HashMap::new(),
            served_lists: HashMap::new(),
            fabricated_inbox: HashMap::new(),
            stale_rejections: 0,
            rate_limit_posts: 0,
            rate_limit_retry_ms: None,
            app_posts: 0,
            stale_app_rejections: 0,
            group_acks: Vec::new(),
        }
    }
}

impl Relay {
    /// A connection opens in `slot`: returns the challenge.
    pub fn connect(&mut self, slot: usize) -> ServerFrame {
        self.sim.connect(slot)
    }

    /// The channel binding of the connection last opened in `slot`.
    pub fn channel(&self, slot: usize) -> ChannelBinding {
        self.sim
            .channel(slot)
            .expect("a connection was opened in this slot")
    }

    pub fn disconnect(&mut self, slot: usize) {
        self.sim.disconnect(slot);
    }

    pub fn store(&self) -> &dyn RelayStore {
        self.sim.store()
    }

    /// Copies the store's counts into the public counters.
    fn count(&mut self) {
        self.app_posts = self.counts.app_posts.load(Ordering::Relaxed);
        self.stale_rejections = self.counts.stale_commits.load(Ordering::Relaxed);
        self.stale_app_rejections = self.counts.stale_app.load(Ordering::Relaxed);
    }

    /// Handles one frame; returns frames per slot (the response first).
    pub fn handle(
        &mut self,
        slot: usize,
        frame: ClientFrame,
        now_ms: u64,
    ) -> Vec<(usize, ServerFrame)> {
        let ClientFrame::Request { id, body } = &frame;
        match body {
            Request::Ack {
                stream: Stream::Group(_),
                ..
            } => self.group_acks.push((slot, false)),
            Request::QuietAck {
                stream: Stream::Group(_),
                ..
            } => self.group_acks.push((slot, true)),
            _ => {}
        }
        if let Request::Post {
            group,
            kind: PostKind::Application,
            ..
        } = body
            && self.rate_limit_posts > 0
            && self
                .sim
                .device(slot)
                .is_some_and(|d| matches!(self.store().is_member(*group, d), Ok(true)))
        {
            self.rate_limit_posts -= 1;
            let mut e = ErrorReply::new(ErrorCode::RateLimited, "test hook: rate limited");
            e.retry_after_ms = self.rate_limit_retry_ms;
            return vec![(
                slot,
                ServerFrame::Response {
                    id: *id,
                    result: Err(e),
                },
            )];
        }
        if let Request::Ack {
            stream: Stream::Inbox,
            seq,
        } = body
            && let Some(device) = self.sim.device(slot)
            && self.fabricated_inbox.get(&device).is_some_and(|f| seq <= f)
            && self.inbox_of(device).last().is_none_or(|e| e.seq < *seq)
        {
            return vec![(
                slot,
                ServerFrame::Response {
                    id: *id,
                    result: Ok(Reply::Acked),
                },
            )];
        }
        let directory = matches!(body, Request::ListDevices { .. });
        let served = match body {
            Request::FetchDeviceList { user } => self.served_lists.get(user).cloned(),
            _ => None,
        };
        let mut frames = self.sim.handle(slot, frame, now_ms);
        self.count();
        if let Some(served) = served
            && let Some((
                _,
                ServerFrame::Response {
                    result: Ok(Reply::DeviceList { entries }),
                    ..
                },
            )) = frames.first_mut()
        {
            entries.0 = served;
        }
        if directory
            && let Some((
                _,
                ServerFrame::Response {
                    result: Ok(Reply::Devices { devices, .. }),
                    ..
                },
            )) = frames.first_mut()
        {
            for d in devices.0.iter_mut() {
                if let Some(k) = self.tampered_keys.get(&d.device) {
                    d.key = *k;
                }
            }
        }
        frames
    }

    /// Registers a user with one device directly (benchmark setup for members that are not
    /// full clients).
    pub fn register_raw(&mut self, user: UserName, key: DeviceKey) -> DeviceId {
        self.store()
            .register_user(&user, &key)
            .expect("register at the relay")
    }

    /// Adds a device to an existing user's account directly (what a hostile relay can do
    /// to its own directory).
    pub fn add_device_raw(&mut self, user: UserName, key: DeviceKey) -> DeviceId {
        self.store()
            .add_device(&user, &key)
            .expect("add a device at the relay")
    }

    /// Stores a KeyPackage for a device directly.
    pub fn upload_raw(&mut self, device: DeviceId, key_package: Payload) {
        self.store()
            .upload_key_packages(device, vec![key_package.into_vec()], None)
            .expect("upload a KeyPackage");
    }

    /// A device's inbox (for members driven by bare openmls in tests).
    /// `user`'s device list as the relay stores it.
    pub fn device_list_of(&self, user: &UserName) -> Vec<cove_wire::identity::ListEntry> {
        self.store().device_list(user).unwrap_or_default()
    }

    /// How many device-list appends the relay stored.
    pub fn device_list_appends(&self) -> usize {
        self.counts.list_appends.load(Ordering::Relaxed)
    }

    pub fn inbox_of(&self, device: DeviceId) -> Vec<InboxEntry> {
        self.store()
            .read_inbox(device, Seq(0), MAX_FETCH_ENTRIES, usize::MAX)
            .unwrap_or_default()
    }

    /// Takes away a device's normal KeyPackages by claiming them as others would (claims
    /// take one KeyPackage of each device of the user); returns how many there were. Its
    /// last-resort KeyPackage stays.
    pub fn drain_stock(&mut self, device: DeviceId) -> usize {
        let Ok(Some((user, _))) = self.store().device(device) else {
            return 0;
        };
        let mut drained = 0;
        while self.stock(device) > 0 {
            let claimed = self.store().claim_key_packages(&user).unwrap_or_default();
            let normal = claimed.iter().any(|c| c.device == device && !c.last_resort);
            if !normal {
                break;
            }
            drained += 1;
        }
        drained
    }

    /// Normal KeyPackages a device has on file.
    pub fn stock(&self, device: DeviceId) -> usize {
        self.store()
            .key_package_stock(device)
            .map(|s| s.remaining as usize)
            .unwrap_or(0)
    }

    /// The group acks `slot` sent so far: (quiet, answered).
    pub fn group_acks_of(&self, slot: usize) -> (usize, usize) {
        let mine = self.group_acks.iter().filter(|(s, _)| *s == slot);
        let quiet = mine.clone().filter(|(_, quiet)| *quiet).count();
        (quiet, mine.count() - quiet)
    }

    /// The cursor of a device in a stream (for assertions).
    pub fn cursor(&self, device: DeviceId, stream: Stream) -> Seq {
        self.store().cursor(device, stream).unwrap_or_default()
    }

    /// Test hook: a relay that loses removals (as the relay did before it kept departure
    /// records): acks, on the device's behalf, each removal commit it has not acked, so its
    /// next backlog starts after them. Returns how many there were.
    pub fn forget_departures(&mut self, device: DeviceId) -> usize {
        let departures = self.store().departures(device).expect("departures");
        for (group, removed_at) in &departures {
            self.store()
                .ack(device, Stream::Group(*group), *removed_at)
                .expect("ack the removal");
        }
        departures.len()
    }

    /// Stores `entries` as `user`'s device list directly (a user driven by bare openmls
    /// in tests publishes its list so).
    pub fn publish_list_raw(
        &mut self,
        user: &UserName,
        entries: Vec<cove_wire::identity::ListEntry>,
    ) {
        let len = self.device_list_of(user).len() as u64;
        self.store()
            .append_device_list(user, len, entries)
            .expect("append to the device list");
    }

    /// Turns the relay's handshake validation on or off (off: the tests are about what the
    /// clients themselves refuse, as against a relay that does not validate).
    pub fn set_validate_handshakes(&mut self, on: bool) {
        self.sim.set_validate_handshakes(on);
    }

    /// Creates `group` at the relay with `creator` as its only member (a member driven by
    /// bare openmls in tests).
    ///
    /// Such a group has no public MLS state at the relay, and the hostile posts that follow
    /// ([`Relay::post_raw`]) are bytes a validating relay would refuse: this turns the
    /// relay's handshake validation off, as these tests are about the clients' own defences
    /// (against a relay that does not validate, or a member it could not judge).
    pub fn create_group_raw(&mut self, group: GroupId, creator: DeviceId) {
        self.sim.set_validate_handshakes(false);
        self.store()
            .create_group(group, creator)
            .expect("create the group");
    }

    /// Posts `payload` as `kind` from `sender` at the group's current epoch, through the
    /// relay's rules; returns what its online members receive.
    pub fn post_raw(
        &mut self,
        group: GroupId,
        sender: DeviceId,
        kind: PostKind,
        payload: Vec<u8>,
        now_ms: u64,
    ) -> Vec<(usize, ServerFrame)> {
        let epoch: Epoch = self
            .store()
            .groups_of(sender)
            .expect("groups of the sender")
            .into_iter()
            .find(|g| g.group == group)
            .expect("the sender is a member")
            .epoch;
        let (reply, frames) = self.sim.append(NewPost {
            group,
            sender,
            epoch,
            kind,
            payload,
            now_ms,
            public_state: None,
        });
        self.count();
        assert!(
            matches!(reply, Ok(Reply::Posted { .. })),
            "the relay refused the post: {reply:?}"
        );
        frames
    }

    /// Posts `payload` as an application message of `sender`, a member of `group`, at the
    /// group's current epoch, through the relay's rules (a hostile member can post any
    /// bytes); returns what its online members receive.
    pub fn inject(
        &mut self,
        group: GroupId,
        sender: DeviceId,
        payload: Vec<u8>,
        now_ms: u64,
    ) -> Vec<(usize, ServerFrame)> {
        let epoch: Epoch = self
            .store()
            .groups_of(sender)
            .expect("groups of the sender")
            .into_iter()
            .find(|g| g.group == group)
            .expect("the sender is a member")
            .epoch;
        let (reply, frames) = self.sim.append(NewPost {
            group,
            sender,
            epoch,
            kind: PostKind::Application,
            payload,
            now_ms,
            public_state: None,
        });
        self.count();
        assert!(
            matches!(reply, Ok(Reply::Posted { .. })),
            "the relay refused the injected entry: {reply:?}"
        );
        frames
    }
}

/// One simulated device.
pub struct Node<S: Store> {
    pub client: Option<Client<S>>,
    pub inbound: VecDeque<ServerFrame>,
    pub events: Vec<Event>,
    pub connected: bool,
    /// While true, inbound frames are kept, not handed to the client.
    pub hold: bool,
    /// While true, neither the end of a burst of inbound frames (`Client::end_of_burst`)
    /// nor the network going idle (`Client::flush_acks`) is reported to the client: its
    /// acks wait for the timer.
    pub hold_acks: bool,
    /// Errors of `Client::handle_frame`, collected when `expect_handle_errors` is set (a
    /// test that provokes them); otherwise the first one stops the test.
    pub handle_errors: Vec<String>,
    pub expect_handle_errors: bool,
}

/// Relay plus devices; time advances 1 ms per step.
pub struct Net<S: Store> {
    pub relay: Relay,
    pub nodes: Vec<Node<S>>,
    pub now_ms: u64,
}

impl<S: Store> Net<S> {
    pub fn new() -> Self {
        Net {
            relay: Relay::default(),
            nodes: Vec::new(),
            now_ms: 1_700_000_000_000,
        }
    }

    /// Adds a device and connects it; returns its slot.
    pub fn add(&mut self, client: Client<S>) -> usize {
        self.nodes.push(Node {
            client: Some(client),
            inbound: VecDeque::new(),
            events: Vec::new(),
            connected: false,
            hold: false,
            hold_acks: false,
            handle_errors: Vec::new(),
            expect_handle_errors: false,
        });
        let slot = self.nodes.len() - 1;
        self.connect(slot);
        slot
    }

    pub fn connect(&mut self, slot: usize) {
        let ch = self.relay.connect(slot);
        let channel = self.relay.channel(slot);
        let node = &mut self.nodes[slot];
        node.connected = true;
        node.inbound.clear();
        if let Some(c) = node.client.as_mut() {
            c.handle_connected(self.now_ms, channel);
        }
        node.inbound.push_back(ch);
    }

    pub fn disconnect(&mut self, slot: usize) {
        self.relay.disconnect(slot);
        let node = &mut self.nodes[slot];
        node.connected = false;
        node.inbound.clear();
        if let Some(c) = node.client.as_mut() {
            c.handle_disconnected();
        }
    }

    pub fn client(&mut self, slot: usize) -> &mut Client<S> {
        self.nodes[slot].client.as_mut().expect("client present")
    }

    /// Runs until nothing moves. Each time the network settles, the connected devices
    /// are idle and send the acks they hold back (`Client::flush_acks`, standing in for
    /// the core's idle timer, which would fire a moment later), then it runs on.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            if !self.step() && !self.idle() {
                return;
            }
        }
        panic!("network did not settle");
    }

    /// The network settled: every connected device that is not holding its frames or its
    /// acks sends the acks it holds back; then one step. Whether anything moved.
    pub fn idle(&mut self) -> bool {
        for node in &mut self.nodes {
            if node.hold || node.hold_acks || !node.connected {
                continue;
            }
            if let Some(client) = node.client.as_mut() {
                client.flush_acks();
            }
        }
        self.step()
    }

    /// One round: every node handles its inbound frames, its outputs go to the relay.
    pub fn step(&mut self) -> bool {
        let mut moved = false;
        self.now_ms += 1;
        for slot in 0..self.nodes.len() {
            let now = self.now_ms;
            let node = &mut self.nodes[slot];
            let Some(client) = node.client.as_mut() else {
                continue;
            };
            if !node.hold {
                while let Some(f) = node.inbound.pop_front() {
                    moved = true;
                    if let Err(e) = client.handle_frame(now, f) {
                        // A frame the client refuses outright is a protocol failure: only
                        // a test that provokes one expects it.
                        assert!(node.expect_handle_errors, "slot {slot}: handle error: {e}");
                        node.handle_errors.push(e.to_string());
                    }
                }
                // Every frame this node had is handled: the end of its burst, as a shell
                // reports it (acks once enough are unacked).
                if !node.hold_acks {
                    client.end_of_burst();
                }
            }
            let mut sends = Vec::new();
            while let Some(o) = client.poll_output() {
                moved = true;
                match o {
                    Output::Send(f) => sends.push(f),
                    Output::Event(e) => node.events.push(e),
                }
            }
            if node.connected {
                for f in sends {
                    for (s, sf) in self.relay.handle(slot, f, now) {
                        if self.nodes[s].connected {
                            self.nodes[s].inbound.push_back(sf);
                        }
                    }
                }
            }
        }
        moved
    }

    /// Delivers frames produced outside the normal flow.
    pub fn deliver(&mut self, frames: Vec<(usize, ServerFrame)>) {
        for (s, f) in frames {
            if self.nodes[s].connected {
                self.nodes[s].inbound.push_back(f);
            }
        }
    }

    pub fn take_events(&mut self, slot: usize) -> Vec<Event> {
        std::mem::take(&mut self.nodes[slot].events)
    }
}
