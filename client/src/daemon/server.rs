//! The socket server: the home's lock, `<home>/daemon.sock`, one task per client connection
//! (reading requests, writing from a bounded queue), notification fan-out, and a clean stop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, warn};

use cove_store::SqliteStore;

use super::rpc::{self, Line, RpcError};
use super::{SOCKET_FILE, backup::Backups, calls::CallManager};
use crate::config::{ConfigError, Home};
use crate::device::{Device, DeviceError};
use crate::session::Session;

/// How many lines (responses and notifications) may wait for a client; a client that lets
/// more pile up is disconnected, so a slow client never holds the daemon up.
pub const CLIENT_QUEUE: usize = 1024;

/// How many clients may be connected at once; a further one is closed at once.
pub const MAX_CLIENTS: usize = 64;

/// How long a closing connection may take to write what is queued for it.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(5);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A daemon already serves this home.
    #[error(
        "a cove daemon is already running for {0} (its socket {1} answers); stop it with `kill` or the `shutdown` method first"
    )]
    AlreadyRunning(PathBuf, PathBuf),
    /// The home could not be opened (not initialised, locked by a non-daemon process, ...).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The socket could not be created.
    #[error("{path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A line for a client's writer, or a request to report when everything before it is
/// written.
pub(super) enum Out {
    Line(Arc<str>),
    Flushed(oneshot::Sender<()>),
}

/// One subscribed connection.
struct Subscriber {
    conn: u64,
    tx: mpsc::Sender<Out>,
    kill: Arc<Notify>,
}

/// The subscribed connections and the fan-out to them.
#[derive(Default)]
pub(super) struct Fanout {
    subscribers: Mutex<Vec<Subscriber>>,
}

impl Fanout {
    /// Queues `line` for every subscriber; one whose queue is full is told to disconnect
    /// (`kill`) and dropped, so a slow client never holds the daemon or the others up.
    fn send(&self, line: &Arc<str>) {
        let Ok(mut subs) = self.subscribers.lock() else {
            return;
        };
        subs.retain(|s| match s.tx.try_send(Out::Line(Arc::clone(line))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!(conn = s.conn, "client too slow: disconnecting it");
                s.kill.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn add(&self, conn: u64, tx: &mpsc::Sender<Out>, kill: &Arc<Notify>) {
        if let Ok(mut subs) = self.subscribers.lock()
            && !subs.iter().any(|s| s.conn == conn)
        {
            subs.push(Subscriber {
                conn,
                tx: tx.clone(),
                kill: Arc::clone(kill),
            });
        }
    }

    fn remove(&self, conn: u64) {
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.retain(|s| s.conn != conn);
        }
    }
}

/// The daemon's state, shared by the connections, the event pump and the calls.
pub struct Daemon {
    /// The device (shared: every command the daemon runs takes `&Device`).
    pub(super) device: Device,
    /// Its session (to run queries without the lock).
    pub(super) session: Session<SqliteStore>,
    /// Whether the relay connection is authenticated.
    pub(super) connected: AtomicBool,
    /// Calls.
    pub(super) calls: CallManager,
    /// The history backup.
    pub(super) backups: Backups,
    /// `cove drive sync`s running in the daemon.
    pub(super) drive_syncs: super::drive::DriveSyncs,
    subscribers: Fanout,
    shutdown: Notify,
    next_conn: AtomicU64,
}

impl Daemon {
    /// Sends a notification to every subscribed client; a client whose queue is full is
    /// disconnected.
    pub(super) fn notify(&self, method: &str, params: Value) {
        self.subscribers
            .send(&rpc::notification(method, params).into());
    }

    /// Asks the daemon to stop.
    pub(super) fn stop(&self) {
        self.shutdown.notify_one();
    }

    fn subscribe(&self, conn: u64, tx: &mpsc::Sender<Out>, kill: &Arc<Notify>) {
        self.subscribers.add(conn, tx, kill);
    }

    fn unsubscribe(&self, conn: u64) {
        self.subscribers.remove(conn);
    }
}

/// The socket path of a home.
pub fn socket_path(home: &Home) -> PathBuf {
    home.dir().join(SOCKET_FILE)
}

/// Runs the daemon for `home` until `SIGTERM`, `SIGINT` or the `shutdown` method: takes the
/// home's lock, opens the device (connecting in the background), listens on
/// `<home>/daemon.sock` (mode 0600; a stale socket left by a crashed daemon is replaced),
/// calls `ready` with the socket's path once it accepts connections, and on the way out
/// removes the socket and closes the device.
pub async fn run(home: &Home, ready: impl FnOnce(&Path)) -> Result<(), DaemonError> {
    let path = socket_path(home);
    let mut device = match Device::open(home).await {
        Ok(d) => d,
        Err(DeviceError::Config(ConfigError::Busy(dir))) => {
            if UnixStream::connect(&path).await.is_ok() {
                return Err(DaemonError::AlreadyRunning(dir, path));
            }
            return Err(DeviceError::Config(ConfigError::Busy(dir)).into());
        }
        Err(e) => return Err(e.into()),
    };
    // We hold the home's lock: a socket file here is a crashed daemon's.
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            device.close_now().await;
            return Err(e);
        }
    };
    let events = device.take_events();
    let session = device.session().clone();
    let daemon = Arc::new(Daemon {
        device,
        session,
        connected: AtomicBool::new(false),
        calls: CallManager::default(),
        backups: Backups::default(),
        drive_syncs: Default::default(),
        subscribers: Fanout::default(),
        shutdown: Notify::new(),
        next_conn: AtomicU64::new(1),
    });
    let pump = tokio::spawn(super::events::pump(Arc::clone(&daemon), events));
    let backups = tokio::spawn(super::backup::run(Arc::clone(&daemon)));
    ready(&path);
    let result = serve(&daemon, listener).await;
    let _ = std::fs::remove_file(&path);
    daemon.calls.hang_up_all(FLUSH_ON_CLOSE).await;
    super::drive::stop_all(&daemon).await;
    // What waits is backed up before the session stops (the pump still routes the replies).
    backups.abort();
    let last = super::backup::backup_if_due(&daemon, 1);
    match tokio::time::timeout(daemon.device.timeout(), last).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "history backup at shutdown failed (retried later)"),
        Err(_) => warn!("history backup at shutdown timed out (retried later)"),
    }
    pump.abort();
    let device = &daemon.device;
    let _ = device.session().stop().await;
    result
}

/// Binds the socket under a temporary name, makes it 0600, then moves it into place (so it
/// is never reachable with wider permissions), replacing a stale one.
fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |source| DaemonError::Socket {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_file_name(format!("{SOCKET_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(listener)
}

async fn serve(daemon: &Arc<Daemon>, listener: UnixListener) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |kind| {
        signal(kind).map_err(|source| DaemonError::Socket {
            path: PathBuf::from("signal handler"),
            source,
        })
    };
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            () = daemon.shutdown.notified() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        warn!("{MAX_CLIENTS} daemon clients connected: refusing another");
                        drop(stream);
                        continue;
                    };
                    let conn = daemon.next_conn.fetch_add(1, Ordering::Relaxed);
                    let daemon = Arc::clone(daemon);
                    tokio::spawn(async move {
                        connection(daemon, stream, conn).await;
                        drop(slot);
                    });
                }
                Err(e) => warn!(error = %e, "accepting a daemon client failed"),
            },
        }
    }
}

/// Serves one client connection.
async fn connection(daemon: Arc<Daemon>, stream: UnixStream, conn: u64) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Out>(CLIENT_QUEUE);
    let kill = Arc::new(Notify::new());
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Out::Line(line) => {
                    if write.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Out::Flushed(done) => {
                    let _ = write.flush().await;
                    let _ = done.send(());
                }
            }
        }
        let _ = write.shutdown().await;
    });
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    let mut killed = false;
    loop {
        let read = tokio::select! {
            () = kill.notified() => { killed = true; break; }
            read = rpc::read_line(&mut reader, &mut buf, rpc::MAX_LINE) => read,
        };
        match read {
            Err(_) | Ok(Line::Eof) if buf.is_empty() => break,
            Err(_) => break,
            Ok(Line::TooLong) => {
                let e = RpcError::new(
                    rpc::INVALID_REQUEST,
                    format!("invalid request: line longer than {} bytes", rpc::MAX_LINE),
                );
                let _ = tx.try_send(Out::Line(rpc::response(&Value::Null, Err(e)).into()));
                break;
            }
            Ok(end @ (Line::Line | Line::Eof)) => {
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    request(&daemon, conn, &tx, &kill, &buf).await;
                }
                if end == Line::Eof {
                    break;
                }
            }
        }
    }
    daemon.unsubscribe(conn);
    drop(tx);
    if killed {
        writer.abort();
    } else {
        let _ = tokio::time::timeout(FLUSH_ON_CLOSE, writer).await;
    }
}

/// Handles one request line: `subscribe` and `shutdown` at once, everything else in its own
/// task (so a slow `send` does not hold up the connection's other requests).
async fn request(
    daemon: &Arc<Daemon>,
    conn: u64,
    tx: &mpsc::Sender<Out>,
    kill: &Arc<Notify>,
    line: &[u8],
) {
    let reply = |id: &Value, result: Result<Value, RpcError>| {
        if tx
            .try_send(Out::Line(rpc::response(id, result).into()))
            .is_err()
        {
            kill.notify_one();
        }
    };
    let req = match rpc::parse(line) {
        Ok(r) => r,
        Err((id, e)) => return reply(&id, Err(e)),
    };
    let id = req.id.clone().unwrap_or(Value::Null);
    let respond = req.id.is_some();
    match req.method.as_str() {
        "subscribe" => {
            daemon.subscribe(conn, tx, kill);
            if respond {
                reply(&id, Ok(serde_json::json!({ "subscribed": true })));
            }
        }
        "shutdown" => {
            if respond {
                reply(&id, Ok(serde_json::json!({})));
                let (done, flushed) = oneshot::channel();
                if tx.try_send(Out::Flushed(done)).is_ok() {
                    let _ = tokio::time::timeout(FLUSH_ON_CLOSE, flushed).await;
                }
            }
            daemon.stop();
        }
        _ => {
            let (daemon, tx, kill) = (Arc::clone(daemon), tx.clone(), Arc::clone(kill));
            tokio::spawn(async move {
                let result = super::methods::dispatch(&daemon, &req.method, &req.params).await;
                if respond
                    && tx
                        .try_send(Out::Line(rpc::response(&id, result).into()))
                        .is_err()
                {
                    kill.notify_one();
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn line(n: usize) -> Arc<str> {
        format!("{n}\n").into()
    }

    /// A subscriber that does not read is disconnected once its queue is full, without
    /// blocking the fan-out; a subscriber that reads gets every line, in order.
    #[tokio::test]
    async fn a_slow_subscriber_is_dropped_and_the_others_get_everything() {
        let fanout = Fanout::default();
        let (slow_tx, _slow_rx) = mpsc::channel(4);
        let slow_kill = Arc::new(Notify::new());
        let (fast_tx, mut fast_rx) = mpsc::channel(4);
        let fast_kill = Arc::new(Notify::new());
        fanout.add(1, &slow_tx, &slow_kill);
        fanout.add(2, &fast_tx, &fast_kill);
        let mut got = Vec::new();
        for n in 0..10 {
            fanout.send(&line(n));
            while let Ok(Out::Line(l)) = fast_rx.try_recv() {
                got.push(l.to_string());
            }
        }
        let expected: Vec<String> = (0..10).map(|n| format!("{n}\n")).collect();
        assert_eq!(got, expected);
        // The slow one was told to go (the permit is stored) and is no longer subscribed.
        slow_kill.notified().await;
        let subs = fanout.subscribers.lock().unwrap();
        assert_eq!(subs.iter().map(|s| s.conn).collect::<Vec<_>>(), vec![2]);
    }
}
