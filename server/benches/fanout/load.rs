//! The load generator: N receiving connections and one sending connection, all over
//! loopback TLS, on the load runtime. It speaks either the bare broadcast protocol or Cove's
//! wire protocol (as a real device would: challenge-response registration, `Post`s of
//! opaque application payloads, cumulative acks as [`AckMode`] says: by default by count
//! and timers, as `cove-core` acks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cove_wire::{
    ClientFrame, Delivery, DeviceId, DeviceKey, EntryKind, Epoch, GroupId, Payload, PostKind,
    Reply, Request, RequestId, ServerFrame, Signature, Stream as WireStream, UserName,
};
use ed25519_dalek::{Signer, SigningKey};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt as _, SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::stats::{self, Tracker};

/// A client WebSocket over TLS.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 32;

/// Which server the load generator talks to.
#[derive(Clone, Copy)]
pub enum Proto {
    /// The bare broadcast server.
    Bare,
    /// Cove's relay: posts go to `group` at `epoch`.
    Relay {
        /// The benchmark group.
        group: GroupId,
        /// Its current epoch.
        epoch: Epoch,
    },
}

/// A rustls client config trusting exactly `cert`.
pub fn client_tls(cert: CertificateDer<'static>) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Opens a WebSocket over TLS to `addr` at `path`, with Nagle off and the same WebSocket
/// buffer settings as the servers.
pub async fn connect(addr: SocketAddr, path: &str, tls: &Arc<rustls::ClientConfig>) -> Result<Ws> {
    let url = format!("wss://127.0.0.1:{}{path}", addr.port());
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        Some(crate::bare::ws_config()),
        true,
        Some(Connector::Rustls(tls.clone())),
    )
    .await
    .with_context(|| format!("connecting to {addr}"))?;
    Ok(ws)
}

// ---------------------------------------------------------------------------------------
// Bare protocol

/// Connects `n` bare receivers and spawns their read loops. With `ack_every` > 0 (a
/// diagnostic, `FANOUT_BARE_ACK_EVERY`) each sends a 40-byte message after every that many
/// frames, which the bare server reads and drops: what reading small client messages costs
/// a server, apart from what the relay does with them.
pub async fn bare_receivers(
    n: usize,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    tracker: Arc<Tracker>,
    ack_every: u64,
) -> Result<()> {
    let conns = futures_util::stream::iter(0..n)
        .map(|_| {
            let tls = tls.clone();
            async move {
                let mut ws = connect(addr, "/", &tls).await?;
                ws.send(Message::text("recv")).await?;
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == "ok" => Ok(ws),
                    other => Err(anyhow!("bare receiver not accepted: {other:?}")),
                }
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<Result<Ws>>>()
        .await;
    for ws in conns {
        let mut ws = ws?;
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let mut since_ack = 0u64;
            while let Some(Ok(msg)) = ws.next().await {
                if ack_every > 0 {
                    since_ack += 1;
                    if since_ack >= ack_every {
                        since_ack = 0;
                        if ws.send(Message::binary(vec![0u8; 40])).await.is_err() {
                            break;
                        }
                    }
                }
                if let Message::Binary(b) = msg {
                    match stats::parse(&b) {
                        Some((id, ts)) => tracker.on_delivery(id, ts),
                        None => {
                            tracker.bad_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// Connects the bare sender.
pub async fn bare_sender(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Result<Sender> {
    let mut ws = connect(addr, "/", tls).await?;
    ws.send(Message::text("send")).await?;
    let (sink, _stream) = ws.split();
    let conn = Conn {
        sink,
        next_request: 1,
        acked_own: 0,
        stats: Arc::new(SenderStats::default()),
    };
    Ok(Sender::new(vec![conn], Proto::Bare))
}

// ---------------------------------------------------------------------------------------
// Cove protocol

/// A registered device on an open connection.
pub struct Device {
    /// The connection.
    pub ws: Ws,
    /// The id the relay gave it.
    pub id: DeviceId,
    next_request: u32,
}

impl Device {
    /// Connects and registers a fresh user `user` with a new device key.
    pub async fn register(
        addr: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
        user: &str,
    ) -> Result<Device> {
        let mut ws = connect(addr, cove_wire::WS_PATH, tls).await?;
        let nonce = match next_frame(&mut ws).await? {
            ServerFrame::Challenge { nonce, .. } => nonce,
            other => bail!("expected a challenge, got {other:?}"),
        };
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let user = UserName::new(user)?;
        let public = DeviceKey(key.verifying_key().to_bytes());
        let channel = cove_test_utils::channel_binding(&ws).map_err(|e| anyhow!("{e}"))?;
        let msg = cove_wire::sign::auth_challenge_message(&nonce, &channel, &user, &public);
        let signature = Signature(key.sign(&msg).to_bytes());
        let mut dev = Device {
            ws,
            id: DeviceId(0),
            next_request: 1,
        };
        let reply = dev
            .request(Request::Register {
                user,
                key: public,
                signature,
            })
            .await?;
        match reply {
            Reply::Authenticated { device } => dev.id = device,
            other => bail!("expected Authenticated, got {other:?}"),
        }
        Ok(dev)
    }

    /// Sends a request and waits for its response, skipping other frames.
    pub async fn request(&mut self, body: Request) -> Result<Reply> {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let bytes = cove_wire::encode(&ClientFrame::Request { id, body })?;
        self.ws.send(Message::binary(bytes)).await?;
        loop {
            match next_frame(&mut self.ws).await? {
                ServerFrame::Response { id: got, result } if got == id => {
                    return result.map_err(|e| anyhow!("relay refused: {e}"));
                }
                _ => continue,
            }
        }
    }
}

/// The next decoded server frame.
async fn next_frame(ws: &mut Ws) -> Result<ServerFrame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(cove_wire::decode(&b)?),
            Some(Ok(Message::Close(c))) => bail!("connection closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// Registers `n` receiving devices (users `{prefix}{i}`), concurrently.
pub async fn relay_devices(
    n: usize,
    prefix: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Vec<Device>> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let tls = tls.clone();
            let user = format!("{prefix}{i}");
            async move { Device::register(addr, &tls, &user).await }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<Result<Device>>>()
        .await
        .into_iter()
        .collect()
}

/// How the receiving devices acknowledge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// Never (group entries; inbox entries are acked): a diagnostic.
    Never,
    /// Cumulatively every `n` group entries, with `QuietAck` if `quiet`, else with `Ack`
    /// (answered; what `cove-core` did before it acked per burst).
    Every {
        /// Group entries per ack.
        n: u64,
        /// `QuietAck` instead of `Ack`.
        quiet: bool,
    },
    /// As `cove-core` did before it acked by count: after a frame, the frames already
    /// waiting behind it (up to [`BURST_FRAMES`]) are read too, then one cumulative ack per
    /// stream goes out, group acks as `QuietAck` except every [`ANSWERED_EVERY`]th (the
    /// core answers one after 64 unsettled quiet ones), inbox acks as `Ack`. The core's
    /// 100 ms timer is left out: here every burst ends.
    Burst,
    /// As `cove-core` does: bursts as in [`AckMode::Burst`], but the end of a burst sends
    /// the acks only once [`ACK_BATCH`] entries are unacked and its stretch of
    /// [`ACK_INTERVAL`] passed since the count last sent acks (or an inbox entry is
    /// unacked); the others wait for more, or for the device to be idle for its stretch of
    /// [`ACK_IDLE`], or for its stretch of [`ACK_DELAY`] after the first of them (the core's
    /// constants; the stretch, 0 to 100% per device, from the device id as the core
    /// computes it).
    Count,
}

/// [`AckMode::Count`]: entries that are acked at the end of their burst (`ACK_BATCH`).
const ACK_BATCH: u64 = 64;
/// [`AckMode::Count`]: least time between two acks sent for their count (`ACK_INTERVAL_MS`).
const ACK_INTERVAL: Duration = Duration::from_millis(1_000);
/// [`AckMode::Count`]: the longest an ack waits after the first entry (`ACK_DELAY_MS`).
const ACK_DELAY: Duration = Duration::from_millis(1_000);
/// [`AckMode::Count`]: idle time after which the acks go out (`ACK_IDLE_MS`).
const ACK_IDLE: Duration = Duration::from_millis(250);

/// `base` stretched by device `id`'s fraction, as `cove-core`'s `Acks::set_device` does.
fn stretched(base: Duration, id: DeviceId) -> Duration {
    let thousandths = (id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1_000;
    base + base * thousandths as u32 / 1_000
}

/// Most frames one burst reads (as `cove`'s session does).
const BURST_FRAMES: usize = 256;
/// One group ack in this many is answered in [`AckMode::Burst`].
const ANSWERED_EVERY: u64 = 65;

/// Spawns the read loop of a receiving device: every application entry of the group is
/// counted and acknowledged as `acks` says.
pub fn spawn_relay_receiver(dev: Device, tracker: Arc<Tracker>, acks: AckMode) {
    tokio::spawn(async move {
        let mut ws = dev.ws;
        let mut next_request = dev.next_request;
        let mut unacked = 0u64;
        let mut group_acks = 0u64;
        // Burst mode: the highest seq per stream seen in this burst.
        let mut burst: Vec<(WireStream, cove_wire::Seq)> = Vec::new();
        // Count mode: entries in `burst` not acked yet (an inbox one among them), when
        // the first came and when they are due.
        let mut held = 0u64;
        let mut urgent = false;
        let mut first_at: Option<tokio::time::Instant> = None;
        let mut due: Option<tokio::time::Instant> = None;
        let (idle, delay) = (stretched(ACK_IDLE, dev.id), stretched(ACK_DELAY, dev.id));
        let interval = stretched(ACK_INTERVAL, dev.id);
        // When the count last sent acks (what paces the next ones).
        let mut counted_at: Option<tokio::time::Instant> = None;
        // The highest group seq delivered (one group).
        let mut last_seq = 0u64;
        // One timer for the whole connection, armed lazily: it is moved only when the
        // deadline comes earlier than it is set for; when it fires before a deadline that
        // moved later meanwhile (the idle deadline moves with every entry), it is set again.
        // (A `timeout_at` per read would register and cancel a timer per frame: load-
        // generator work the bare receivers do not do.)
        let timer = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(timer);
        let mut armed: Option<tokio::time::Instant> = None;
        'read: loop {
            // `None`: the timer fired (what was held goes out now).
            let first = match due {
                None => match ws.next().await {
                    Some(Ok(msg)) => Some(msg),
                    _ => break,
                },
                Some(at) => {
                    if armed.is_none_or(|a| a > at) {
                        timer.as_mut().reset(at);
                        armed = Some(at);
                    }
                    tokio::select! {
                        biased;
                        msg = ws.next() => match msg {
                            Some(Ok(msg)) => Some(msg),
                            _ => break,
                        },
                        () = &mut timer => {
                            armed = None;
                            if tokio::time::Instant::now() < at {
                                continue 'read;
                            }
                            None
                        }
                    }
                }
            };
            let fired = first.is_none();
            let mut next = first;
            let mut frames = 0;
            let mut to_send: Vec<(WireStream, cove_wire::Seq)> = Vec::new();
            while let Some(msg) = next.take() {
                frames += 1;
                if let Message::Binary(b) = msg {
                    let seen = match cove_wire::decode::<ServerFrame>(&b) {
                        Ok(ServerFrame::Deliver(Delivery::Group(e))) if e.seq.0 <= last_seq => {
                            // Delivered again or out of order: counted, not a delivery.
                            tracker.repeated.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                        Ok(ServerFrame::Deliver(Delivery::Group(e))) => {
                            last_seq = e.seq.0;
                            if e.kind == EntryKind::Application {
                                match stats::parse(e.payload.as_bytes()) {
                                    Some((id, ts)) => tracker.on_delivery(id, ts),
                                    None => {
                                        tracker.bad_frames.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            Some((WireStream::Group(e.group), e.seq))
                        }
                        Ok(ServerFrame::Deliver(Delivery::Inbox(e))) => {
                            Some((WireStream::Inbox, e.seq))
                        }
                        Ok(ServerFrame::Response { result: Err(_), .. }) | Err(_) => {
                            tracker.bad_frames.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                        Ok(_) => None,
                    };
                    match (acks, seen) {
                        (_, None) => {}
                        (AckMode::Burst | AckMode::Count, Some((stream, seq))) => {
                            held += 1;
                            urgent |= stream == WireStream::Inbox;
                            match burst.iter_mut().find(|(s, _)| *s == stream) {
                                Some((_, at)) => *at = (*at).max(seq),
                                None => burst.push((stream, seq)),
                            }
                        }
                        (_, Some((WireStream::Inbox, seq))) => {
                            to_send.push((WireStream::Inbox, seq))
                        }
                        (AckMode::Never, Some(_)) => {}
                        (AckMode::Every { n, .. }, Some(group)) => {
                            unacked += 1;
                            if unacked >= n {
                                unacked = 0;
                                to_send.push(group);
                            }
                        }
                    }
                }
                if matches!(acks, AckMode::Burst | AckMode::Count) && frames < BURST_FRAMES {
                    // What the socket has ready now, without waiting.
                    match ws.next().now_or_never() {
                        None => {}
                        Some(Some(Ok(msg))) => next = Some(msg),
                        Some(_) => break 'read,
                    }
                }
            }
            if frames > 0 {
                tracker.bursts.fetch_add(1, Ordering::Relaxed);
            }
            let now = tokio::time::Instant::now();
            let paced = counted_at.is_none_or(|at| now >= at + interval);
            if acks == AckMode::Count
                && held > 0
                && !urgent
                && !fired
                && (held < ACK_BATCH || !paced)
            {
                // Fewer than the count (or the count again within the interval) wait for
                // more, for the device to be idle, or for the delay after the first of them.
                let first = *first_at.get_or_insert(now);
                due = Some((now + idle).min(first + delay));
            } else {
                if acks == AckMode::Count && held >= ACK_BATCH && !urgent && !fired {
                    counted_at = Some(now);
                }
                held = 0;
                urgent = false;
                first_at = None;
                due = None;
                to_send.append(&mut burst);
            }
            if to_send.is_empty() {
                continue;
            }
            tracker
                .acks
                .fetch_add(to_send.len() as u64, Ordering::Relaxed);
            for (stream, seq) in to_send {
                let id = RequestId(next_request);
                next_request = next_request.wrapping_add(1);
                let quiet = match (acks, stream) {
                    (_, WireStream::Inbox) => false,
                    (AckMode::Every { quiet, .. }, _) => quiet,
                    _ => {
                        group_acks += 1;
                        !group_acks.is_multiple_of(ANSWERED_EVERY)
                    }
                };
                let body = if quiet {
                    Request::QuietAck { stream, seq }
                } else {
                    Request::Ack { stream, seq }
                };
                let Ok(bytes) = cove_wire::encode(&ClientFrame::Request { id, body }) else {
                    break 'read;
                };
                if ws.feed(Message::binary(bytes)).await.is_err() {
                    break 'read;
                }
            }
            if ws.flush().await.is_err() {
                break;
            }
        }
    });
}

/// Turns registered devices into the benchmark sender: a task per device reads its frames
/// (counting refused posts, acking its own pushed entries), and the returned [`Sender`]
/// posts through the first of them (or through all, round-robin: [`Sender::set_active`]).
pub fn relay_sender(devs: Vec<Device>, group: GroupId, epoch: Epoch, quiet_acks: bool) -> Sender {
    let conns = devs
        .into_iter()
        .map(|dev| {
            let stats = Arc::new(SenderStats::default());
            let (sink, stream) = dev.ws.split();
            tokio::spawn(read_sender_frames(stream, stats.clone()));
            Conn {
                sink,
                next_request: dev.next_request,
                acked_own: 0,
                stats,
            }
        })
        .collect();
    let mut s = Sender::new(conns, Proto::Relay { group, epoch });
    s.quiet_acks = quiet_acks;
    s
}

async fn read_sender_frames(mut stream: SplitStream<Ws>, stats: Arc<SenderStats>) {
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Binary(b) = msg else { continue };
        match cove_wire::decode::<ServerFrame>(&b) {
            Ok(ServerFrame::Response {
                result: Ok(Reply::Posted { .. }),
                ..
            }) => {
                stats.posted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ServerFrame::Response { result: Err(e), .. }) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
            Ok(ServerFrame::Deliver(Delivery::Group(e))) => {
                stats.own_seq.fetch_max(e.seq.0, Ordering::Relaxed);
            }
            Ok(ServerFrame::Closing { code }) => {
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = Some(format!("relay closed the sender: {code:?}"));
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The sender

/// What the relay told the sender.
#[derive(Default)]
pub struct SenderStats {
    /// Posts acknowledged as durable.
    pub posted: AtomicU64,
    /// Posts refused.
    pub refused: AtomicU64,
    /// Highest group seq pushed back to the sender itself (it acks up to here).
    pub own_seq: AtomicU64,
    /// The last refusal or close reason.
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// One sending connection.
struct Conn {
    sink: SplitSink<Ws, Message>,
    next_request: u32,
    acked_own: u64,
    /// Replies seen by this connection's reader task.
    stats: Arc<SenderStats>,
}

/// The sending connections: posts go through the first `active` of them, round-robin.
pub struct Sender {
    conns: Vec<Conn>,
    active: usize,
    proto: Proto,
    /// Messages sent so far (ids are 0..sent).
    pub sent: u64,
    quiet_acks: bool,
}

/// Outcome of one load phase.
pub struct PhaseResult {
    /// Measured time.
    pub elapsed: Duration,
    /// Largest lag of the open-loop schedule (0 for the closed loop).
    pub max_lag: Duration,
}

impl Sender {
    fn new(conns: Vec<Conn>, proto: Proto) -> Self {
        Sender {
            conns,
            active: 1,
            proto,
            sent: 0,
            quiet_acks: false,
        }
    }

    /// Posts go through the first `k` connections (at least 1, at most all), round-robin.
    pub fn set_active(&mut self, k: usize) {
        self.active = k.clamp(1, self.conns.len().max(1));
    }

    /// Posts acknowledged as durable, over every connection.
    pub fn posted(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.stats.posted.load(Ordering::Relaxed))
            .sum()
    }

    /// Posts refused, over every connection.
    pub fn refused(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.stats.refused.load(Ordering::Relaxed))
            .sum()
    }

    /// The last refusal or close reason of any connection.
    pub fn last_error(&self) -> Option<String> {
        self.conns
            .iter()
            .find_map(|c| c.stats.last_error.lock().ok().and_then(|l| l.clone()))
    }

    /// Queues message number `self.sent` (not flushed) on its connection.
    async fn feed(&mut self, size: usize, tracker: &Tracker) -> Result<()> {
        let payload = stats::payload(size, self.sent, tracker.now_ns());
        let k = (self.sent % self.active as u64) as usize;
        let proto = self.proto;
        let conn = self
            .conns
            .get_mut(k)
            .ok_or_else(|| anyhow!("no sending connection {k}"))?;
        let msg = match proto {
            Proto::Bare => Message::binary(payload),
            Proto::Relay { group, epoch } => {
                let id = RequestId(conn.next_request);
                conn.next_request = conn.next_request.wrapping_add(1);
                let body = Request::Post {
                    group,
                    epoch,
                    kind: PostKind::Application,
                    payload: Payload(payload),
                };
                Message::binary(cove_wire::encode(&ClientFrame::Request { id, body })?)
            }
        };
        self.sent += 1;
        conn.sink.feed(msg).await?;
        Ok(())
    }

    /// Acks the entries pushed back to each sending device, every 64 of them, and flushes
    /// every connection.
    async fn ack_own_and_flush(&mut self) -> Result<()> {
        let quiet_acks = self.quiet_acks;
        for conn in &mut self.conns {
            if let Proto::Relay { group, .. } = self.proto {
                let seq = conn.stats.own_seq.load(Ordering::Relaxed);
                if seq >= conn.acked_own + 64 {
                    conn.acked_own = seq;
                    let id = RequestId(conn.next_request);
                    conn.next_request = conn.next_request.wrapping_add(1);
                    let stream = WireStream::Group(group);
                    let seq = cove_wire::Seq(seq);
                    let body = if quiet_acks {
                        Request::QuietAck { stream, seq }
                    } else {
                        Request::Ack { stream, seq }
                    };
                    conn.sink
                        .feed(Message::binary(cove_wire::encode(&ClientFrame::Request {
                            id,
                            body,
                        })?))
                        .await?;
                }
            }
            conn.sink.flush().await?;
        }
        Ok(())
    }

    /// Closed loop for `duration`: keeps `window` messages in flight, a message leaving the
    /// window when every receiver has it.
    pub async fn closed_loop(
        &mut self,
        tracker: &Tracker,
        size: usize,
        window: u64,
        duration: Duration,
    ) -> Result<PhaseResult> {
        let start = Instant::now();
        while start.elapsed() < duration {
            let done = tracker.done.load(Ordering::Acquire);
            let in_flight = self.sent.saturating_sub(done);
            if in_flight < window {
                for _ in in_flight..window {
                    self.feed(size, tracker).await?;
                }
                self.ack_own_and_flush().await?;
            } else if tokio::time::timeout(Duration::from_secs(10), tracker.notify.notified())
                .await
                .is_err()
            {
                bail!(
                    "closed loop stalled: {} of {} messages complete; {} posts acknowledged, {} refused (last error {:?}); {} group entries delivered again or out of order",
                    done,
                    self.sent,
                    self.posted(),
                    self.refused(),
                    self.last_error(),
                    tracker.repeated.load(Ordering::Relaxed)
                );
            }
        }
        Ok(PhaseResult {
            elapsed: start.elapsed(),
            max_lag: Duration::ZERO,
        })
    }

    /// Open loop for `duration`: one message every `1/rate` seconds, whatever the receivers do.
    pub async fn open_loop(
        &mut self,
        tracker: &Tracker,
        size: usize,
        rate: f64,
        duration: Duration,
    ) -> Result<PhaseResult> {
        let start = tokio::time::Instant::now();
        let mut max_lag = Duration::ZERO;
        let mut i = 0u64;
        loop {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            if at - start >= duration {
                break;
            }
            tokio::time::sleep_until(at).await;
            max_lag = max_lag.max(tokio::time::Instant::now() - at);
            // Everything due by now goes out in one flush.
            loop {
                self.feed(size, tracker).await?;
                i += 1;
                let next = start + Duration::from_secs_f64(i as f64 / rate);
                if next > tokio::time::Instant::now() || next - start >= duration {
                    break;
                }
            }
            self.ack_own_and_flush().await?;
        }
        Ok(PhaseResult {
            elapsed: start.elapsed(),
            max_lag,
        })
    }
}
