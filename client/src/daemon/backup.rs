//! The history backup inside the daemon: the relay's replies to the backup's requests are
//! routed here by the event pump (every other event goes on to the clients), and a task
//! backs up once [`BACKUP_BATCH`] rows wait, every [`BACKUP_EVERY`] when any wait, and at
//! shutdown; the `backup` and `restore_history` methods run one at once with it.
//!
//! ```text
//! pump: Reply{id} registered here --> the waiting request     (nothing else is taken)
//!       Message                   --> wake the backup task    (notifications unchanged)
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use tracing::warn;

use cove_wire::{ErrorReply, Reply, Request, RequestId};

use super::methods::device_error;
use super::rpc::RpcError;
use super::server::Daemon;
use crate::backup::{self, BACKUP_BATCH, BackupError, BackupReport, RelayLink};
use crate::device::{Device, DeviceError};
use crate::session::SessionError;

/// How often the daemon backs up while fewer than [`BACKUP_BATCH`] rows wait (and any do).
pub const BACKUP_EVERY: Duration = Duration::from_secs(300);

type Waiting = HashMap<RequestId, oneshot::Sender<Result<Reply, ErrorReply>>>;

/// The backup's state in the daemon.
#[derive(Default)]
pub(super) struct Backups {
    /// Requests whose replies the pump hands here.
    waiting: Arc<Mutex<Waiting>>,
    /// Set when messages were stored (the task looks whether a batch waits).
    stored: Notify,
    /// One backup or restore at a time.
    running: tokio::sync::Mutex<()>,
}

impl Backups {
    /// Takes `reply` when one of the backup's requests waits for it; gives it back
    /// otherwise.
    pub(super) fn route(
        &self,
        id: RequestId,
        reply: Result<Reply, ErrorReply>,
    ) -> Option<Result<Reply, ErrorReply>> {
        let waiting = self.waiting.lock().ok().and_then(|mut w| w.remove(&id));
        match waiting {
            Some(tx) => {
                let _ = tx.send(reply);
                None
            }
            None => Some(reply),
        }
    }

    /// Messages were stored: the backup task looks whether a batch waits.
    pub(super) fn stored(&self) {
        self.stored.notify_one();
    }
}

/// The daemon's request/reply path for the backup.
struct DaemonLink<'a> {
    daemon: &'a Daemon,
}

impl RelayLink for DaemonLink<'_> {
    fn device(&self) -> &Device {
        &self.daemon.device
    }

    async fn relay_request(
        &mut self,
        body: Request,
    ) -> Result<Result<Reply, ErrorReply>, DeviceError> {
        let (tx, rx) = oneshot::channel();
        let waiting = Arc::clone(&self.daemon.backups.waiting);
        // Registered on the session's task, before the request goes out: the reply cannot
        // reach the pump first.
        let id = self
            .daemon
            .session
            .call(move |c| {
                let id = c.send_request(body)?;
                if let Ok(mut w) = waiting.lock() {
                    w.insert(id, tx);
                }
                Some(id)
            })
            .await?
            .ok_or_else(|| SessionError::Stopped(Some("not connected to the relay".into())))?;
        let timeout = self.daemon.device.timeout();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(SessionError::Stopped(None).into()),
            Err(_) => {
                if let Ok(mut w) = self.daemon.backups.waiting.lock() {
                    w.remove(&id);
                }
                Err(SessionError::Timeout {
                    secs: timeout.as_secs(),
                    state: None,
                }
                .into())
            }
        }
    }
}

/// Backs up when at least `threshold` rows wait (one backup at a time); tells the clients
/// (`backup` notification) when it uploaded something.
pub(super) async fn backup_if_due(
    daemon: &Daemon,
    threshold: usize,
) -> Result<Option<BackupReport>, BackupError> {
    let _one = daemon.backups.running.lock().await;
    let report = backup::backup_if_due(&mut DaemonLink { daemon }, threshold).await?;
    if let Some(r) = report.filter(|r| r.segments > 0) {
        daemon.notify("backup", report_json(&r));
    }
    Ok(report)
}

/// The backup task: a batch after messages were stored, anything waiting on the timer.
pub(super) async fn run(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(BACKUP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let threshold = tokio::select! {
            () = daemon.backups.stored.notified() => BACKUP_BATCH,
            _ = tick.tick() => 1,
        };
        if let Err(e) = backup_if_due(&daemon, threshold).await {
            warn!(error = %e, "history backup failed (retried later)");
        }
    }
}

fn report_json(r: &BackupReport) -> Value {
    json!({ "segments": r.segments, "messages": r.messages, "bytes": r.bytes })
}

/// The `backup` method: receives what is pending, then backs up what waits (as `cove backup`).
pub(super) async fn backup_method(daemon: &Daemon) -> Result<Value, RpcError> {
    daemon.device.settle_shared().await.map_err(device_error)?;
    let _one = daemon.backups.running.lock().await;
    let r = backup::backup(&mut DaemonLink { daemon })
        .await
        .map_err(backup_error)?;
    if r.segments > 0 {
        daemon.notify("backup", report_json(&r));
    }
    Ok(report_json(&r))
}

/// The `restore_history` method (as `cove restore-history`).
pub(super) async fn restore_method(daemon: &Daemon) -> Result<Value, RpcError> {
    daemon.device.settle_shared().await.map_err(device_error)?;
    let _one = daemon.backups.running.lock().await;
    let r = backup::restore_history(&mut DaemonLink { daemon })
        .await
        .map_err(backup_error)?;
    let refused: Vec<Value> = r
        .refused
        .iter()
        .map(|s| json!({ "position": s.position, "reason": s.reason }))
        .collect();
    Ok(json!({
        "segments": r.segments,
        "messages": r.messages,
        "duplicates": r.duplicates,
        "refused": refused,
    }))
}

fn backup_error(e: BackupError) -> RpcError {
    match e {
        BackupError::NoAccount => RpcError::cove("NoAccount", &e.to_string()),
        BackupError::Device(e) => device_error(e),
        BackupError::Refused(ref reply) => {
            RpcError::cove(&format!("{:?}", reply.code), &e.to_string())
        }
        BackupError::Transfer(_) => RpcError::cove("TransferFailed", &e.to_string()),
        _ => RpcError::cove("Failed", &e.to_string()),
    }
}
