//! `cove drive sync` inside the daemon (issue 14): while a daemon holds the home, the sync
//! engine runs in it. Methods: `drive_sync_start {local, remote, interval}` (starts a sync
//! of a local folder; answers once the folder and the drive folder are open, or with why
//! not), `drive_sync_stop {local}` and `drive_syncs` (the running syncs with their last log
//! lines). Each sync logs through the notification `drive_sync {local, line}`.
//!
//! The engine's state is a SQLite connection, which is not `Send`: each sync runs on a
//! thread of its own that drives it on the daemon's runtime (`Handle::block_on`). At
//! shutdown every sync is stopped (its pass ends at the next action boundary; what it did
//! is recorded) before the device closes.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::rpc::RpcError;
use super::server::Daemon;
use crate::drive::sync::Syncer;

/// Log lines kept per sync for `drive_syncs`.
const KEPT_LINES: usize = 20;
/// Longest a stopping sync is waited for at shutdown.
const STOP_WAIT: Duration = Duration::from_secs(30);

struct Job {
    remote: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    lines: Arc<Mutex<VecDeque<String>>>,
}

/// The daemon's running syncs, by canonical local folder.
#[derive(Default)]
pub(super) struct DriveSyncs {
    jobs: Mutex<HashMap<PathBuf, Job>>,
}

fn text<'a>(params: &'a Value, key: &str) -> Result<&'a str, RpcError> {
    params[key]
        .as_str()
        .ok_or_else(|| RpcError::params(format!("`{key}` (a string) is required")))
}

fn canonical(local: &str) -> Result<PathBuf, RpcError> {
    let path = PathBuf::from(local);
    if !path.is_absolute() {
        return Err(RpcError::params("`local` must be an absolute path"));
    }
    std::fs::create_dir_all(&path)
        .and_then(|()| std::fs::canonicalize(&path))
        .map_err(|e| RpcError::cove("Io", &format!("{local}: {e}")))
}

/// `drive_sync_start`.
pub(super) async fn start(daemon: &Arc<Daemon>, params: &Value) -> Result<Value, RpcError> {
    let local = canonical(text(params, "local")?)?;
    let remote = params["remote"].as_str().unwrap_or("/").to_owned();
    let interval = Duration::from_secs(params["interval"].as_u64().unwrap_or(10).clamp(1, 86_400));
    let opened_rx = spawn_job(daemon, &local, &remote, interval)?;
    match opened_rx.await {
        Ok(Ok(())) => Ok(json!({ "local": local.display().to_string(), "remote": remote })),
        Ok(Err(why)) => {
            forget(daemon, &local);
            Err(RpcError::cove("SyncFailed", &why))
        }
        Err(_) => {
            forget(daemon, &local);
            Err(RpcError::cove(
                "SyncFailed",
                "the sync stopped before it started",
            ))
        }
    }
}

/// Registers and starts the sync of `local` (refused when one runs); the receiver answers
/// once it opened (or why it could not).
fn spawn_job(
    daemon: &Arc<Daemon>,
    local: &PathBuf,
    remote: &str,
    interval: Duration,
) -> Result<oneshot::Receiver<Result<(), String>>, RpcError> {
    let mut jobs = daemon.drive_syncs.jobs.lock().map_err(|_| poisoned())?;
    jobs.retain(|_, j| j.thread.as_ref().is_some_and(|t| !t.is_finished()));
    if let Some(j) = jobs.get(local) {
        return Err(RpcError::cove(
            "AlreadySyncing",
            &format!("{} is already syncing with {}", local.display(), j.remote),
        ));
    }
    let lines = Arc::new(Mutex::new(VecDeque::new()));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (opened_tx, opened_rx) = oneshot::channel::<Result<(), String>>();
    let runtime = tokio::runtime::Handle::current();
    let (d, l, r, kept) = (
        Arc::clone(daemon),
        local.clone(),
        remote.to_owned(),
        Arc::clone(&lines),
    );
    let thread = std::thread::Builder::new()
        .name("cove-drive-sync".into())
        .spawn(move || runtime.block_on(run(d, l, r, interval, kept, stop_rx, opened_tx)))
        .map_err(|e| RpcError::cove("Failed", &format!("starting the sync: {e}")))?;
    jobs.insert(
        local.clone(),
        Job {
            remote: remote.to_owned(),
            stop: Some(stop_tx),
            thread: Some(thread),
            lines,
        },
    );
    Ok(opened_rx)
}

fn poisoned() -> RpcError {
    RpcError::cove("Failed", "the daemon's sync table is unusable")
}

fn forget(daemon: &Daemon, local: &PathBuf) {
    if let Ok(mut jobs) = daemon.drive_syncs.jobs.lock() {
        jobs.remove(local);
    }
}

/// One sync's thread body: open, say so, run until stopped.
async fn run(
    daemon: Arc<Daemon>,
    local: PathBuf,
    remote: String,
    interval: Duration,
    lines: Arc<Mutex<VecDeque<String>>>,
    stop: oneshot::Receiver<()>,
    opened: oneshot::Sender<Result<(), String>>,
) {
    let shown = local.display().to_string();
    let (d, kept, at) = (Arc::clone(&daemon), Arc::clone(&lines), shown.clone());
    let log = Box::new(move |line: &str| {
        if let Ok(mut l) = kept.lock() {
            if l.len() == KEPT_LINES {
                l.pop_front();
            }
            l.push_back(line.to_owned());
        }
        d.notify("drive_sync", json!({ "local": at, "line": line }));
    });
    let mut syncer = match Syncer::open(&daemon.device, &local, &remote, log).await {
        Ok(s) => s,
        Err(e) => {
            let _ = opened.send(Err(format!("syncing {shown} with {remote}: {e}")));
            return;
        }
    };
    let _ = opened.send(Ok(()));
    let stopped = async {
        let _ = stop.await;
    };
    if let Err(e) = syncer.run(interval, stopped).await {
        let line = format!("the sync of {shown} stopped: {e}");
        tracing::warn!(local = %shown, error = %e, "drive sync stopped");
        if let Ok(mut l) = lines.lock() {
            l.push_back(line.clone());
        }
        daemon.notify("drive_sync", json!({ "local": shown, "line": line }));
    }
}

/// `drive_sync_stop`: stops the sync of `local` and waits for it to end.
pub(super) async fn stop(daemon: &Arc<Daemon>, params: &Value) -> Result<Value, RpcError> {
    let local = canonical(text(params, "local")?)?;
    let job = daemon
        .drive_syncs
        .jobs
        .lock()
        .map_err(|_| poisoned())?
        .remove(&local);
    let Some(job) = job else {
        return Err(RpcError::cove(
            "NotSyncing",
            &format!("{} is not syncing in the daemon", local.display()),
        ));
    };
    end(job).await;
    Ok(json!({ "local": local.display().to_string() }))
}

async fn end(mut job: Job) {
    if let Some(stop) = job.stop.take() {
        let _ = stop.send(());
    }
    if let Some(thread) = job.thread.take() {
        let joined = tokio::task::spawn_blocking(move || thread.join());
        let _ = tokio::time::timeout(STOP_WAIT, joined).await;
    }
}

/// `drive_syncs`: the running syncs.
pub(super) fn list(daemon: &Daemon) -> Result<Value, RpcError> {
    let jobs = daemon.drive_syncs.jobs.lock().map_err(|_| poisoned())?;
    let mut out: Vec<Value> = jobs
        .iter()
        .map(|(local, j)| {
            let lines: Vec<String> = j
                .lines
                .lock()
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default();
            json!({
                "local": local.display().to_string(),
                "remote": j.remote,
                "running": j.thread.as_ref().is_some_and(|t| !t.is_finished()),
                "lines": lines,
            })
        })
        .collect();
    out.sort_by(|a, b| a["local"].as_str().cmp(&b["local"].as_str()));
    Ok(Value::Array(out))
}

/// Stops every sync (daemon shutdown).
pub(super) async fn stop_all(daemon: &Daemon) {
    let jobs: Vec<Job> = match daemon.drive_syncs.jobs.lock() {
        Ok(mut jobs) => jobs.drain().map(|(_, j)| j).collect(),
        Err(_) => return,
    };
    for job in jobs {
        end(job).await;
    }
}
