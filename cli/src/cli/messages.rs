//! `cove send`, `cove sync`, `cove listen` and `cove history`.

use std::io::Write;

use anyhow::Context as _;
use clap::Args;

use cove::config::Home;
use cove::{Device, IdentityView, Incoming, MessageView, Sent, UpdateView};

/// Arguments of `cove send`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove send friends 'see you at 8'

Prints `sent to GROUP` once the relay has stored the message. If the relay does not answer
in time, prints `queued for GROUP: ...` and exits 0 as well: the message is kept in this
device's outbox and sent exactly once at the next connection (any command that connects,
e.g. `cove sync`). Do not send it again. Exit code 1: not sent (refused, or no relay).")]
pub struct SendArgs {
    /// The group.
    pub name: String,
    /// The text (at most 64 KiB).
    pub text: String,
}

/// Arguments of `cove sync`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove sync
  cove sync --json | jq .text

Prints `TIME ID group <from> text` per message (TIME is HH:MM today, else the date and time,
in local time; ID is the message's short id, which `cove reply`, `react`, `edit` and `delete`
take), with `[↪ alice: quote]` before a reply, `(edited)`, `(deleted)`,
`[unsupported message]` and reactions (`👍 2`). With --json one object per line:
  {\"group\":\"friends\",\"from\":\"alice\",\"text\":\"hi\",\"id\":\"..\",\"sent_at\":1700000000000}
(plus `reply_to`, `reactions`, `edited`, `deleted`, `unsupported` when they apply).
Reactions, edits, deletes, group changes and expired messages print as `-- ...` lines, or
with --json as {\"event\":\"reaction\",...} lines (kinds: reaction, edit, delete,
group_changed, expired; see API.md). Read receipts and typing show only in `cove listen`.
Warnings (an entry that could not be read, a member's device their signed list does not name,
...) go to stderr as `warning: ...`, or with --json as {\"warning\":\"...\"} lines. Identity
events (a contact added or revoked a device, changed identity key, a refused member) and a
rejoin (this device could not follow a group and rejoined it: `-- rejoined GROUP (N messages
could not be read)`) print as `-- ...` lines, or with --json as
{\"identity\":\"device_added\",\"user\":\"alice\",...} lines (kinds: device_added,
device_revoked, identity_changed, leaf_refused, rejoined).")]
pub struct SyncArgs {
    /// One JSON object per line (group, group_id, from, device, text, id, sent_at).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `cove listen`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove listen
  cove listen --json

Stays connected (reconnecting when the relay goes away) until Ctrl-C. Prints messages,
identity events (`-- ...` lines, or with --json {\"identity\":\"identity_changed\",...}) and
reactions, edits, deletes, group changes and expiries as in `cove sync`, read receipts
(`-- friends: bob read up to ID`, {\"event\":\"read\",...}) and who is typing (`-- friends: bob is typing…`, or {\"event\":\"typing\",...}); other notices go to
stderr as `-- ...`.")]
pub struct ListenArgs {
    /// One JSON object per line (group, group_id, from, device, text, id, sent_at).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `cove history`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove history friends
  cove history friends --json

One line per message as `cove sync` prints them: `TIME ID friends <alice> text`, with the
short ID that `cove reply`, `react`, `edit` and `delete` take.")]
pub struct HistoryArgs {
    /// The group.
    pub name: String,
    /// One JSON object per line (group, group_id, from, device, text, id, sent_at).
    #[arg(long)]
    pub json: bool,
}

/// Runs `cove send`.
pub async fn run_send(home: Home, args: SendArgs) -> anyhow::Result<()> {
    let device = Device::open(&home).await?;
    let sent = device.send_text(&args.name, &args.text).await;
    device.close().await;
    match sent? {
        Sent::Delivered => println!("sent to {}", cove::escape(&args.name)),
        Sent::Queued => println!(
            "queued for {}: the relay has not confirmed it yet; it stays in this device's \
             outbox and goes out once at the next connection (e.g. `cove sync`)",
            cove::escape(&args.name)
        ),
    }
    Ok(())
}

/// Runs `cove sync`.
pub async fn run_sync(home: Home, args: SyncArgs) -> anyhow::Result<()> {
    let mut device = Device::open(&home).await?;
    let result = device.sync_incoming().await;
    let incoming = match result {
        Ok(m) => m,
        Err(e) => {
            device.close().await;
            return Err(e.into());
        }
    };
    let mut messages = 0;
    let mut read = Vec::new();
    for i in &incoming {
        match i {
            Incoming::Message(m) => {
                print_message(m, args.json)?;
                device.mark_shown(m).await?;
                messages += 1;
                if !read.contains(&m.group_id) {
                    read.push(m.group_id.clone());
                }
            }
            Incoming::Warning(text) => print_warning(text, args.json)?,
            Incoming::Identity(event) => print_identity(event, args.json)?,
            Incoming::Update(update) => print_update(update, args.json)?,
            Incoming::Notice(_) => {}
        }
    }
    // What was shown is read: the groups' unread counts go to zero (and receipts go out).
    for group in &read {
        // A failure leaves the count up; the messages were shown all the same.
        let _ = device.mark_read(group).await;
    }
    super::backup::after_round(&mut device, super::backup::SYNC_THRESHOLD).await;
    device.close().await;
    if !args.json && messages == 0 {
        eprintln!("nothing new");
    }
    Ok(())
}

/// Runs `cove listen`.
pub async fn run_listen(home: Home, args: ListenArgs) -> anyhow::Result<()> {
    let mut device = Device::open(&home).await?;
    if !args.json {
        eprintln!(
            "listening as {} on {} (Ctrl-C to stop)",
            device.user(),
            device.server()
        );
    }
    let result = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            next = device.next_incoming() => match next {
                Ok(Incoming::Message(m)) => {
                    print_message(&m, args.json)?;
                    // As in `sync`: a failure only leaves the unread count up.
                    let _ = device.mark_read(&m.group_id).await;
                }
                Ok(Incoming::Notice(text)) => eprintln!("-- {}", cove::escape(&text)),
                Ok(Incoming::Warning(text)) => print_warning(&text, args.json)?,
                Ok(Incoming::Identity(event)) => print_identity(&event, args.json)?,
                Ok(Incoming::Update(update)) => print_update(&update, args.json)?,
                Err(e) => break Err(e),
            },
        }
    };
    // At close: whatever waits goes into the backup.
    if result.is_ok() {
        super::backup::after_round(&mut device, 1).await;
    }
    device.close().await;
    Ok(result?)
}

/// Runs `cove history`.
pub async fn run_history(home: Home, args: HistoryArgs) -> anyhow::Result<()> {
    let device = Device::open_offline(&home).await?;
    let history = device.history(&args.name).await;
    device.close().await;
    for m in history? {
        print_message(&m, args.json)?;
    }
    Ok(())
}

pub(super) fn print_message(m: &MessageView, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, m).context("writing JSON")?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", line(m))?;
    }
    out.flush()?;
    Ok(())
}

/// A message's human form: `TIME ID group <from> text` (see [`stamp`]).
pub(super) fn line(m: &MessageView) -> String {
    format!("{} {} {}", stamp(m.sent_at), m.short_id(), m.line())
}

/// A moment (ms since the Unix epoch) in local time: `HH:MM` today, else
/// `YYYY-MM-DD HH:MM`.
pub(super) fn stamp(ms: u64) -> String {
    let tz = jiff::tz::TimeZone::system();
    let at = jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(jiff::Timestamp::MAX)
        .to_zoned(tz.clone());
    if at.date() == jiff::Timestamp::now().to_zoned(tz).date() {
        at.strftime("%H:%M").to_string()
    } else {
        at.strftime("%Y-%m-%d %H:%M").to_string()
    }
}

/// A reaction, edit, delete, receipt, typing, group change or expiry: `-- LINE` on stdout,
/// or with `--json` one object whose `event` field names the kind.
pub(super) fn print_update(update: &UpdateView, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, update).context("writing JSON")?;
        writeln!(out)?;
    } else {
        writeln!(out, "-- {}", update.line())?;
    }
    out.flush()?;
    Ok(())
}

/// An identity event (a device added or revoked, an identity key changed, a member
/// refused): `-- LINE` on stdout, or with `--json` one object whose `identity` field names
/// the kind.
fn print_identity(event: &IdentityView, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, event).context("writing JSON")?;
        writeln!(out)?;
    } else {
        writeln!(out, "-- {}", event.line())?;
    }
    out.flush()?;
    Ok(())
}

/// A warning from the core: `warning: ...` on stderr, or with `--json` one
/// `{"warning": "..."}` object on stdout among the messages.
pub(super) fn print_warning(text: &str, json: bool) -> anyhow::Result<()> {
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &serde_json::json!({ "warning": text }))
            .context("writing JSON")?;
        writeln!(out)?;
        out.flush()?;
    } else {
        eprintln!("warning: {}", cove::escape(text));
    }
    Ok(())
}
