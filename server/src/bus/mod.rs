//! The bus between relay nodes (issue 15): several nodes share one PostgreSQL store, and
//! each tells the others, through NATS, what it appended, so that every node delivers
//! every entry to the devices connected to it.
//!
//! - **Publishing.** After the local fan-out of each batch, the fan-out task
//!   ([`crate::pipeline`]) hands one [`notice::Notice`] per accepted entry (subject
//!   `cove.g.<group hex>`) and per Welcome (subject `cove.d.<device id>`) to a
//!   [`Publisher`]: a bounded channel to the publisher task, so the hot path never waits
//!   on NATS. When the channel is full the notice is dropped and counted; the catch-up
//!   repairs. Closes that other nodes must apply (`Displaced` on a new connection, a
//!   deleted device) go the same way (`cove.d.<device id>`).
//! - **Receiving.** Every node subscribes to `cove.>` (one wildcard subscription: a node
//!   sees every group's notices, and delivers those whose recipients it holds); its own
//!   notices come back and are ignored by node name. A notice that does not decode, or
//!   whose frame is not the `Deliver` of the entry it names, is dropped with a warning.
//!   Entries go through the hub's ordered delivery ([`crate::hub`], cluster mode), which
//!   skips what a device already has and re-reads the backlog of a device that would
//!   otherwise see a gap.
//! - **Catch-up.** Every `catch_up_ms`, and at once when the NATS connection comes back,
//!   the node reads the store's heads ([`crate::store::RelayStore::heads`]) of the
//!   streams its live devices are in. A device still behind a head read one period
//!   earlier (or, after a reconnection, behind the current one) has its backlog read
//!   again. A lost notice therefore delays an entry by at most about two periods; it never
//!   loses it.
//!
//! NATS core pub/sub is at-most-once and keeps a publisher's order on one connection;
//! nothing here relies on either (the store's seqs and the per-device positions order
//! delivery, the catch-up makes up for losses). The connection reconnects forever with
//! backoff; a node whose NATS is down starts, serves its own devices and logs it.

pub(crate) mod notice;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use cove_wire::{Delivery, DeviceId, ErrorCode, GroupId, Seq, ServerFrame, Stream};
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use self::notice::{Body, Notice};
use crate::config::BusConfig;
use crate::hub::{ClusterLink, Outbox};
use crate::metrics::Metrics;
use crate::shared::{Shared, blocking, stopped};

/// Notices waiting for the publisher task; past this, new ones are dropped (and counted).
const PUBLISH_QUEUE: usize = 16 * 1024;

/// The subscription every node makes.
const SUBSCRIPTION: &str = "cove.>";

/// How long a starting node waits for its subscription before it starts without.
const START_WAIT: Duration = Duration::from_secs(2);

/// Longest wait between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Hands notices to the publisher task without waiting (cloned into the hub).
#[derive(Clone)]
pub(crate) struct Publisher {
    node: Arc<str>,
    queue: mpsc::Sender<(String, Bytes)>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// Announces an accepted group entry (its frame is carried when small enough).
    pub fn entry(&self, group: GroupId, seq: Seq, recipients: &[DeviceId], frame: &Bytes) {
        self.send(
            group_subject(group),
            Body::Entry {
                group,
                seq,
                recipients: recipients.to_vec(),
                frame: Some(frame.clone()),
            },
        );
    }

    /// Announces a Welcome put in `device`'s inbox at `seq`.
    pub fn welcome(&self, device: DeviceId, seq: Seq, frame: &Bytes) {
        self.send(
            device_subject(device),
            Body::Welcome {
                device,
                seq,
                frame: Some(frame.clone()),
            },
        );
    }

    /// Asks the other nodes to close `device`'s connection with `code` if it was opened
    /// at or before `opened_before_ms` (`u64::MAX`: whenever).
    pub fn close(&self, device: DeviceId, code: ErrorCode, opened_before_ms: u64) {
        self.send(
            device_subject(device),
            Body::Close {
                device,
                opened_before_ms,
                code,
            },
        );
    }

    fn send(&self, subject: String, body: Body) {
        let notice = Notice {
            node: self.node.to_string(),
            body,
        };
        let payload = Bytes::from(notice.encode());
        if self.queue.try_send((subject, payload)).is_err() {
            self.metrics.bus_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The bus before it runs: what [`Bus::new`] made for the hub, and the receiving ends.
pub(crate) struct Bus {
    node: Arc<str>,
    url: String,
    catch_up: Duration,
    queue: mpsc::Receiver<(String, Bytes)>,
    resync: mpsc::UnboundedReceiver<(DeviceId, Arc<Outbox>)>,
}

impl Bus {
    /// The bus of this node and the hub's end of it.
    pub fn new(config: &BusConfig, metrics: Arc<Metrics>) -> (Bus, ClusterLink) {
        let node: Arc<str> = match &config.node {
            Some(node) => Arc::from(node.as_str()),
            None => Arc::from(format!("relay-{:016x}", rand::random::<u64>()).as_str()),
        };
        let (queue_tx, queue) = mpsc::channel(PUBLISH_QUEUE);
        let (resync_tx, resync) = mpsc::unbounded_channel();
        let link = ClusterLink {
            resync: resync_tx,
            publisher: Publisher {
                node: Arc::clone(&node),
                queue: queue_tx,
                metrics,
            },
        };
        let bus = Bus {
            node,
            url: config.nats.clone(),
            catch_up: Duration::from_millis(config.catch_up_ms),
            queue,
            resync,
        };
        (bus, link)
    }

    /// Starts the bus: connects to NATS and subscribes, waiting up to
    /// [`START_WAIT`] for the subscription to be in place (so that a node is subscribed
    /// when its start returns, whenever NATS is up); if NATS does not answer by then, the
    /// node starts anyway and the connection keeps being retried in the background (the
    /// catch-up after it connects delivers what it missed). Then spawns the publisher,
    /// subscriber, resync and catch-up tasks; they end at shutdown.
    pub async fn start(self, shared: Arc<Shared>) {
        let Bus {
            node,
            url,
            catch_up,
            queue,
            resync,
        } = self;
        let reconnected = Arc::new(Notify::new());
        tokio::spawn(resync_loop(Arc::clone(&shared), resync));
        tokio::spawn(catch_up_loop(
            Arc::clone(&shared),
            catch_up,
            Arc::clone(&reconnected),
        ));
        let Some(client) = connect(&url, &node, reconnected).await else {
            return;
        };
        let subscriber = match client.subscribe(SUBSCRIPTION).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                tracing::error!(error = %e, "bus: cannot subscribe; the bus is off");
                return;
            }
        };
        match tokio::time::timeout(START_WAIT, client.flush()).await {
            Ok(Ok(())) => info!(node = %node, "bus: subscribed"),
            Ok(Err(e)) => warn!(error = %e, "bus: NATS is not reachable yet; retrying"),
            Err(_) => warn!("bus: NATS is not reachable yet; starting anyway and retrying"),
        }
        tokio::spawn(publish_loop(
            client,
            queue,
            Arc::clone(&shared.metrics),
            shared.shutdown.clone(),
        ));
        tokio::spawn(receive_loop(subscriber, node, shared));
    }
}

#[cfg(test)]
impl Bus {
    /// Takes the resync receiver out (unit tests of the hub read what it asks for).
    pub fn into_resyncs(mut self) -> (Bus, mpsc::UnboundedReceiver<(DeviceId, Arc<Outbox>)>) {
        let (_, empty) = mpsc::unbounded_channel();
        let resyncs = std::mem::replace(&mut self.resync, empty);
        (self, resyncs)
    }
}

/// `cove.g.<group id in hex>`.
fn group_subject(group: GroupId) -> String {
    let mut s = String::with_capacity(6 + 32);
    s.push_str("cove.g.");
    for b in group.0 {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `cove.d.<device id>`.
fn device_subject(device: DeviceId) -> String {
    format!("cove.d.{}", device.0)
}

/// Connects to NATS in the background (retrying forever with backoff); `reconnected` is
/// notified on every (re)connection. `None` only for an unusable URL.
async fn connect(url: &str, node: &str, reconnected: Arc<Notify>) -> Option<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
        .name(node)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let exp = u32::try_from(attempts.min(6)).unwrap_or(6);
            Duration::from_millis(50u64 << exp).min(MAX_RECONNECT_DELAY)
        })
        .event_callback(move |event| {
            let reconnected = Arc::clone(&reconnected);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!("bus: connected to NATS");
                        reconnected.notify_one();
                    }
                    async_nats::Event::Disconnected => {
                        warn!("bus: NATS connection lost; reconnecting");
                    }
                    other => debug!(event = %other, "bus: NATS event"),
                }
            }
        });
    match options.connect(url).await {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::error!(error = %e, "bus: cannot use the NATS address; the bus is off");
            None
        }
    }
}

/// Publishes queued notices until shutdown.
async fn publish_loop(
    client: async_nats::Client,
    mut queue: mpsc::Receiver<(String, Bytes)>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            next = queue.recv() => next,
            () = stopped(&mut shutdown) => break,
        };
        let Some((subject, payload)) = next else {
            break;
        };
        let published = tokio::select! {
            r = client.publish(subject, payload) => r,
            () = stopped(&mut shutdown) => break,
        };
        match published {
            Ok(()) => metrics.bus_published.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                debug!(error = %e, "bus: publishing failed");
                metrics.bus_dropped.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Delivers other nodes' notices until shutdown.
async fn receive_loop(mut subscriber: async_nats::Subscriber, node: Arc<str>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let message = tokio::select! {
            m = subscriber.next() => m,
            () = stopped(&mut shutdown) => break,
        };
        let Some(message) = message else { break };
        let notice = match Notice::decode(&message.payload) {
            Ok(notice) => notice,
            Err(e) => {
                warn!(subject = %message.subject, error = %e, "bus: malformed notice dropped");
                shared.metrics.bus_malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if *notice.node == *node {
            continue;
        }
        shared.metrics.bus_received.fetch_add(1, Ordering::Relaxed);
        apply(&shared, notice.body);
    }
    let _ = subscriber.unsubscribe().await;
}

/// Delivers another node's notice to this node's devices (a notice none of whose
/// recipients is connected here costs a map look-up per recipient, nothing more).
fn apply(shared: &Shared, body: Body) {
    match body {
        Body::Entry { ref recipients, .. } if !shared.hub.any_online(recipients) => {}
        Body::Welcome { device, .. } if !shared.hub.is_online(device) => {}
        Body::Entry {
            group,
            seq,
            recipients,
            frame,
        } => {
            let frame = frame.filter(|f| frame_matches(f, Stream::Group(group), seq));
            shared.hub.fanout().deliver_ordered(
                &recipients,
                Stream::Group(group),
                seq,
                frame.as_ref(),
            );
        }
        Body::Welcome { device, seq, frame } => {
            let frame = frame.filter(|f| frame_matches(f, Stream::Inbox, seq));
            shared
                .hub
                .fanout()
                .deliver_ordered(&[device], Stream::Inbox, seq, frame.as_ref());
        }
        Body::Close {
            device,
            opened_before_ms,
            code,
        } => shared.hub.close_here(device, code, opened_before_ms),
    }
}

/// Whether `frame` is the `Deliver` frame of the entry at `seq` in `stream`: a frame that
/// is not is dropped (the entry is then read from the store), never pushed to a device.
fn frame_matches(frame: &[u8], stream: Stream, seq: Seq) -> bool {
    let ok = match cove_wire::decode::<ServerFrame>(frame) {
        Ok(ServerFrame::Deliver(Delivery::Group(e))) => {
            Stream::Group(e.group) == stream && e.seq == seq
        }
        Ok(ServerFrame::Deliver(Delivery::Inbox(e))) => stream == Stream::Inbox && e.seq == seq,
        _ => false,
    };
    if !ok {
        warn!(%seq, "bus: a notice's frame is not its entry's; reading the store instead");
    }
    ok
}

/// Re-reads the backlog of each device the hub asks for.
async fn resync_loop(
    shared: Arc<Shared>,
    mut asks: mpsc::UnboundedReceiver<(DeviceId, Arc<Outbox>)>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let ask = tokio::select! {
            ask = asks.recv() => ask,
            () = stopped(&mut shutdown) => break,
        };
        let Some((device, outbox)) = ask else { break };
        debug!(%device, "bus: reading a device's backlog again");
        tokio::spawn(crate::session::resync(Arc::clone(&shared), outbox, device));
    }
}

/// A live device found behind a head: read its backlog again if it still is later.
type Suspect = (DeviceId, Stream, Seq);

/// Compares the live devices' positions with the store's heads every `every`, and at once
/// after NATS reconnects (see the module docs).
async fn catch_up_loop(shared: Arc<Shared>, every: Duration, reconnected: Arc<Notify>) {
    let mut shutdown = shared.shutdown.clone();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut suspects: Vec<Suspect> = Vec::new();
    loop {
        let now = tokio::select! {
            _ = ticks.tick() => false,
            () = reconnected.notified() => true,
            () = stopped(&mut shutdown) => break,
        };
        // Behind a head read a period ago: the notice is not merely in flight.
        for (device, stream, head) in std::mem::take(&mut suspects) {
            shared.hub.resync_if_behind(device, stream, head, false);
        }
        let found = match behind(&shared).await {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "bus: catch-up could not read the store");
                continue;
            }
        };
        for (device, stream, head, member) in found {
            if !member {
                shared.hub.resync_if_behind(device, stream, head, true);
            } else if now {
                shared.hub.resync_if_behind(device, stream, head, false);
            } else {
                suspects.push((device, stream, head));
            }
        }
    }
}

/// The live devices behind the store's heads: (device, stream, head, still entitled to the
/// stream). A group the device has left has no more entries for it (`false`: forget it); a
/// group it was removed from counts up to the removal commit.
async fn behind(
    shared: &Arc<Shared>,
) -> Result<Vec<(DeviceId, Stream, Seq, bool)>, crate::store::StoreError> {
    let (devices, groups) = shared.hub.live_streams();
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let heads = blocking(shared, move |store| store.heads(&groups, &devices)).await?;
    let group_heads: HashMap<Stream, Seq> = heads
        .groups
        .into_iter()
        .map(|(g, seq)| (Stream::Group(g), seq))
        .collect();
    let inbox_heads: HashMap<DeviceId, Seq> = heads.inboxes.into_iter().collect();
    let candidates = shared.hub.behind(&group_heads, &inbox_heads);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    blocking(shared, move |store| {
        let mut out = Vec::with_capacity(candidates.len());
        for (device, stream, head) in candidates {
            let Stream::Group(group) = stream else {
                out.push((device, stream, head, true));
                continue;
            };
            if store.is_member(group, device)? {
                out.push((device, stream, head, true));
                continue;
            }
            match store
                .departures(device)?
                .into_iter()
                .find(|(g, _)| *g == group)
            {
                Some((_, removed_at)) => out.push((device, stream, removed_at.min(head), true)),
                None => out.push((device, stream, head, false)),
            }
        }
        Ok(out)
    })
    .await
}
