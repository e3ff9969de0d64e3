//! Who is online, and how frames reach them.
//!
//! Each authenticated connection has an [`Outbox`]: a bounded queue of encoded frames that
//! its writer task drains, and a close signal. The [`Hub`] maps each online device to its
//! outbox. A device is first *syncing* (its backlog is being read from the store; live
//! entries wait in a bounded pending list) and then *live* (entries go straight into its
//! queue). The post writer fans each accepted entry out through [`Hub::fanout`], holding
//! the hub's lock once per batch; the frame is encoded once and shared (`Bytes`), so a
//! delivery to one more device costs a map look-up and a queue push. A run of entries that
//! go to the same devices (a burst of posts to one group) is queued as one shared list of
//! frames ([`Queued::Run`]): one look-up, one byte reservation and one queue push per device
//! for the whole run.
//!
//! A full queue means the device does not read fast enough: the connection is closed with
//! `Closing { SlowReader }` and its entries stay in the store for the next connection.
//!
//! **Cluster mode** (a bus between relay nodes, [`crate::bus`]): entries reach a node from
//! its own post writer and from other nodes' notices, in no guaranteed order between the
//! two, and a notice can be lost. A live device then remembers the last seq pushed per
//! stream (its *positions*, from the backlog's `sent`). An entry at or below it is skipped,
//! the next one is pushed, and anything else (a gap, a stream it has no position for, an
//! entry announced without its frame) puts the device back to syncing with the entry
//! pending and asks for its backlog to be read again ([`ClusterLink::resync`]); that
//! backlog ends in [`Hub::go_live`] as the first one does. A single node keeps the plain
//! path: no positions, no checks.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cove_wire::{DeviceId, ErrorCode, Seq, Stream, UserName};
use tokio::sync::{Semaphore, mpsc, watch};

/// Why a connection is being closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Tell the device why with a `Closing { code }` frame, then close.
    Code(ErrorCode),
    /// The peer went away or the transport failed: just close.
    Quiet,
}

/// What a connection's queue holds: one encoded frame, or a run of frames shared by every
/// device that gets them (written in order).
#[derive(Clone, Debug)]
pub(crate) enum Queued {
    /// One frame (an empty one only wakes the writer).
    One(Bytes),
    /// Frames written one after the other.
    Run(Arc<[Bytes]>),
}

impl Queued {
    /// The bytes the frames hold (what the queue's byte budget counts).
    pub fn byte_len(&self) -> usize {
        match self {
            Queued::One(frame) => frame.len(),
            Queued::Run(frames) => frames.iter().map(Bytes::len).sum(),
        }
    }
}

/// One connection's outgoing side, shared by its tasks, the hub and the post writer. The
/// queue is bounded twice: in entries (the channel; a run of frames is one entry) and in
/// bytes (a semaphore of bytes whose permits the writer task gives back as it takes frames
/// out).
pub(crate) struct Outbox {
    /// Unique per connection (displacement and unregistering compare it).
    pub conn_id: u64,
    /// When it was opened (ms since the Unix epoch): a displacement from another relay node
    /// closes only connections opened at or before the displacing one.
    pub opened_ms: u64,
    queue: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    /// The byte budget when empty.
    capacity: usize,
    close: watch::Sender<Option<CloseReason>>,
}

/// The writer task's end of an [`Outbox`].
pub(crate) struct OutboxReceiver {
    /// Queued frames.
    pub frames: mpsc::Receiver<Queued>,
    /// Byte budget to give back as frames are taken out (the writer adds each frame's length back).
    pub bytes: Arc<Semaphore>,
    /// The close signal.
    pub close: watch::Receiver<Option<CloseReason>>,
}

impl Outbox {
    /// A new outbox holding at most `frames` frames and `bytes` bytes.
    pub fn new(conn_id: u64, frames: usize, bytes: usize) -> (Arc<Outbox>, OutboxReceiver) {
        let (queue, rx) = mpsc::channel(frames.max(1));
        let (close, close_rx) = watch::channel(None);
        let capacity = bytes.min(Semaphore::MAX_PERMITS);
        let budget = Arc::new(Semaphore::new(capacity));
        let opened_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let outbox = Outbox {
            conn_id,
            opened_ms,
            queue,
            bytes: Arc::clone(&budget),
            capacity,
            close,
        };
        let receiver = OutboxReceiver {
            frames: rx,
            bytes: budget,
            close: close_rx,
        };
        (Arc::new(outbox), receiver)
    }

    /// Bytes queued and not yet taken out by the writer task.
    pub fn queued_bytes(&self) -> usize {
        self.capacity.saturating_sub(self.bytes.available_permits())
    }

    /// Queues a frame without waiting. A full queue (frames or bytes) closes the connection
    /// as a slow reader (and returns false); so does a connection already closing.
    pub fn push(&self, frame: Bytes) -> bool {
        let len = frame.len();
        self.push_queued(Queued::One(frame), len)
    }

    /// Queues a run of frames holding `len` bytes in all, like [`Outbox::push`].
    pub fn push_run(&self, frames: &Arc<[Bytes]>, len: usize) -> bool {
        self.push_queued(Queued::Run(Arc::clone(frames)), len)
    }

    fn push_queued(&self, queued: Queued, len: usize) -> bool {
        let Ok(len) = u32::try_from(len) else {
            return false;
        };
        match self.bytes.try_acquire_many(len) {
            Ok(permit) => permit.forget(),
            Err(_) => {
                self.close(CloseReason::Code(ErrorCode::SlowReader));
                return false;
            }
        }
        match self.queue.try_send(queued) {
            Ok(()) => true,
            Err(e) => {
                self.bytes.add_permits(e.into_inner().byte_len());
                if !self.queue.is_closed() {
                    self.close(CloseReason::Code(ErrorCode::SlowReader));
                }
                false
            }
        }
    }

    /// Queues a frame, waiting for room (backlog pushes). Returns false once the
    /// connection is closing.
    pub async fn send(&self, frame: Bytes) -> bool {
        let mut closed = self.close.subscribe();
        if closed.borrow().is_some() {
            return false;
        }
        let Ok(len) = u32::try_from(frame.len()) else {
            return false;
        };
        let queued = async {
            self.bytes.acquire_many(len).await.map_err(|_| ())?.forget();
            if let Err(e) = self.queue.send(Queued::One(frame)).await {
                self.bytes.add_permits(e.0.byte_len());
                return Err(());
            }
            Ok(())
        };
        tokio::select! {
            r = queued => r.is_ok(),
            _ = closed.changed() => false,
        }
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let first = self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
        if first {
            // Wake an idle writer through its queue (an empty frame is never written), so its
            // idle wait need not watch the close signal. A full queue means it is busy and
            // checks the signal before its next batch.
            let _ = self.queue.try_send(Queued::One(Bytes::new()));
        }
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.close.borrow().is_some()
    }
}

/// A live entry that arrived while the device's backlog was being read.
struct Pending {
    stream: Stream,
    seq: Seq,
    /// `None` for an entry another node announced without its frame (cluster mode): the
    /// device's backlog must read it.
    frame: Option<Bytes>,
}

/// The last seq pushed to a live device per stream (cluster mode; empty otherwise).
type Positions = HashMap<Stream, Seq>;

enum Presence {
    Syncing {
        outbox: Arc<Outbox>,
        pending: Vec<Pending>,
    },
    Live {
        outbox: Arc<Outbox>,
        positions: Positions,
    },
}

impl Presence {
    fn outbox(&self) -> &Arc<Outbox> {
        match self {
            Presence::Syncing { outbox, .. } | Presence::Live { outbox, .. } => outbox,
        }
    }
}

/// What the hub needs in cluster mode (see the module docs).
pub(crate) struct ClusterLink {
    /// Devices (and the connection) whose backlog must be read again; the bus's resync
    /// task reads them.
    pub resync: mpsc::UnboundedSender<(DeviceId, Arc<Outbox>)>,
    /// Where closes that other nodes must apply too are published.
    pub publisher: crate::bus::Publisher,
}

/// Where an entry stands against a live device's position in its stream.
enum Admit {
    /// At or below the position: already pushed.
    Skip,
    /// The next one.
    Next,
    /// Past the next one, or a stream without a position.
    Gap,
}

fn admit(positions: &Positions, stream: Stream, seq: Seq) -> Admit {
    match positions.get(&stream) {
        Some(last) if seq <= *last => Admit::Skip,
        Some(last) if last.0.checked_add(1) == Some(seq.0) => Admit::Next,
        _ => Admit::Gap,
    }
}

/// Device ids are small relay-assigned integers: hash them with one multiplication.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<DeviceId, V, BuildHasherDefault<IdHasher>>;

/// The online map and the per-device rate limiters.
pub(crate) struct Hub {
    online: Mutex<IdMap<Presence>>,
    buckets: Mutex<IdMap<Buckets>>,
    /// KeyPackage claims per target user (RFC 9420 16.8: one burst of claims, from however
    /// many claimers, must not drain a user's KeyPackages).
    target_claims: Mutex<HashMap<UserName, TokenBucket>>,
    next_conn: AtomicU64,
    pending_cap: usize,
    rates: Rates,
    /// Entries queued to device connections (`/metrics`), added once per fan-out batch.
    deliveries: AtomicU64,
    /// Cluster mode: ordering and gap repair, closes published to other nodes.
    cluster: Option<ClusterLink>,
    /// Backlog re-reads asked for (`/metrics`, cluster mode).
    resyncs: AtomicU64,
}

/// Token-bucket parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rates {
    /// Requests per second.
    pub requests_per_second: f64,
    /// Request burst.
    pub request_burst: f64,
    /// Claims per second.
    pub claims_per_second: f64,
    /// Claim burst.
    pub claim_burst: f64,
    /// Claims per second on one target user (from all claimers together).
    pub target_claims_per_second: f64,
    /// Claim burst on one target user.
    pub target_claim_burst: f64,
}

/// Target users whose claim buckets the hub tracks before it forgets the full ones (a full
/// bucket is the same as none).
const MAX_TRACKED_TARGETS: usize = 100_000;

struct Buckets {
    requests: TokenBucket,
    claims: TokenBucket,
}

impl Hub {
    /// An empty hub; `pending_cap` bounds the live entries held for a syncing device.
    pub fn new(pending_cap: usize, rates: Rates) -> Self {
        Hub {
            online: Mutex::new(IdMap::default()),
            buckets: Mutex::new(IdMap::default()),
            target_claims: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            pending_cap: pending_cap.max(1),
            rates,
            deliveries: AtomicU64::new(0),
            cluster: None,
            resyncs: AtomicU64::new(0),
        }
    }

    /// The hub of a relay node in a cluster (see the module docs).
    pub fn with_cluster(mut self, link: ClusterLink) -> Self {
        self.cluster = Some(link);
        self
    }

    /// Whether the hub orders deliveries per device (cluster mode).
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Cluster mode: where notices for the other nodes go.
    pub fn publisher(&self) -> Option<&crate::bus::Publisher> {
        self.cluster.as_ref().map(|c| &c.publisher)
    }

    /// Backlog re-reads asked for so far (cluster mode).
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    /// Entries queued to device connections so far (live fan-out and backlog).
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Counts `n` entries queued to a device connection outside [`Hub::fanout`].
    pub fn count_deliveries(&self, n: u64) {
        self.deliveries.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes queued to the online devices' connections and not yet taken by their writers.
    pub fn queued_bytes(&self) -> u64 {
        self.online()
            .values()
            .map(|p| p.outbox().queued_bytes() as u64)
            .sum()
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn online(&self) -> MutexGuard<'_, IdMap<Presence>> {
        // A panic while holding this lock would be a relay bug; the map itself stays
        // consistent (every operation is a single insert/remove), so keep serving.
        self.online
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers an authenticated device as syncing. An older connection of the same device
    /// is closed with `Displaced` (in cluster mode on the other nodes too).
    pub fn register(&self, device: DeviceId, outbox: Arc<Outbox>) {
        let opened_ms = outbox.opened_ms;
        let old = self.online().insert(
            device,
            Presence::Syncing {
                outbox,
                pending: Vec::new(),
            },
        );
        if let Some(old) = old {
            old.outbox().close(CloseReason::Code(ErrorCode::Displaced));
        }
        if let Some(cluster) = &self.cluster {
            cluster
                .publisher
                .close(device, ErrorCode::Displaced, opened_ms);
        }
    }

    /// Ends the syncing phase: pending entries newer than what the backlog sent (`sent`,
    /// the last seq pushed per stream) go into the queue, then the device is live.
    pub fn go_live(&self, device: DeviceId, conn_id: u64, sent: &HashMap<Stream, Seq>) {
        let mut online = self.online();
        let Some(presence) = online.get_mut(&device) else {
            return;
        };
        let Presence::Syncing { outbox, pending } = presence else {
            return;
        };
        if outbox.conn_id != conn_id {
            return;
        }
        let outbox = Arc::clone(outbox);
        let mut queued = 0;
        if let Some(cluster) = &self.cluster {
            let mut positions = sent.clone();
            let mut rest = std::mem::take(pending).into_iter();
            while let Some(p) = rest.next() {
                match (admit(&positions, p.stream, p.seq), &p.frame) {
                    (Admit::Skip, _) => continue,
                    (Admit::Next, Some(frame)) => {
                        if !outbox.push(frame.clone()) {
                            break;
                        }
                        positions.insert(p.stream, p.seq);
                        queued += 1;
                    }
                    // A gap, a stream the backlog did not cover, an entry without its
                    // frame: read the backlog again, the rest stays pending.
                    _ => {
                        pending.push(p);
                        pending.extend(rest);
                        self.count_deliveries(queued);
                        self.resyncs.fetch_add(1, Ordering::Relaxed);
                        let _ = cluster.resync.send((device, outbox));
                        return;
                    }
                }
            }
            self.count_deliveries(queued);
            *presence = Presence::Live { outbox, positions };
            return;
        }
        for p in std::mem::take(pending) {
            let already = sent.get(&p.stream).is_some_and(|last| p.seq <= *last);
            if already {
                continue;
            }
            let Some(frame) = p.frame else { continue };
            if !outbox.push(frame) {
                break;
            }
            queued += 1;
        }
        self.count_deliveries(queued);
        *presence = Presence::Live {
            outbox,
            positions: Positions::new(),
        };
    }

    /// Removes a connection's device from the online map (if it is still that connection).
    pub fn unregister(&self, device: DeviceId, conn_id: u64) {
        let mut online = self.online();
        if online
            .get(&device)
            .is_some_and(|p| p.outbox().conn_id == conn_id)
        {
            online.remove(&device);
        }
    }

    /// Whether any of `devices` has an authenticated connection here.
    pub fn any_online(&self, devices: &[DeviceId]) -> bool {
        let online = self.online();
        devices.iter().any(|d| online.contains_key(d))
    }

    /// Whether `device` has an authenticated connection.
    pub fn is_online(&self, device: DeviceId) -> bool {
        self.online().contains_key(&device)
    }

    /// Number of authenticated connections.
    pub fn online_count(&self) -> usize {
        self.online().len()
    }

    /// Closes `device`'s authenticated connection, if it has one, with `code` (in cluster
    /// mode on every node).
    pub fn close_device(&self, device: DeviceId, code: ErrorCode) {
        self.close_here(device, code, u64::MAX);
        if let Some(cluster) = &self.cluster {
            cluster.publisher.close(device, code, u64::MAX);
        }
    }

    /// Closes `device`'s authenticated connection on this node only, if it was opened at
    /// or before `opened_before_ms` (another node's close, received on the bus).
    pub fn close_here(&self, device: DeviceId, code: ErrorCode, opened_before_ms: u64) {
        if let Some(presence) = self.online().get(&device)
            && presence.outbox().opened_ms <= opened_before_ms
        {
            presence.outbox().close(CloseReason::Code(code));
        }
    }

    /// Cluster mode: the live devices and every group stream they have a position in (for
    /// the catch-up to read the heads of).
    pub fn live_streams(&self) -> (Vec<DeviceId>, Vec<cove_wire::GroupId>) {
        let online = self.online();
        let mut devices = Vec::new();
        let mut groups = std::collections::HashSet::new();
        for (device, presence) in online.iter() {
            if let Presence::Live { positions, .. } = presence {
                devices.push(*device);
                groups.extend(positions.keys().filter_map(|s| match s {
                    Stream::Group(g) => Some(*g),
                    Stream::Inbox => None,
                }));
            }
        }
        (devices, groups.into_iter().collect())
    }

    /// Cluster mode: the live devices behind `heads` (a position in a stream below its
    /// head), each with the first such stream and its head.
    pub fn behind(
        &self,
        heads: &HashMap<Stream, Seq>,
        inboxes: &HashMap<DeviceId, Seq>,
    ) -> Vec<(DeviceId, Stream, Seq)> {
        let online = self.online();
        let mut out = Vec::new();
        for (device, presence) in online.iter() {
            let Presence::Live { positions, .. } = presence else {
                continue;
            };
            let inbox = inboxes
                .get(device)
                .filter(|head| positions.get(&Stream::Inbox).is_none_or(|p| p < *head))
                .map(|head| (Stream::Inbox, *head));
            let group = positions.iter().find_map(|(stream, pos)| {
                heads
                    .get(stream)
                    .filter(|head| pos < *head)
                    .map(|head| (*stream, *head))
            });
            if let Some((stream, head)) = inbox.or(group) {
                out.push((*device, stream, head));
            }
        }
        out
    }

    /// Cluster mode: `device`'s backlog is read again if it is live and still behind
    /// `head` in `stream`; true if so. A stream it is no longer in (`forget`) is dropped
    /// from its positions instead.
    pub fn resync_if_behind(
        &self,
        device: DeviceId,
        stream: Stream,
        head: Seq,
        forget: bool,
    ) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let mut online = self.online();
        let Some(presence) = online.get_mut(&device) else {
            return false;
        };
        let Presence::Live { outbox, positions } = presence else {
            return false;
        };
        if positions.get(&stream).is_some_and(|p| *p >= head) {
            return false;
        }
        if forget {
            positions.remove(&stream);
            return false;
        }
        let outbox = Arc::clone(outbox);
        *presence = Presence::Syncing {
            outbox: Arc::clone(&outbox),
            pending: Vec::new(),
        };
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        let _ = cluster.resync.send((device, outbox));
        true
    }

    /// Closes every authenticated connection with `code`.
    pub fn close_all(&self, code: ErrorCode) {
        for presence in self.online().values() {
            presence.outbox().close(CloseReason::Code(code));
        }
    }

    /// Locks the online map for fanning out a batch of entries.
    pub fn fanout(&self) -> Fanout<'_> {
        Fanout {
            online: self.online(),
            pending_cap: self.pending_cap,
            deliveries: &self.deliveries,
            queued: 0,
            cluster: self.cluster.as_ref(),
            resyncs: &self.resyncs,
        }
    }

    /// Takes one request token for `device`; on refusal, the milliseconds until one is due.
    pub fn take_request(&self, device: DeviceId) -> Result<(), u32> {
        self.take(device, |b| &mut b.requests)
    }

    /// Takes one KeyPackage-claim token for `device`.
    pub fn take_claim(&self, device: DeviceId) -> Result<(), u32> {
        self.take(device, |b| &mut b.claims)
    }

    /// Takes one claim token on the target `user`'s bucket (shared by every claimer); on
    /// refusal, the milliseconds until one is due.
    pub fn take_target_claim(&self, user: &UserName) -> Result<(), u32> {
        let now = Instant::now();
        let rates = self.rates;
        let mut targets = self
            .target_claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if targets.len() >= MAX_TRACKED_TARGETS && !targets.contains_key(user) {
            targets.retain(|_, bucket| !bucket.is_full(now));
        }
        if let Some(bucket) = targets.get_mut(user) {
            return bucket.take(now);
        }
        let mut bucket = TokenBucket::new(
            rates.target_claims_per_second,
            rates.target_claim_burst,
            now,
        );
        let taken = bucket.take(now);
        targets.insert(user.clone(), bucket);
        taken
    }

    fn take(
        &self,
        device: DeviceId,
        which: fn(&mut Buckets) -> &mut TokenBucket,
    ) -> Result<(), u32> {
        let now = Instant::now();
        let rates = self.rates;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let b = buckets.entry(device).or_insert_with(|| Buckets {
            requests: TokenBucket::new(rates.requests_per_second, rates.request_burst, now),
            claims: TokenBucket::new(rates.claims_per_second, rates.claim_burst, now),
        });
        which(b).take(now)
    }
}

/// The online map, locked for one batch of deliveries.
pub(crate) struct Fanout<'a> {
    online: MutexGuard<'a, IdMap<Presence>>,
    pending_cap: usize,
    /// The hub's delivery counter, added to once when the batch ends.
    deliveries: &'a AtomicU64,
    /// Entries queued to live connections in this batch.
    queued: u64,
    /// Cluster mode: deliveries are ordered per device (see the module docs).
    cluster: Option<&'a ClusterLink>,
    /// The hub's resync counter.
    resyncs: &'a AtomicU64,
}

impl Drop for Fanout<'_> {
    fn drop(&mut self) {
        if self.queued > 0 {
            self.deliveries.fetch_add(self.queued, Ordering::Relaxed);
        }
    }
}

impl Fanout<'_> {
    /// Whether deliveries are ordered per device (cluster mode): then runs are not used.
    pub fn is_ordered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Delivers one encoded entry (`stream`, `seq`) to every online device in `recipients`.
    pub fn deliver(&mut self, recipients: &[DeviceId], stream: Stream, seq: Seq, frame: &Bytes) {
        if self.cluster.is_some() {
            self.deliver_ordered(recipients, stream, seq, Some(frame));
            return;
        }
        for device in recipients {
            let Some(presence) = self.online.get_mut(device) else {
                continue;
            };
            match presence {
                Presence::Live { outbox, .. } => {
                    if outbox.push(frame.clone()) {
                        self.queued += 1;
                    }
                }
                Presence::Syncing { outbox, pending } => {
                    hold(outbox, pending, self.pending_cap, stream, seq, Some(frame));
                }
            }
        }
    }

    /// Cluster mode: delivers an entry (`stream`, `seq`; its frame, or `None` when another
    /// node announced it without) to every online device in `recipients`, in order per
    /// device (see the module docs).
    pub fn deliver_ordered(
        &mut self,
        recipients: &[DeviceId],
        stream: Stream,
        seq: Seq,
        frame: Option<&Bytes>,
    ) {
        let Some(cluster) = self.cluster else {
            if let Some(frame) = frame {
                self.deliver(recipients, stream, seq, frame);
            }
            return;
        };
        for device in recipients {
            let Some(presence) = self.online.get_mut(device) else {
                continue;
            };
            match presence {
                Presence::Live { outbox, positions } => {
                    match (admit(positions, stream, seq), frame) {
                        (Admit::Skip, _) => {}
                        (Admit::Next, Some(frame)) => {
                            if outbox.push(frame.clone()) {
                                positions.insert(stream, seq);
                                self.queued += 1;
                            }
                        }
                        _ => {
                            let outbox = Arc::clone(outbox);
                            *presence = Presence::Syncing {
                                outbox: Arc::clone(&outbox),
                                pending: vec![Pending {
                                    stream,
                                    seq,
                                    frame: frame.cloned(),
                                }],
                            };
                            self.resyncs.fetch_add(1, Ordering::Relaxed);
                            let _ = cluster.resync.send((*device, outbox));
                        }
                    }
                }
                Presence::Syncing { outbox, pending } => {
                    hold(outbox, pending, self.pending_cap, stream, seq, frame);
                }
            }
        }
    }
}

/// Keeps an entry for a syncing device until its backlog is done (closing it as a slow
/// reader when too many wait).
fn hold(
    outbox: &Outbox,
    pending: &mut Vec<Pending>,
    cap: usize,
    stream: Stream,
    seq: Seq,
    frame: Option<&Bytes>,
) {
    if outbox.is_closing() {
        return;
    }
    if pending.len() >= cap {
        outbox.close(CloseReason::Code(ErrorCode::SlowReader));
        pending.clear();
        return;
    }
    pending.push(Pending {
        stream,
        seq,
        frame: frame.cloned(),
    });
}

impl Fanout<'_> {
    /// Delivers a run of encoded entries of one `stream` (`seqs[i]` is `frames[i]`'s seq,
    /// `len` their bytes in all) to every online device in `recipients` except those whose
    /// connection is in `skip`: a live device gets the whole run as one queue entry. Returns
    /// the recipients skipped, for the caller to serve one entry at a time.
    pub fn deliver_run(
        &mut self,
        recipients: &[DeviceId],
        stream: Stream,
        seqs: &[Seq],
        frames: &Arc<[Bytes]>,
        len: usize,
        skip: &[u64],
    ) -> Vec<DeviceId> {
        let mut skipped = Vec::new();
        for device in recipients {
            let Some(presence) = self.online.get_mut(device) else {
                continue;
            };
            if skip.contains(&presence.outbox().conn_id) {
                skipped.push(*device);
                continue;
            }
            match presence {
                Presence::Live { outbox, .. } => {
                    if outbox.push_run(frames, len) {
                        self.queued += seqs.len() as u64;
                    }
                }
                Presence::Syncing { outbox, pending } => {
                    if outbox.is_closing() {
                        continue;
                    }
                    for (seq, frame) in seqs.iter().zip(frames.iter()) {
                        if pending.len() >= self.pending_cap {
                            outbox.close(CloseReason::Code(ErrorCode::SlowReader));
                            pending.clear();
                            break;
                        }
                        pending.push(Pending {
                            stream,
                            seq: *seq,
                            frame: Some(frame.clone()),
                        });
                    }
                }
            }
        }
        skipped
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
pub(crate) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            last: now,
        }
    }

    /// Takes a token, or says how many milliseconds until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), u32> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).min(3600.0));
            Err(u32::try_from(wait.as_millis().saturating_add(1)).unwrap_or(u32::MAX))
        }
    }

    /// Whether the bucket has refilled to its burst by `now` (then it limits nothing).
    pub(crate) fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn target_claims_share_one_bucket_per_user() {
        let hub = Hub::new(
            8,
            Rates {
                requests_per_second: 1.0,
                request_burst: 1.0,
                claims_per_second: 1.0,
                claim_burst: 1.0,
                target_claims_per_second: 0.001,
                target_claim_burst: 2.0,
            },
        );
        let alice = UserName::new("alice").unwrap();
        let bob = UserName::new("bob").unwrap();
        assert!(hub.take_target_claim(&alice).is_ok());
        assert!(hub.take_target_claim(&alice).is_ok());
        assert!(hub.take_target_claim(&alice).is_err_and(|ms| ms > 0));
        assert!(hub.take_target_claim(&bob).is_ok());
    }

    #[test]
    fn bucket_refuses_past_burst_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 2.0, t0);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0);
        assert!(
            matches!(wait, Err(ms) if (90..=101).contains(&ms)),
            "{wait:?}"
        );
        assert!(b.take(t0 + Duration::from_millis(150)).is_ok());
    }

    #[test]
    fn queued_bytes_are_bounded_and_given_back() {
        let (outbox, mut rx) = Outbox::new(1, 100, 10);
        assert!(outbox.push(Bytes::from_static(b"123456")));
        let close = rx.close.clone();
        assert!(
            !outbox.push(Bytes::from_static(b"123456")),
            "12 bytes exceed 10"
        );
        assert_eq!(
            *close.borrow(),
            Some(CloseReason::Code(ErrorCode::SlowReader))
        );
        let (outbox, mut rx2) = Outbox::new(2, 100, 10);
        assert!(outbox.push(Bytes::from_static(b"123456")));
        let taken = rx2.frames.try_recv().unwrap_or(Queued::One(Bytes::new()));
        rx2.bytes.add_permits(taken.byte_len());
        assert!(
            outbox.push(Bytes::from_static(b"123456")),
            "budget was given back"
        );
        let _ = rx.frames.try_recv();
    }

    #[test]
    fn full_queue_closes_as_slow_reader() {
        let (outbox, rx) = Outbox::new(1, 2, 1024);
        let close = rx.close.clone();
        assert!(outbox.push(Bytes::from_static(b"a")));
        assert!(outbox.push(Bytes::from_static(b"b")));
        assert!(!outbox.push(Bytes::from_static(b"c")));
        assert_eq!(
            *close.borrow(),
            Some(CloseReason::Code(ErrorCode::SlowReader))
        );
    }

    #[test]
    fn syncing_device_gets_pending_entries_after_backlog_without_duplicates() {
        let hub = Hub::new(
            8,
            Rates {
                requests_per_second: 1.0,
                request_burst: 1.0,
                claims_per_second: 1.0,
                claim_burst: 1.0,
                target_claims_per_second: 1.0,
                target_claim_burst: 1.0,
            },
        );
        let (outbox, mut rx) = Outbox::new(7, 16, 1024);
        let d = DeviceId(1);
        let g = Stream::Group(cove_wire::GroupId([1; 16]));
        hub.register(d, outbox);
        {
            let mut f = hub.fanout();
            for seq in 1..=4u64 {
                f.deliver(&[d], g, Seq(seq), &Bytes::from(vec![seq as u8]));
            }
        }
        // The backlog already sent up to seq 2.
        hub.go_live(d, 7, &HashMap::from([(g, Seq(2))]));
        hub.fanout()
            .deliver(&[d], g, Seq(5), &Bytes::from_static(&[5]));
        let mut got = Vec::new();
        while let Ok(Queued::One(f)) = rx.frames.try_recv() {
            got.extend_from_slice(&f);
        }
        assert_eq!(got, vec![3, 4, 5]);
    }

    /// A run reaches a live device as one queue entry holding every frame in order, a
    /// syncing device entry by entry (filtered against its backlog on going live), and a
    /// device whose connection is in the skip list not at all: it is returned instead.
    #[test]
    fn a_run_is_one_entry_for_live_devices_and_skips_the_posters() {
        let hub = Hub::new(
            8,
            Rates {
                requests_per_second: 1.0,
                request_burst: 1.0,
                claims_per_second: 1.0,
                claim_burst: 1.0,
                target_claims_per_second: 1.0,
                target_claim_burst: 1.0,
            },
        );
        let g = Stream::Group(cove_wire::GroupId([2; 16]));
        let (live, mut live_rx) = Outbox::new(1, 16, 1024);
        let (syncing, mut syncing_rx) = Outbox::new(2, 16, 1024);
        let (poster, mut poster_rx) = Outbox::new(3, 16, 1024);
        hub.register(DeviceId(1), live);
        hub.go_live(DeviceId(1), 1, &HashMap::new());
        hub.register(DeviceId(2), syncing);
        hub.register(DeviceId(3), poster);
        hub.go_live(DeviceId(3), 3, &HashMap::new());
        let frames: Arc<[Bytes]> = (1..=3u8).map(|b| Bytes::from(vec![b; 2])).collect();
        let seqs = [Seq(1), Seq(2), Seq(3)];
        let skipped = hub.fanout().deliver_run(
            &[DeviceId(1), DeviceId(2), DeviceId(3), DeviceId(4)],
            g,
            &seqs,
            &frames,
            6,
            &[3],
        );
        assert_eq!(skipped, vec![DeviceId(3)]);
        match live_rx.frames.try_recv() {
            Ok(Queued::Run(run)) => assert_eq!(run.as_ref(), frames.as_ref()),
            other => panic!("expected the run as one entry, got {other:?}"),
        }
        assert!(live_rx.frames.try_recv().is_err(), "one entry only");
        assert_eq!(
            live_rx.bytes.available_permits(),
            1024 - 6,
            "the run's bytes are reserved"
        );
        assert!(
            poster_rx.frames.try_recv().is_err(),
            "the poster is skipped"
        );
        // The backlog already sent seq 1: the syncing device gets 2 and 3, one by one.
        hub.go_live(DeviceId(2), 2, &HashMap::from([(g, Seq(1))]));
        let mut got = Vec::new();
        while let Ok(Queued::One(f)) = syncing_rx.frames.try_recv() {
            got.push(f);
        }
        assert_eq!(got, frames[1..].to_vec());
    }

    /// Cluster mode: a live device takes the next seq of a stream, skips one it has, and on
    /// a gap (or an entry without its frame) goes back to syncing with the entry pending
    /// while its backlog is read again; going live after that backlog pushes the pending
    /// entries above it, then ordering goes on from there.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn clustered_deliveries_skip_duplicates_and_resync_on_a_gap() {
        let rates = Rates {
            requests_per_second: 1.0,
            request_burst: 1.0,
            claims_per_second: 1.0,
            claim_burst: 1.0,
            target_claims_per_second: 1.0,
            target_claim_burst: 1.0,
        };
        let config = crate::config::BusConfig {
            nats: "nats://127.0.0.1:1".into(),
            node: Some("test".into()),
            catch_up_ms: 1000,
        };
        let (_bus, link) = crate::bus::Bus::new(&config, Arc::new(crate::metrics::Metrics::new()));
        let (_bus, mut resyncs) = _bus.into_resyncs();
        let hub = Hub::new(8, rates).with_cluster(link);
        let d = DeviceId(1);
        let g = Stream::Group(cove_wire::GroupId([3; 16]));
        let (outbox, mut rx) = Outbox::new(7, 16, 1024);
        hub.register(d, outbox);
        hub.go_live(d, 7, &HashMap::from([(g, Seq(2)), (Stream::Inbox, Seq(0))]));
        let frame = |n: u8| Bytes::from(vec![n]);
        let mut got = || {
            let mut out = Vec::new();
            while let Ok(q) = rx.frames.try_recv() {
                if let Queued::One(f) = q {
                    out.extend_from_slice(&f);
                }
            }
            out
        };
        hub.fanout().deliver(&[d], g, Seq(3), &frame(3));
        hub.fanout().deliver(&[d], g, Seq(3), &frame(3));
        hub.fanout().deliver(&[d], g, Seq(2), &frame(2));
        assert_eq!(got(), vec![3], "the next one once; nothing at or below it");
        assert!(resyncs.try_recv().is_err());

        // Seq 4 is missing: 5 waits, the backlog is asked for.
        hub.fanout().deliver(&[d], g, Seq(5), &frame(5));
        assert_eq!(
            resyncs.try_recv().map(|(dev, o)| (dev, o.conn_id)).ok(),
            Some((d, 7))
        );
        hub.fanout().deliver(&[d], g, Seq(6), &frame(6));
        assert!(got().is_empty(), "nothing while syncing");
        // The backlog sent up to 5: 6 follows from the pending entries.
        hub.go_live(d, 7, &HashMap::from([(g, Seq(5)), (Stream::Inbox, Seq(0))]));
        assert_eq!(got(), vec![6]);
        hub.fanout().deliver(&[d], g, Seq(7), &frame(7));
        assert_eq!(got(), vec![7]);

        // An entry announced without its frame, and a stream without a position: resync.
        hub.fanout().deliver_ordered(&[d], g, Seq(8), None);
        assert!(resyncs.try_recv().is_ok());
        hub.go_live(d, 7, &HashMap::from([(g, Seq(8)), (Stream::Inbox, Seq(0))]));
        let other = Stream::Group(cove_wire::GroupId([4; 16]));
        hub.fanout().deliver(&[d], other, Seq(2), &frame(2));
        assert!(resyncs.try_recv().is_ok());
        assert_eq!(hub.resyncs(), 3);
        assert!(got().is_empty());
    }

    /// Another node's displacement closes a connection opened at or before the displacing
    /// one, never a newer one; a close for any connection (`u64::MAX`) closes it.
    #[test]
    fn a_remote_displacement_spares_a_newer_connection() {
        let rates = Rates {
            requests_per_second: 1.0,
            request_burst: 1.0,
            claims_per_second: 1.0,
            claim_burst: 1.0,
            target_claims_per_second: 1.0,
            target_claim_burst: 1.0,
        };
        let hub = Hub::new(8, rates);
        let (outbox, rx) = Outbox::new(1, 4, 1024);
        let opened = outbox.opened_ms;
        let close = rx.close.clone();
        hub.register(DeviceId(9), outbox);
        hub.close_here(DeviceId(9), ErrorCode::Displaced, opened - 1);
        assert_eq!(*close.borrow(), None);
        hub.close_here(DeviceId(9), ErrorCode::Displaced, opened);
        assert_eq!(
            *close.borrow(),
            Some(CloseReason::Code(ErrorCode::Displaced))
        );
        let (outbox, rx) = Outbox::new(2, 4, 1024);
        let close = rx.close.clone();
        hub.register(DeviceId(10), outbox);
        hub.close_here(DeviceId(10), ErrorCode::UnknownDevice, u64::MAX);
        assert_eq!(
            *close.borrow(),
            Some(CloseReason::Code(ErrorCode::UnknownDevice))
        );
    }

    #[test]
    fn second_connection_displaces_the_first() {
        let rates = Rates {
            requests_per_second: 1.0,
            request_burst: 1.0,
            claims_per_second: 1.0,
            claim_burst: 1.0,
            target_claims_per_second: 1.0,
            target_claim_burst: 1.0,
        };
        let hub = Hub::new(8, rates);
        let (first, rx1) = Outbox::new(1, 4, 1024);
        let close1 = rx1.close.clone();
        let (second, rx2) = Outbox::new(2, 4, 1024);
        let close2 = rx2.close.clone();
        hub.register(DeviceId(9), first);
        hub.register(DeviceId(9), second);
        assert_eq!(
            *close1.borrow(),
            Some(CloseReason::Code(ErrorCode::Displaced))
        );
        assert_eq!(*close2.borrow(), None);
        hub.unregister(DeviceId(9), 1);
        assert!(
            hub.is_online(DeviceId(9)),
            "the old connection must not remove the new one"
        );
        hub.unregister(DeviceId(9), 2);
        assert!(!hub.is_online(DeviceId(9)));
    }
}
