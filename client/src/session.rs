//! The session task: owns the sans-IO [`Client`] and pumps it against the relay connection.
//!
//! ```text
//! loop {
//!     connect (TLS + WebSocket) ─ fail → back off (commands still run) → retry
//!     client.handle_connected(now, tls_channel_binding)
//!     select {
//!         frame from socket → client.handle_frame(now, frame), and the frames already
//!             waiting behind it; then client.end_of_burst() (acks, once enough are unacked)
//!         command from a [`Session`] handle → run it against &mut client
//!         client.poll_timeout() reached → client.handle_timeout(now)
//!     }
//!     after each: drain client.poll_output(): Send → socket, Event → waiters and the UI
//!     socket closed → client.handle_disconnected(), back off, reconnect
//! }
//! ```
//!
//! The client lives in this one task; handles send it closures over a channel, so no lock is
//! ever held across an `.await`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use cove_core::{Client, Event, HandleError, OpError, OpId, Output};
use cove_store::Store;
use cove_wire::{ClientFrame, Request, RequestId, ServerFrame};
use futures_util::FutureExt as _;

use crate::transport::{Connection, TransportError};

/// First reconnect delay; doubles up to [`MAX_BACKOFF`], with jitter.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Most frames handled in one burst before the core is told it ended (and acks it).
const MAX_BURST_FRAMES: usize = 256;

/// Milliseconds since the Unix epoch: the shell's clock for the core.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the session reports besides the core's events.
#[derive(Clone, Debug, PartialEq, Eq)]
// Events move once through a channel; boxing the large one would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum SessionEvent {
    /// An event from the core.
    Core(Event),
    /// The WebSocket is up (authentication follows, reported by the core).
    Connected,
    /// The connection failed or was lost; the session retries.
    Disconnected(String),
}

/// The connection state, for error messages and waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected yet, or reconnecting; the last failure if any.
    Down(Option<String>),
    /// Connected, backlog not yet received.
    Up,
    /// Connected and the relay pushed its whole backlog.
    CaughtUp,
    /// The session stopped (closed, or a fatal error).
    Stopped(Option<String>),
}

/// Why a session call failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session task has stopped.
    #[error("the session has stopped{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Stopped(Option<String>),
    /// The operation did not complete in time.
    #[error("timed out after {secs} s waiting for the relay{}", .state.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Timeout {
        /// How long we waited.
        secs: u64,
        /// The connection state at the time, if informative.
        state: Option<String>,
    },
    /// The operation completed with an error.
    #[error(transparent)]
    Op(#[from] OpError),
}

/// Where to connect.
#[derive(Clone)]
pub struct Endpoint {
    /// `wss://HOST:PORT`.
    pub server: String,
    /// The TLS client configuration (trust roots).
    pub tls: Arc<rustls::ClientConfig>,
}

type Job<S> = Box<dyn FnOnce(&mut Client<S>, &mut Waiters) + Send>;

/// Commands waiting for their [`Event::OpDone`].
#[derive(Default)]
pub struct Waiters {
    ops: HashMap<OpId, oneshot::Sender<Result<(), OpError>>>,
}

impl Waiters {
    fn complete(&mut self, op: OpId, result: Result<(), OpError>) {
        if let Some(tx) = self.ops.remove(&op) {
            let _ = tx.send(result);
        }
    }
}

enum Command<S: Store> {
    Run(Job<S>),
    Stop(oneshot::Sender<Client<S>>),
}

/// A handle to the session task. Cheap to clone.
pub struct Session<S: Store> {
    commands: mpsc::UnboundedSender<Command<S>>,
    link: watch::Receiver<LinkState>,
    idle: watch::Receiver<bool>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl<S: Store> Clone for Session<S> {
    fn clone(&self) -> Self {
        Session {
            commands: self.commands.clone(),
            link: self.link.clone(),
            idle: self.idle.clone(),
            last_error: Arc::clone(&self.last_error),
        }
    }
}

impl<S: Store + 'static> Session<S> {
    /// Starts the session task for `client`. With `endpoint` it connects (and reconnects);
    /// without, it runs offline (queries only). Events go to the returned receiver.
    pub fn start(
        client: Client<S>,
        endpoint: Option<Endpoint>,
    ) -> (Session<S>, mpsc::UnboundedReceiver<SessionEvent>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (link_tx, link) = watch::channel(LinkState::Down(None));
        let (idle_tx, idle) = watch::channel(false);
        let last_error = Arc::new(Mutex::new(None));
        let pump = Pump {
            client,
            waiters: Waiters::default(),
            commands: rx,
            events: events_tx,
            link: link_tx,
            idle: idle_tx,
            in_flight: HashSet::new(),
            last_error: Arc::clone(&last_error),
        };
        tokio::spawn(pump.run(endpoint));
        (
            Session {
                commands,
                link,
                idle,
                last_error,
            },
            events_rx,
        )
    }

    /// Runs `f` against the client inside the session task and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client<S>) -> R + Send + 'static,
    ) -> Result<R, SessionError> {
        let (tx, rx) = oneshot::channel();
        let job: Job<S> = Box::new(move |client, _| {
            let _ = tx.send(f(client));
        });
        self.commands
            .send(Command::Run(job))
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Starts a command with `f` (which returns its [`OpId`] or a local error) and waits up
    /// to `timeout` for its completion.
    pub async fn op<E: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut Client<S>) -> Result<OpId, E> + Send + 'static,
    ) -> Result<Result<(), SessionError>, E> {
        let (started_tx, started_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let job: Job<S> = Box::new(move |client, waiters| match f(client) {
            Ok(op) => {
                waiters.ops.insert(op, done_tx);
                let _ = started_tx.send(Ok(()));
            }
            Err(e) => {
                let _ = started_tx.send(Err(e));
            }
        });
        if self.commands.send(Command::Run(job)).is_err() {
            return Ok(Err(self.stopped()));
        }
        match started_rx.await {
            Err(_) => return Ok(Err(self.stopped())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
        }
        Ok(match tokio::time::timeout(timeout, done_rx).await {
            Err(_) => Err(self.timeout(timeout)),
            Ok(Err(_)) => Err(self.stopped()),
            Ok(Ok(result)) => result.map_err(SessionError::Op),
        })
    }

    /// Waits until the relay has pushed its backlog on the current connection.
    pub async fn caught_up(&self, timeout: Duration) -> Result<(), SessionError> {
        self.wait_link(timeout, |s| matches!(s, LinkState::CaughtUp))
            .await
    }

    /// Waits until the socket is connected (not necessarily caught up).
    pub async fn connected(&self, timeout: Duration) -> Result<(), SessionError> {
        self.wait_link(timeout, |s| {
            matches!(s, LinkState::Up | LinkState::CaughtUp)
        })
        .await
    }

    /// Waits until the session is settled: caught up with the relay, no request waiting
    /// for its reply and no command running. A quiet point to read state or to close.
    pub async fn settled(&self, timeout: Duration) -> Result<(), SessionError> {
        let mut idle = self.idle.clone();
        let mut link = self.link.clone();
        let wait = async {
            loop {
                if *idle.borrow_and_update() {
                    return Ok(());
                }
                if let LinkState::Stopped(reason) = link.borrow_and_update().clone() {
                    return Err(SessionError::Stopped(reason));
                }
                // A session that stops (e.g. the relay refused to authenticate us) never
                // becomes idle: wake on either, so the caller hears it at once.
                let changed = tokio::select! {
                    r = idle.changed() => r,
                    r = link.changed() => r,
                };
                if changed.is_err() {
                    return Err(self.stopped());
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout(timeout)),
        }
    }

    /// The current connection state.
    pub fn link(&self) -> LinkState {
        self.link.borrow().clone()
    }

    /// Stops the task (closing the connection politely) and returns the client.
    pub async fn stop(&self) -> Option<Client<S>> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Stop(tx)).ok()?;
        rx.await.ok()
    }

    async fn wait_link(
        &self,
        timeout: Duration,
        ready: impl Fn(&LinkState) -> bool,
    ) -> Result<(), SessionError> {
        let mut link = self.link.clone();
        let wait = async {
            loop {
                let state = link.borrow_and_update().clone();
                if ready(&state) {
                    return Ok(());
                }
                if let LinkState::Stopped(reason) = state {
                    return Err(SessionError::Stopped(reason));
                }
                if link.changed().await.is_err() {
                    return Err(self.stopped());
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout(timeout)),
        }
    }

    fn stopped(&self) -> SessionError {
        match self.link.borrow().clone() {
            LinkState::Stopped(reason) => SessionError::Stopped(reason),
            _ => SessionError::Stopped(None),
        }
    }

    fn timeout(&self, timeout: Duration) -> SessionError {
        let state = match self.link.borrow().clone() {
            LinkState::Down(_) => {
                let last = self
                    .last_error
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_default();
                Some(match last {
                    Some(e) => format!("not connected: {e}"),
                    None => "not connected yet".to_owned(),
                })
            }
            LinkState::Stopped(r) => r,
            LinkState::Up | LinkState::CaughtUp => None,
        };
        SessionError::Timeout {
            secs: timeout.as_secs(),
            state,
        }
    }
}

/// The task's state.
struct Pump<S: Store> {
    client: Client<S>,
    waiters: Waiters,
    commands: mpsc::UnboundedReceiver<Command<S>>,
    events: mpsc::UnboundedSender<SessionEvent>,
    link: watch::Sender<LinkState>,
    /// True when caught up, with no request in flight and no command running.
    idle: watch::Sender<bool>,
    /// Requests sent on the current connection and not answered yet.
    in_flight: HashSet<RequestId>,
    last_error: Arc<Mutex<Option<String>>>,
}

/// Why the inner connection loop ended.
enum Ended<S: Store> {
    /// The connection dropped; reconnect.
    Lost(String),
    /// Asked to stop.
    Stop(oneshot::Sender<Client<S>>),
    /// The relay refused this device for good (e.g. authentication refused); no retry.
    Fatal(String),
    /// Every handle is gone.
    Orphaned,
}

impl<S: Store + 'static> Pump<S> {
    async fn run(mut self, endpoint: Option<Endpoint>) {
        let reply = match endpoint {
            None => self.run_offline().await,
            Some(endpoint) => self.run_online(endpoint).await,
        };
        self.idle.send_replace(false);
        if !matches!(*self.link.borrow(), LinkState::Stopped(_)) {
            self.link.send_replace(LinkState::Stopped(None));
        }
        if let Some(reply) = reply {
            let _ = reply.send(self.client);
        }
    }

    /// Serves commands without a connection.
    async fn run_offline(&mut self) -> Option<oneshot::Sender<Client<S>>> {
        loop {
            tokio::select! {
                () = sleep_until_some(self.local_deadline()) => self.on_local_timer(),
                cmd = self.commands.recv() => match cmd {
                    None => return None,
                    Some(Command::Stop(reply)) => return Some(reply),
                    Some(Command::Run(job)) => {
                        job(&mut self.client, &mut self.waiters);
                        self.drain_offline();
                    }
                },
            }
        }
    }

    /// The core's next deadline while not connected (read receipts to send, disappearing
    /// messages to delete), on the tokio clock.
    fn local_deadline(&self) -> Option<tokio::time::Instant> {
        self.client.poll_timeout().map(|at| {
            tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
        })
    }

    /// That deadline came while not connected.
    fn on_local_timer(&mut self) {
        if let Err(e) = self.client.handle_timeout(now_ms()) {
            warn!(error = %e, "timer not processed while offline");
        }
        self.drain_offline();
    }

    async fn run_online(&mut self, endpoint: Endpoint) -> Option<oneshot::Sender<Client<S>>> {
        let mut backoff = MIN_BACKOFF;
        loop {
            let connect = Connection::connect_with(&endpoint.server, Arc::clone(&endpoint.tls));
            tokio::pin!(connect);
            // Commands keep running while we connect.
            let connected = loop {
                tokio::select! {
                    c = &mut connect => break c,
                    () = sleep_until_some(self.local_deadline()) => self.on_local_timer(),
                    cmd = self.commands.recv() => match cmd {
                        None => return None,
                        Some(Command::Stop(reply)) => return Some(reply),
                        Some(Command::Run(job)) => {
                            job(&mut self.client, &mut self.waiters);
                            self.drain_offline();
                        }
                    },
                }
            };
            let ended = match connected {
                Ok(conn) => {
                    backoff = MIN_BACKOFF;
                    self.serve(conn).await
                }
                Err(e) => Ended::Lost(e.to_string()),
            };
            match ended {
                Ended::Stop(reply) => return Some(reply),
                Ended::Orphaned => return None,
                Ended::Fatal(reason) => {
                    // The caller hears the reason (`LinkState::Stopped`); logging it as a
                    // warning too would print it twice.
                    debug!(%reason, "giving up on the relay");
                    let _ = self.events.send(SessionEvent::Disconnected(reason.clone()));
                    self.link.send_replace(LinkState::Stopped(Some(reason)));
                    // Keep serving local commands (queries) until stopped.
                    return self.run_offline().await;
                }
                Ended::Lost(reason) => {
                    debug!(%reason, "connection lost");
                    if let Ok(mut last) = self.last_error.lock() {
                        *last = Some(reason.clone());
                    }
                    self.link
                        .send_replace(LinkState::Down(Some(reason.clone())));
                    let _ = self.events.send(SessionEvent::Disconnected(reason));
                }
            }
            // Back off, still serving commands.
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() / 2);
            let delay = backoff + Duration::from_millis(u64::try_from(jitter).unwrap_or(0));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = sleep_until_some(self.local_deadline()) => self.on_local_timer(),
                    cmd = self.commands.recv() => match cmd {
                        None => return None,
                        Some(Command::Stop(reply)) => return Some(reply),
                        Some(Command::Run(job)) => {
                            job(&mut self.client, &mut self.waiters);
                            self.drain_offline();
                        }
                    },
                }
            }
        }
    }

    /// Runs one connection until it drops or the session stops.
    async fn serve(&mut self, mut conn: Connection) -> Ended<S> {
        self.link.send_replace(LinkState::Up);
        let _ = self.events.send(SessionEvent::Connected);
        self.client
            .handle_connected(now_ms(), conn.channel_binding());
        let ended = loop {
            if let Err(e) = self.drain(&mut conn).await {
                break Ended::Lost(e.to_string());
            }
            // The core's next deadline (acks not sent yet, resending refused posts), on the
            // tokio clock.
            let deadline = self.client.poll_timeout().map(|at| {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                tokio::time::Instant::now() + wait
            });
            tokio::select! {
                () = sleep_until_some(deadline) => {
                    if let Err(e) = self.client.handle_timeout(now_ms()) {
                        warn!(error = %e, "timer not processed; reconnecting");
                        break Ended::Lost(e.to_string());
                    }
                }
                frame = conn.recv() => match frame {
                    Ok(Some(frame)) => {
                        if let Some(ended) = self.on_frame(frame) {
                            break ended;
                        }
                        // The rest of what the connection has ready, then the end of the
                        // burst (acks once enough are unacked; else the core's timers).
                        if let Some(ended) = self.rest_of_burst(&mut conn) {
                            break ended;
                        }
                    }
                    Ok(None) => break Ended::Lost("the relay closed the connection".into()),
                    Err(e) => break Ended::Lost(e.to_string()),
                },
                cmd = self.commands.recv() => match cmd {
                    None => break Ended::Orphaned,
                    Some(Command::Stop(reply)) => {
                        // Flush what the last commands queued, and the acks of what was
                        // processed, before closing.
                        self.client.flush_acks();
                        let _ = self.drain(&mut conn).await;
                        break Ended::Stop(reply);
                    }
                    Some(Command::Run(job)) => job(&mut self.client, &mut self.waiters),
                },
            }
        };
        self.in_flight.clear();
        self.client.handle_disconnected();
        self.drain_offline();
        conn.close().await;
        ended
    }

    /// Hands one frame to the core; what ends the connection, if it does.
    fn on_frame(&mut self, frame: ServerFrame) -> Option<Ended<S>> {
        if let ServerFrame::Response { id, .. } = &frame {
            self.in_flight.remove(id);
        }
        match self.client.handle_frame(now_ms(), frame) {
            Ok(()) => None,
            Err(HandleError::Closing(code)) => Some(Ended::Lost(format!(
                "the relay closed the connection ({code:?})"
            ))),
            Err(refused @ HandleError::AuthRefused(_)) => Some(Ended::Fatal(refused.to_string())),
            Err(other) => {
                warn!(error = %other, "frame not processed; reconnecting");
                Some(Ended::Lost(other.to_string()))
            }
        }
    }

    /// Handles the frames the connection has ready now (at most [`MAX_BURST_FRAMES`]),
    /// without waiting, then tells the core the burst ended, which acks once enough entries
    /// are unacked (one ack per stream, not one per entry; fewer wait for the core's timers).
    fn rest_of_burst(&mut self, conn: &mut Connection) -> Option<Ended<S>> {
        for _ in 0..MAX_BURST_FRAMES {
            // `recv` is cancel-safe: a frame not ready now is read by the next call.
            match conn.recv().now_or_never() {
                None => break,
                Some(Ok(Some(frame))) => {
                    if let Some(ended) = self.on_frame(frame) {
                        return Some(ended);
                    }
                }
                Some(Ok(None)) => {
                    return Some(Ended::Lost("the relay closed the connection".into()));
                }
                Some(Err(e)) => return Some(Ended::Lost(e.to_string())),
            }
        }
        self.client.end_of_burst();
        None
    }

    /// Drains the core's outputs onto the connection.
    async fn drain(&mut self, conn: &mut Connection) -> Result<(), TransportError> {
        let mut wrote = false;
        while let Some(output) = self.client.poll_output() {
            match output {
                Output::Send(frame) => {
                    if let Some(id) = request_id(&frame) {
                        self.in_flight.insert(id);
                    }
                    conn.feed(&frame).await?;
                    wrote = true;
                }
                Output::Event(event) => self.event(event),
            }
        }
        if wrote {
            conn.flush().await?;
        }
        let idle = matches!(*self.link.borrow(), LinkState::CaughtUp)
            && self.in_flight.is_empty()
            && !self.client.has_pending_ops();
        self.idle
            .send_if_modified(|v| std::mem::replace(v, idle) != idle);
        Ok(())
    }

    /// Drains outputs while disconnected: events are delivered, frames are dropped (the
    /// core sends again what matters after the next `handle_connected`).
    fn drain_offline(&mut self) {
        self.idle.send_if_modified(|v| std::mem::replace(v, false));
        while let Some(output) = self.client.poll_output() {
            match output {
                Output::Send(_) => debug!("dropping a frame while disconnected"),
                Output::Event(event) => self.event(event),
            }
        }
    }

    fn event(&mut self, event: Event) {
        match &event {
            Event::OpDone { op, result } => self.waiters.complete(*op, result.clone()),
            Event::BacklogDone => {
                self.link.send_replace(LinkState::CaughtUp);
            }
            _ => {}
        }
        let _ = self.events.send(SessionEvent::Core(event));
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The id of a request frame whose answer the session waits for (not a `QuietAck`: the
/// relay answers it only if it refuses it).
fn request_id(frame: &ClientFrame) -> Option<RequestId> {
    match frame {
        ClientFrame::Request {
            body: Request::QuietAck { .. },
            ..
        } => None,
        ClientFrame::Request { id, .. } => Some(*id),
    }
}
