//! The methods: parameters in, the device's commands and queries, results out (see
//! `API.md`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use cove_core::identity::Verification;
use cove_core::{CommandError, Content, Envelope, OpError, QueryError};
use cove_store::{Kv as _, Namespace, Store, StoreError};
use cove_wire::{Seq, UserName};

use super::events::message_json;
use super::rpc::{self, RpcError, opt_str_param, str_param, strings_param};
use super::server::Daemon;
use crate::device::{DeviceError, PRINTED_KEY};
use crate::session::{self, LinkState, SessionError};

/// The API version `status` reports.
pub const API_VERSION: &str = "1";

/// Runs one method.
pub(super) async fn dispatch(
    daemon: &std::sync::Arc<Daemon>,
    method: &str,
    params: &Value,
) -> Result<Value, RpcError> {
    match method {
        "status" => status(daemon).await,
        "groups" => groups(daemon).await,
        "history" => history(daemon, params).await,
        "send" => send(daemon, params).await,
        "send_file" => send_file(daemon, params).await,
        "download" => download(daemon, params).await,
        "mark_read" => mark_read(daemon, params).await,
        "unread" => unread(daemon).await,
        "group_create" => group_create(daemon, params).await,
        "group_add" | "group_remove" => {
            let group = str_param(params, "group")?;
            let users = users(params)?;
            let device = &daemon.device;
            if method == "group_add" {
                device.add_users(group, &users).await
            } else {
                device.remove_users(group, &users).await
            }
            .map_err(device_error)?;
            Ok(json!({}))
        }
        "group_leave" => {
            let group = str_param(params, "group")?;
            let id = resolve_id(daemon, group).await?;
            let name = super::events::group_name(daemon, id).await;
            daemon.device.leave(group).await.map_err(device_error)?;
            let me = daemon.device.user().to_string();
            daemon.notify(
                "membership",
                json!({ "group": id.to_hex(), "group_name": name, "kind": "left", "users": [me] }),
            );
            Ok(json!({}))
        }
        "safety_number" => safety_number(daemon, params).await,
        "verify" => verify(daemon, params).await,
        "devices" => devices(daemon).await,
        "call" => daemon.calls.call(daemon, params).await,
        "answer" => daemon.calls.answer(daemon, params).await,
        "decline" => daemon.calls.decline(daemon, params).await,
        "hangup" => daemon.calls.hangup(daemon, params).await,
        "calls" => Ok(daemon.calls.list()),
        "backup" => super::backup::backup_method(daemon).await,
        "restore_history" => super::backup::restore_method(daemon).await,
        "drive_sync_start" => super::drive::start(daemon, params).await,
        "drive_sync_stop" => super::drive::stop(daemon, params).await,
        "drive_syncs" => super::drive::list(daemon),
        _ => match super::chat::dispatch(daemon, method, params).await {
            Some(result) => result,
            None => Err(RpcError::new(
                rpc::METHOD_NOT_FOUND,
                format!("method not found: {}", crate::escape(method)),
            )),
        },
    }
}

/// The Cove error object of a device error: `data.code` names the kind.
pub(super) fn device_error(e: DeviceError) -> RpcError {
    let kind = match &e {
        DeviceError::Command(c) => command_kind(c),
        DeviceError::Query(QueryError::UnknownGroup(_)) => "NoSuchGroup",
        DeviceError::Query(QueryError::AmbiguousGroup(_)) => "AmbiguousGroup",
        DeviceError::Query(QueryError::UnknownUser(_)) => "UnknownUser",
        DeviceError::Query(QueryError::UnknownMessage(_)) => "NoSuchMessage",
        DeviceError::Query(QueryError::AmbiguousMessage(_)) => "AmbiguousMessage",
        DeviceError::InvalidArgument(_) => "InvalidArgument",
        DeviceError::Session(SessionError::Timeout { .. }) => "Timeout",
        DeviceError::Session(SessionError::Stopped(_)) => "Stopped",
        DeviceError::Session(SessionError::Op(OpError::Relay(reply))) => {
            return RpcError::cove(&format!("{:?}", reply.code), &e.to_string());
        }
        DeviceError::Session(SessionError::Op(_)) => "Refused",
        DeviceError::Verify(_) => "VerifyRefused",
        DeviceError::NotRegistered => "NotRegistered",
        DeviceError::Store(_) => "Storage",
        _ => "Failed",
    };
    RpcError::cove(kind, &e.to_string())
}

fn command_kind(e: &CommandError) -> &'static str {
    match e {
        CommandError::UnknownGroup(_) => "NoSuchGroup",
        CommandError::AmbiguousGroup(_) => "AmbiguousGroup",
        CommandError::DuplicateGroupName(_) => "DuplicateGroupName",
        CommandError::NotMember(_) => "NotMember",
        CommandError::IdentityNotVerified(_) => "IdentityNotVerified",
        CommandError::TooLarge(..) => "TooLarge",
        CommandError::Invalid(_) | CommandError::Content(_) => "InvalidArgument",
        CommandError::NotRegistered => "NotRegistered",
        CommandError::UnknownMessage(_) => "NoSuchMessage",
        CommandError::NotAuthor => "NotAuthor",
        CommandError::NotAdmin(_) => "NotAdmin",
        _ => "Failed",
    }
}

fn users(params: &Value) -> Result<Vec<UserName>, RpcError> {
    strings_param(params, "users")?
        .iter()
        .map(|u| {
            UserName::new(u.clone())
                .map_err(|e| RpcError::params(format!("invalid params: user {u:?}: {e}")))
        })
        .collect()
}

fn store_error(e: StoreError) -> RpcError {
    device_error(DeviceError::Store(e))
}

pub(super) fn session_error(e: SessionError) -> RpcError {
    device_error(DeviceError::Session(e))
}

async fn status(daemon: &Daemon) -> Result<Value, RpcError> {
    let (user, device, pending) = daemon
        .session
        .call(|c| {
            (
                c.user().to_string(),
                c.device().map(|d| d.0),
                c.store().outbox().map(|o| o.len()),
            )
        })
        .await
        .map_err(session_error)?;
    let server = daemon.device.server().to_owned();
    Ok(json!({
        "user": user,
        "device": device,
        "server": server,
        "connected": daemon.connected.load(std::sync::atomic::Ordering::Relaxed),
        "pending": pending.map_err(store_error)?,
        "version": API_VERSION,
        "pid": std::process::id(),
    }))
}

/// The groups this device is a member of, with the core's unread counts (what
/// [`mark_read`] resets) and mute state.
async fn groups(daemon: &Daemon) -> Result<Value, RpcError> {
    let list = daemon
        .session
        .call(|c| -> Result<Vec<Value>, DeviceError> {
            let mut out = Vec::new();
            // Cove Drive groups are not chats (`cove drive` lists them).
            for g in c
                .groups()
                .into_iter()
                .filter(|g| g.active && !cove_core::drive::is_drive_group(&g.name))
            {
                out.push(json!({
                    "group": g.id.to_hex(),
                    "name": g.name,
                    "members": g.members.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                    "unread": g.unread,
                    "muted_until_ms": g.muted_until_ms,
                    "epoch": g.epoch,
                }));
            }
            Ok(out)
        })
        .await
        .map_err(session_error)?
        .map_err(device_error)?;
    Ok(Value::Array(list))
}

fn shown_mark(store: &impl Store, group_hex: &str) -> Result<u64, StoreError> {
    Ok(store
        .config(&format!("{PRINTED_KEY}{group_hex}"))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// A group's messages (stored, then this device's queued ones as `pending`).
async fn history(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let group = str_param(params, "group")?.to_owned();
    let limit = match params.get("limit") {
        None | Some(Value::Null) => 50,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| RpcError::params("invalid params: `limit` must be 1 to 1000"))?,
    };
    let limit = usize::try_from(limit).unwrap_or(1000);
    let before = opt_str_param(params, "before")?.map(str::to_ascii_lowercase);
    let mut all = daemon
        .session
        .call(move |c| -> Result<Vec<Value>, DeviceError> {
            let id = c.resolve(&group)?;
            let stored = c.history(&group)?;
            let mut files = 0;
            let mut out: Vec<Value> = stored
                .iter()
                .map(|m| {
                    let index = m.attachment.is_some().then(|| {
                        files += 1;
                        files
                    });
                    message_json(m, index, false)
                })
                .collect();
            let name = c
                .groups()
                .into_iter()
                .find(|g| g.id == id)
                .map(|g| g.name)
                .unwrap_or_default();
            let (me, device) = (c.user().to_string(), c.device().map(|d| d.0));
            let mut queued = c.store().outbox()?;
            queued.sort_by_key(|i| i.local_id);
            for item in queued.into_iter().filter(|i| i.group == id) {
                let Ok(envelope) = Envelope::decode(&item.content) else {
                    continue;
                };
                let (kind, text) = match &envelope.content {
                    Content::Text { text } => ("text", text.clone()),
                    Content::Attachment(p) => ("file", crate::views::file_line(p)),
                    _ => continue,
                };
                out.push(json!({
                    "id": hex::encode(item.message_id),
                    "group": id.to_hex(),
                    "group_name": name,
                    "sender": me,
                    "device": device,
                    "sent_at_ms": item.sent_at_ms,
                    "kind": kind,
                    "text": text,
                    "pending": true,
                }));
            }
            // Call records (missed, declined, held), by time among the messages.
            let prefix = super::calls::record_prefix(&id);
            for (_, value) in c.store().kv_scan(Namespace::Daemon, prefix.as_bytes())? {
                let Ok(record) = serde_json::from_slice::<Value>(&value) else {
                    continue;
                };
                let at = record["sent_at_ms"].as_u64().unwrap_or(0);
                let pos = out
                    .iter()
                    .position(|m| m["sent_at_ms"].as_u64().unwrap_or(0) > at)
                    .unwrap_or(out.len());
                out.insert(pos, super::calls::call_message(&record, &id, &name));
            }
            Ok(out)
        })
        .await
        .map_err(session_error)?
        .map_err(device_error)?;
    if let Some(before) = before {
        let Some(pos) = all.iter().position(|m| m["id"] == before.as_str()) else {
            return Err(RpcError::cove(
                "NoSuchMessage",
                &format!("no message {before} in this group"),
            ));
        };
        all.truncate(pos);
    }
    let skip = all.len().saturating_sub(limit);
    Ok(Value::Array(all.split_off(skip)))
}

/// Sends a text: waits for the relay when connected (`pending: false` once it stored the
/// message); while the relay is unreachable, queues it in the durable outbox at once
/// (`pending: true`), to go out when the relay is back.
async fn send(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let group = str_param(params, "group")?.to_owned();
    let text = str_param(params, "text")?.to_owned();
    let (id, pending) = send_text(daemon, group, text).await.map_err(device_error)?;
    Ok(json!({ "id": id, "pending": pending }))
}

pub(super) async fn send_text(
    daemon: &Daemon,
    group: String,
    text: String,
) -> Result<(String, bool), DeviceError> {
    let session = &daemon.session;
    let timeout = daemon.device.timeout();
    let connected = matches!(session.link(), LinkState::Up | LinkState::CaughtUp);
    if connected {
        // Made at the group's current epoch (see `Device::caught_up_for_sending`).
        let _ = session.caught_up(timeout).await;
    }
    let wait = if matches!(session.link(), LinkState::CaughtUp) {
        timeout
    } else {
        Duration::ZERO
    };
    let (id_tx, id_rx) = oneshot::channel();
    let done = session
        .op(wait, move |c| {
            let op = c.send_text(session::now_ms(), &group, &text)?;
            // The item just sealed is the outbox's newest.
            let newest = c
                .store()
                .outbox()
                .ok()
                .and_then(|items| items.into_iter().max_by_key(|i| i.local_id))
                .map(|i| hex::encode(i.message_id));
            let _ = id_tx.send(newest);
            Ok::<_, CommandError>(op)
        })
        .await?;
    let id = id_rx.await.ok().flatten().unwrap_or_default();
    match done {
        Ok(()) => Ok((id, false)),
        Err(SessionError::Timeout { .. }) => Ok((id, true)),
        Err(e) => Err(e.into()),
    }
}

async fn send_file(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let group = str_param(params, "group")?.to_owned();
    let path = PathBuf::from(str_param(params, "path")?);
    if path.is_dir() {
        return Err(RpcError::cove(
            "InvalidArgument",
            &format!(
                "{} is a directory; send_file sends one file",
                path.display()
            ),
        ));
    }
    let total = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let gid = resolve(daemon, &group).await?;
    let transfer = hex::encode(rand::random::<[u8; 8]>());
    let progress = |done: u64| json!({ "id": transfer, "group": gid, "direction": "up", "done": done, "total": total });
    daemon.notify("transfer", progress(0));
    let device = &daemon.device;
    let bar = indicatif::ProgressBar::hidden();
    let upload =
        crate::transfer::send_file_watched(device, &group, &path, false, Some(bar.clone()));
    let pointer = watch(upload, &bar, total, |done| {
        daemon.notify("transfer", progress(done))
    })
    .await
    .map_err(|e| match e {
        crate::transfer::TransferError::Device(e) => device_error(e),
        e => RpcError::cove("TransferFailed", &e.to_string()),
    })?;
    daemon.notify("transfer", progress(pointer.size));
    Ok(json!({
        "id": pointer.blob_id.to_hex(),
        "transfer": transfer,
        "name": pointer.name,
        "size": pointer.size,
    }))
}

async fn resolve(daemon: &Daemon, group: &str) -> Result<String, RpcError> {
    Ok(resolve_id(daemon, group).await?.to_hex())
}

async fn resolve_id(daemon: &Daemon, group: &str) -> Result<cove_wire::GroupId, RpcError> {
    let group = group.to_owned();
    daemon
        .session
        .call(move |c| c.resolve(&group))
        .await
        .map_err(session_error)?
        .map_err(|e| device_error(e.into()))
}

/// Downloads an attachment: `file` is its 1-based index among the group's files, or its
/// (blob or message) id. Without `out`, into `<home>/downloads/`.
async fn download(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let group = str_param(params, "group")?.to_owned();
    let file = match params.get("file") {
        Some(Value::String(s)) => match s.parse::<usize>() {
            Ok(n) if s.len() < 8 => FileRef::Index(n),
            _ => FileRef::Id(s.clone()),
        },
        Some(Value::Number(n)) => FileRef::Index(
            n.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| RpcError::params("invalid params: `file` index"))?,
        ),
        _ => {
            return Err(RpcError::params(
                "invalid params: `file` (an index or an id) is required",
            ));
        }
    };
    let device = &daemon.device;
    let id = match file {
        FileRef::Id(id) => id,
        FileRef::Index(n) => {
            let g = group.clone();
            let history = daemon
                .session
                .call(move |c| c.history(&g))
                .await
                .map_err(session_error)?
                .map_err(|e| device_error(e.into()))?;
            history
                .iter()
                .filter_map(|m| m.attachment.as_ref())
                .nth(n.wrapping_sub(1))
                .map(|p| p.blob_id.to_hex())
                .ok_or_else(|| {
                    RpcError::cove(
                        "NoSuchAttachment",
                        &format!("no file number {n} in this group"),
                    )
                })?
        }
    };
    let out = match opt_str_param(params, "out")? {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = device.home().dir().join("downloads");
            std::fs::create_dir_all(&dir)
                .map_err(|e| RpcError::cove("Io", &format!("{}: {e}", dir.display())))?;
            dir
        }
    };
    let total = device
        .attachment(&group, &id)
        .await
        .ok()
        .flatten()
        .map_or(0, |p| p.size);
    let gid = resolve(daemon, &group).await?;
    let transfer = hex::encode(rand::random::<[u8; 8]>());
    let progress = |done: u64| json!({ "id": transfer, "group": gid, "direction": "down", "done": done, "total": total });
    daemon.notify("transfer", progress(0));
    let bar = indicatif::ProgressBar::hidden();
    let fetch =
        crate::transfer::download_watched(device, &group, &id, &out, false, Some(bar.clone()));
    let path = watch(fetch, &bar, total, |done| {
        daemon.notify("transfer", progress(done))
    })
    .await
    .map_err(|e| {
        let kind = match e {
            crate::transfer::TransferError::NoSuchAttachment(_) => "NoSuchAttachment",
            _ => "TransferFailed",
        };
        RpcError::cove(kind, &e.to_string())
    })?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    daemon.notify("transfer", progress(size));
    Ok(json!({ "path": path.display().to_string(), "size": size, "transfer": transfer }))
}

/// How often a transfer's progress is looked at.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Runs `transfer`, reporting its progress on `bar` (bytes on the wire) as plaintext bytes of
/// `total` through `report`, when it moved, every [`PROGRESS_EVERY`] (not at the end: the
/// caller reports completion).
async fn watch<T>(
    transfer: impl std::future::Future<Output = T>,
    bar: &indicatif::ProgressBar,
    total: u64,
    report: impl Fn(u64),
) -> T {
    tokio::pin!(transfer);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0;
    loop {
        tokio::select! {
            out = &mut transfer => return out,
            _ = tick.tick() => {
                let (position, len) = (bar.position(), bar.length().unwrap_or(0));
                if len == 0 {
                    continue;
                }
                let done = u64::try_from(u128::from(position.min(len)) * u128::from(total) / u128::from(len))
                    .unwrap_or(total);
                if done > last && done < total {
                    last = done;
                    report(done);
                }
            }
        }
    }
}

enum FileRef {
    Index(usize),
    Id(String),
}

/// Marks a group's messages read up to `up_to` (a message id), or all of them: the
/// daemon's shown mark (what `unread` lists) and, when that reaches the group's newest
/// message, the core's read state (unread count, read receipt).
async fn mark_read(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let group = str_param(params, "group")?.to_owned();
    let up_to = opt_str_param(params, "up_to")?.map(str::to_ascii_lowercase);
    daemon
        .session
        .call(move |c| -> Result<(), RpcError> {
            let id = c.resolve(&group).map_err(|e| device_error(e.into()))?;
            let history = c.history(&group).map_err(|e| device_error(e.into()))?;
            let seq = match &up_to {
                Some(up_to) => history
                    .iter()
                    .find(|m| m.id.to_hex() == *up_to)
                    .map(|m| m.seq.0)
                    .ok_or_else(|| {
                        RpcError::cove(
                            "NoSuchMessage",
                            &format!("no message {up_to} in this group"),
                        )
                    })?,
                None => history.last().map_or(0, |m| m.seq.0),
            };
            let hex = id.to_hex();
            if seq > shown_mark(c.store(), &hex).map_err(store_error)? {
                c.store()
                    .set_config(&format!("{PRINTED_KEY}{hex}"), &seq.to_string())
                    .map_err(store_error)?;
            }
            if history.last().is_none_or(|m| m.seq.0 <= seq) {
                c.mark_read(session::now_ms(), &group)
                    .map_err(|e| device_error(e.into()))?;
            }
            Ok(())
        })
        .await
        .map_err(session_error)??;
    Ok(json!({}))
}

/// Every message of others not marked read yet, in log order per group (what `cove sync`
/// prints).
async fn unread(daemon: &Daemon) -> Result<Value, RpcError> {
    let list = daemon
        .session
        .call(|c| -> Result<Vec<Value>, DeviceError> {
            let me = c.device();
            let mut out = Vec::new();
            for g in c.groups() {
                let mark = shown_mark(c.store(), &g.id.to_hex())?;
                for m in c.history_after(&g.id, Seq(mark))? {
                    if Some(m.from_device) != me {
                        out.push(message_json(&m, None, false));
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(session_error)?
        .map_err(device_error)?;
    Ok(Value::Array(list))
}

async fn group_create(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let name = str_param(params, "name")?;
    let members = match params.get("members") {
        None | Some(Value::Null) => Vec::new(),
        Some(_) => {
            let mut p = params.clone();
            p["users"] = p["members"].take();
            users(&p)?
        }
    };
    let device = &daemon.device;
    let group = device.create_group(name).await.map_err(device_error)?;
    if !members.is_empty() {
        device
            .add_users(&group.id, &members)
            .await
            .map_err(device_error)?;
    }
    Ok(json!({ "group": group.id, "name": group.name }))
}

async fn safety_number(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let user = user_param(params)?;
    let who = user.clone();
    let (state, number) = daemon
        .session
        .call(move |c| (c.identity_state(&who), c.safety_number(&who)))
        .await
        .map_err(session_error)?;
    let state = state.map_err(store_error)?;
    let number = match state.as_ref().and_then(|s| s.safety_number.clone()) {
        Some(n) => n,
        None => number.map_err(|e| device_error(e.into()))?,
    };
    let verified = state.is_some_and(|s| s.verification == Verification::Verified);
    Ok(json!({ "user": user.as_str(), "number": number, "verified": verified }))
}

fn user_param(params: &Value) -> Result<UserName, RpcError> {
    let user = str_param(params, "user")?;
    UserName::new(user.to_owned())
        .map_err(|e| RpcError::params(format!("invalid params: user {user:?}: {e}")))
}

/// Marks `user` verified if `number` is the current safety number with them.
async fn verify(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let user = user_param(params)?;
    let number = str_param(params, "number")?;
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let device = &daemon.device;
    // As `Device::identity`: fetch the user's signed list first when online, so a change at
    // the relay shows now.
    if matches!(daemon.session.link(), LinkState::Up | LinkState::CaughtUp) {
        device.settle_shared().await.map_err(device_error)?;
        let who = user.clone();
        if daemon
            .session
            .call(move |c| c.refresh_identity(&who))
            .await
            .map_err(session_error)?
        {
            daemon.session.call(|_| ()).await.map_err(session_error)?;
            device.settle_shared().await.map_err(device_error)?;
        }
    }
    let who = user.clone();
    let state = daemon
        .session
        .call(move |c| c.identity_state(&who))
        .await
        .map_err(session_error)?
        .map_err(|e| device_error(e.into()))?
        .ok_or_else(|| {
            RpcError::cove("UnknownUser", &format!("no identity key known for {user}"))
        })?;
    let Some(current) = state.safety_number.as_deref() else {
        return Err(RpcError::cove(
            "NotReady",
            "this device does not know its own user's identity key yet",
        ));
    };
    if digits(current) != digits(number) || digits(number).is_empty() {
        return Err(RpcError::cove(
            "NumberMismatch",
            &format!("that is not the safety number with {user}: not verified"),
        ));
    }
    if state.verification != Verification::Verified {
        device
            .verify_user(&user, state.identity)
            .await
            .map_err(device_error)?;
        daemon.notify(
            "identity",
            json!({ "user": user.as_str(), "kind": "verified", "text": format!("{user} is verified") }),
        );
    }
    Ok(json!({ "verified": true }))
}

async fn devices(daemon: &Daemon) -> Result<Value, RpcError> {
    let device = &daemon.device;
    let me = device.device_id().map(|d| d.0);
    let list = device.signed_device_list().await.map_err(device_error)?;
    let Some(list) = list else {
        return Ok(json!([]));
    };
    Ok(Value::Array(
        list.devices
            .iter()
            .map(|d| {
                json!({
                    "device": if d.this { me } else { d.id.map(|i| i.0) },
                    "name": d.name,
                    "key_prefix": d.key.get(..16).unwrap_or(&d.key),
                    "current": d.this,
                    "added_ms": d.added_ms,
                })
            })
            .collect(),
    ))
}
