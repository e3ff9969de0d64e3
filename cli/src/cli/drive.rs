//! `cove drive ...`: Cove Drive, encrypted storage synced across this user's devices and
//! folders shared with other users (issue 14). The logic is `cove::drive`; every command
//! opens the device for one shot (no daemon routing yet: a running daemon must be stopped).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use cove::config::Home;
use cove::{Device, UserName, escape, human_size};
use cove_core::drive::{Entry, NodeKind};

/// `cove drive --help`'s epilogue.
pub(crate) const HELP: &str = "\
Examples:
  cove drive put ./photos /                  # upload a folder (several files at once)
  cove drive ls /photos --long               # on any of your devices
  cove drive get /photos ~/Pictures/
  cove drive share /photos bob --read-only   # bob: cove drive ls alice:photos
  cove drive rm /old.txt && cove drive restore /old.txt
  cove drive sync ~/Drive                    # both ways, until Ctrl-C (run it on each device)

Paths: /a/b is in your drive (a shared folder in it is entered like a folder);
OWNER:FOLDER/a/b is in a folder OWNER shared with you (see `cove drive shared`).";

/// `cove drive` commands.
#[derive(Debug, Subcommand)]
pub enum DriveCommand {
    /// List a folder (default: your drive's root).
    Ls(LsArgs),
    /// Upload a file or a whole folder (a file that exists gets a new version).
    Put(PutArgs),
    /// Download a file or a whole folder.
    Get(GetArgs),
    /// Create a folder.
    Mkdir(MkdirArgs),
    /// Move or rename a file or folder.
    Mv(MvArgs),
    /// Move a file or folder to the trash.
    Rm(RmArgs),
    /// Bring a file or folder back from the trash (or list the trash).
    Restore(RestoreArgs),
    /// Delete the trash for good, and the contents you uploaded of what was in it.
    EmptyTrash(EmptyTrashArgs),
    /// List a file's versions.
    Versions(VersionsArgs),
    /// Share a folder with another user (they get its keys by joining its group).
    Share(ShareArgs),
    /// Stop sharing a folder with a user.
    Unshare(UnshareArgs),
    /// List the shared folders you are in, with their owners and members.
    Shared(SharedArgs),
    /// Make (or revoke) a public link to a file or folder: the key is after '#'.
    Link(LinkArgs),
    /// How much the relay stores for you, and what your drives hold.
    Usage(UsageArgs),
    /// Keep a local folder and a drive folder in sync, both ways.
    Sync(SyncArgs),
}

/// `cove drive sync`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive sync ~/Drive                    # your whole drive, until Ctrl-C
  cove drive sync ~/Work /work --once        # one pass (scripts, cron)
  cove drive sync ~/Trip alice:Trip          # a folder alice shared with you

Local changes are picked up as they happen (and by a rescan every --interval seconds, which
is also how changes from your other devices arrive). A file changed on both sides is kept
twice: the drive's version at its name, yours as `name (conflict from DEVICE DATE).ext`.
Deletes go to the drive's trash (`cove drive restore`), never further. Patterns in
LOCAL_DIR/.coveignore (gitignore-like) are never synced. Interrupted transfers resume.

While `cove daemon` runs, the sync runs inside it: the command starts it and returns.
  cove drive sync ~/Drive                    # started in the daemon
  cove drive sync --status                   # what the daemon syncs, with its last lines
  cove drive sync --stop ~/Drive             # stop it")]
pub struct SyncArgs {
    /// The local folder (created when missing).
    #[arg(required_unless_present = "status")]
    pub local: Option<PathBuf>,
    /// The drive folder (created when missing).
    #[arg(default_value = "/")]
    pub remote: String,
    /// One pass, then exit.
    #[arg(long)]
    pub once: bool,
    /// Seconds between rescans (and checks for changes from other devices).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub interval: u64,
    /// Stop the daemon's sync of LOCAL_DIR.
    #[arg(long, conflicts_with_all = ["once", "status"])]
    pub stop: bool,
    /// List the syncs the daemon runs.
    #[arg(long, conflicts_with = "once")]
    pub status: bool,
}

/// `cove drive ls`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive ls
  cove drive ls /photos --long
  cove drive ls alice:Trip

Long listing: kind (d folder, - file, s shared folder), size, last change (UTC), versions,
who changed it last, name.")]
pub struct LsArgs {
    /// The folder (or file).
    #[arg(default_value = "/")]
    pub path: String,
    /// Size, time, versions and author of each entry.
    #[arg(short, long)]
    pub long: bool,
}

/// `cove drive put`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive put ./report.pdf                # into your drive's root
  cove drive put ./photos /                  # the whole folder, as /photos
  cove drive put ./report.pdf /work/q3.pdf   # under another name
  cove drive put ./notes.txt alice:Trip/     # into a folder alice shared with you

Files are encrypted on this device (content-defined chunks, keys derived from a random
per-file secret); several upload at once; a new version sends only the changed chunks.")]
pub struct PutArgs {
    /// The local file or folder.
    pub local: PathBuf,
    /// Where in the drive (an existing folder: into it).
    #[arg(default_value = "/")]
    pub remote: String,
}

/// `cove drive get`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive get /report.pdf
  cove drive get /photos ~/Pictures/        # the whole folder, as ~/Pictures/photos
  cove drive get alice:Trip/plan.txt plan.txt --force

Every chunk is verified; a file appears only once complete and whole.")]
pub struct GetArgs {
    /// The file or folder in the drive.
    pub remote: String,
    /// Where to write it (an existing folder: into it; default: the current folder).
    #[arg(default_value = ".")]
    pub local: PathBuf,
    /// Overwrite local files that exist.
    #[arg(short, long)]
    pub force: bool,
}

/// `cove drive mkdir`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive mkdir /photos
  cove drive mkdir -p /work/2026/q3")]
pub struct MkdirArgs {
    /// The new folder.
    pub path: String,
    /// Create the missing folders on the way (an existing folder is fine).
    #[arg(short, long)]
    pub parents: bool,
}

/// `cove drive mv`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive mv /report.pdf /work/           # into a folder
  cove drive mv /draft.txt /final.txt        # rename

Both paths must be in the same drive (your drive, or one shared folder).")]
pub struct MvArgs {
    /// What to move.
    pub from: String,
    /// Where to (an existing folder: into it).
    pub to: String,
}

/// `cove drive rm`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive rm /old.txt
  cove drive restore /old.txt                # changed your mind
  cove drive empty-trash                     # gone for good")]
pub struct RmArgs {
    /// The file or folder.
    pub path: String,
}

/// `cove drive restore`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive restore                         # list the trash
  cove drive restore /old.txt                # back where it was
  cove drive restore alice:Trip/plan.txt")]
pub struct RestoreArgs {
    /// The path it had (none: list the trash).
    pub path: Option<String>,
}

/// `cove drive empty-trash`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive empty-trash
  cove drive empty-trash alice:Trip

The contents you uploaded are deleted from the relay; what other members uploaded stays
until they delete it (the relay lets each user delete only their own blobs).")]
pub struct EmptyTrashArgs {
    /// The drive: none for yours, OWNER:FOLDER for a shared folder.
    pub drive: Option<String>,
}

/// `cove drive versions`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove drive versions /report.pdf")]
pub struct VersionsArgs {
    /// The file.
    pub path: String,
}

/// `cove drive share`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive share /trip bob                 # bob can read and change it
  cove drive share /trip carol --read-only
  cove drive shared                          # on bob's device: alice:trip

The folder becomes a group of its own (an MLS group): sharing adds bob's devices to it,
which hands them its keys. Read-only is enforced by every member's client.")]
pub struct ShareArgs {
    /// The folder in your drive (or a shared folder you own, OWNER:FOLDER).
    pub folder: String,
    /// The user to share it with.
    pub user: String,
    /// The user may only read it.
    #[arg(long)]
    pub read_only: bool,
}

/// `cove drive unshare`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove drive unshare /trip bob

bob's devices are removed from the folder's group: nothing changed or added afterwards
reaches them. What they already had (files and their keys) stays theirs.")]
pub struct UnshareArgs {
    /// The shared folder.
    pub folder: String,
    /// The user.
    pub user: String,
}

/// `cove drive shared`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove drive shared
  alice:trip  owner alice  members alice, bob  read-write")]
pub struct SharedArgs {}

/// `cove drive link`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove drive link /report.pdf
  cove drive link /photos --expire 7d
  cove drive link --revoke /photos

Anyone with the link can list and download (in a browser too); the key is after '#',
which browsers never send to the relay. Quote links in shells.")]
pub struct LinkArgs {
    /// The file or folder.
    pub path: String,
    /// The link stops working after this long (30m, 12h, 7d, 2w).
    #[arg(long, value_name = "DURATION")]
    pub expire: Option<String>,
    /// Revoke the links to it instead.
    #[arg(long, conflicts_with = "expire")]
    pub revoke: bool,
}

/// `cove drive usage`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove drive usage")]
pub struct UsageArgs {}

fn user(name: &str) -> anyhow::Result<UserName> {
    UserName::new(name).map_err(|_| anyhow::anyhow!("{:?} is not a user name", name))
}

fn when(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

fn line(e: &Entry, long: bool) -> String {
    let (kind, versions, suffix) = match &e.kind {
        NodeKind::Folder => ('d', 0, "/"),
        NodeKind::File { versions } => ('-', versions.len(), ""),
        NodeKind::Mount { .. } => ('s', 0, "/"),
    };
    let name = format!("{}{suffix}", escape(&e.name));
    if !long {
        return name;
    }
    format!(
        "{kind} {:>10} {} {:>3} {:<12} {name}",
        if kind == '-' {
            human_size(e.size)
        } else {
            "-".into()
        },
        when(e.modified_ms),
        versions,
        escape(e.author.as_str()),
    )
}

/// `cove drive sync`: a line per action on stdout, a summary per pass that changed
/// something, what could not be synced on stderr.
async fn sync(device: &Device, args: SyncArgs) -> anyhow::Result<()> {
    use cove::drive::sync::{Syncer, summary};
    if args.stop || args.status {
        anyhow::bail!(
            "no daemon runs for this home: --stop and --status are for a sync inside `cove daemon`"
        );
    }
    let local = args.local.context("LOCAL_DIR is required")?;
    let log = Box::new(|line: &str| println!("{}", escape(line)));
    let mut syncer = Syncer::open(device, &local, &args.remote, log)
        .await
        .with_context(|| format!("syncing {}", local.display()))?;
    if args.once {
        let report = syncer.pass().await?;
        for s in &report.skipped {
            eprintln!(
                "not synced: {}: {}",
                escape(&s.path.display().to_string()),
                s.reason
            );
        }
        println!("{}", summary(&report));
        return Ok(());
    }
    eprintln!(
        "syncing {} with {} (Ctrl-C stops)",
        syncer.root().display(),
        escape(&args.remote)
    );
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    syncer
        .run(std::time::Duration::from_secs(args.interval.max(1)), stop)
        .await?;
    Ok(())
}

/// `cove drive sync` while a daemon holds the home: the sync runs inside the daemon
/// (`--once` excepted, which needs the home); `Ok(false)` when no daemon runs.
async fn sync_in_daemon(home: &Home, args: &SyncArgs) -> anyhow::Result<bool> {
    use cove::daemon::client::{ClientError, DaemonClient};
    if args.once {
        return Ok(false);
    }
    let Some(mut d) = DaemonClient::connect(home).await? else {
        return Ok(false);
    };
    let rpc = |e: ClientError| match e {
        ClientError::Rpc(e) => anyhow::anyhow!("{}", e.message),
        other => anyhow::Error::new(other),
    };
    let absolute = |p: &PathBuf| -> anyhow::Result<String> {
        let p = std::path::absolute(p).with_context(|| format!("{}", p.display()))?;
        Ok(p.display().to_string())
    };
    if args.status {
        let syncs = d
            .call("drive_syncs", serde_json::json!({}))
            .await
            .map_err(rpc)?;
        let syncs = syncs.as_array().cloned().unwrap_or_default();
        if syncs.is_empty() {
            println!("the daemon runs no sync");
        }
        for s in syncs {
            println!(
                "{} <-> {}{}",
                escape(s["local"].as_str().unwrap_or("?")),
                escape(s["remote"].as_str().unwrap_or("?")),
                if s["running"].as_bool() == Some(true) {
                    ""
                } else {
                    "  (stopped)"
                }
            );
            for line in s["lines"].as_array().into_iter().flatten() {
                println!("  {}", escape(line.as_str().unwrap_or("")));
            }
        }
        return Ok(true);
    }
    let local = absolute(args.local.as_ref().context("LOCAL_DIR is required")?)?;
    if args.stop {
        d.call("drive_sync_stop", serde_json::json!({ "local": local }))
            .await
            .map_err(rpc)?;
        println!("stopped syncing {}", escape(&local));
        return Ok(true);
    }
    let r = d
        .call(
            "drive_sync_start",
            serde_json::json!({ "local": local, "remote": args.remote, "interval": args.interval }),
        )
        .await
        .map_err(rpc)?;
    println!(
        "the daemon now syncs {} with {} (cove drive sync --status; --stop to stop)",
        escape(r["local"].as_str().unwrap_or(&local)),
        escape(&args.remote)
    );
    Ok(true)
}

/// Runs a `cove drive` command.
pub async fn run(home: Home, cmd: DriveCommand) -> anyhow::Result<()> {
    if let DriveCommand::Sync(args) = &cmd
        && sync_in_daemon(&home, args).await?
    {
        return Ok(());
    }
    let device = Device::open(&home).await?;
    let result = run_on(&device, cmd).await;
    device.close().await;
    result
}

async fn run_on(device: &Device, cmd: DriveCommand) -> anyhow::Result<()> {
    match cmd {
        DriveCommand::Ls(args) => {
            for e in device.drive_ls(&args.path).await? {
                println!("{}", line(&e, args.long));
            }
        }
        DriveCommand::Put(args) => {
            let r = device.drive_put(&args.local, &args.remote, true).await?;
            println!(
                "put {} file(s), {} new folder(s): {} sent ({} chunks new, {} reused)",
                r.files,
                r.folders,
                human_size(r.bytes_sent),
                r.chunks_sent,
                r.chunks_reused
            );
        }
        DriveCommand::Get(args) => {
            let r = device
                .drive_get(&args.remote, &args.local, args.force)
                .await?;
            println!(
                "got {} file(s) into {} ({} fetched)",
                r.files,
                escape(&args.local.display().to_string()),
                human_size(r.bytes)
            );
        }
        DriveCommand::Mkdir(args) => {
            device.drive_mkdir(&args.path, args.parents).await?;
            println!("created {}", escape(&args.path));
        }
        DriveCommand::Mv(args) => {
            device.drive_mv(&args.from, &args.to).await?;
            println!("moved {} to {}", escape(&args.from), escape(&args.to));
        }
        DriveCommand::Rm(args) => {
            device.drive_rm(&args.path).await?;
            println!(
                "moved {} to the trash (`cove drive restore` brings it back)",
                escape(&args.path)
            );
        }
        DriveCommand::Restore(RestoreArgs { path: None }) => {
            for e in device.drive_trash("").await? {
                println!("{}", escape(&e.path));
            }
        }
        DriveCommand::Restore(RestoreArgs { path: Some(path) }) => {
            let at = device.drive_restore(&path).await?;
            println!("restored {}", escape(&at));
        }
        DriveCommand::EmptyTrash(args) => {
            let drive = args.drive.unwrap_or_default();
            let r = device.drive_empty_trash(&drive).await?;
            println!(
                "purged {} item(s); deleted {} blob(s) from the relay",
                r.purged, r.deleted
            );
            if r.kept > 0 {
                println!(
                    "{} blob(s) uploaded by other members stay until they delete them",
                    r.kept
                );
            }
        }
        DriveCommand::Versions(args) => {
            for (i, v) in device.drive_versions(&args.path).await?.iter().enumerate() {
                println!(
                    "{:>3} {} {:>10} {} {}",
                    i + 1,
                    v.version[..4]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                    human_size(v.size),
                    when(v.modified_ms),
                    escape(&v.device)
                );
            }
        }
        DriveCommand::Share(args) => {
            let to = user(&args.user)?;
            let shared = device
                .drive_share(&args.folder, &to, args.read_only)
                .await?;
            println!(
                "shared {} with {}{} (they see it as {})",
                escape(&args.folder),
                escape(to.as_str()),
                if args.read_only { " (read-only)" } else { "" },
                escape(&shared)
            );
        }
        DriveCommand::Unshare(args) => {
            let from = user(&args.user)?;
            device.drive_unshare(&args.folder, &from).await?;
            println!(
                "{} no longer shared with {}",
                escape(&args.folder),
                escape(from.as_str())
            );
        }
        DriveCommand::Shared(_) => {
            let shared = device.drive_shared().await?;
            if shared.is_empty() {
                println!("no shared folders");
            }
            for s in shared {
                let owner = s
                    .owner
                    .as_ref()
                    .map(|o| o.as_str().to_owned())
                    .unwrap_or_else(|| "?".into());
                let members: Vec<String> = s.members.iter().map(|m| escape(m.as_str())).collect();
                match s.name {
                    Some(name) => println!(
                        "{}:{}  owner {}  members {}  {}",
                        escape(&owner),
                        escape(&name),
                        escape(&owner),
                        members.join(", "),
                        if s.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        }
                    ),
                    None => println!(
                        "(a folder named as {}'s whose tree is not here yet: retry once one \
                         of that user's devices was online)  members {}",
                        escape(&owner),
                        members.join(", ")
                    ),
                }
            }
        }
        DriveCommand::Link(args) if args.revoke => {
            let n = device.drive_unlink(&args.path).await?;
            println!("revoked {n} link(s) to {}", escape(&args.path));
        }
        DriveCommand::Link(args) => {
            let expire = match &args.expire {
                Some(text) => Some(u64::from(cove::parse_duration(text).with_context(
                    || format!("{text:?} is not a duration (30m, 12h, 7d, 2w)"),
                )?)),
                None => None,
            };
            println!("{}", device.drive_link(&args.path, expire).await?);
        }
        DriveCommand::Sync(args) => sync(device, args).await?,
        DriveCommand::Usage(_) => {
            let relay = device.drive_blobs().await?.usage().await?;
            println!(
                "relay: {} used of {}",
                human_size(relay.used),
                human_size(relay.quota)
            );
            for (name, (files, folders, latest, all)) in device.drive_tree_usage().await?.drives {
                println!(
                    "{}: {files} file(s), {folders} folder(s), {} (all versions and trash: {})",
                    escape(&name),
                    human_size(latest),
                    human_size(all)
                );
            }
        }
    }
    Ok(())
}
