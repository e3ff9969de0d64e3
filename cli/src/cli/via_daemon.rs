//! The commands a running daemon serves: when `HOME/daemon.sock` answers, they are sent to
//! it (through `cove::daemon::client`) instead of opening the home, with the same output.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use cove::config::Home;
use cove::daemon::client::{ClientError, DaemonClient, Notification};
use cove::transfer::AttachmentView;
use cove::{MessageView, QuoteView, ReactionView, escape};

use super::Command;
use super::group::GroupCommand;
use super::messages::{print_message, print_warning};

/// Runs `command` through the daemon of `home` if one runs and serves it; `Ok(false)` when
/// it must run as usual.
pub async fn try_run(home: &Home, command: &Command) -> anyhow::Result<bool> {
    if !serves(command) {
        return Ok(false);
    }
    let Some(mut d) = DaemonClient::connect(home).await? else {
        return Ok(false);
    };
    match command {
        Command::Send(args) => {
            let r = call(
                &mut d,
                "send",
                json!({ "group": args.name, "text": args.text }),
            )
            .await?;
            if r["pending"].as_bool() == Some(true) {
                println!(
                    "queued for {}: the relay is not reachable; the daemon sends it once it is back",
                    escape(&args.name)
                );
            } else {
                println!("sent to {}", escape(&args.name));
            }
        }
        Command::Groups(_) => {
            let groups = call(&mut d, "groups", json!({})).await?;
            let groups = groups.as_array().cloned().unwrap_or_default();
            if groups.is_empty() {
                println!(
                    "no groups yet (cove group create NAME, or ask someone to add you and run cove sync)"
                );
            }
            for g in groups {
                let members: Vec<String> =
                    strings(&g["members"]).iter().map(|m| escape(m)).collect();
                println!(
                    "{}  {}  epoch {}  members: {}{}",
                    escape(str_of(&g["name"])),
                    str_of(&g["group"]),
                    g["epoch"].as_u64().unwrap_or(0),
                    members.join(", "),
                    super::group::group_marks(
                        g["unread"].as_u64().unwrap_or(0),
                        g["muted_until_ms"].as_u64()
                    )
                );
            }
        }
        Command::History(args) => {
            let messages = call(
                &mut d,
                "history",
                json!({ "group": args.name, "limit": 1000 }),
            )
            .await?;
            for m in messages.as_array().into_iter().flatten() {
                print_daemon_message(m, args.json)?;
            }
        }
        Command::Group(cmd) => match cmd {
            GroupCommand::Create { name } => {
                let g = call(
                    &mut d,
                    "group_create",
                    json!({ "name": name, "members": [] }),
                )
                .await?;
                println!(
                    "created group {} ({})",
                    escape(str_of(&g["name"])),
                    str_of(&g["group"])
                );
            }
            GroupCommand::Add { name, users } => {
                call(
                    &mut d,
                    "group_add",
                    json!({ "group": name, "users": users }),
                )
                .await?;
                println!("added {} to {}", join(users), escape(name));
            }
            GroupCommand::Remove { name, users } => {
                call(
                    &mut d,
                    "group_remove",
                    json!({ "group": name, "users": users }),
                )
                .await?;
                println!("removed {} from {}", join(users), escape(name));
            }
            GroupCommand::Leave { name } => {
                call(&mut d, "group_leave", json!({ "group": name })).await?;
                println!("left {}", escape(name));
            }
            GroupCommand::Info { name, json } => {
                let info = call(&mut d, "group_info", json!({ "group": name })).await?;
                if *json {
                    println!("{info}");
                } else {
                    let info: cove::GroupInfoView = group_info_view(&info);
                    for line in info.lines(super::messages::stamp) {
                        println!("{line}");
                    }
                }
            }
            GroupCommand::Rename { name, new_name } => {
                let r = call(
                    &mut d,
                    "group_rename",
                    json!({ "group": name, "name": new_name }),
                )
                .await?;
                report(&r, "renamed", name);
            }
            GroupCommand::Describe { name, text } => {
                let r = call(
                    &mut d,
                    "group_describe",
                    json!({ "group": name, "description": text }),
                )
                .await?;
                report(&r, "set the description of", name);
            }
            GroupCommand::Avatar { name, file, .. } => {
                let path = match file {
                    Some(path) => {
                        super::group::check_avatar(path)?;
                        let path = std::path::absolute(path)?;
                        Some(path.to_string_lossy().into_owned())
                    }
                    None => None,
                };
                let what = if path.is_some() {
                    "set the avatar of"
                } else {
                    "removed the avatar of"
                };
                let r = call(
                    &mut d,
                    "group_avatar",
                    json!({ "group": name, "path": path }),
                )
                .await?;
                report(&r, what, name);
            }
            GroupCommand::Admin { name, user, remove } => {
                call(
                    &mut d,
                    "group_admin",
                    json!({ "group": name, "user": user, "remove": remove }),
                )
                .await?;
                if *remove {
                    println!("{} is no longer an admin of {}", user, escape(name));
                } else {
                    println!("{} is an admin of {}", user, escape(name));
                }
            }
            GroupCommand::Mute { name, duration } => {
                let r = call(
                    &mut d,
                    "group_mute",
                    json!({ "group": name, "until": duration }),
                )
                .await?;
                match super::group::muted(r["muted_until_ms"].as_u64()) {
                    Some(m) => println!("{} is {m}", escape(name)),
                    None => println!("{} is no longer muted", escape(name)),
                }
            }
            GroupCommand::Disappearing { name, timer } => {
                let secs = super::group::parse_timer(timer)?;
                let r = call(
                    &mut d,
                    "group_disappearing",
                    json!({ "group": name, "timer": timer }),
                )
                .await?;
                if r["pending"].as_bool() == Some(true) {
                    report(&r, "", name);
                } else {
                    match secs {
                        Some(t) => println!(
                            "set disappearing messages to {} in {}",
                            cove::format_duration(t),
                            escape(name)
                        ),
                        None => println!("turned disappearing messages off in {}", escape(name)),
                    }
                }
            }
        },
        Command::Reply(args) => {
            let r = call(
                &mut d,
                "reply",
                json!({ "group": args.group, "to": args.id, "text": args.text }),
            )
            .await?;
            report(&r, "replied in", &args.group);
        }
        Command::React(args) => {
            let r = call(
                &mut d,
                "react",
                json!({ "group": args.group, "to": args.id, "emoji": args.emoji, "remove": args.remove }),
            )
            .await?;
            let what = if args.remove {
                "took back the reaction in"
            } else {
                "reacted in"
            };
            report(&r, what, &args.group);
        }
        Command::Edit(args) => {
            let r = call(
                &mut d,
                "edit",
                json!({ "group": args.group, "to": args.id, "text": args.text }),
            )
            .await?;
            report(&r, "edited in", &args.group);
        }
        Command::Delete(args) => {
            let r = call(
                &mut d,
                "delete",
                json!({ "group": args.group, "to": args.id }),
            )
            .await?;
            report(&r, "deleted in", &args.group);
        }
        Command::Search(args) => {
            super::chat::check_limit(args.limit)?;
            let found = call(
                &mut d,
                "search",
                json!({ "query": args.text, "group": args.group, "limit": args.limit }),
            )
            .await?;
            let found = found.as_array().cloned().unwrap_or_default();
            if found.is_empty() && !args.json {
                eprintln!("nothing found");
            }
            for m in &found {
                print_message(&view(m), args.json)?;
            }
        }
        Command::SendFile(args) => {
            let path = absolute(&args.path)?;
            let r = call(
                &mut d,
                "send_file",
                json!({ "group": args.group, "path": path.display().to_string() }),
            )
            .await?;
            println!(
                "sent {} ({}) to {} [attachment {}]",
                escape(str_of(&r["name"])),
                cove::human_size(r["size"].as_u64().unwrap_or(0)),
                escape(&args.group),
                str_of(&r["id"])
            );
        }
        Command::Download(args) => {
            let out = absolute(args.output.as_deref().unwrap_or(Path::new(".")))?;
            let r = call(
                &mut d,
                "download",
                json!({ "group": args.group, "file": args.id, "out": out.display().to_string() }),
            )
            .await?;
            println!("saved {}", escape(str_of(&r["path"])));
        }
        Command::Sync(args) => sync(&mut d, args.json).await?,
        Command::Listen(args) => listen(&mut d, args.json).await?,
        Command::Call(args) => {
            let params = json!({
                "group": args.group,
                "audio_in": args.media.audio_in,
                "audio_out": args.media.audio_out,
                "video": args.media.video_in.is_some(),
                "duration": args.media.duration,
                "ring_timeout": args.ring_timeout,
            });
            call(&mut d, "subscribe", json!({})).await?;
            let r = call(&mut d, "call", params).await?;
            let id = str_of(&r["call"]).to_owned();
            println!("calling {} (call {})", escape(&args.group), short(&id));
            follow_call(&mut d, &id).await?;
        }
        Command::Answer(args) => {
            call(&mut d, "subscribe", json!({})).await?;
            println!("waiting for a call...");
            let id = wait_for_call(&mut d, args.group.as_deref(), args.wait).await?;
            call(
                &mut d,
                "answer",
                json!({
                    "call": id,
                    "duration": args.media.duration,
                    "audio_in": args.media.audio_in,
                    "audio_out": args.media.audio_out,
                }),
            )
            .await?;
            follow_call(&mut d, &id).await?;
        }
        Command::Backup(_) => {
            let r = call(&mut d, "backup", json!({})).await?;
            let count = |k: &str| r[k].as_u64().unwrap_or(0);
            if count("segments") == 0 {
                println!("nothing new to back up");
            } else {
                println!(
                    "backed up {} messages in {} segments ({} bytes)",
                    count("messages"),
                    count("segments"),
                    count("bytes")
                );
            }
        }
        Command::RestoreHistory(_) => {
            let r = call(&mut d, "restore_history", json!({})).await?;
            let refused = r["refused"].as_array().cloned().unwrap_or_default();
            for s in &refused {
                eprintln!(
                    "warning: history segment {} refused, not imported: {}",
                    s["position"].as_u64().unwrap_or(0),
                    escape(str_of(&s["reason"]))
                );
            }
            let count = |k: &str| r[k].as_u64().unwrap_or(0);
            println!(
                "restored {} messages from {} segments ({} already here, {} refused)",
                count("messages"),
                count("segments"),
                count("duplicates"),
                refused.len()
            );
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Whether the daemon serves this command.
fn serves(command: &Command) -> bool {
    matches!(
        command,
        Command::Group(_)
            | Command::Reply(_)
            | Command::React(_)
            | Command::Edit(_)
            | Command::Delete(_)
            | Command::Search(_)
            | Command::Send(_)
            | Command::Groups(_)
            | Command::History(_)
            | Command::SendFile(_)
            | Command::Download(_)
            | Command::Sync(_)
            | Command::Listen(_)
            | Command::Call(_)
            | Command::Answer(_)
            | Command::Backup(_)
            | Command::RestoreHistory(_)
    )
}

/// Calls a method; a daemon error becomes this command's error (its message as the daemon
/// gave it, already escaped).
async fn call(d: &mut DaemonClient, method: &str, params: Value) -> anyhow::Result<Value> {
    d.call(method, params).await.map_err(|e| match e {
        ClientError::Rpc(e) => anyhow::anyhow!("{}", e.message),
        other => anyhow::Error::new(other),
    })
}

/// `WHAT GROUP` for a command the relay stored, or that it is queued (`pending`).
fn report(r: &Value, what: &str, group: &str) {
    if r["pending"].as_bool() == Some(true) {
        println!(
            "queued for {}: the relay is not reachable; the daemon sends it once it is back",
            escape(group)
        );
    } else {
        println!("{what} {}", escape(group));
    }
}

/// The daemon's `group_info` object as the CLI's view.
fn group_info_view(v: &Value) -> cove::GroupInfoView {
    cove::GroupInfoView {
        name: str_of(&v["name"]).to_owned(),
        id: str_of(&v["id"]).to_owned(),
        epoch: v["epoch"].as_u64().unwrap_or(0),
        epoch_authenticator: str_of(&v["epoch_authenticator"]).to_owned(),
        members: v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| cove::MemberView {
                user: str_of(&m["user"]).to_owned(),
                device: m["device"].as_u64().unwrap_or(0),
                key: str_of(&m["key"]).to_owned(),
            })
            .collect(),
        description: str_of(&v["description"]).to_owned(),
        avatar: v["avatar"].as_str().map(str::to_owned),
        admins: strings(&v["admins"]),
        disappearing_secs: v["disappearing_secs"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok()),
        unread: v["unread"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(0),
        muted_until_ms: v["muted_until_ms"].as_u64(),
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn join(users: &[cove::UserName]) -> String {
    users
        .iter()
        .map(|u| escape(u.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir()
        .context("the current directory")?
        .join(path))
}

/// The daemon's message object as the CLI's view of a message.
fn view(m: &Value) -> MessageView {
    MessageView {
        group: str_of(&m["group_name"]).to_owned(),
        group_id: str_of(&m["group"]).to_owned(),
        from: str_of(&m["sender"]).to_owned(),
        device: m["device"].as_u64().unwrap_or(0),
        text: str_of(&m["text"]).to_owned(),
        id: str_of(&m["id"]).to_owned(),
        sent_at: m["sent_at_ms"].as_u64().unwrap_or(0),
        seq: m["seq"].as_u64().unwrap_or(0),
        attachment: m
            .get("file")
            .filter(|f| f.is_object())
            .map(|f| AttachmentView {
                id: str_of(&f["id"]).to_owned(),
                name: str_of(&f["name"]).to_owned(),
                size: f["size"].as_u64().unwrap_or(0),
                media_type: str_of(&f["type"]).to_owned(),
            }),
        reply_to: m
            .get("reply_to")
            .filter(|q| q.is_object())
            .map(|q| QuoteView {
                id: str_of(&q["id"]).to_owned(),
                from: q["from"].as_str().map(str::to_owned),
                text: str_of(&q["text"]).to_owned(),
            }),
        reactions: m["reactions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| ReactionView {
                emoji: str_of(&r["emoji"]).to_owned(),
                users: strings(&r["users"]),
            })
            .collect(),
        edited: m["edited"].as_bool() == Some(true),
        deleted: m["deleted"].as_bool() == Some(true),
        unsupported: m["unsupported"].as_bool() == Some(true),
    }
}

/// Prints a message as `cove history` does; a queued one (`pending`) is marked so.
fn print_daemon_message(m: &Value, json: bool) -> anyhow::Result<()> {
    if m["kind"] == "call" {
        if json {
            println!("{m}");
        } else {
            println!(
                "{} -- {}",
                escape(str_of(&m["group_name"])),
                escape(str_of(&m["text"]))
            );
        }
        return Ok(());
    }
    let pending = m["pending"].as_bool() == Some(true);
    if !pending {
        return print_message(&view(m), json);
    }
    if json {
        let mut v = serde_json::to_value(view(m))?;
        v["pending"] = true.into();
        println!("{v}");
    } else {
        println!("{} (pending)", super::messages::line(&view(m)));
    }
    Ok(())
}

/// `cove sync` through the daemon: what it holds unread, then marked read.
async fn sync(d: &mut DaemonClient, json: bool) -> anyhow::Result<()> {
    let unread = call(d, "unread", json!({})).await?;
    let unread = unread.as_array().cloned().unwrap_or_default();
    for m in &unread {
        print_message(&view(m), json)?;
    }
    mark_read(d, &unread).await?;
    if !json && unread.is_empty() {
        eprintln!("nothing new");
    }
    Ok(())
}

/// Marks each group read up to its last message in `messages`.
async fn mark_read(d: &mut DaemonClient, messages: &[Value]) -> anyhow::Result<()> {
    let mut last: Vec<(String, String)> = Vec::new();
    for m in messages {
        let (g, id) = (str_of(&m["group"]).to_owned(), str_of(&m["id"]).to_owned());
        match last.iter_mut().find(|(group, _)| *group == g) {
            Some(entry) => entry.1 = id,
            None => last.push((g, id)),
        }
    }
    for (group, id) in last {
        call(d, "mark_read", json!({ "group": group, "up_to": id })).await?;
    }
    Ok(())
}

/// `cove listen` through the daemon: subscribes, prints what is unread, then everything
/// as it happens, until Ctrl-C or the daemon stops.
async fn listen(d: &mut DaemonClient, json: bool) -> anyhow::Result<()> {
    let status = call(d, "status", json!({})).await?;
    let (me, my_device) = (
        str_of(&status["user"]).to_owned(),
        status["device"].as_u64(),
    );
    call(d, "subscribe", json!({})).await?;
    if !json {
        eprintln!(
            "listening as {} on {} through the cove daemon (Ctrl-C to stop)",
            escape(&me),
            escape(str_of(&status["server"]))
        );
    }
    let mut printed = HashSet::new();
    let unread = call(d, "unread", json!({})).await?;
    for m in unread.as_array().into_iter().flatten() {
        printed.insert(str_of(&m["id"]).to_owned());
        print_message(&view(m), json)?;
        mark_read(d, std::slice::from_ref(m)).await?;
    }
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = d.next_notification() => next?,
        };
        let Some(Notification { method, params: p }) = next else {
            bail!("the cove daemon stopped");
        };
        match method.as_str() {
            "message" if p["kind"] == "call" => {
                eprintln!(
                    "-- {}: {}",
                    escape(str_of(&p["group_name"])),
                    escape(str_of(&p["text"]))
                );
            }
            "message" => {
                let own = str_of(&p["sender"]) == me && p["device"].as_u64() == my_device;
                if own || !printed.insert(str_of(&p["id"]).to_owned()) {
                    continue;
                }
                print_message(&view(&p), json)?;
                mark_read(d, std::slice::from_ref(&p)).await?;
            }
            "membership" => {
                let (group, by) = (str_of(&p["group_name"]), str_of(&p["by"]));
                let users = strings(&p["users"]).join(", ");
                let line = match str_of(&p["kind"]) {
                    "joined" => format!("joined {group} (added by {by})"),
                    "added" => format!("{by} added {users} to {group}"),
                    "removed" if users == me => format!("you were removed from {group}"),
                    "removed" => format!("{by} removed {users} from {group}"),
                    other => format!("{other} {users} in {group}"),
                };
                eprintln!("-- {}", escape(&line));
            }
            "warning" => print_warning(str_of(&p["text"]), json)?,
            "update" => {
                if json {
                    // As `cove listen --json` prints them without a daemon.
                    let mut v = p.clone();
                    if let Some(o) = v.as_object_mut() {
                        let id = o.remove("group").unwrap_or_default();
                        let name = o.remove("group_name").unwrap_or_default();
                        let kind = o.remove("kind").unwrap_or_default();
                        o.remove("text");
                        o.insert("event".into(), kind);
                        o.insert("group".into(), name);
                        o.insert("group_id".into(), id);
                    }
                    println!("{v}");
                } else {
                    println!("-- {}", escape(str_of(&p["text"])));
                }
            }
            "identity" => {
                if json {
                    // As `cove listen --json` prints identity events without a daemon.
                    let kind = match str_of(&p["kind"]) {
                        "changed" => "identity_changed",
                        other => other,
                    };
                    let mut v = json!({ "identity": kind, "user": p["user"], "text": p["text"] });
                    if let Some(g) = p.get("group") {
                        v["group_id"] = g.clone();
                    }
                    println!("{v}");
                } else {
                    println!("-- {}", escape(str_of(&p["text"])));
                }
            }
            "incoming_call" => eprintln!(
                "-- incoming call from {} in {} (call {}): `cove answer` answers it",
                escape(str_of(&p["from"])),
                escape(str_of(&p["group_name"])),
                short(str_of(&p["call"]))
            ),
            "call_state" => eprintln!(
                "-- call {} {}{}",
                short(str_of(&p["call"])),
                str_of(&p["state"]),
                p["reason"]
                    .as_str()
                    .map(|r| format!(" ({})", escape(r)))
                    .unwrap_or_default()
            ),
            "connection" => {
                if p["connected"].as_bool() == Some(true) {
                    eprintln!("-- connected to the relay");
                } else {
                    eprintln!("-- connection to the relay lost; reconnecting");
                }
            }
            _ => {}
        }
    }
}

/// Waits for a ringing call (in `group` if given): one already ringing, or the next
/// `incoming_call` within `wait` seconds.
async fn wait_for_call(
    d: &mut DaemonClient,
    group: Option<&str>,
    wait: u64,
) -> anyhow::Result<String> {
    let matches =
        |c: &Value| group.is_none_or(|g| str_of(&c["group"]) == g || str_of(&c["group_name"]) == g);
    let calls = call(d, "calls", json!({})).await?;
    if let Some(c) =
        calls.as_array().into_iter().flatten().find(|c| {
            str_of(&c["state"]) == "ringing" && str_of(&c["direction"]) == "in" && matches(c)
        })
    {
        return Ok(str_of(&c["call"]).to_owned());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.max(1));
    loop {
        let next = tokio::time::timeout_at(deadline, d.next_notification())
            .await
            .map_err(|_| anyhow::anyhow!("no incoming call within {wait} s"))??;
        let Some(n) = next else {
            bail!("the cove daemon stopped");
        };
        if n.method == "incoming_call" && matches(&n.params) {
            println!(
                "incoming call from {}: answering",
                escape(str_of(&n.params["from"]))
            );
            return Ok(str_of(&n.params["call"]).to_owned());
        }
    }
}

/// Prints a call's state changes until it ends; an error if it ended without connecting
/// (declined, busy, nobody answered).
async fn follow_call(d: &mut DaemonClient, id: &str) -> anyhow::Result<()> {
    let mut connected = false;
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                call(d, "hangup", json!({ "call": id })).await?;
                println!("hanging up");
                continue;
            }
            next = d.next_notification() => next?,
        };
        let Some(n) = next else {
            bail!("the cove daemon stopped");
        };
        if n.method != "call_state" || str_of(&n.params["call"]) != id {
            continue;
        }
        let reason = n.params["reason"].as_str().map(escape);
        match str_of(&n.params["state"]) {
            "connected" if !connected => {
                connected = true;
                println!("connected");
            }
            "ended" => {
                if !connected {
                    bail!("the call {}", reason.unwrap_or_else(|| "ended".into()));
                }
                println!("call {} ended", short(id));
                return Ok(());
            }
            _ => {}
        }
    }
}
