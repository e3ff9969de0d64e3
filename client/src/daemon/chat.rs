//! Issue 13's methods: `reply`, `react`, `edit`, `delete`, `group_rename`,
//! `group_describe`, `group_info`, `group_admin`, `group_mute`, `group_disappearing`,
//! `search`, `typing` (see `API.md`, "Messaging").

use serde_json::{Value, json};

use cove_wire::UserName;

use super::events::message_json;
use super::methods::{device_error, session_error};
use super::rpc::{RpcError, opt_str_param, str_param};
use super::server::Daemon;
use crate::device::Sent;
use crate::session;

/// Runs one of this module's methods; `None` when `method` is not one of them.
pub(super) async fn dispatch(
    daemon: &Daemon,
    method: &str,
    params: &Value,
) -> Option<Result<Value, RpcError>> {
    let device = &daemon.device;
    let sent = |s: Sent| json!({ "pending": s == Sent::Queued });
    let result = match method {
        "reply" => {
            let (group, to, text) = match three(params, "to", "text") {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            device.reply(group, to, text).await.map(sent)
        }
        "react" => {
            let (group, to, emoji) = match three(params, "to", "emoji") {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            let remove = params["remove"].as_bool().unwrap_or(false);
            device.react(group, to, emoji, remove).await.map(sent)
        }
        "edit" => {
            let (group, to, text) = match three(params, "to", "text") {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            device.edit(group, to, text).await.map(sent)
        }
        "delete" => {
            let (group, to, _) = match three(params, "to", "to") {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            device.delete_message(group, to).await.map(sent)
        }
        "group_rename" => {
            let (group, name, _) = match three(params, "name", "name") {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            device.rename_group(group, name).await.map(sent)
        }
        "group_describe" => {
            let (group, text, _) = match three(params, "description", "description") {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            device.describe_group(group, text).await.map(sent)
        }
        "group_admin" => {
            let (group, user, _) = match three(params, "user", "user") {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            let user = match UserName::new(user.to_owned()) {
                Ok(u) => u,
                Err(e) => {
                    return Some(Err(RpcError::params(format!(
                        "invalid params: user {user:?}: {e}"
                    ))));
                }
            };
            let remove = params["remove"].as_bool().unwrap_or(false);
            device
                .set_admin(group, &user, remove)
                .await
                .map(|()| json!({}))
        }
        "group_avatar" => {
            let group = match str_param(params, "group") {
                Ok(g) => g,
                Err(e) => return Some(Err(e)),
            };
            let avatar = match params["path"].as_str() {
                Some(path) => {
                    let uploaded = match crate::transfer::BlobClient::for_device(device).await {
                        Ok(blobs) => blobs.upload_file(std::path::Path::new(path)).await,
                        Err(e) => Err(e),
                    };
                    match uploaded {
                        Ok(pointer) => Some(pointer),
                        Err(crate::transfer::TransferError::Device(e)) => {
                            return Some(Err(super::methods::device_error(e)));
                        }
                        Err(e) => {
                            return Some(Err(RpcError::cove("TransferFailed", &e.to_string())));
                        }
                    }
                }
                None => None,
            };
            device.set_group_avatar(group, avatar).await.map(sent)
        }
        "group_mute" => return Some(mute(daemon, params).await),
        "group_disappearing" => {
            let (group, timer, _) = match three(params, "timer", "timer") {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            let timer_secs = match timer {
                "off" => None,
                t => match crate::views::parse_duration(t) {
                    Some(secs) => Some(secs),
                    None => return Some(Err(bad_duration(t))),
                },
            };
            device.set_disappearing(group, timer_secs).await.map(sent)
        }
        "group_info" => {
            let group = match str_param(params, "group") {
                Ok(g) => g,
                Err(e) => return Some(Err(e)),
            };
            match device.group_info(group).await {
                Ok(Some(info)) => Ok(serde_json::to_value(info).unwrap_or_default()),
                Ok(None) => Err(crate::device::DeviceError::Command(
                    cove_core::CommandError::NotMember(group.to_owned()),
                )),
                Err(e) => Err(e),
            }
        }
        "search" => return Some(search(daemon, params).await),
        "typing" => {
            let group = match str_param(params, "group") {
                Ok(g) => g.to_owned(),
                Err(e) => return Some(Err(e)),
            };
            let active = params["active"].as_bool().unwrap_or(true);
            let sent = daemon
                .session
                .call(move |c| c.set_typing(session::now_ms(), &group, active))
                .await;
            match sent {
                Ok(Ok(op)) => Ok(json!({ "sent": op.is_some() })),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            }
        }
        _ => return None,
    };
    Some(result.map_err(device_error))
}

/// `group` and two more string parameters.
fn three<'a>(
    params: &'a Value,
    second: &str,
    third: &str,
) -> Result<(&'a str, &'a str, &'a str), RpcError> {
    Ok((
        str_param(params, "group")?,
        str_param(params, second)?,
        str_param(params, third)?,
    ))
}

fn bad_duration(text: &str) -> RpcError {
    RpcError::cove(
        "InvalidArgument",
        &format!(
            "invalid argument: {:?} is not a duration (e.g. 30s, 5m, 1h, 7d, or off)",
            crate::escape(text)
        ),
    )
}

/// `group_mute`: `until` is a duration (`1h`, `8h`, ...), `forever` or `off`.
async fn mute(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let group = str_param(params, "group")?;
    let until = str_param(params, "until")?;
    let until_ms = match until {
        "off" => None,
        "forever" => Some(u64::MAX),
        t => {
            let secs = crate::views::parse_duration(t).ok_or_else(|| bad_duration(t))?;
            Some(session::now_ms().saturating_add(u64::from(secs) * 1000))
        }
    };
    daemon
        .device
        .mute(group, until_ms)
        .await
        .map_err(device_error)?;
    Ok(json!({ "muted_until_ms": until_ms }))
}

/// `search`: `query`, optional `group` and `limit` (1 to 1000, default 20).
async fn search(daemon: &Daemon, params: &Value) -> Result<Value, RpcError> {
    let query = str_param(params, "query")?.to_owned();
    let group = opt_str_param(params, "group")?.map(str::to_owned);
    let limit = match params.get("limit") {
        None | Some(Value::Null) => 20,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| RpcError::params("invalid params: `limit` must be 1 to 1000"))?,
    };
    let limit = usize::try_from(limit).unwrap_or(1000);
    let found = daemon
        .session
        .call(move |c| c.search(&query, group.as_deref(), limit))
        .await
        .map_err(session_error)?
        .map_err(|e| device_error(e.into()))?;
    Ok(Value::Array(
        found.iter().map(|m| message_json(m, None, false)).collect(),
    ))
}
