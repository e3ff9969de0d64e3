//! `cove reply`, `cove react`, `cove edit`, `cove delete` and `cove search` (issue 13).

use clap::Args;

use cove::config::Home;
use cove::{Device, Sent, escape};

use super::messages::print_message;

/// Arguments of `cove reply`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove reply friends 1a2b3c4d 'yes, 8 is fine'

ID is a message's id as `cove history` shows it (its first 8 hex digits; at least 4 digits,
more when several messages start alike). The reply carries a short quote of the message.")]
pub struct ReplyArgs {
    /// The group.
    pub group: String,
    /// The message replied to (its id, or the start of it).
    pub id: String,
    /// The reply.
    pub text: String,
}

/// Arguments of `cove react`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove react friends 1a2b3c4d 👍
  cove react friends 1a2b3c4d 👍 --remove       # take the reaction back

Everyone in the group sees the reactions counted under the message (`👍 2`).")]
pub struct ReactArgs {
    /// The group.
    pub group: String,
    /// The message (its id, or the start of it).
    pub id: String,
    /// One emoji.
    pub emoji: String,
    /// Take this reaction back.
    #[arg(long)]
    pub remove: bool,
}

/// Arguments of `cove edit`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove edit friends 1a2b3c4d 'see you at 9'

Only your own messages can be edited; every member keeps the earlier texts and shows
`(edited)`.")]
pub struct EditArgs {
    /// The group.
    pub group: String,
    /// Your message (its id, or the start of it).
    pub id: String,
    /// Its new text.
    pub text: String,
}

/// Arguments of `cove delete`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove delete friends 1a2b3c4d

Deletes the message for everyone: every member erases its text and shows `(deleted)`. You
can delete your own messages; a group admin can delete anyone's.")]
pub struct DeleteArgs {
    /// The group.
    pub group: String,
    /// The message (its id, or the start of it).
    pub id: String,
}

/// Arguments of `cove search`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove search pizza
  cove search 'pizza friday' --group friends --limit 5
  cove search pizza --json

Searches this device's decrypted history (nothing goes to the relay), newest first. Words
match whole words (as SQLite FTS5 matches them); deleted and disappeared messages are never
found. Prints messages as `cove history` does.")]
pub struct SearchArgs {
    /// The words to find.
    pub text: String,
    /// Only in this group.
    #[arg(long, short)]
    pub group: Option<String>,
    /// At most this many messages.
    #[arg(long, short, default_value_t = 20)]
    pub limit: usize,
    /// One JSON object per line (as `cove history --json`).
    #[arg(long)]
    pub json: bool,
}

/// Runs `cove reply`.
pub async fn run_reply(home: Home, args: ReplyArgs) -> anyhow::Result<()> {
    let device = Device::open(&home).await?;
    let sent = device.reply(&args.group, &args.id, &args.text).await;
    device.close().await;
    report(sent?, "replied in", &args.group);
    Ok(())
}

/// Runs `cove react`.
pub async fn run_react(home: Home, args: ReactArgs) -> anyhow::Result<()> {
    let device = Device::open(&home).await?;
    let sent = device
        .react(&args.group, &args.id, &args.emoji, args.remove)
        .await;
    device.close().await;
    let what = if args.remove {
        "took back the reaction in"
    } else {
        "reacted in"
    };
    report(sent?, what, &args.group);
    Ok(())
}

/// Runs `cove edit`.
pub async fn run_edit(home: Home, args: EditArgs) -> anyhow::Result<()> {
    let device = Device::open(&home).await?;
    let sent = device.edit(&args.group, &args.id, &args.text).await;
    device.close().await;
    report(sent?, "edited in", &args.group);
    Ok(())
}

/// Runs `cove delete`.
pub async fn run_delete(home: Home, args: DeleteArgs) -> anyhow::Result<()> {
    let device = Device::open(&home).await?;
    let sent = device.delete_message(&args.group, &args.id).await;
    device.close().await;
    report(sent?, "deleted in", &args.group);
    Ok(())
}

/// Runs `cove search`: local only, so it works offline.
pub async fn run_search(home: Home, args: SearchArgs) -> anyhow::Result<()> {
    check_limit(args.limit)?;
    let device = Device::open_offline(&home).await?;
    let found = device
        .search(&args.text, args.group.as_deref(), args.limit)
        .await;
    device.close().await;
    let found = found?;
    if found.is_empty() && !args.json {
        eprintln!("nothing found");
    }
    for m in &found {
        print_message(m, args.json)?;
    }
    Ok(())
}

/// `--limit` is 1 to 1000.
pub(super) fn check_limit(limit: usize) -> anyhow::Result<()> {
    if !(1..=1000).contains(&limit) {
        anyhow::bail!("invalid argument: --limit must be 1 to 1000");
    }
    Ok(())
}

/// `WHAT GROUP` once the relay stored it, or that it is queued.
pub(super) fn report(sent: Sent, what: &str, group: &str) {
    match sent {
        Sent::Delivered => println!("{what} {}", escape(group)),
        Sent::Queued => println!(
            "queued for {}: the relay has not confirmed it yet; it stays in this device's \
             outbox and goes out once at the next connection (e.g. `cove sync`)",
            escape(group)
        ),
    }
}
